"""`SuperLoRAConfig`: every knob of the method in one validated, JSON-serialisable dataclass, and the presets.

A config describes the adapter independently of any model; whether it fits a model (targets that exist, groups
not exceeding the number of targets, equal shapes for a stacked fold) is checked when it is applied to one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Union

from superlora.defaults import DEFAULT_RANK_SCALING
from superlora.errors import ConfigError

PER_TARGET = "per-target"
# The method with no adapter: only the classifier head trains (the baseline every adapter must beat). Its config has
# no targets; an empty target list is valid only under this name, so a forgotten list never trains nothing silently.
HEAD_ONLY = "head-only"
GROUPINGS = ("contiguous", "layer")
FOLDS = ("native", "stack", "auto")
FACTORINGS = ("lora", "tucker", "full", "hadamard")
PROJECTIONS = ("none", "fastfood", "gaussian")
# How the update's scale follows the number T of rank-one terms each update entry sums (`AdapterPlan.rank_terms`)
# when alpha is not given: "none" s = 1, "sqrt" s = 1/sqrt(T), "linear" s = 1/T (the default: DEFAULT_RANK_SCALING).
# alpha, when given, always means alpha / r, as in PEFT, whatever the rank scaling. A config dict or file without the
# field means "none": every config written before the field existed trained with scale 1, and `to_dict` leaves "none"
# out, so those files, and the hashes that name them, keep their meaning.
RANK_SCALINGS = ("none", "sqrt", "linear")
RANK_SCALING_TEXT = {"none": "scale 1", "sqrt": "scale 1/√T, T the rank-one terms each update entry sums",
                     "linear": "scale 1/T, T the rank-one terms each update entry sums"}

Rank = Union[int, tuple[int, ...]]
Fold = Union[str, tuple[int, ...]]


@dataclass(frozen=True)
class SuperLoRAConfig:
    """All settings of a SuperLoRA adapter (see docs/method.md for what each one does).

    targets: module names or glob patterns of `nn.Linear` layers; `q`, `k`, `v` select the row blocks of fused
        `*qkv` layers; a name matching a container module adapts every Linear inside it.
    rank: r, or one rank per mode of the folded tensor (Tucker).
    alpha: scale numerator; the update is multiplied by alpha / r, as in PEFT (alpha=None: `rank_scaling` sets it).
    rank_scaling: with alpha=None, how the scale follows the T rank-one terms each update entry sums: "none"
        (1), "sqrt" (1/sqrt(T)) or "linear" (1/T); see `update_scale`. Ignored when alpha is given. Missing from a
        dict or file, it means "none" (see RANK_SCALINGS).
    groups: G, the number of groups, or "per-target" (one group per target weight).
    grouping: "contiguous" (equal chunks of the update vector) or "layer" (boundaries on target boundaries).
    fold: "native" (a group of equal-shape targets is the matrix m x (n*count)), "stack" (count x m x n),
        "auto" (order-M tensor with equal sides), or an explicit shape applied to every group.
    order: M, the order of the folded tensor for fold="auto".
    splits: K, the number of Kronecker pieces.
    factoring: how each piece is built: "lora" (A B^T, order 2), "tucker", "full", "hadamard" (product of two
        low-rank terms); one name for all pieces or one per piece.
    uncompressed_modes: Tucker modes left without a factor (identity), e.g. (0,) for LoTR's layer mode.
    projection: "none", "fastfood" or "gaussian": fixed random map from ceil(ratio * D_g) entries to D_g.
    ratio: rho in (0, 1]; below 1 it needs a projection.
    shuffle: apply a fixed random permutation to the whole update vector.
    seed: seeds the shuffle, the projection and the factor initialisation.
    """

    targets: tuple[str, ...] = ("q", "v")
    rank: Rank = 1
    alpha: float | None = None
    rank_scaling: str = DEFAULT_RANK_SCALING
    groups: int | str = 1
    grouping: str = "contiguous"
    fold: Fold = "auto"
    order: int = 2
    splits: int = 1
    factoring: str | tuple[str, ...] = "lora"
    uncompressed_modes: tuple[int, ...] = ()
    projection: str = "none"
    ratio: float = 1.0
    shuffle: bool = False
    seed: int = 0
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Normalise list-like inputs (from JSON or keyword arguments) to tuples so configs hash and compare.
        for name in ("targets", "uncompressed_modes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        for name in ("rank", "fold", "factoring"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.ratio, int) and not isinstance(self.ratio, bool):
            object.__setattr__(self, "ratio", float(self.ratio))
        _validate(self)

    # ------------------------------------------------------------------ derived values
    @property
    def head_only(self) -> bool:
        """No adapter at all: only the trainable modules (the classifier head) train."""
        return not self.targets

    @property
    def fold_order(self) -> int:
        """The order M of each group's folded tensor."""
        if isinstance(self.fold, tuple):
            return len(self.fold)
        return {"native": 2, "stack": 3}.get(self.fold, self.order)

    @property
    def piece_factorings(self) -> tuple[str, ...]:
        """One factoring name per Kronecker piece."""
        if isinstance(self.factoring, str):
            return (self.factoring,) * self.splits
        return self.factoring

    @property
    def mode_ranks(self) -> tuple[int, ...]:
        """One rank per mode of the folded tensor."""
        if isinstance(self.rank, tuple):
            return self.rank
        return (self.rank,) * self.fold_order

    @property
    def reference_rank(self) -> int:
        """The r in the alpha / r scale: the rank, or the largest per-mode rank."""
        return self.rank if isinstance(self.rank, int) else max(self.rank)

    @property
    def scaling(self) -> float:
        """alpha / r, or 1 without alpha: the factor s that multiplies every update when alpha is given or
        rank_scaling is "none" (`update_scale` gives it in every case)."""
        return 1.0 if self.alpha is None else self.alpha / self.reference_rank

    def update_scale(self, rank_terms: int) -> float:
        """The factor s that multiplies every update, given T = `rank_terms` (`AdapterPlan.rank_terms`): alpha / r
        when alpha is given, else 1, 1/sqrt(T) or 1/T by `rank_scaling`."""
        if self.alpha is not None or self.rank_scaling == "none":
            return self.scaling
        return rank_terms ** -0.5 if self.rank_scaling == "sqrt" else 1.0 / rank_terms

    # ------------------------------------------------------------------ (de)serialisation
    def replace(self, **changes: Any) -> SuperLoRAConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        if data["rank_scaling"] == "none":  # saved configs, and the hashes that name them, stay as they were
            del data["rank_scaling"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuperLoRAConfig:
        """The config of `to_dict`'s output; a missing field takes its default, except rank_scaling, which means
        "none" (the files written before the field existed, and `to_dict`'s own for "none"; see RANK_SCALINGS)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {', '.join(unknown)}; valid fields are {', '.join(sorted(known))}"
            )
        return cls(**{"rank_scaling": "none", **data})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> SuperLoRAConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config is not valid JSON ({err}); save one with SuperLoRAConfig.to_json()") from err
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object of field names to values")
        return cls.from_dict(data)


def _fail(field_name: str, value: Any, problem: str, alternative: str) -> ConfigError:
    return ConfigError(f"{field_name}={value!r}: {problem}; {alternative}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_head_only(c: SuperLoRAConfig) -> None:
    """A head-only config adapts nothing, so every adapter field must keep its default (the seed aside; the rank
    scaling scales nothing, so any is accepted)."""
    if c.targets:
        raise _fail("targets", c.targets, f"the {HEAD_ONLY!r} method adapts no weights",
                    "leave targets out, or choose an adapter preset such as 'lora'")
    defaults = SuperLoRAConfig()
    for name in (f.name for f in dataclasses.fields(c)):
        if name not in ("targets", "seed", "name", "rank_scaling") and getattr(c, name) != getattr(defaults, name):
            raise _fail(name, getattr(c, name), f"the {HEAD_ONLY!r} method has no adapter for it to set",
                        "leave it out, or choose an adapter preset such as 'lora'")


def _validate_scale(c: SuperLoRAConfig) -> None:
    """alpha and rank_scaling: each valid (when both are given, alpha sets the scale)."""
    if c.alpha is not None and (not isinstance(c.alpha, (int, float)) or isinstance(c.alpha, bool) or c.alpha <= 0):
        raise _fail("alpha", c.alpha, "must be a positive number or None (rank_scaling sets the scale)",
                    "e.g. alpha=8")
    if c.rank_scaling not in RANK_SCALINGS:
        raise _fail("rank_scaling", c.rank_scaling, "is not a rank scaling", f"use one of {RANK_SCALINGS}")


def _validate(c: SuperLoRAConfig) -> None:
    """Raise ConfigError naming the field, the value and a valid alternative for the first problem found."""
    if c.name == HEAD_ONLY:
        _validate_head_only(c)
        return
    if not c.targets or not all(isinstance(t, str) and t.strip() for t in c.targets):
        raise _fail("targets", c.targets, "needs at least one module name or pattern",
                    f'e.g. targets=("q", "v"), or preset("{HEAD_ONLY}") to train the classifier head alone')
    if len(set(c.targets)) != len(c.targets):
        raise _fail("targets", c.targets, "lists a target twice", "list each name once")

    ranks = c.rank if isinstance(c.rank, tuple) else (c.rank,)
    if not ranks or not all(_is_int(r) and r >= 1 for r in ranks):
        raise _fail("rank", c.rank, "must be a positive integer (or one per mode)", "e.g. rank=4")
    _validate_scale(c)

    if c.grouping not in GROUPINGS:
        raise _fail("grouping", c.grouping, "is not a grouping mode", f"use one of {GROUPINGS}")
    if c.groups == PER_TARGET:
        if c.grouping != "layer":
            raise _fail("groups", c.groups, "needs grouping='layer'", "set grouping='layer' or give a number")
    elif not _is_int(c.groups) or c.groups < 1:
        raise _fail("groups", c.groups, "must be a positive integer or 'per-target'", "e.g. groups=1")

    if not _is_int(c.order) or c.order < 2:
        raise _fail("order", c.order, "the folded tensor needs order M >= 2", "e.g. order=2 (matrix) or 3")
    if isinstance(c.fold, tuple):
        if len(c.fold) < 2 or not all(_is_int(s) and s >= 1 for s in c.fold):
            raise _fail("fold", c.fold, "an explicit fold needs >= 2 positive sides", "e.g. fold=(64, 64, 64)")
    elif c.fold not in FOLDS:
        raise _fail("fold", c.fold, "is not a fold", f"use one of {FOLDS} or a tuple of sides")
    if c.fold in ("native", "stack"):
        if c.grouping != "layer":
            raise _fail("fold", c.fold, "keeps whole weights, so groups must fall on targets",
                        "set grouping='layer' or use fold='auto'")
        if c.projection != "none" or c.ratio != 1.0:
            raise _fail("fold", c.fold, "keeps the exact weight shape, so it cannot be projected",
                        "use fold='auto' with projection and ratio")
    if isinstance(c.rank, tuple) and len(c.rank) != c.fold_order:
        raise _fail("rank", c.rank, f"gives {len(c.rank)} ranks but the folded tensor has order {c.fold_order}",
                    f"give one rank or {c.fold_order} ranks")

    if not _is_int(c.splits) or c.splits < 1:
        raise _fail("splits", c.splits, "the number of Kronecker pieces must be >= 1", "e.g. splits=1")
    names = c.factoring if isinstance(c.factoring, tuple) else (c.factoring,)
    for name in names:
        if name not in FACTORINGS:
            raise _fail("factoring", c.factoring, f"{name!r} is not a factoring", f"use one of {FACTORINGS}")
    if isinstance(c.factoring, tuple) and len(c.factoring) != c.splits:
        raise _fail("factoring", c.factoring, f"gives {len(c.factoring)} names for {c.splits} Kronecker pieces",
                    f"give one name or {c.splits} names")
    if c.fold_order != 2 and "lora" in names:
        raise _fail("factoring", c.factoring, f"'lora' builds a matrix but the fold has order {c.fold_order}",
                    "use factoring='tucker' for order >= 3 or set order=2")
    if c.uncompressed_modes:
        if "tucker" not in names:
            raise _fail("uncompressed_modes", c.uncompressed_modes, "only applies to Tucker factoring",
                        "set factoring='tucker' or uncompressed_modes=()")
        if not all(_is_int(m) and 0 <= m < c.fold_order for m in c.uncompressed_modes):
            raise _fail("uncompressed_modes", c.uncompressed_modes, f"modes must lie in 0..{c.fold_order - 1}",
                        "e.g. uncompressed_modes=(0,)")
        if len(set(c.uncompressed_modes)) == c.fold_order:
            raise _fail("uncompressed_modes", c.uncompressed_modes, "leaves no mode compressed",
                        "keep at least one mode compressed or use factoring='full'")

    if c.projection not in PROJECTIONS:
        raise _fail("projection", c.projection, "is not a projection", f"use one of {PROJECTIONS}")
    if not isinstance(c.ratio, float) or not 0.0 < c.ratio <= 1.0:
        raise _fail("ratio", c.ratio, "rho must lie in (0, 1]", "e.g. ratio=0.1")
    if c.ratio < 1.0 and c.projection == "none":
        raise _fail("ratio", c.ratio, "a ratio below 1 needs a projection to lift the entries back",
                    "set projection='fastfood' (or ratio=1.0)")
    if not isinstance(c.shuffle, bool):
        raise _fail("shuffle", c.shuffle, "must be True or False", "e.g. shuffle=True")
    if not _is_int(c.seed) or c.seed < 0:
        raise _fail("seed", c.seed, "must be a non-negative integer", "e.g. seed=0")


# ---------------------------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    "lora": dict(groups=PER_TARGET, grouping="layer", fold="native", splits=1, factoring="lora"),
    "loha": dict(groups=PER_TARGET, grouping="layer", fold="native", splits=1, factoring="hadamard"),
    "lokr": dict(groups=PER_TARGET, grouping="layer", fold="native", splits=2, factoring=("full", "lora")),
    "lotr": dict(groups=1, grouping="layer", fold="stack", splits=1, factoring="tucker", uncompressed_modes=(0,)),
    "superlora-2d": dict(groups=1, grouping="contiguous", fold="auto", order=2, splits=1, factoring="lora"),
    "lorta": dict(groups=1, grouping="contiguous", fold="auto", order=3, splits=1, factoring="tucker"),
    "lonkr": dict(groups=1, grouping="contiguous", fold="auto", order=2, splits=2, factoring="lora"),
}
PRESET_DESCRIPTIONS: dict[str, str] = {
    "lora": "LoRA: one low-rank B A per weight",
    "loha": "LoHa: Hadamard product of two low-rank terms per weight",
    "lokr": "LoKr: Kronecker product of a small full matrix and a low-rank matrix per weight",
    "lotr": "LoTR: all weights stacked into one tensor, shared left/right factors (Tucker)",
    "superlora-2d": "SuperLoRA 2D: all updates reshaped into square matrices, one low-rank factor pair per group",
    "lorta": "LoRTA: all updates folded into order-M tensors, Tucker per group",
    "lonkr": "LoNKr: Kronecker product of K small low-rank pieces per group",
    HEAD_ONLY: "Head only: no adapter, only the classifier head trains (the baseline every adapter must beat)",
}
# Every method a user can pick: the adapter presets, then head-only (no adapter, so not in PRESETS, which the
# budget figure and the per-preset tests walk as adapters).
METHODS: tuple[str, ...] = (*PRESETS, HEAD_ONLY)


def preset(name: str, **overrides: Any) -> SuperLoRAConfig:
    """A config for a known method; keyword overrides change any field, e.g. preset("lora", rank=8).

    preset("head-only") is the config without an adapter (no targets; only the seed may be given)."""
    key = name.lower().replace("_", "-")
    if key not in METHODS:
        raise ConfigError(f"preset {name!r} is unknown; choose one of {', '.join(METHODS)}")
    settings = {**PRESETS.get(key, {"targets": ()}), "name": key}
    settings.update(overrides)
    return SuperLoRAConfig(**settings)


def as_config(value: SuperLoRAConfig | dict[str, Any] | str) -> SuperLoRAConfig:
    """Accept a config, a dict of fields, or a preset name."""
    if isinstance(value, SuperLoRAConfig):
        return value
    if isinstance(value, dict):
        return SuperLoRAConfig.from_dict(value)
    if isinstance(value, str):
        return preset(value)
    raise ConfigError(f"expected a SuperLoRAConfig, a dict or a preset name, got {type(value).__name__}")
