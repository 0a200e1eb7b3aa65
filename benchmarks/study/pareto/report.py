"""What the per-point re-run of the ViT study says (issue 12): per point, its own chosen lr with a 95 % bootstrap
interval and what the shipped default lr gives away (`summarise`), how far apart the points' lrs lie and whether one
default serves them all (`lr_spread`), and the figure with interval bars (`plot_task`). `report_markdown` writes it
up."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study.intervals import decode_correct, paired_difference, rows_interval, seed_interval
from benchmarks.study.pareto import analysis
from benchmarks.study.pareto.analysis import Summary
from benchmarks.study.pareto.protocol import PER_POINT, Protocol
from benchmarks.study.pareto.runner import CORRECT_TABLE, results_path
from benchmarks.study.sweep import HEAD_ONLY_FAMILY, SEEDS, SWEEP_SEED, lr_text, point_groups, point_lr

TABLE = CORRECT_TABLE  # the re-run's rows: the study's columns with per-image correctness last (runner.py)
BAND = 4.0  # issue 12: the points' best lrs should lie within one factor-4 band ...
BAND_SHARE = 0.9  # ... for at least 90 % of the points
WITHIN = 0.015  # and the default lr's mean should be within 1.5 points of each point's own best


@dataclass(frozen=True)
class PointSummary(Summary):
    """One point at its own chosen lr (as `Summary`: `accuracies` the finished runs, `failed` the diverged ones),
    with how it was chosen, its interval, and its runs at the shipped default lr."""

    config_hash: str
    steps: int
    edge: bool  # the chosen lr is the smallest or largest one tried
    sweep: tuple[tuple[float, float], ...]  # (lr, seed-0 accuracy), smallest lr first
    seeds: tuple[int, ...]  # every run at the chosen lr, diverged ones included
    interval: tuple[float, float]  # 95 % bootstrap interval of the mean at the chosen lr (NaN: no finished run)
    interval_over: str
    default_lr: float | None  # the shipped default of what the sweep varies (None: the protocol runs none)
    default_accuracies: tuple[float, ...]  # the finished runs at the default lr
    default_seeds: tuple[int, ...] = ()  # every run at the default lr, diverged ones included
    default_failed: int = 0
    # The shortfall on the seeds the sweep did not pick on (seed 0 chose the lr, which favours it there), paired
    # seed by seed and image by image: (mean, low, high) of chosen minus default; None where it cannot be measured.
    held_out: tuple[float, float, float] | None = None
    # Per-image correctness of the runs at the chosen lr, seed by seed as `seeds` (a diverged run: every image
    # wrong; () for a run without its record), for paired comparisons between points.
    correct: tuple[tuple[bool, ...], ...] = ()

    @property
    def at_default(self) -> bool:
        """The chosen lr is the default one (its runs are the default's)."""
        return self.default_lr is not None and lr_text(self.default_lr) == lr_text(self.lr)

    @property
    def default_mean(self) -> float:
        return statistics.fmean(self.default_accuracies) if self.default_accuracies else math.nan

    @property
    def shortfall(self) -> float:
        """Mean accuracy at the chosen lr minus the mean at the default lr (0.0 when they are the same lr; NaN while
        no run at the default lr has finished)."""
        if self.at_default:
            return 0.0
        return self.mean - self.default_mean if self.default_accuracies else math.nan

    @property
    def head(self) -> bool:
        return self.family == HEAD_ONLY_FAMILY


def _point(task: str, lr: float, edge: bool, group: Sequence[dict[str, Any]], protocol: Protocol) -> PointSummary:
    """The summary of one point's rows whose lr is chosen."""
    runs = sorted((r for r in group if lr_text(r["lr"]) == lr_text(lr)), key=lambda r: int(r["seed"]))
    ok = [r for r in runs if r["status"] == "ok"]
    first = runs[0]
    default = protocol.default_for(first["family"])
    at_default = sorted((r for r in group if default is not None and lr_text(r["lr"]) == lr_text(default)),
                        key=lambda r: int(r["seed"]))
    default_ok = [r["accuracy"] for r in at_default if r["status"] == "ok"]
    sweep = sorted((float(lr_text(r["lr"])), r["accuracy"]) for r in group if int(r["seed"]) == SWEEP_SEED)
    interval, over = rows_interval(runs)
    held_out = None if default is None or lr_text(default) == lr_text(lr) else held_out_shortfall(runs, at_default)
    return PointSummary(
        task=task, family=first["family"], method=first["method"], budget=first["budget"],
        params=int(first["adapter_params"]), lr=lr, accuracies=tuple(r["accuracy"] for r in ok),
        failed=len(runs) - len(ok), config_hash=first["config_hash"], steps=int(first["steps"]), edge=edge,
        sweep=tuple(sweep), seeds=tuple(int(r["seed"]) for r in runs), interval=interval, interval_over=over,
        default_lr=default, default_accuracies=tuple(default_ok),
        default_seeds=tuple(int(r["seed"]) for r in at_default), default_failed=len(at_default) - len(default_ok),
        held_out=held_out, correct=tuple(run_mask(r) for r in runs))


def run_mask(row: dict[str, Any]) -> tuple[bool, ...]:
    """Which validation images a run got right; a diverged run got every image wrong; () without a record."""
    size = int(row["val_size"])
    return decode_correct(row.get("val_correct", ""), size) if row["status"] == "ok" else (False,) * size


def held_out_shortfall(chosen: Sequence[dict[str, Any]], default: Sequence[dict[str, Any]]
                       ) -> tuple[float, float, float] | None:
    """`paired_difference` of the chosen lr's runs and the default lr's on the seeds other than the sweep's that ran
    both (a diverged run counts as every image wrong, as in the seed-0 shortfall); None when there is no such seed
    or a finished run lacks its per-image record."""
    def by_seed(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        return {int(r["seed"]): r for r in rows if int(r["seed"]) != SWEEP_SEED}

    first, second = by_seed(chosen), by_seed(default)
    pairs = [(run_mask(first[s]), run_mask(second[s])) for s in sorted(set(first) & set(second))]
    if not pairs or not all(a and b and len(a) == len(b) for a, b in pairs):
        return None
    return paired_difference([a for a, _ in pairs], [b for _, b in pairs])


def summarise(rows: Sequence[dict[str, Any]], task: str, protocol: Protocol = PER_POINT
              ) -> tuple[list[PointSummary], list[tuple[str, str]]]:
    """The points of `task` whose lr is chosen (each by its own seed-0 sweep over `protocol.sweep_grid(family)`,
    extended by `protocol.factor` past an edge at most `protocol.max_extensions` times), fewest parameters first,
    and the (method, config hash) of those whose sweep is unfinished."""
    groups = point_groups(rows, task)
    points, unfinished = [], []
    for key, group in groups.items():
        grid = protocol.sweep_grid(group[0]["family"])
        lr, _, edge = point_lr(group, grid, protocol.max_extensions, protocol.factor)
        if lr is None:
            unfinished.append(key)
        else:
            points.append(_point(task, lr, edge, group, protocol))
    return sorted(points, key=lambda p: (p.params, p.method)), sorted(unfinished)


def decided_adapter_points(folder: Path, task: str, protocol: Protocol = PER_POINT
                           ) -> list[tuple[PointSummary, dict[str, Any]]]:
    """The adapter points of a per-point results folder whose seed-0 sweep has decided, each with one of its rows
    (which carries the config and head lr the point ran with). For the scripts that study those points further."""
    rows = TABLE.read(results_path(folder, task))
    first = {r["config_hash"]: r for r in reversed(rows)}
    return [(p, first[p.config_hash]) for p in summarise(rows, task, protocol)[0] if not p.head]


@dataclass(frozen=True)
class LrSpread:
    """Issue 12's acceptance numbers over the adapter points (head-only left out).

    lrs: the chosen lrs, smallest first; band: the factor-`BAND` range [x, BAND x], x one of them, that holds the
    most (the smallest such x on a tie), and `in_band` how many. complete: the points with a finished run at the
    default lr for every seed; within: those of them whose default-lr mean is within `WITHIN` of their chosen-lr
    mean (none diverged); worst: the point with the largest shortfall (a diverged default run counts as worst).
    measured: the points with a held-out shortfall (`PointSummary.held_out`); short: those of them whose interval
    lies wholly above `WITHIN`, i.e. the default is measurably more than `WITHIN` short, and not only by noise.
    held_out: the held-out shortfall of every point that has one, 0 for every point whose chosen lr is the default
    (it gives nothing away there), in `summaries`' order: what the default costs across the grid, not per point."""

    lrs: tuple[float, ...]
    band: tuple[float, float] | None
    in_band: int
    points: int
    complete: int
    within: int
    worst: PointSummary | None
    measured: int = 0
    short: tuple[PointSummary, ...] = ()
    held_out: tuple[float, ...] = ()

    @property
    def low(self) -> float:
        return self.lrs[0] if self.lrs else math.nan

    @property
    def high(self) -> float:
        return self.lrs[-1] if self.lrs else math.nan

    @property
    def ratio(self) -> float:
        return self.high / self.low if self.lrs else math.nan

    @property
    def share(self) -> float:
        return self.in_band / self.points if self.points else math.nan

    @property
    def band_met(self) -> bool:
        return bool(self.points) and self.share >= BAND_SHARE - 1e-12

    @property
    def held_out_mean(self) -> tuple[float, float, float] | None:
        """(mean, low, high) of `held_out` over the points, the interval a 95 % percentile bootstrap that draws the
        points again (their own noise and how they differ both widen it); None until two points have a held-out
        measurement (points at the default alone would report a cost of 0 that no run measured)."""
        if self.measured < 2:
            return None
        return (statistics.fmean(self.held_out), *seed_interval(self.held_out))

    @property
    def default_met(self) -> bool | None:
        """True when every point has its default runs and all are within; False as soon as one complete point is
        not; None while that cannot be told yet."""
        if self.within < self.complete:
            return False
        return True if self.points and self.complete == self.points else None


def _in(lr: float, low: float, high: float) -> bool:
    return low * (1 - 1e-9) <= lr <= high * (1 + 1e-9)


def _shortfall_rank(p: PointSummary) -> float:
    return math.inf if p.default_failed else p.shortfall


def lr_spread(summaries: Sequence[PointSummary], seeds: Sequence[int] = SEEDS) -> LrSpread:
    """How far apart the adapter points' chosen lrs lie, and how close the default lr comes to each point's best
    (points with a run at the default lr for every one of `seeds` count; the others are not complete yet)."""
    adapters = [p for p in summaries if not p.head]
    lrs = tuple(sorted(p.lr for p in adapters))
    band, in_band = None, 0
    for x in sorted(set(lrs)):
        count = sum(_in(lr, x, BAND * x) for lr in lrs)
        if count > in_band:
            band, in_band = (x, BAND * x), count
    complete = [p for p in adapters if set(seeds) <= set(p.default_seeds)]  # at_default: the chosen lr's runs
    within = [p for p in complete if not p.default_failed and p.shortfall <= WITHIN + 1e-12]
    ranked = [p for p in adapters if p.default_failed or not math.isnan(p.shortfall)]
    worst = max(ranked, key=lambda p: (_shortfall_rank(p), -p.params, p.method), default=None)
    measured = [p for p in adapters if p.held_out is not None]
    short = tuple(p for p in measured if p.held_out[1] > WITHIN + 1e-12)
    held_out = tuple(0.0 if p.at_default else p.held_out[0] for p in adapters if p.at_default or p.held_out is not None)
    return LrSpread(lrs, band, in_band, len(adapters), len(complete), len(within), worst, len(measured), short,
                    held_out)


def long_steps(summaries: Sequence[PointSummary]) -> tuple[int, int] | None:
    """(short, long): the two run lengths when the points trained for more than one; None when they all share one."""
    steps = sorted({p.steps for p in summaries if not p.head})
    return (steps[0], steps[-1]) if len(steps) > 1 else None


def plot_task(summaries: Sequence[PointSummary], task: str, path: Path, head_params: int | None = None) -> Path:
    """The Pareto study's figure (`analysis.plot_task`) with each point's 95 % bootstrap interval as its bar and
    open markers on the points that trained longer (under 1,000 adapter parameters)."""
    lengths = long_steps(summaries)
    if lengths is None:
        return analysis.plot_task(summaries, task, path, head_params, intervals=True)
    short, long = lengths
    return analysis.plot_task(summaries, task, path, head_params, intervals=True,
                              hollow=lambda s: s.steps == long,  # type: ignore[attr-defined]
                              hollow_note=f"open markers: {long} steps, filled: {short}")
