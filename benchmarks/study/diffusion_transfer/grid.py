"""The diffusion study's grid: families x budgets on the bundled UNet's attention projections, the sizes of the
full and the `--quick` study, and the exact parameter counts of every point."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.study.sweep import Point, pinned
from superlora import SuperLoRAConfig, count_parameters, diffusion, preset

TARGETS = diffusion.ATTENTION_TARGETS
BASELINE = "pretrained, no adapter"  # the method name of the 0-parameter point: the UNet without an adapter

STEPS = 150
BATCH_SIZE = 32
EVAL_TIMESTEPS = 8
EVAL_DRAWS = 1
SAMPLE_COUNT = 8
SAMPLE_STEPS = 25


@dataclass(frozen=True)
class Spec:
    """The sizes of one study: the full one or `--quick`."""

    steps: int
    batch_size: int
    eval_images: int
    eval_timesteps: int
    eval_draws: int
    sample_count: int
    sample_steps: int


FULL = Spec(STEPS, BATCH_SIZE, diffusion.TRANSFER_EVAL, EVAL_TIMESTEPS, EVAL_DRAWS, SAMPLE_COUNT, SAMPLE_STEPS)


QUICK = Spec(3, 4, 8, 2, 1, 4, 2)


def study_grid() -> list[Point]:
    """Families x budgets. The paper's settings mapped to this UNet (28 targets of 64 x 64, D = 114,688, LoRA r=1 =
    3,584): its 8,160-parameter LoRTA (M=3, r=5, one group per weight of its 12) becomes M=3 with one group per
    attention block (G=7, r=8: 7,952) or per weight (G=28, r=5: 10,220); its 31-parameter LoRTA (M=5, r=1,
    rho=0.01) becomes 26 here. `plan` prints every count."""
    points: list[Point] = []

    def add(family: str, method: str, budget: str, config: SuperLoRAConfig, sweep: bool = False) -> None:
        points.append(Point(family, method, budget, pinned(config.replace(targets=TARGETS)), sweep))

    for r in (1, 2, 4, 8):
        add("lora", "LoRA", f"r={r}", preset("lora", rank=r), sweep=r == 2)
    for r in (4, 8, 16):
        add("lorta", "LoRTA M=3 G=1", f"r={r}", preset("lorta", order=3, rank=r), sweep=r == 8)
    add("lorta", "LoRTA M=3 G=7 (per block)", "r=8", preset("lorta", order=3, groups=7, rank=8))
    add("lorta", "LoRTA M=3 G=28 (per weight)", "r=5", preset("lorta", order=3, groups=28, rank=5))
    add("lorta", "LoRTA M=4 G=1", "r=4", preset("lorta", order=4, rank=4))
    add("lorta", "LoRTA M=5 G=1", "r=2", preset("lorta", order=5, rank=2))

    def fastfood(name: str, ratio: float, **fields: Any) -> SuperLoRAConfig:
        return preset(name, projection="fastfood", ratio=ratio, **fields)

    add("fastfood", "LoRTA M=5 ρ=0.01", "r=1", fastfood("lorta", 0.01, order=5, rank=1))
    add("fastfood", "LoRTA M=3 ρ=0.1", "r=4", fastfood("lorta", 0.1, order=3, rank=4), sweep=True)
    add("fastfood", "LoRTA M=3 G=4 ρ=0.01", "r=4", fastfood("lorta", 0.01, order=3, groups=4, rank=4))
    add("fastfood", "SuperLoRA 2D G=4 ρ=0.5", "r=4", fastfood("superlora-2d", 0.5, groups=4, rank=4))

    add("lonkr", "LoNKr K=3", "r=1", preset("lonkr", splits=3, rank=1))
    for r in (1, 4):
        add("lonkr", "LoNKr K=2", f"r={r}", preset("lonkr", splits=2, rank=r), sweep=r == 4)

    for r in (1, 4, 16):
        add("superlora-2d", "SuperLoRA 2D G=1", f"r={r}", preset("superlora-2d", rank=r), sweep=r == 4)
    return points


def quick_grid() -> list[Point]:
    """Three points that exercise every part: two LoRA ranks (a curve to interpolate) and a projected LoRTA."""
    return [replace(p, config=pinned(p.config)) for p in [
        Point("lora", "LoRA", "r=1", preset("lora", rank=1, targets=TARGETS), sweep=True),
        Point("lora", "LoRA", "r=8", preset("lora", rank=8, targets=TARGETS)),
        Point("fastfood", "LoRTA M=3 ρ=0.1", "r=2",
              preset("lorta", order=3, rank=2, projection="fastfood", ratio=0.1, targets=TARGETS), sweep=True),
    ]]


@dataclass(frozen=True)
class Counted:
    point: Point
    adapter: int
    base: int
    update_size: int
    lora_r1: int


def model_skeleton(model: Path):
    """A meta-device UNet of `model`'s architecture (its config.json; the bundled one when the folder is missing)."""
    import torch

    config_file = Path(model) / "config.json"
    unet_config = json.loads(config_file.read_text())["unet"] if config_file.is_file() else None
    with torch.device("meta"):
        return diffusion.build_unet(unet_config)


def count_grid(points: Sequence[Point], model: Path) -> list[Counted]:
    skeleton = model_skeleton(model)
    counted = []
    for point in points:
        c = count_parameters(skeleton, point.config, trainable=())
        counted.append(Counted(point, c.adapter, c.base_model, c.update_size, c.lora_r1))
    return counted
