"""What the PEFT baselines study's rows say: per point, its runs at its chosen lr with a 95 % bootstrap interval
over seeds and validation images (`summarise`), the best method at each of the issue's budgets and its margin
(`headline`), and the accuracy-against-parameters figure (`plot_task`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study import page
from benchmarks.study.intervals import (BOOTSTRAP_SEED, LEVEL, OVER_BOTH, OVER_SEEDS,  # noqa: F401
                                        RESAMPLES, bootstrap_interval, rows_interval, seed_interval)
from benchmarks.study.pareto.analysis import Summary
from benchmarks.study.peft.matching import METHOD_NAMES, METHODS, STANDARD_BUDGETS
from benchmarks.study.peft.training import DEFAULT_LRS
from benchmarks.study.sweep import MAX_EXTENSIONS, lr_text, point_groups, point_lr



@dataclass(frozen=True)
class PointResult(Summary):
    """One point of one task: its runs at its chosen lr (`accuracies`: the finished ones, `mean` and `std` over
    them), as the Pareto study's `Summary`, with its interval and how its lr was chosen."""

    config_hash: str
    target_budget: int
    rule: str  # "sweep": chosen by the per-point sweep; "fixed": the best of the lrs given to `run --lrs`
    edge: bool  # the chosen lr is the smallest or largest one tried
    seeds: tuple[int, ...]  # every run at the chosen lr, diverged ones included
    interval: tuple[float, float]  # 95 % bootstrap interval of the mean accuracy (NaN: no finished run)
    interval_over: str  # OVER_BOTH, or OVER_SEEDS where a run lacks its per-image correctness

    @property
    def peft(self) -> bool:
        """A PEFT method's point (else a SuperLoRA whole-qkv point)."""
        return self.family in METHODS


def chosen_lr(rows: Sequence[dict[str, Any]], grid: Sequence[float] = DEFAULT_LRS,
              max_extensions: int = MAX_EXTENSIONS) -> tuple[float | None, str, bool]:
    """(lr, rule, edge) of one point's rows of one task; lr None while its sweep is unfinished (`point_lr` with
    this study's grid and 4x extensions)."""
    return point_lr(rows, grid, max_extensions)


def summarise(rows: Sequence[dict[str, Any]], task: str, grid: Sequence[float] = DEFAULT_LRS,
              max_extensions: int = MAX_EXTENSIONS) -> tuple[list[PointResult], list[tuple[str, str]]]:
    """The points of `task` whose lr is chosen, fewest parameters first, and the (method, config hash) of those
    whose sweep is unfinished."""
    groups = point_groups(rows, task)
    results, unfinished = [], []
    for key, group in groups.items():
        lr, rule, edge = chosen_lr(group, grid, max_extensions)
        if lr is None:
            unfinished.append(key)
            continue
        runs = sorted((r for r in group if lr_text(r["lr"]) == lr_text(lr)), key=lambda r: int(r["seed"]))
        ok = [r for r in runs if r["status"] == "ok"]
        interval, over = rows_interval(runs)
        first = runs[0]
        results.append(PointResult(
            task=task, family=first["family"], method=first["method"], budget=first["budget"],
            params=int(first["adapter_params"]), lr=lr, accuracies=tuple(r["accuracy"] for r in ok),
            failed=len(runs) - len(ok), config_hash=first["config_hash"], target_budget=int(first["target_budget"]),
            rule=rule, edge=edge, seeds=tuple(int(r["seed"]) for r in runs), interval=interval, interval_over=over))
    return sorted(results, key=lambda p: (p.params, p.method)), sorted(unfinished)


@dataclass(frozen=True)
class Comparison:
    """One point against another: the margin of their means and a plain verdict."""

    ahead: PointResult
    behind: PointResult

    @property
    def margin(self) -> float:
        return self.ahead.mean - self.behind.mean

    @property
    def overlap(self) -> bool:
        return self.ahead.interval[0] <= self.behind.interval[1]

    @property
    def verdict(self) -> str:
        return "within noise" if self.overlap else f"{self.ahead.method} ahead"


@dataclass(frozen=True)
class Headline:
    """The best method at one budget: its best point within the window, the runner-up (the best point of another
    method) and the best point of the other side (PEFT against SuperLoRA)."""

    budget: int
    best: PointResult | None
    runner_up: Comparison | None
    other_side: Comparison | None

    @property
    def window(self) -> tuple[float, int]:
        return window(self.budget)


def window(budget: int) -> tuple[float, int]:
    """The adapter counts that compete at `budget`: at most the budget and at least half of it."""
    return budget / 2, budget


def _rank(points: Sequence[PointResult]) -> list[PointResult]:
    """Each method's best point (highest mean; ties: fewer parameters), best method first."""
    best: dict[str, PointResult] = {}
    for p in points:
        if not math.isnan(p.mean) and (p.method not in best or (p.mean, -p.params) > (best[p.method].mean,
                                                                                          -best[p.method].params)):
            best[p.method] = p
    return sorted(best.values(), key=lambda p: (-p.mean, p.params, p.method))


def headline(results: Sequence[PointResult], budgets: Sequence[int] = STANDARD_BUDGETS) -> list[Headline]:
    """Per budget: the methods' best points with low <= adapter parameters <= high (`window`), ranked by mean
    accuracy."""
    table = []
    for budget in budgets:
        low, high = window(budget)
        ranked = _rank([p for p in results if low <= p.params <= high])
        if not ranked:
            table.append(Headline(budget, None, None, None))
            continue
        best = ranked[0]
        others = [p for p in ranked if p.peft != best.peft]
        table.append(Headline(budget, best, Comparison(best, ranked[1]) if len(ranked) > 1 else None,
                              Comparison(best, others[0]) if others else None))
    return table


FAMILY_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "lotr": "LoTR", "superlora-2d": "SuperLoRA 2D",
                "lorta": "LoRTA", "lonkr": "LoNKr", "fastfood": "Fastfood ρ < 1"}


def line_label(family: str) -> str:
    """A figure line: a PEFT method by its name, a SuperLoRA family of the Pareto study as such."""
    return METHOD_NAMES.get(family) or f"{FAMILY_NAMES.get(family, family)} (SuperLoRA, qkv)"


def plot_task(results: Sequence[PointResult], task: str, path: Path, head_params: int | None = None) -> Path:
    """Accuracy (mean over seeds, bars: the 95 % bootstrap interval) against adapter parameters on a log axis:
    one solid line per PEFT method, one dashed line per SuperLoRA family on whole qkv, dotted lines at the issue's
    budgets. A PNG via matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    peft = [m for m in METHODS if any(p.family == m for p in results)]
    superlora = sorted({p.family for p in results} - set(METHODS))
    for family, colour, solid in [*((f, plt.get_cmap("tab10")(i % 10), True) for i, f in enumerate(peft)),
                                  *((f, plt.get_cmap("Dark2")(i % 8), False) for i, f in enumerate(superlora))]:
        points = [p for p in results if p.family == family and not math.isnan(p.mean)]
        if not points:
            continue
        ax.errorbar([p.params for p in points], [100 * p.mean for p in points],
                    yerr=[[100 * (p.mean - p.interval[0]) for p in points],
                          [100 * (p.interval[1] - p.mean) for p in points]],
                    label=line_label(family), color=colour, marker="o" if solid else "s", markersize=5,
                    linestyle="-" if solid else "--", linewidth=1.6 if solid else 1.0, capsize=2,
                    markerfacecolor=colour if solid else "white", elinewidth=1.0 if solid else 0.6)
    for budget in STANDARD_BUDGETS:
        ax.axvline(budget, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    head = f"the head's {head_params:,} not included" if head_params is not None else "the head not included"
    ax.set_xlabel(f"adapter parameters (log scale; whole qkv of every block; {head})")
    ax.set_ylabel("validation accuracy, % (mean over seeds; bars: 95 % bootstrap interval)", fontsize=9)
    ax.set_title(f"{task}: PEFT's few-parameter methods and SuperLoRA, whole qkv")
    return page.save_figure(fig, path)
