"""The ViT study's grid: families x budgets on the bundled default, the two transfer tasks and their fixed split,
and the exact parameter counts of every point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.study.sweep import HEAD_ONLY_FAMILY, Point, pinned
from superlora import SuperLoRAConfig, count_parameters, preset

DEFAULT_MODEL = "superlora-default"
SPLIT_SEED = 0


@dataclass(frozen=True)
class TaskSpec:
    """A transfer task: a bundled sample, its number of classes, and how many images per class go to training
    and validation."""

    sample: str
    classes: int
    train_per_class: int
    val_per_class: int


TASKS = {"inspection": TaskSpec("inspection", 4, 48, 32), "digits": TaskSpec("digits", 10, 100, 50)}
QUICK_TASKS = {"inspection": TaskSpec("inspection", 4, 6, 3), "digits": TaskSpec("digits", 10, 6, 3)}


def study_grid() -> list[Point]:
    """Families x budgets of the study. Budgets were chosen with `count_parameters` on the default architecture
    (12 targets of 192 x 192, D = 442,368, LoRA r=1 = 4,608) so that the curves overlap in parameter count from
    a few dozen to LoRA r=8's 36,864; `plan` prints the counts for the model actually used."""
    points: list[Point] = []

    def add(family: str, method: str, budget: str, config: SuperLoRAConfig, sweep: bool = False) -> None:
        points.append(Point(family, method, budget, pinned(config), sweep))

    for r in (1, 2, 4, 8):
        add("lora", "LoRA", f"r={r}", preset("lora", rank=r), sweep=r == 2)
    for r in (1, 2):
        add("loha", "LoHa", f"r={r}", preset("loha", rank=r), sweep=r == 1)
    for r in (1, 8):
        add("lokr", "LoKr", f"r={r}", preset("lokr", rank=r), sweep=r == 1)
    for r in (2, 8, 32):
        add("lotr", "LoTR", f"r={r}", preset("lotr", rank=r), sweep=r == 8)

    # SuperLoRA 2D. With 12 equal targets, "contiguous" and "layer" grouping coincide whenever G divides 12, so
    # G=8 is where the two differ; G=L=12 without shuffle is LoRA's own parameterisation (the LoRA curve).
    for r in (1, 4, 16):
        add("superlora-2d", "SuperLoRA 2D G=1", f"r={r}", preset("superlora-2d", rank=r), sweep=r == 4)
    add("superlora-2d", "SuperLoRA 2D G=4", "r=1", preset("superlora-2d", groups=4, rank=1))
    add("superlora-2d", "SuperLoRA 2D G=8 contiguous", "r=1", preset("superlora-2d", groups=8, rank=1))
    add("superlora-2d", "SuperLoRA 2D G=8 layer", "r=1", preset("superlora-2d", groups=8, grouping="layer", rank=1))
    add("superlora-2d", "SuperLoRA 2D G=8 layer shuffled", "r=1",
        preset("superlora-2d", groups=8, grouping="layer", rank=1, shuffle=True))

    for r in (2, 8, 16):
        add("lorta", "LoRTA M=3", f"r={r}", preset("lorta", order=3, rank=r), sweep=r == 8)
    add("lorta", "LoRTA M=4", "r=4", preset("lorta", order=4, rank=4))
    for r in (1, 2):
        add("lorta", "LoRTA M=5", f"r={r}", preset("lorta", order=5, rank=r))

    for r in (1, 4):
        add("lonkr", "LoNKr K=2", f"r={r}", preset("lonkr", splits=2, rank=r), sweep=r == 4)
    add("lonkr", "LoNKr K=3", "r=1", preset("lonkr", splits=3, rank=1))

    def fastfood(name: str, ratio: float, **fields: Any) -> SuperLoRAConfig:
        return preset(name, projection="fastfood", ratio=ratio, **fields)

    add("fastfood", "SuperLoRA 2D ρ=0.1", "r=4", fastfood("superlora-2d", 0.1, rank=4), sweep=True)
    add("fastfood", "SuperLoRA 2D ρ=0.01", "r=4", fastfood("superlora-2d", 0.01, rank=4))
    add("fastfood", "LoRTA M=3 ρ=0.1", "r=4", fastfood("lorta", 0.1, order=3, rank=4))
    add("fastfood", "LoRTA M=3 ρ=0.01", "r=4", fastfood("lorta", 0.01, order=3, rank=4))
    add("fastfood", "LoRTA M=5 ρ=0.01", "r=1", fastfood("lorta", 0.01, order=5, rank=1))
    add("fastfood", "LoRTA M=3 G=4 ρ=0.1", "r=4", fastfood("lorta", 0.1, order=3, rank=4, groups=4))
    add("fastfood", "LoRTA M=3 G=4 ρ=0.1 shuffled", "r=4",
        fastfood("lorta", 0.1, order=3, rank=4, groups=4, shuffle=True))
    # Last: the plan reads D and LoRA r=1 from the first point.
    add(HEAD_ONLY_FAMILY, "Head only", "0 params", preset("head-only"))
    return points


def quick_grid() -> list[Point]:
    """Three small configs that exercise the pipeline: the LoRA references and one projected, shuffled LoRTA."""
    return [replace(p, config=pinned(p.config)) for p in [
        Point("lora", "LoRA", "r=1", preset("lora", rank=1), sweep=True),
        Point("lora", "LoRA", "r=8", preset("lora", rank=8)),
        Point("lorta", "LoRTA M=3 ρ=0.1 shuffled", "r=2",
              preset("lorta", order=3, rank=2, projection="fastfood", ratio=0.1, shuffle=True), sweep=True),
    ]]


@dataclass(frozen=True)
class Counted:
    point: Point
    adapter: int
    head: int
    base: int
    update_size: int
    lora_r1: int


def count_grid(points: Sequence[Point], model: str, num_classes: int) -> list[Counted]:
    """Exact parameter counts of every point on `model` (a meta-device build: shapes only, instant)."""
    from superlora.base_models import create_meta_model

    meta = create_meta_model(model, num_classes=num_classes)
    counted = []
    for point in points:
        c = count_parameters(meta, point.config)
        counted.append(Counted(point, c.adapter, c.trainable_module_parameters, c.base_model, c.update_size, c.lora_r1))
    return counted


def rank_terms(point: Point, model: str) -> int:
    """T of a point on `model`: the rank-one terms each update entry sums (`AdapterPlan.rank_terms`, from its plan on
    a meta-device build: shapes only). Head-only has no update and gives 1."""
    from superlora.base_models import create_meta_model
    from superlora.functional.plan import plan_adapter
    from superlora.targets import resolve_targets

    targets = resolve_targets(create_meta_model(model, num_classes=2), point.config.targets)
    return plan_adapter([t.shape for t in targets], point.config).rank_terms


def task_sets(task: str, spec: TaskSpec):
    """(train, val) ImageSets of a task: per class, a seeded random `val_per_class` for validation and the next
    `train_per_class` for training. The same for every method, seed and run."""
    import numpy as np

    from superlora.data import sample_dataset

    full = sample_dataset(spec.sample)
    if len(full.classes) != spec.classes:
        raise ValueError(f"{task}: the sample has {len(full.classes)} classes, the task says {spec.classes}")
    rng = np.random.default_rng(SPLIT_SEED)
    labels = np.asarray(full.labels)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in range(len(full.classes)):
        members = rng.permutation(np.flatnonzero(labels == label))
        need = spec.train_per_class + spec.val_per_class
        if len(members) < need:
            raise ValueError(f"{task}: class {full.classes[label]!r} has {len(members)} images, {need} needed")
        val_idx += members[:spec.val_per_class].tolist()
        train_idx += members[spec.val_per_class:need].tolist()
    return full.subset(sorted(train_idx)), full.subset(sorted(val_idx))
