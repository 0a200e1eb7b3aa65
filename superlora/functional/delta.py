"""ΔW of every target from the plan, the factor tensors and the fixed maps: plain tensor functions, no modules.

The pipeline of docs/method.md ("Forward: all updates at once"), in one place:
1. each group's tensor from its factors (`factors.group_tensor`);
2. a `native` fold of several targets (m x n·count) is re-read target after target, then flattened row-major and
   cut to its first P_g entries (D_g without projection);
3. the group's fixed projection lifts P_g entries to D_g (`group_vector`);
4. the group outputs are concatenated, un-shuffled, and split into the ΔW of each target (`assemble`).
`delta_weights` runs all four. `SuperLoRAAdapter` calls `group_vector` and `assemble` on its parameters and
buffers, so the module and this function are one path.

Scaling: these ΔW are unscaled unless `scaling` is given (then each is a new tensor, scaling · ΔW). The update
added to a weight is s·ΔW with s = `SuperLoRAConfig.scaling` (α / r). `SuperLoRAModel.delta_weights` passes s
here; the layers and `merge` apply s inside their own products (`add_(ΔW, alpha=s)`, and on the rank-r
intermediate of the direct x·R·Lᵀ path of single-target LoRA groups), so their rounding stays what it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from superlora.errors import ConfigError
from superlora.functional import projection as proj
from superlora.functional.factors import group_tensor
from superlora.functional.plan import AdapterPlan, GroupPlan

# A group's fixed projection: Fastfood's diagonals and permutations, a dense Gaussian matrix, or None (ρ = 1).
Projection = Mapping[str, Tensor] | Tensor | None
# The factor tensors of one group: one name -> tensor mapping per Kronecker piece (names as in
# `PiecePlan.parameter_shapes`).
GroupTensors = Sequence[Mapping[str, Tensor]]
FASTFOOD_KEYS = ("signs", "perm", "unperm", "gauss", "scale")


@dataclass(frozen=True)
class FixedMaps:
    """The maps an adapter never trains, regenerated from its seed: one projection per group and the shuffle."""

    projections: tuple[Projection, ...]  # per group
    unshuffle: Tensor | None  # the inverse permutation (int32): δ = d[unshuffle]; None without shuffle
    shuffle: Tensor | None  # the permutation itself, which gathers the gradient back


def make_fixed_maps(plan: AdapterPlan, projection: str, seed: int) -> FixedMaps:
    """The fixed maps of `plan` for a config's `projection` kind and `seed` (on the CPU)."""
    projections: list[Projection] = []
    for group in plan.groups:
        if not group.projected:
            projections.append(None)
            continue
        group_seed = proj.derive_seed(seed, "projection", group.index)
        if projection == "gaussian":
            entries = group.size * group.input_size
            if entries > proj.MAX_GAUSSIAN_ENTRIES:
                raise ConfigError(
                    f"projection='gaussian': group {group.index} would need a dense {group.size} x "
                    f"{group.input_size} matrix ({entries * 4 / 2**30:.1f} GiB); use projection='fastfood'"
                )
            projections.append(proj.gaussian_matrix(group.input_size, group.size, group_seed))
        else:
            projections.append(proj.fastfood_params(group.input_size, group.size, group_seed))
    if not plan.shuffle:
        return FixedMaps(tuple(projections), None, None)
    perm = proj.shuffle_permutation(plan.total, seed)
    # δ = d[inverse] is a gather; its gradient is the gather by the permutation itself.
    return FixedMaps(tuple(projections), proj.inverse_permutation(perm).int(), perm.int())


def fixed_maps_fingerprint(maps: FixedMaps) -> str:
    """Checksum of the fixed maps, stored with a saved adapter ("" when there are none)."""
    parts: dict[str, Tensor] = {}
    for g, params in enumerate(maps.projections):
        if isinstance(params, Mapping):
            parts.update({f"{g}.{key}": value for key, value in params.items()})
        elif params is not None:
            parts[str(g)] = params
    if maps.unshuffle is not None:
        parts["shuffle"] = maps.unshuffle
    return proj.projection_fingerprint(parts) if parts else ""


def at_least_float32(tensor: Tensor) -> Tensor:
    """Upcast 16-bit floats to float32 (a model cast to half precision keeps exact ΔW products)."""
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


def group_vector(group: GroupPlan, factors: GroupTensors, projection: Projection) -> Tensor:
    """d_g: the D_g update entries one group produces (before un-shuffling, unscaled)."""
    tensor = group_tensor(group.pieces, factors)
    if group.fold == "native" and group.native_count > 1:
        # m x (n * count) holds the targets side by side; emit them one after another.
        rows, cols = group.shape
        tensor = tensor.reshape(rows, group.native_count, cols // group.native_count).transpose(0, 1)
    flat = tensor.reshape(-1)[: group.input_size]
    if projection is None:
        return flat
    if isinstance(projection, Tensor):
        return projection @ flat
    return proj.fastfood(flat, dict(projection), group.size)


def _scaled(delta: Tensor, scaling: float | None) -> Tensor:
    return delta if scaling is None else delta * scaling


def assemble(plan: AdapterPlan, maps: FixedMaps, vector_of: Callable[[int], Tensor], targets: Iterable[int],
             scaling: float | None = None) -> dict[int, Tensor]:
    """target index -> ΔW (rows x cols; scaling · ΔW when given) for the chosen targets, from the group outputs.

    `vector_of(g)` gives d_g (see `group_vector`); it is called once for each group the chosen targets draw on
    (every group when shuffled), in group order.
    """
    wanted = sorted(set(targets))
    if not wanted:
        return {}
    shapes = plan.target_shapes
    if maps.unshuffle is not None:
        vector = torch.cat([vector_of(g) for g in range(len(plan.groups))])
        delta = proj.permute(vector, maps.unshuffle, maps.shuffle)
        pieces = delta.split([rows * cols for rows, cols in shapes])
        return {t: _scaled(pieces[t].view(shapes[t]), scaling) for t in wanted}
    # One split per group at target boundaries, not one slice per target: every slice's backward would allocate
    # a zero gradient the size of the whole group. A target may straddle contiguous groups.
    needed = sorted({g for t in wanted for g, _, _ in plan.spans[t]})
    chunks = {g: list(vector_of(g).split(plan.group_cuts[g])) for g in needed}
    position = dict.fromkeys(needed, 0)
    chosen = set(wanted)
    result: dict[int, Tensor] = {}
    for t in range(len(shapes)):
        parts = []
        for g, _, _ in plan.spans[t]:
            if g in chunks:
                parts.append(chunks[g][position[g]])
                position[g] += 1
        if t in chosen:
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            result[t] = _scaled(flat.view(shapes[t]), scaling)
    return result


def delta_weights(plan: AdapterPlan, factors: Sequence[GroupTensors], maps: FixedMaps,
                  targets: Iterable[int] | None = None, scaling: float | None = None) -> dict[int, Tensor]:
    """target index -> ΔW (scaling · ΔW when given) for `targets` (default: all), from plain tensors, in float32.

    `factors[g][k]` holds the tensors of piece k of group g; `maps` comes from `make_fixed_maps` with the
    adapter's projection kind and seed. Half-precision factors are upcast and autocast is suspended, as in the
    adapter, so the result equals `SuperLoRAAdapter.delta_weights` for the same values.
    """
    chosen = range(len(plan.target_shapes)) if targets is None else targets
    first = next((t for group in factors for piece in group for t in piece.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    upcast = [[{name: at_least_float32(t) for name, t in piece.items()} for piece in group] for group in factors]
    with full_precision(device):
        return assemble(plan, maps, lambda g: group_vector(plan.groups[g], upcast[g], maps.projections[g]),
                        chosen, scaling)
