"""The plan of a SuperLoRA adapter (`AdapterPlan`), computed from target shapes and a config with integers only.

It answers: how long is the update vector (D), which span of it each group produces, what tensor shape each
group is folded to, how each group tensor is split into Kronecker pieces and factored, and how many trainable
parameters that takes. Nothing here allocates a tensor, so parameter counts for huge models are instant and the
real module (which builds its parameters from the same plan) can never disagree with the counter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from fractions import Fraction

from superlora.config import PER_TARGET, SuperLoRAConfig
from superlora.errors import ConfigError

Shape = tuple[int, ...]


def ceil_root(value: int, order: int) -> int:
    """The smallest integer n with n ** order >= value (exact; float roots are off by one, e.g. 64 ** (1/3))."""
    if value <= 1:
        return 1
    n = max(1, int(round(value ** (1.0 / order))))
    while n**order < value:
        n += 1
    while n > 1 and (n - 1) ** order >= value:
        n -= 1
    return n


def projected_size(ratio: float, size: int) -> int:
    """P = ceil(ratio * size), computed on the decimal value of ratio so 0.1 * 10 gives 1, not 2."""
    return max(1, math.ceil(Fraction(repr(ratio)) * size))


def balanced_split(side: int, pieces: int) -> Shape:
    """Split a side into `pieces` integer factors as close to equal as possible, smallest first.

    For two pieces this is the largest divisor not above sqrt(side) and its cofactor, which is the rule PEFT's
    and LyCORIS's LoKr use (so the LoKr preset gets their piece shapes).
    """
    if pieces == 1:
        return (side,)
    target = side ** (1.0 / pieces)
    first = 1
    for candidate in range(int(target + 1e-9), 0, -1):
        if side % candidate == 0:
            first = candidate
            break
    return (first, *balanced_split(side // first, pieces - 1))


@dataclass(frozen=True)
class PiecePlan:
    """One Kronecker piece of a group tensor and how it is factored."""

    shape: Shape
    factoring: str  # "full" | "lora" | "tucker" | "hadamard"
    ranks: Shape  # per mode; for "lora" both entries are r; uncompressed Tucker modes carry their side
    compressed: tuple[bool, ...]  # Tucker: which modes have a factor matrix
    holds_zero: bool  # this piece is initialised so that it (and so the whole update) is zero

    @property
    def term(self) -> str:
        """The factoring of each Hadamard term (or of the piece itself)."""
        if self.factoring == "hadamard":
            return "lora" if len(self.shape) == 2 else "tucker"
        return self.factoring

    def _term_shapes(self, prefix: str) -> dict[str, Shape]:
        if self.term == "full":
            return {f"{prefix}full": self.shape}
        if self.term == "lora":
            return {f"{prefix}left": (self.shape[0], self.ranks[0]), f"{prefix}right": (self.shape[1], self.ranks[1])}
        shapes = {f"{prefix}core": self.ranks}
        for mode, (side, rank, has_factor) in enumerate(zip(self.shape, self.ranks, self.compressed)):
            if has_factor:
                shapes[f"{prefix}factor{mode}"] = (side, rank)
        return shapes

    def parameter_shapes(self) -> dict[str, Shape]:
        """Name -> shape of every trainable tensor of this piece, in a fixed order."""
        if self.factoring == "hadamard":
            return {**self._term_shapes("a_"), **self._term_shapes("b_")}
        return self._term_shapes("")

    def zero_parameter(self) -> str | None:
        """The one tensor initialised to zero (None when the piece is not the zero piece)."""
        if not self.holds_zero:
            return None
        prefix = "a_" if self.factoring == "hadamard" else ""
        return prefix + {"full": "full", "lora": "left", "tucker": "core"}[self.term]

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.parameter_shapes().values())

    @property
    def rank_terms(self) -> int:
        """How many rank-one products each entry of this piece sums: 1 for a full piece, r for A B^T, the product
        of the compressed modes' ranks for Tucker (an uncompressed mode indexes, it does not sum), and the square
        of its term's for a Hadamard piece (a product of two such sums)."""
        if self.term == "full":
            terms = 1
        elif self.term == "lora":
            terms = self.ranks[0]
        else:
            terms = math.prod(rank for rank, kept in zip(self.ranks, self.compressed) if kept)
        return terms * terms if self.factoring == "hadamard" else terms


@dataclass(frozen=True)
class GroupPlan:
    """One group: a span of the update vector produced by one factored tensor."""

    index: int
    start: int  # span [start, stop) in the concatenated group outputs (before un-shuffling)
    stop: int
    targets: tuple[int, ...]  # targets this span covers (when not shuffled)
    fold: str  # "native" | "stack" | "tensor"
    shape: Shape  # the folded group tensor
    native_count: int  # fold "native": number of targets placed side by side
    input_size: int  # entries of the flattened group tensor that are used (P_g, or D_g without projection)
    projected: bool
    pieces: tuple[PiecePlan, ...]

    @property
    def size(self) -> int:
        """D_g, the number of update entries this group produces."""
        return self.stop - self.start

    @property
    def num_parameters(self) -> int:
        return sum(piece.num_parameters for piece in self.pieces)

    @property
    def rank_terms(self) -> int:
        """Rank-one products per entry of the group tensor: a Kronecker product multiplies its pieces' counts."""
        return math.prod(piece.rank_terms for piece in self.pieces)

    @property
    def is_direct_lora(self) -> bool:
        """One whole target as A B^T with nothing in between: the layer may apply x A B^T without building ΔW."""
        return (
            self.fold == "native"
            and self.native_count == 1
            and not self.projected
            and len(self.pieces) == 1
            and self.pieces[0].factoring == "lora"
        )


@dataclass(frozen=True)
class AdapterPlan:
    """Where every update entry comes from. Target order is the order given (model order)."""

    target_shapes: tuple[tuple[int, int], ...]
    groups: tuple[GroupPlan, ...]
    shuffle: bool

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        offsets, total = [], 0
        for rows, cols in self.target_shapes:
            offsets.append(total)
            total += rows * cols
        return tuple(offsets)

    @property
    def total(self) -> int:
        """D, the length of the whole update vector."""
        return sum(rows * cols for rows, cols in self.target_shapes)

    @property
    def num_parameters(self) -> int:
        return sum(group.num_parameters for group in self.groups)

    @property
    def rank_terms(self) -> int:
        """T of `SuperLoRAConfig.update_scale`: the largest count of any group (1 without groups)."""
        return max((group.rank_terms for group in self.groups), default=1)

    def direct_groups(self) -> dict[int, int]:
        """target index -> group index for targets that take the factored x A B^T path."""
        if self.shuffle:
            return {}
        return {group.targets[0]: group.index for group in self.groups if group.is_direct_lora}

    def target_spans(self, target: int) -> list[tuple[int, int, int]]:
        """(group index, start, stop) spans inside group outputs that make up this target, in order."""
        begin = self.offsets[target]
        end = begin + self.target_shapes[target][0] * self.target_shapes[target][1]
        spans = []
        for group in self.groups:
            lo, hi = max(begin, group.start), min(end, group.stop)
            if lo < hi:
                spans.append((group.index, lo - group.start, hi - group.start))
        return spans

    @cached_property
    def spans(self) -> tuple[tuple[tuple[int, int, int], ...], ...]:
        """`target_spans` of every target, in target order."""
        return tuple(tuple(self.target_spans(t)) for t in range(len(self.target_shapes)))

    @cached_property
    def group_cuts(self) -> tuple[tuple[int, ...], ...]:
        """Each group's output cut at target boundaries: the lengths of its pieces, in target order."""
        cuts: list[list[int]] = [[] for _ in self.groups]
        for spans in self.spans:
            for g, lo, hi in spans:
                cuts[g].append(hi - lo)
        return tuple(tuple(c) for c in cuts)


def _group_spans(sizes: Sequence[int], config: SuperLoRAConfig) -> list[tuple[int, int, tuple[int, ...]]]:
    """(start, stop, targets) of each group."""
    total = sum(sizes)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    count = len(sizes)
    if config.grouping == "layer":
        groups = count if config.groups == PER_TARGET else config.groups
        if groups > count:
            raise ConfigError(
                f"groups={groups}: grouping='layer' puts whole targets in groups but there are only {count} targets; "
                f"use groups<={count} or grouping='contiguous'"
            )
        base, extra = divmod(count, groups)
        spans, first = [], 0
        for g in range(groups):
            last = first + base + (1 if g < extra else 0)
            spans.append((offsets[first], offsets[first] + sum(sizes[first:last]), tuple(range(first, last))))
            first = last
        return spans
    groups = config.groups
    chunk = math.ceil(total / groups)
    if (groups - 1) * chunk >= total:
        most = max(g for g in range(1, groups) if (g - 1) * math.ceil(total / g) < total)
        raise ConfigError(
            f"groups={groups}: {total} update entries cannot be cut into {groups} non-empty equal chunks; "
            f"use groups<={most}"
        )
    spans = []
    for g in range(groups):
        start, stop = g * chunk, min((g + 1) * chunk, total)
        covered = tuple(t for t in range(count) if offsets[t] < stop and offsets[t] + sizes[t] > start)
        spans.append((start, stop, covered))
    return spans


def _equal_shape(targets: tuple[int, ...], shapes: Sequence[tuple[int, int]], config: SuperLoRAConfig) -> tuple[int, int]:
    distinct = sorted({shapes[t] for t in targets})
    if len(distinct) > 1:
        a, b = distinct[0], distinct[1]
        raise ConfigError(
            f"fold={config.fold!r} needs targets of one shape in each group, but a group mixes {a[0]}x{a[1]} and "
            f"{b[0]}x{b[1]}; use fold='auto', more groups, or targets of one shape"
        )
    return distinct[0]


def _pieces(shape: Shape, piece_shapes: list[Shape], config: SuperLoRAConfig) -> tuple[PiecePlan, ...]:
    pieces = []
    rank = config.reference_rank
    for k, (piece_shape, factoring) in enumerate(zip(piece_shapes, config.piece_factorings)):
        if factoring == "lora" and config.splits > 1 and 2 * rank >= max(piece_shape):
            # LoKr convention (PEFT, LyCORIS): a piece no wider than 2r is kept full, as a factorisation saves nothing.
            factoring = "full"
        if factoring in ("lora",) or (factoring == "hadamard" and len(piece_shape) == 2):
            ranks: Shape = (rank, rank)
            compressed = (True, True)
        else:
            compressed = tuple(m not in config.uncompressed_modes for m in range(len(piece_shape)))
            ranks = tuple(r if c else side for r, c, side in zip(config.mode_ranks, compressed, piece_shape))
        pieces.append(PiecePlan(piece_shape, factoring, ranks, compressed, holds_zero=(k == 0)))
    return tuple(pieces)


def plan_adapter(target_shapes: Sequence[tuple[int, int]], config: SuperLoRAConfig) -> AdapterPlan:
    """Compute the full plan of an adapter for targets of the given (rows, cols) shapes."""
    shapes = tuple((int(r), int(c)) for r, c in target_shapes)
    if not shapes:
        if config.head_only:
            return AdapterPlan(target_shapes=(), groups=(), shuffle=False)  # no adapter: nothing to plan
        raise ConfigError("the adapter has no targets; check the targets field")
    sizes = [r * c for r, c in shapes]
    projected = config.projection != "none"
    order, splits = config.fold_order, config.splits
    groups = []
    for index, (start, stop, covered) in enumerate(_group_spans(sizes, config)):
        size = stop - start
        used = projected_size(config.ratio, size) if projected else size
        native_count = 1
        if config.fold == "native":
            rows, cols = _equal_shape(covered, shapes, config)
            native_count = len(covered)
            fold, shape = "native", (rows, cols * native_count)
        elif config.fold == "stack":
            rows, cols = _equal_shape(covered, shapes, config)
            fold, shape = "stack", (len(covered), rows, cols)
        elif config.fold == "auto":
            fold = "tensor"
            piece_side = ceil_root(used, order * splits)
            shape = (piece_side**splits,) * order if splits > 1 else (ceil_root(used, order),) * order
        else:
            fold, shape = "tensor", tuple(config.fold)
            if math.prod(shape) < used:
                raise ConfigError(
                    f"fold={config.fold!r} holds {math.prod(shape)} entries but group {index} needs {used}; "
                    f"use a larger shape or fold='auto'"
                )
        if config.fold == "auto" and splits > 1:
            piece_shapes = [(ceil_root(used, order * splits),) * order] * splits
        else:
            per_mode = [balanced_split(side, splits) for side in shape]
            piece_shapes = [tuple(parts[k] for parts in per_mode) for k in range(splits)]
        groups.append(
            GroupPlan(
                index=index,
                start=start,
                stop=stop,
                targets=covered,
                fold=fold,
                shape=shape,
                native_count=native_count,
                input_size=used,
                projected=projected,
                pieces=_pieces(shape, piece_shapes, config),
            )
        )
    return AdapterPlan(target_shapes=shapes, groups=tuple(groups), shuffle=config.shuffle)
