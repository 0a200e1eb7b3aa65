"""`SuperLoRAAdapter`: the module that owns every group's trainable factors and fixed maps, and gives all ΔW at once.

The ΔW themselves come from the pure functions of `superlora.functional.delta` (factors -> group vector ->
concatenate, un-shuffle, split per target), called on this module's parameters and buffers. Groups that are
exactly one target in LoRA form are skipped in the layers' forward: their layer applies x A B^T directly (see
`direct_factors`); `delta_weights(include_direct=True)` builds their ΔW too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from superlora.config import SuperLoRAConfig
from superlora.functional import delta
from superlora.functional import projection as proj
from superlora.functional.plan import AdapterPlan, GroupPlan, PiecePlan


class PieceFactors(nn.Module):
    """The trainable tensors of one Kronecker piece, registered under the names the plan gives them."""

    def __init__(self, plan: PiecePlan, gen: torch.Generator, dtype: torch.dtype) -> None:
        super().__init__()
        self.plan = plan
        zero = plan.zero_parameter()
        for name, shape in plan.parameter_shapes().items():
            tensor = torch.zeros(shape, dtype=torch.float32)
            if name != zero:
                tensor.uniform_(-1.0, 1.0, generator=gen).mul_(_init_bound(name, shape))
            self.register_parameter(name, nn.Parameter(tensor.to(dtype)))

    def named_tensors(self) -> dict[str, Tensor]:
        """The factors, upcast to at least float32 (a model cast to half precision keeps exact ΔW products)."""
        return {name: delta.at_least_float32(p) for name, p in self.named_parameters(recurse=False)}


def _init_bound(name: str, shape: tuple[int, ...]) -> float:
    """Uniform bound 1/sqrt(fan_in), the Kaiming-uniform(a=sqrt(5)) bound PEFT uses for LoRA's A.

    `right` (n2 x r) plays LoRA's A^T, so its fan-in is its first side; `left` (n1 x r) has fan-in r; a Tucker
    factor (n x r) is scaled by its side; a full piece or core by the product of its trailing sides.
    """
    base = name.rsplit("_", 1)[-1]
    if base in ("right",) or base.startswith("factor"):
        fan_in = shape[0]
    elif base == "left":
        fan_in = shape[1]
    else:
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return 1.0 / math.sqrt(max(1, fan_in))


class GroupFactors(nn.Module):
    """The pieces of one group."""

    def __init__(self, plan: GroupPlan, gen: torch.Generator, dtype: torch.dtype) -> None:
        super().__init__()
        self.plan = plan
        self.pieces = nn.ModuleList(PieceFactors(piece, gen, dtype) for piece in plan.pieces)

    def factor_tensors(self) -> list[dict[str, Tensor]]:
        """The tensors of each piece (upcast to at least float32), as `functional.delta` takes them."""
        return [piece.named_tensors() for piece in self.pieces]


class SuperLoRAAdapter(nn.Module):
    """All trainable factors of one adapter plus the fixed maps (regenerated from the seed, not saved)."""

    def __init__(self, plan: AdapterPlan, config: SuperLoRAConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.plan = plan
        self.config = config
        gen = proj.generator(config.seed, "init")
        self.groups = nn.ModuleList(GroupFactors(group, gen, dtype) for group in plan.groups)
        self._direct = plan.direct_groups()
        maps = delta.make_fixed_maps(plan, config.projection, config.seed)
        # Buffers, so the maps follow the module's device; not persistent, so they never reach a saved file.
        for g, projection in enumerate(maps.projections):
            if isinstance(projection, Mapping):
                for key in delta.FASTFOOD_KEYS:
                    self.register_buffer(f"_ff{g}_{key}", projection[key], persistent=False)
            elif projection is not None:
                self.register_buffer(f"_gauss{g}", projection, persistent=False)
        if maps.unshuffle is not None:
            self.register_buffer("_unshuffle", maps.unshuffle, persistent=False)
            self.register_buffer("_shuffle", maps.shuffle, persistent=False)

    # ------------------------------------------------------------------ fixed maps
    def projection_params(self, group: int) -> dict[str, Tensor] | Tensor | None:
        """The fixed projection of a group as it lives on the adapter's device (None without projection)."""
        if not self.plan.groups[group].projected:
            return None
        if self.config.projection == "gaussian":
            return getattr(self, f"_gauss{group}")
        return {key: getattr(self, f"_ff{group}_{key}") for key in delta.FASTFOOD_KEYS}

    def fixed_maps(self) -> delta.FixedMaps:
        """Every fixed map as it lives on the adapter's device."""
        projections = tuple(self.projection_params(g) for g in range(len(self.groups)))
        if not self.config.shuffle:
            return delta.FixedMaps(projections, None, None)
        return delta.FixedMaps(projections, self._unshuffle, self._shuffle)

    def fixed_maps_fingerprint(self) -> str:
        """Checksum of the regenerated fixed maps; equal across runs when the generator is unchanged."""
        return delta.fixed_maps_fingerprint(self.fixed_maps())

    # ------------------------------------------------------------------ ΔW
    def _device(self) -> torch.device:
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def factor_tensors(self) -> list[list[dict[str, Tensor]]]:
        """[group][piece] name -> tensor: the factors as `functional.delta.delta_weights` takes them."""
        return [group.factor_tensors() for group in self.groups]

    def group_vector(self, group: int) -> Tensor:
        """d_g: the D_g update entries produced by one group (before un-shuffling, unscaled), in float32."""
        with delta.full_precision(self._device()):
            return delta.group_vector(self.plan.groups[group], self.groups[group].factor_tensors(),
                                      self.projection_params(group))

    def direct_factors(self, target: int) -> tuple[Tensor, Tensor] | None:
        """(left, right) for a target whose layer may apply x right left^T itself, else None."""
        group = self._direct.get(target)
        if group is None:
            return None
        piece = self.groups[group].pieces[0]
        return piece.left, piece.right

    @property
    def direct_targets(self) -> frozenset[int]:
        return frozenset(self._direct)

    def delta_weights(self, include_direct: bool = False, scaling: float | None = None) -> dict[int, Tensor]:
        """target index -> ΔW (rows x cols; scaling · ΔW when given) in float32 whatever the autocast, in one pass.

        Targets on the direct x·R·Lᵀ path are left out unless `include_direct` (their layers never need ΔW).
        """
        targets = [t for t in range(len(self.plan.target_shapes)) if include_direct or t not in self._direct]
        with delta.full_precision(self._device()):
            return delta.assemble(self.plan, self.fixed_maps(), self.group_vector, targets, scaling)
