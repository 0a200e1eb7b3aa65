"""`SuperLoRAAdapter`: the module that owns every group's trainable factors and produces all ΔW at once.

Pipeline per forward (docs/method.md): build each group tensor from its factors -> flatten -> keep the first
P_g (or D_g) entries -> fixed projection to D_g entries -> concatenate -> un-shuffle -> split into the ΔW of
each target. Groups that are exactly one target in LoRA form are not materialised here: their layer applies
x A B^T directly (see `direct_factors`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from superlora.config import SuperLoRAConfig
from superlora.errors import ConfigError
from superlora.functional import projection as proj
from superlora.functional.factors import group_tensor, lora_matrix
from superlora.functional.layout import GroupPlan, Layout, PiecePlan


class PieceFactors(nn.Module):
    """The trainable tensors of one Kronecker piece, registered under the names the layout gives them."""

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
        return {name: _at_least_float32(p) for name, p in self.named_parameters(recurse=False)}


def _at_least_float32(tensor: Tensor) -> Tensor:
    if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32:
        return tensor.float()
    return tensor


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Run ΔW construction outside autocast: every contraction then sees float32 operands.

    Autocast casts only some ops (matmul, and so the matmul inside tensordot) to half precision, which mixes
    dtypes in chained products and lets the unnormalised Hadamard transforms overflow fp16. ΔW is small next to
    the model's activations, so building it in float32 costs little; it is cast where it meets the activations.
    """
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


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
    def __init__(self, plan: GroupPlan, gen: torch.Generator, dtype: torch.dtype) -> None:
        super().__init__()
        self.plan = plan
        self.pieces = nn.ModuleList(PieceFactors(piece, gen, dtype) for piece in plan.pieces)

    def tensor(self) -> Tensor:
        return group_tensor(self.plan.pieces, [piece.named_tensors() for piece in self.pieces])


class SuperLoRAAdapter(nn.Module):
    """All trainable factors of one adapter plus the fixed maps (regenerated from the seed, not saved)."""

    def __init__(self, layout: Layout, config: SuperLoRAConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.layout = layout
        self.config = config
        gen = proj.generator(config.seed, "init")
        self.groups = nn.ModuleList(GroupFactors(plan, gen, dtype) for plan in layout.groups)
        self._direct = layout.direct_groups()
        for g, plan in enumerate(layout.groups):
            projection = self._make_projection(plan)
            if isinstance(projection, dict):
                for key, value in projection.items():
                    self.register_buffer(f"_ff{g}_{key}", value, persistent=False)
            elif isinstance(projection, Tensor):
                self.register_buffer(f"_gauss{g}", projection, persistent=False)
        if config.shuffle:
            perm = proj.shuffle_permutation(layout.total, config.seed)
            # delta = d[inverse] is a gather; its gradient is the gather by the permutation itself.
            self.register_buffer("_unshuffle", proj.inverse_permutation(perm).int(), persistent=False)
            self.register_buffer("_shuffle", perm.int(), persistent=False)
        self._spans = [layout.target_spans(t) for t in range(len(layout.target_shapes))]
        # Each group's output cut at target boundaries: one split per group instead of one slice per target,
        # since every slice's backward would allocate a zero gradient the size of the whole group.
        self._cuts: list[list[int]] = [[] for _ in layout.groups]
        for t, spans in enumerate(self._spans):
            for g, lo, hi in spans:
                self._cuts[g].append(hi - lo)

    def _make_projection(self, plan: GroupPlan) -> dict[str, Tensor] | Tensor | None:
        if not plan.projected:
            return None
        seed = proj.derive_seed(self.config.seed, "projection", plan.index)
        if self.config.projection == "gaussian":
            if plan.size * plan.input_size > proj.MAX_GAUSSIAN_ENTRIES:
                raise ConfigError(
                    f"projection='gaussian': group {plan.index} would need a dense {plan.size} x {plan.input_size} "
                    f"matrix ({plan.size * plan.input_size * 4 / 2**30:.1f} GiB); use projection='fastfood'"
                )
            return proj.gaussian_matrix(plan.input_size, plan.size, seed)
        return proj.fastfood_params(plan.input_size, plan.size, seed)

    # ------------------------------------------------------------------ fixed maps
    def projection_params(self, group: int) -> dict[str, Tensor] | Tensor | None:
        """The fixed projection of a group as it lives on the adapter's device (None without projection)."""
        plan = self.layout.groups[group]
        if not plan.projected:
            return None
        if self.config.projection == "gaussian":
            return getattr(self, f"_gauss{group}")
        return {key: getattr(self, f"_ff{group}_{key}") for key in ("signs", "perm", "unperm", "gauss", "scale")}

    def fingerprint(self) -> str:
        """Checksum of the regenerated fixed maps; equal across runs when the generator is unchanged."""
        parts: dict[str, Tensor] = {}
        for g in range(len(self.groups)):
            params = self.projection_params(g)
            if isinstance(params, dict):
                parts.update({f"{g}.{k}": v for k, v in params.items()})
            elif params is not None:
                parts[str(g)] = params
        if self.config.shuffle:
            parts["shuffle"] = self._unshuffle
        return proj.projection_fingerprint(parts) if parts else ""

    # ------------------------------------------------------------------ forward pieces
    def _device(self) -> torch.device:
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def group_vector(self, group: int) -> Tensor:
        """d_g: the D_g update entries produced by one group (before un-shuffling, unscaled), in float32."""
        with full_precision(self._device()):
            return self._group_vector(group)

    def _group_vector(self, group: int) -> Tensor:
        plan = self.layout.groups[group]
        tensor = self.groups[group].tensor()
        if plan.fold == "native" and plan.native_count > 1:
            # m x (n * count) holds the targets side by side; emit them one after another.
            rows, cols = plan.shape
            tensor = tensor.reshape(rows, plan.native_count, cols // plan.native_count).transpose(0, 1)
        flat = tensor.reshape(-1)[: plan.input_size]
        projection = self.projection_params(group)
        if projection is None:
            return flat
        if isinstance(projection, Tensor):
            return projection @ flat
        return proj.fastfood(flat, projection, plan.size)

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

    def delta_weights(self, include_direct: bool = False) -> dict[int, Tensor]:
        """target index -> unscaled ΔW (rows x cols) in float32 whatever the autocast, in one pass over the groups."""
        with full_precision(self._device()):
            return self._delta_weights(include_direct)

    def _delta_weights(self, include_direct: bool) -> dict[int, Tensor]:
        wanted = [t for t in range(len(self.layout.target_shapes)) if include_direct or t not in self._direct]
        result: dict[int, Tensor] = {}
        if include_direct:
            for t in self._direct:
                left, right = self.direct_factors(t)  # type: ignore[misc]
                result[t] = lora_matrix(_at_least_float32(left), _at_least_float32(right))
            wanted = [t for t in wanted if t not in self._direct]
        if not wanted:
            return result
        shapes = self.layout.target_shapes
        if self.config.shuffle:
            vector = torch.cat([self.group_vector(g) for g in range(len(self.groups))])
            delta = proj.permute(vector, self._unshuffle, self._shuffle)
            pieces = delta.split([rows * cols for rows, cols in shapes])
            for t in wanted:
                result[t] = pieces[t].view(shapes[t])
            return result
        # Every target's spans, in order, from the groups it draws on (targets may straddle contiguous groups).
        needed = sorted({g for t in wanted for g, _, _ in self._spans[t]})
        chunks = {g: list(self.group_vector(g).split(self._cuts[g])) for g in needed}
        position = {g: 0 for g in needed}
        for t in range(len(shapes)):
            parts = []
            for g, _, _ in self._spans[t]:
                if g in chunks:
                    parts.append(chunks[g][position[g]])
                    position[g] += 1
            if t in wanted:
                flat = parts[0] if len(parts) == 1 else torch.cat(parts)
                result[t] = flat.view(shapes[t])
        return result
