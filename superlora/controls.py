"""The adapter and training controls, described once, for the three faces: the studio, the widgets and the CLI.

Each `Control` says what a user sets (name, kind, range, default, label, help) and which `SuperLoRAConfig` field
it feeds. The faces build their components, widgets and flags from `ADAPTER_CONTROLS` and `TRAINING_CONTROLS`,
turn control values into a config with `config_from_values`, set the controls of a preset with `preset_values`,
offer the target names of `target_choices`, and show counts with `format_count`. The rules that used to live in
each face (groups 0 = one group per target, alpha 0 = rank, LoTR's uncompressed mode only with Tucker) live here.

Pure library: no UI toolkit is imported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from superlora.config import FOLDS, GROUPINGS, HEAD_ONLY, METHODS, PER_TARGET, PRESET_DESCRIPTIONS, PROJECTIONS, \
    RANK_SCALING_TEXT, RANK_SCALINGS, SuperLoRAConfig, preset
from superlora.counting import ParameterCount
from superlora.defaults import DEFAULT_BATCH_SIZE, DEFAULT_HEAD_LR, DEFAULT_LR, DEFAULT_RANK_SCALING, DEFAULT_STEPS, \
    LR_CANDIDATES
from superlora.errors import ConfigError
from superlora.targets import target_names

PER_TARGET_GROUPS = 0  # the groups control's value for "one group per target weight"
AUTO_GOOD_CLASS = "auto"  # the good-class value that leaves the pick to the library (ok/good/pass/normal)
DEFAULT_PRESET = "lorta"
KINDS = ("int", "float", "choice", "multi", "bool")

# The target names the studio offers on a timm ViT, and the pattern each stands for (q/k/v are the row blocks of
# the fused qkv layer; "proj" is the attention output, not the patch embedding's convolution).
VIT_TARGETS: dict[str, str] = {"q": "q", "k": "k", "v": "v", "proj": "attn.proj", "mlp": "mlp"}
# Factoring choices by label; LoKr's two pieces are one choice.
FACTORING_CHOICES: dict[str, str | tuple[str, ...]] = {"lora": "lora", "tucker": "tucker", "hadamard": "hadamard",
                                                       "full": "full", "full ⊗ lora": ("full", "lora")}


@dataclass(frozen=True)
class Control:
    """One thing a user sets.

    kind: "int" or "float" (a slider from `minimum` to `maximum` by `step`; a float without `maximum` is a number
        box), "choice" (one of `choices`), "multi" (a subset of `choices`) or "bool".
    label: the control's caption; `short` (default: the label) names it in error messages.
    field: the SuperLoRAConfig field it sets, or None (the preset name and the training controls).
    from_preset: choosing a preset sets this control (see `preset_values`).
    log_scale: a slider that moves in powers of ten where the face has one (the widgets).
    """

    name: str
    kind: str
    label: str
    help: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    field: str | None = None
    from_preset: bool = False
    short: str = ""
    log_scale: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"control {self.name!r}: kind={self.kind!r} is not a kind; use one of {', '.join(KINDS)}")
        if not self.short:
            object.__setattr__(self, "short", self.label)

    @property
    def flag(self) -> str:
        """The command-line flag: the config field (or the name) with dashes, e.g. --batch-size."""
        name = "preset" if self.name == "preset_name" else (self.field or self.name)
        return "--" + name.replace("_", "-")

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this control can hold (its range or its choices)."""
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind in ("int", "float"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                return False
            return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (list, tuple)) and all(item in self.choices for item in value)  # "multi"


ADAPTER_CONTROLS: tuple[Control, ...] = (
    Control("preset_name", "choice", "Method (preset)", "the method to start from; choosing one sets groups, "
            "grouping, fold, order, splits, factoring, projection, ratio and shuffle to its values",
            DEFAULT_PRESET, choices=METHODS),
    Control("rank", "int", "Rank r", "r, the rank of every factor: more rank, more parameters", 4, 1, 64, 1,
            field="rank"),
    Control("alpha", "float", "α (scale numerator; 0 = automatic)", "scale numerator: the update is multiplied "
            f"by α / r, as in PEFT; 0 leaves the scale to the scale rule (default {DEFAULT_RANK_SCALING}: "
            f"{RANK_SCALING_TEXT[DEFAULT_RANK_SCALING]})",
            0.0, 0.0, None, field="alpha", short="α"),
    Control("groups", "int", "Groups G (0 = one per weight)", "G, the number of groups, each with its own "
            "factors; 0 = one group per target weight", 1, 0, 64, 1, field="groups", from_preset=True,
            short="Groups G"),
    Control("grouping", "choice", "Grouping", "contiguous: equal chunks of the update vector; layer: group "
            "boundaries fall on target boundaries", "contiguous", choices=GROUPINGS, field="grouping",
            from_preset=True),
    Control("fold", "choice", "Fold", "native: equal-shape weights side by side as one matrix; stack: weights "
            "stacked into an order-3 tensor; auto: an order-M tensor with equal sides", "auto", choices=FOLDS,
            field="fold", from_preset=True),
    Control("order", "int", "Tensor order M", "M, the order of the folded tensor (fold auto)", 3, 2, 6, 1,
            field="order", from_preset=True),
    Control("splits", "int", "Kronecker splits K", "K, the number of Kronecker pieces per group", 1, 1, 4, 1,
            field="splits", from_preset=True),
    Control("factoring", "choice", "Factoring", "how each piece is built: lora (low-rank pair), tucker, full, "
            "hadamard (product of two low-rank terms), or full ⊗ lora (LoKr's two pieces)", "tucker",
            choices=tuple(FACTORING_CHOICES), field="factoring", from_preset=True),
    Control("projection", "choice", "Projection", "a fixed random map from ρ·D trained entries to the D entries of "
            "a group", "none", choices=PROJECTIONS, field="projection", from_preset=True),
    Control("ratio", "float", "Projection ratio ρ", "ρ in (0, 1], the share of each group's entries that is trained; "
            "below 1 needs a projection", 1.0, 0.001, 1.0, 0.001, field="ratio", from_preset=True, log_scale=True),
    Control("shuffle", "bool", "Shuffle entries across layers", "apply a fixed random permutation to the whole "
            "update vector before grouping", False, field="shuffle", from_preset=True, short="Shuffle"),
    Control("targets", "multi", "Adapt these weights (in every block)", "the weights ΔW is added to: q, k, v (the "
            "row blocks of qkv), proj (the attention output), mlp (both MLP layers)", ("q", "v"),
            choices=tuple(VIT_TARGETS), field="targets", short="Adapt these weights"),
    # Added later, so last (the studio's /train takes it after the training controls: `ADDED_LATER`).
    Control("rank_scaling", "choice", "Scale rule (when α is 0)", "how the update's scale follows its rank while α "
            "is 0: none (scale 1), sqrt (1/√T) or linear (1/T), T the rank-one terms each update entry sums; "
            "sqrt keeps high ranks of LoRA, LoHa and LoTR from overshooting at one learning rate (docs/training.md)",
            DEFAULT_RANK_SCALING,
            choices=RANK_SCALINGS, field="rank_scaling", short="Scale rule"),
)
# Adapter controls added after the studio's /train endpoint was published: /train takes them after the training
# controls, so that a client passing the inputs by position keeps working.
ADDED_LATER = ("rank_scaling",)

TRAINING_CONTROLS: tuple[Control, ...] = (
    Control("steps", "int", "Steps", "optimizer steps of the run", DEFAULT_STEPS, 1, 2000, 1),
    Control("epochs", "int", "Epochs (0 = use steps)", "passes over the training images", 0, 0, 50, 1,
            short="Epochs"),
    Control("lr", "float", "Learning rate (adapter)", "AdamW learning rate of the adapter factors (unused by "
            "head-only)", DEFAULT_LR, 0.0, None, short="Learning rate"),
    Control("batch_size", "int", "Batch size", "images per optimizer step (the global batch)", DEFAULT_BATCH_SIZE,
            1, 128, 1),
    Control("good_class", "choice", "Good (defect-free) class", "the class of defect-free parts: counts missed "
            "defects (defects predicted good) and false alarms (good parts flagged)", AUTO_GOOD_CLASS,
            choices=(AUTO_GOOD_CLASS,)),
    # Added later, so last: the studio's /train inputs before them keep their positions.
    Control("head_lr", "float", "Learning rate (head)", "AdamW learning rate of the classifier head, trained in "
            "full beside the adapter", DEFAULT_HEAD_LR, 0.0, None, short="Head learning rate"),
    Control("pick_lr", "bool", "Pick the adapter learning rate for me (takes about 1.75× as long)",
            f"train the adapter at {', '.join(f'{lr:g}' for lr in LR_CANDIDATES)} for a quarter of the run each, "
            "then the whole run at the lr whose short run reached the lowest validation loss; the adapter learning "
            "rate set by hand is then unused. Worth it away from the default settings (high ranks, projection, "
            "shuffling), where the fixed lr can fall far short; at the defaults it moves results a few points "
            "either way", False, short="Pick the learning rate"),
)

ADAPTER_NAMES = tuple(c.name for c in ADAPTER_CONTROLS)
TRAINING_NAMES = tuple(c.name for c in TRAINING_CONTROLS)
PRESET_CONTROL_NAMES = tuple(c.name for c in ADAPTER_CONTROLS if c.from_preset)
CONTROLS: dict[str, Control] = {c.name: c for c in (*ADAPTER_CONTROLS, *TRAINING_CONTROLS)}
# The control that sets each config field (or training option), so an error message can say where to look; the
# preset sets LoTR's uncompressed modes.
FIELD_LABELS: dict[str, str] = {**{c.field or c.name: c.short for c in (*ADAPTER_CONTROLS, *TRAINING_CONTROLS)
                                   if c.name != "preset_name"},
                                "uncompressed_modes": CONTROLS["preset_name"].short}


def preset_note(preset_name: str) -> str:
    """One line on what a preset is (markdown italics)."""
    return f"*{PRESET_DESCRIPTIONS.get(preset_name, '')}*"


def _check_preset(preset_name: Any) -> str:
    if preset_name not in METHODS:
        raise ConfigError(f"preset {preset_name!r} is unknown; choose one of {', '.join(METHODS)}")
    return preset_name


# ---------------------------------------------------------------------------------------------- values <-> config
def values_from_config(config: SuperLoRAConfig) -> dict[str, Any]:
    """The adapter control values that describe `config` (targets as its patterns, preset_name as its name).

    Raises ConfigError for what no control can show: an explicit fold shape, one rank per mode, a factoring list
    other than LoKr's."""
    if isinstance(config.fold, tuple):
        raise ConfigError(f"fold={config.fold!r}: the controls offer {', '.join(FOLDS)}; use one of them")
    if isinstance(config.rank, tuple):
        raise ConfigError(f"rank={config.rank!r}: the controls set one rank for every mode; give one number")
    factoring = next((label for label, value in FACTORING_CHOICES.items() if value == config.factoring), None)
    if factoring is None:
        raise ConfigError(f"factoring={config.factoring!r}: the controls offer {', '.join(FACTORING_CHOICES)}")
    return {"preset_name": config.name, "rank": config.rank, "alpha": config.alpha or 0.0,
            "groups": PER_TARGET_GROUPS if config.groups == PER_TARGET else config.groups,
            "grouping": config.grouping, "fold": config.fold, "order": config.order, "splits": config.splits,
            "factoring": factoring, "projection": config.projection, "ratio": config.ratio,
            "shuffle": config.shuffle, "targets": list(config.targets), "rank_scaling": config.rank_scaling,
            "seed": config.seed}


def preset_values(preset_name: str) -> dict[str, Any]:
    """The values of the controls a preset sets (PRESET_CONTROL_NAMES), exactly as `preset(preset_name)` has them;
    rank, alpha and targets stay as the user set them."""
    values = values_from_config(preset(_check_preset(preset_name)))
    return {name: values[name] for name in PRESET_CONTROL_NAMES}


def _target_patterns(names: Any, target_names: Mapping[str, str] | None) -> tuple[str, ...]:
    names = [names] if isinstance(names, str) else list(names or [])
    if target_names is None:
        patterns = tuple(names)
    else:
        unknown = [name for name in names if name not in target_names]
        if unknown:
            raise ConfigError(f"targets={unknown}: not a target these controls offer; choose from "
                              f"{', '.join(target_names)}")
        patterns = tuple(target_names[name] for name in names)
    if not patterns:
        offered = list(target_names or ())
        which = f"{', '.join(offered[:-1])} or {offered[-1]}" if len(offered) > 1 else "".join(offered) or "a target"
        raise ConfigError(f"targets=(): tick at least one of {which}")
    return patterns


def _number(name: str, value: Any, convert: type) -> Any:
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}={value!r}: must be a number") from None


def config_from_values(values: Mapping[str, Any], target_names: Mapping[str, str] | None = None
                       ) -> SuperLoRAConfig:
    """The SuperLoRAConfig the control values describe.

    `values` maps control names (ADAPTER_NAMES, plus an optional "seed") to values; a missing one is the preset's,
    other keys are ignored. groups 0 (or "per-target") means one group per target weight; alpha empty or 0 means
    no alpha (rank_scaling sets the scale); a missing rank_scaling is the library default; LoTR's uncompressed mode is kept only while a piece is Tucker. `target_names` maps the target
    names a face offers to patterns (the studio's VIT_TARGETS); None takes the names as patterns. Raises
    ConfigError whose message starts with the field (see FIELD_LABELS). Head-only has no adapter: its config
    ignores every adapter control (the faces show them as not applicable)."""
    preset_name = _check_preset(values.get("preset_name", DEFAULT_PRESET))
    if preset_name == HEAD_ONLY:
        return preset(HEAD_ONLY, seed=_number("seed", values.get("seed") or 0, int))
    base = preset(preset_name)
    given = {**values_from_config(base), **{k: v for k, v in values.items() if v is not None or k == "alpha"}}
    factoring = given["factoring"]
    if factoring not in FACTORING_CHOICES:
        raise ConfigError(f"factoring={factoring!r}: not a factoring; choose one of {', '.join(FACTORING_CHOICES)}")
    pieces = FACTORING_CHOICES[factoring]
    groups = given["groups"] if given["groups"] == PER_TARGET else _number("groups", given["groups"], int)
    changes: dict[str, Any] = dict(
        targets=_target_patterns(given["targets"], target_names),
        rank=_number("rank", given["rank"], int),
        alpha=_number("alpha", given["alpha"], float) if given["alpha"] else None,
        groups=PER_TARGET if groups == PER_TARGET_GROUPS else groups,
        grouping=given["grouping"], fold=given["fold"], order=_number("order", given["order"], int),
        splits=_number("splits", given["splits"], int), factoring=pieces, projection=given["projection"],
        ratio=_number("ratio", given["ratio"], float), shuffle=bool(given["shuffle"]),
        rank_scaling=given["rank_scaling"], seed=_number("seed", given["seed"], int))
    if "tucker" not in (pieces if isinstance(pieces, tuple) else (pieces,)):
        changes["uncompressed_modes"] = ()  # LoTR's identity mode belongs to its Tucker factoring only
    return base.replace(**changes)


# ---------------------------------------------------------------------------------------------- targets
def target_choices(model: nn.Module, exclude: Sequence[str] = ("head",)) -> list[str]:
    """Target names worth offering for `model` (`superlora.targets.target_names`), keeping the modules of
    `exclude` (trained in full, e.g. the classifier head) out of reach."""
    return target_names(model, exclude)


# ---------------------------------------------------------------------------------------------- counts
COUNT_STYLES = ("markdown", "html", "text")
SAME_SIZE_BAND = 0.05  # within 5 % of LoRA r=1 the adapter is "about as many parameters as" LoRA r=1


def lora_r1_comparison(factor: float, style: str = "markdown") -> str:
    """How the adapter compares with LoRA r=1 on the same targets, given `factor` = LoRA r=1 / adapter:
    "about as many parameters as" within 5 %, else "N.N× fewer/more parameters than" (bold in markdown/html)."""
    if abs(factor - 1.0) <= SAME_SIZE_BAND:
        return "about as many parameters as"
    times = factor if factor > 1 else 1 / factor
    number = f"{times:.1f}x" if style == "text" else f"{times:.1f}×"
    if style == "markdown":
        number = f"**{number}**"
    elif style == "html":
        number = f"<b>{number}</b>"
    return f"{number} {'fewer' if factor > 1 else 'more'} parameters than"


def _size_text(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.2f} MiB"


def count_rows(count: ParameterCount) -> list[tuple[str, str]]:
    """(label, value) rows of the count panel, in the order every face shows them."""
    return [
        ("adapter parameters", f"{count.adapter:,}"),
        ("head (trainable)", f"{count.trainable_module_parameters:,}"),
        ("total trainable", f"{count.total_trainable:,}"),
        (f"share of the model ({count.base_model:,})", f"{count.percent_of_model:.3f} %"),
        ("LoRA r=1 on the same targets", f"{count.lora_r1:,}"),
        ("adapter file (float32)", _size_text(count.adapter_bytes)),
    ]


def count_sentence(count: ParameterCount, style: str = "markdown") -> str:
    """The panel's last line: the adapter against LoRA r=1 on the same targets, and the update's size (head-only:
    that only the head trains)."""
    if not count.targets:
        return (f"No adapter: only the head's {count.trainable_module_parameters:,} parameters train, the baseline "
                "every adapter must beat.")
    return (f"The adapter has {lora_r1_comparison(count.factor_vs_lora_r1, style)} LoRA r=1 on the same "
            f"{len(count.targets)} target matrices ({count.update_size:,} update entries, {len(count.groups)} "
            "group(s)).")


def format_count(count: ParameterCount, style: str = "markdown") -> str:
    """The count panel: `count_rows` then `count_sentence`, as a markdown table (the studio), HTML lines (the
    widgets) or aligned plain text (the CLI)."""
    if style not in COUNT_STYLES:
        raise ConfigError(f"style={style!r}: not a count style; choose one of {', '.join(COUNT_STYLES)}")
    rows = count_rows(count)
    sentence = count_sentence(count, style)
    if style == "markdown":
        lines = ["| trainable parameters | |", "|---|---:|", f"| **{rows[0][0]}** | **{rows[0][1]}** |"]
        lines += [f"| {label} | {value} |" for label, value in rows[1:]]
        return "\n".join([*lines, "", sentence])
    if style == "html":
        lines = [f"<b>{rows[0][0]}: {rows[0][1]}</b>", *(f"{label}: {value}" for label, value in rows[1:])]
        return "<br>".join([*lines, sentence])
    label_width = max(len(label) for label, _ in rows)
    value_width = max(len(value) for _, value in rows)
    lines = [f"{label.ljust(label_width)}  {value.rjust(value_width)}" for label, value in rows]
    return "\n".join([*lines, "", sentence])
