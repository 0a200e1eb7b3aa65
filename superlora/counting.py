"""`count_parameters`: the exact trainable-parameter count of an adapter from shapes alone.

It resolves the targets and plans the adapter (integers only), so it works on a `meta`-device model and is fast
enough to run on every slider move in the app. The real module builds its parameters from the same plan, and
the tests check that the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from superlora.config import SuperLoRAConfig, as_config
from superlora.functional.plan import AdapterPlan, plan_adapter
from superlora.targets import Target, resolve_targets, resolve_trainable

BYTES_PER_PARAMETER = 4  # adapters are stored in float32


@dataclass(frozen=True)
class GroupCount:
    index: int
    targets: tuple[str, ...]
    size: int  # D_g, update entries the group produces
    input_size: int  # P_g, entries taken from the folded tensor
    shape: tuple[int, ...]  # folded tensor shape
    pieces: tuple[str, ...]  # e.g. ("full 16x16", "lora 48x48 r=4")
    parameters: int


def default_trainable(model: nn.Module) -> tuple[str, ...]:
    """The modules kept trainable when none are named: the model's classifier, else nothing.

    timm models name theirs through `get_classifier()` (`head`, `fc`, `classifier`, ...); other models count
    when they have a top-level `head`. A classifier without parameters (timm's Identity when num_classes=0)
    gives nothing.
    """
    classifier = None
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            classifier = get_classifier()
        except (AttributeError, TypeError, NotImplementedError):
            classifier = None
    if not isinstance(classifier, nn.Module):
        classifier = getattr(model, "head", None)
    if not isinstance(classifier, nn.Module) or not any(True for _ in classifier.parameters()):
        return ()
    for name, module in model.named_modules():
        if name and module is classifier:
            return (name,)
    return ()


@dataclass(frozen=True)
class ParameterCount:
    adapter: int  # adapter factors only (what the paper reports)
    trainable_module_parameters: int  # parameters of the modules trained in full, e.g. the classifier head
    base_model: int  # all parameters of the base model
    update_size: int  # D, entries of all ΔW together
    lora_r1: int  # LoRA with rank 1 on the same targets, for comparison
    groups: tuple[GroupCount, ...]
    targets: tuple[Target, ...]

    def __int__(self) -> int:
        """int(count) is the adapter's parameter count (what the paper reports); see the fields for the rest."""
        return self.adapter


    @property
    def total_trainable(self) -> int:
        return self.adapter + self.trainable_module_parameters

    @property
    def adapter_bytes(self) -> int:
        return self.adapter * BYTES_PER_PARAMETER

    @property
    def percent_of_model(self) -> float:
        return 100.0 * self.total_trainable / max(1, self.base_model)

    @property
    def factor_vs_lora_r1(self) -> float:
        """How many times fewer adapter parameters than LoRA r=1 on the same targets (>1 means fewer)."""
        return self.lora_r1 / max(1, self.adapter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "trainable_modules": self.trainable_module_parameters,  # key kept: the studio's /count JSON
            "total_trainable": self.total_trainable,
            "base_model": self.base_model,
            "percent_of_model": self.percent_of_model,
            "update_size": self.update_size,
            "lora_r1": self.lora_r1,
            "factor_vs_lora_r1": self.factor_vs_lora_r1,
            "adapter_bytes": self.adapter_bytes,
            "groups": [g.__dict__ for g in self.groups],
        }


def _describe_piece(piece: Any) -> str:
    sides = "x".join(map(str, piece.shape))
    if piece.factoring == "full":
        return f"full {sides}"
    ranks = piece.ranks[0] if piece.term == "lora" else "x".join(map(str, piece.ranks))
    return f"{piece.factoring} {sides} r={ranks}"


def count_from_plan(plan: AdapterPlan, targets: Sequence[Target]) -> tuple[GroupCount, ...]:
    """One `GroupCount` per group of `plan`, naming the targets each group covers."""
    names = [t.name for t in targets]
    return tuple(
        GroupCount(
            index=g.index,
            targets=tuple(names[t] for t in g.targets),
            size=g.size,
            input_size=g.input_size,
            shape=g.shape,
            pieces=tuple(_describe_piece(p) for p in g.pieces),
            parameters=g.num_parameters,
        )
        for g in plan.groups
    )


def count_parameters(
    model: nn.Module, config: SuperLoRAConfig | dict[str, Any] | str, trainable: Sequence[str] | None = None
) -> ParameterCount:
    """Exact adapter parameter count for `config` on `model` (any device, `meta` included), with a breakdown.

    `int(result)` is the adapter count; `trainable` defaults to the model's classifier (`default_trainable`).
    """
    config = as_config(config)
    targets = resolve_targets(model, config.targets)
    plan = plan_adapter([t.shape for t in targets], config)
    module_names = resolve_trainable(model, default_trainable(model) if trainable is None else trainable)
    head = sum(p.numel() for name in module_names for p in model.get_submodule(name).parameters())
    return ParameterCount(
        adapter=plan.num_parameters,
        trainable_module_parameters=head,
        base_model=sum(p.numel() for p in model.parameters()),
        update_size=plan.total,
        lora_r1=sum(rows + cols for rows, cols in plan.target_shapes),
        groups=count_from_plan(plan, targets),
        targets=tuple(targets),
    )
