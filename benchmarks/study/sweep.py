"""Grid points and the learning-rate rule both studies share: one adapter lr per family, chosen at a sweep point."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from superlora import SuperLoRAConfig

LR_GRID = (1e-3, 4e-3, 1.6e-2)
LR_FACTOR = 4.0
MAX_EXTENSIONS = 2
SWEEP_SEED = 0
SEEDS = (0, 1, 2)
# The 0-parameter baseline: the head trained alone (preset "head-only"). It has no adapter lr to sweep; its runs
# record HEAD_ONLY_LR, which training ignores (TrainOptions wants a positive lr).
HEAD_ONLY_FAMILY = "head-only"
HEAD_ONLY_LR = LR_GRID[0]


@dataclass(frozen=True)
class Point:
    """One budget of one method: `family` shares a learning rate, `method` is a curve, `budget` its label."""

    family: str
    method: str
    budget: str
    config: SuperLoRAConfig  # with seed 0; a run with seed s uses config.replace(seed=s)
    sweep: bool = False  # the family's learning-rate sweep point

    @property
    def key(self) -> str:
        return config_hash(self.config)


def pinned(config: SuperLoRAConfig) -> SuperLoRAConfig:
    """`config` with rank_scaling "none" set explicitly: the studies' grids are defined under scale 1 (their rows,
    keys and figures say so), whatever rank scaling the library defaults to; a rule is applied on top of them."""
    return config.replace(rank_scaling="none")


def config_hash(config: SuperLoRAConfig) -> str:
    """12 hex digits naming the adapter settings (its seed and display name excluded)."""
    fields = config.to_dict()
    fields.pop("seed"), fields.pop("name")
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def check_grid(points: Sequence[Point], need_sweep: bool = True) -> None:
    """Exactly one sweep point per family (head-only has none; a fixed lr replaces the sweep), and no config twice
    (a run's key would be ambiguous)."""
    sweeps = defaultdict(int)
    for point in points:
        sweeps[point.family] += point.sweep
    bad = sorted(f for f in {p.family for p in points} - {HEAD_ONLY_FAMILY} if sweeps[f] != 1)
    if bad and need_sweep:
        raise ValueError(f"families without exactly one sweep point: {', '.join(bad)} (a --methods selection must "
                         "keep each family's sweep point, or give --fixed-lr)")
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("the grid lists one adapter config twice")


def base_method(method: str) -> str:
    """A point's method without a rank scaling's tag ("LoRA [sqrt]" -> "LoRA"; see `with_rank_scaling` in
    benchmarks/pareto.py): within one rule's results, and across rules, points of one method share a name."""
    return method.split(" [", 1)[0]


def lr_text(lr: float | str) -> str:
    """The canonical text of a learning rate (keys compare text, never floats)."""
    return f"{float(lr):.4g}"


def _better(a: tuple[float, float, float], b: tuple[float, float, float] | None) -> bool:
    """(accuracy, val_loss, lr): higher accuracy, then lower loss, then smaller lr."""
    if b is None:
        return True
    return (a[0], -a[1], -a[2]) > (b[0], -b[1], -b[2])


def choose_lr(results: dict[str, tuple[float, float]], grid: Sequence[float] = LR_GRID,
              max_extensions: int = MAX_EXTENSIONS, factor: float = LR_FACTOR) -> tuple[float | None, list[float]]:
    """The sweep's state from its finished runs (`lr_text(lr)` -> (accuracy, val_loss); NaN: diverged). While
    the best lr is the largest (smallest) tried, `factor` times (1 / `factor` times) it runs next, at most
    `max_extensions` times past each end of the grid.

    Returns (chosen lr, []) when the rule has decided, else (None, the lrs to run next)."""
    missing = [lr for lr in grid if lr_text(lr) not in results]
    if missing:
        return None, missing
    tried = sorted(grid)
    while True:
        best, best_score = None, None
        for lr in tried:
            accuracy, loss = results[lr_text(lr)]
            score = (accuracy if not math.isnan(accuracy) else -math.inf,
                     loss if not math.isnan(loss) else math.inf, lr)
            if _better(score, best_score):
                best, best_score = lr, score
        below = sum(lr < min(grid) for lr in tried)
        above = sum(lr > max(grid) for lr in tried)
        if best == tried[-1] and above < max_extensions:
            step = best * factor
        elif best == tried[0] and below < max_extensions:
            step = best / factor
        else:
            return best, []
        if lr_text(step) not in results:
            return None, [step]
        tried = sorted(tried + [step])


def point_lr(rows: Sequence[dict[str, Any]], grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
             factor: float = LR_FACTOR) -> tuple[float | None, str, bool]:
    """(lr, rule, edge) of one point's rows of one task when every point sweeps its own lr; lr None while its sweep
    is unfinished. A point with sweep rows follows `choose_lr` on the grid; one run with a given list of lrs only
    takes the best of the lrs it ran (on its first seed), by the same rule. edge: the chosen lr is the smallest or
    largest one tried."""
    sweep = any(r["phase"] == "sweep" for r in rows)
    seeds = {int(r["seed"]) for r in rows}
    first = SWEEP_SEED if sweep or SWEEP_SEED in seeds else min(seeds)
    results = {lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in rows if int(r["seed"]) == first}
    tried = sorted(float(lr) for lr in results)
    lr, _ = choose_lr(results, grid, max_extensions, factor) if sweep else choose_lr(results, tried, 0)
    edge = lr is not None and len(tried) > 1 and lr_text(lr) in (lr_text(tried[0]), lr_text(tried[-1]))
    return lr, "sweep" if sweep else "fixed", edge


def point_groups(rows: Sequence[dict[str, Any]], task: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The rows of `task` by point: (method, config hash) -> its rows, in file order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["task"] == task:
            groups[(row["method"], row["config_hash"])].append(row)
    return groups
