"""Before and after a rank scaling (issue 12, items 1-2): the per-point re-run under "none" (today's scale) and under
a rule (`rank_scaling`, docs/method.md) side by side, on the points whose seed-0 sweep has finished under both.

Per task and rule: how far apart the chosen lrs lie, how many fall in the best factor-4 band, and, on seed 0 alone
(the default lr 0.03 is a sweep lr, so every swept point has a seed-0 run there), how far the default falls short of
each point's own best. The 3-seed criterion stays with the rule's own block (report_markdown.py), which needs seeds
1 and 2 at both lrs. `analyse` writes the comparison into docs/benchmarks.md between the pareto-rules markers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study import page
from benchmarks.study.pareto.protocol import PER_POINT, Protocol
from benchmarks.study.pareto.report import BAND, BAND_SHARE, TABLE, WITHIN, PointSummary, lr_spread, summarise
from benchmarks.study.pareto.runner import results_path
from benchmarks.study.sweep import base_method, lr_text

BEGIN, END = "<!-- pareto-rules:begin -->", "<!-- pareto-rules:end -->"


def seed_se(images: int) -> float:
    """The standard error of one seed's accuracy near 80 % on `images` validation images."""
    return math.sqrt(0.8 * 0.2 / images)


def seed0_at(point: PointSummary, lr: float) -> float:
    """Seed-0 accuracy at `lr` (a diverged run counts as 0; NaN: not run)."""
    value = {lr_text(x): acc for x, acc in point.sweep}.get(lr_text(lr))
    if value is None:
        return math.nan
    return 0.0 if math.isnan(value) else value


def seed0_shortfall(point: PointSummary, default: float) -> float:
    """Seed-0 accuracy at the chosen lr minus seed 0 at `default` (NaN: no seed-0 run at `default`; a diverged run
    there counts as accuracy 0)."""
    return seed0_at(point, point.lr) - seed0_at(point, default)


@dataclass(frozen=True)
class RuleSummary:
    """One rule on one task, over the adapter points decided under every compared rule."""

    rule: str
    points: tuple[PointSummary, ...]
    shortfalls: tuple[float, ...]  # seed0_shortfall of each point, same order

    @property
    def within(self) -> int:
        return sum(s <= WITHIN + 1e-12 for s in self.shortfalls)

    @property
    def worst(self) -> tuple[PointSummary, float] | None:
        pairs = sorted(zip(self.points, self.shortfalls), key=lambda ps: (-ps[1], ps[0].params, ps[0].method))
        return pairs[0] if pairs else None


def compare(by_rule: dict[str, Sequence[PointSummary]], default: float) -> list[RuleSummary]:
    """The rules' summaries on the (base method, budget) adapter points decided under all of them."""
    keyed = {rule: {(base_method(p.method), p.budget): p for p in points if not p.head}
             for rule, points in by_rule.items()}
    common = set.intersection(*(set(k) for k in keyed.values())) if keyed else set()
    order = sorted(common, key=lambda k: (next(iter(keyed.values()))[k].params, k))
    out = []
    for rule, points in keyed.items():
        chosen = tuple(points[k] for k in order)
        out.append(RuleSummary(rule, chosen, tuple(seed0_shortfall(p, default) for p in chosen)))
    return out


def choose_rule(by_task: dict[str, Sequence[RuleSummary]]) -> tuple[str | None, str]:
    """The rule the declared decision picks (docs/benchmarks.md, "Before and after"), and why: the rules that meet
    the band criterion on every task; among them (or among all, if none or every one does) the smallest worst
    seed-0 shortfall at the default lr over the tasks, then the most points within WITHIN of their best."""
    rules = [s.rule for s in next(iter(by_task.values()), ())]
    if not rules or any(not s.points for summaries in by_task.values() for s in summaries):
        return None, "no points decided under every rule on every task yet"
    met = {rule: all(lr_spread(s.points, seeds=()).band_met for summaries in by_task.values() for s in summaries
                      if s.rule == rule) for rule in rules}
    pool = [rule for rule in rules if met[rule]] or rules

    def worst(rule: str) -> float:
        return max(s.worst[1] for summaries in by_task.values() for s in summaries if s.rule == rule)

    def within(rule: str) -> int:
        return sum(s.within for summaries in by_task.values() for s in summaries if s.rule == rule)

    if len(pool) == 1:
        return pool[0], f"the only rule that meets the band criterion on every task: {' and '.join(by_task)}"
    best = min(pool, key=lambda rule: (round(worst(rule), 6), -within(rule), rules.index(rule)))
    return best, (f"{'every' if all(met.values()) else 'no'} rule meets the band criterion on every task; the "
                  f"smallest worst seed-0 shortfall at the default lr ({_pts(worst(best))} points), then the most "
                  f"points within {100 * WITHIN:.1f} of their best ({within(best)})")


def _pts(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def table_markdown(summaries: Sequence[RuleSummary], default: float) -> list[str]:
    """One row per rule: spread, band, and the seed-0 shortfall at the default lr."""
    d = lr_text(default)
    lines = [f"| rule | points | chosen lrs | ratio | best factor-{BAND:g} band | share in it | seed 0 at {d}: within "
             f"{100 * WITHIN:.1f} points of the point's best | worst seed-0 shortfall at {d}, points |",
             "|---" * 8 + "|"]
    for s in summaries:
        spread = lr_spread(s.points, seeds=())
        worst = s.worst
        worst_text = f"{_pts(worst[1])} ({base_method(worst[0].method)} {worst[0].budget})" if worst else "–"
        band = f"[{lr_text(spread.band[0])}, {lr_text(spread.band[1])}]" if spread.band else "–"
        met = " (≥ 90 %)" if spread.band_met else ""
        lines.append(f"| {s.rule} | {spread.points} | {lr_text(spread.low)}–{lr_text(spread.high)} | "
                     f"{spread.ratio:g}× | {band} | {spread.in_band} of {spread.points}{met} | {s.within} of "
                     f"{len(s.points)} | {worst_text} |")
    return lines


def candidates_markdown(summaries: Sequence[RuleSummary], lrs: Sequence[float], images: int | None = None
                        ) -> list[str]:
    """Which single lr would serve each rule best on seed 0: per lr of the sweep grid (every point ran them all),
    how many points it brings within `WITHIN` of their own best, how many within two standard errors of one seed
    on `images` validation images (what seed 0 alone cannot tell apart; left out without `images`), and the worst
    shortfall."""
    noise = 2 * seed_se(images) if images else None
    within_noise = f" / within 2 SE ({_pts(noise)})" if noise else ""
    lines = ["| single lr | " + " | ".join(f"{s.rule}: within {100 * WITHIN:.1f}{within_noise} points / worst "
                                         "shortfall" for s in summaries) + " |", "|---" * (1 + len(summaries)) + "|"]
    for lr in lrs:
        cells = []
        for s in summaries:
            falls = [seed0_shortfall(p, lr) for p in s.points]
            counts = [sum(f <= limit + 1e-12 for f in falls) for limit in (WITHIN, noise) if limit is not None]
            worst = _pts(max(falls, default=math.nan))
            cells.append(" / ".join(f"{c} of {len(falls)}" for c in counts) + f" / {worst}")
        lines.append(f"| {lr_text(lr)} | " + " | ".join(cells) + " |")
    return lines


# The Tucker-factored methods of the grid (their display names): under "sqrt" their best lrs sit above the others'.
TUCKER_METHODS = ("LoRTA", "LoTR")
TUCKER_RATIO = 2.0


def tucker(point: PointSummary) -> bool:
    return base_method(point.method).startswith(TUCKER_METHODS)


def ratio_markdown(summaries: Sequence[RuleSummary], default: float, images: int | None,
                   ratio: float = TUCKER_RATIO) -> list[str]:
    """A lead for a per-factoring lr ratio, read off the same seed-0 sweeps (in sample: the lrs were chosen on
    these runs): every point at the default lr, against the Tucker-factored points (LoRTA, LoTR) at `ratio` times
    it and the others at it. Per rule: points within WITHIN of their best, within two standard errors of one seed,
    the mean and the worst shortfall."""
    noise = 2 * seed_se(images) if images else math.nan
    lines = [f"| rule | lrs | points | within {100 * WITHIN:.1f} | within 2 SE ({_pts(noise)}) | mean shortfall | "
             "worst shortfall |", "|---" * 7 + "|"]
    for s in summaries:
        for factor in (1.0, ratio):
            falls = [seed0_shortfall(p, default * (factor if tucker(p) else 1.0)) for p in s.points]
            falls = [f for f in falls if not math.isnan(f)]
            if not falls:
                continue
            lrs = f"{lr_text(default)} for all" if factor == 1.0 else \
                f"{lr_text(default * factor)} for LoRTA and LoTR, {lr_text(default)} for the others"
            close = sum(f <= noise + 1e-12 for f in falls) if images else "–"
            lines.append(f"| {s.rule} | {lrs} | {len(falls)} | {sum(f <= WITHIN + 1e-12 for f in falls)} | {close} | "
                         f"{_pts(statistics.fmean(falls))} | {_pts(max(falls))} |")
    return lines


def at_default_markdown(summaries: Sequence[RuleSummary], default: float, images: int | None) -> list[str]:
    """What a user gets who keeps the default lr: each rule's seed-0 accuracy there against the first rule's
    (today's), point by point, with how many points move by more than one seed's standard error either way."""
    if len(summaries) < 2 or not summaries[0].points:
        return []
    noise = seed_se(images) if images else 0.0
    base, lines = summaries[0], []
    for other in summaries[1:]:
        diffs = [seed0_at(b, default) - seed0_at(a, default) for a, b in zip(base.points, other.points)]
        diffs = [d for d in diffs if not math.isnan(d)]
        if not diffs:
            continue
        up, down = sum(d > noise for d in diffs), sum(d < -noise for d in diffs)
        lines.append(f"At the default lr {lr_text(default)}, seed 0, \"{other.rule}\" minus \"{base.rule}\" over "
                     f"the {len(diffs)} points: mean {100 * statistics.fmean(diffs):+.1f}, median "
                     f"{100 * statistics.median(diffs):+.1f} points; higher by more than one standard error "
                     f"({100 * noise:.1f} points) on {up}, lower on {down}.")
    return lines


def points_markdown(summaries: Sequence[RuleSummary]) -> list[str]:
    """Every common point's chosen lr and seed-0 shortfall under each rule, folded away."""
    head = " | ".join(f"{s.rule}: chosen lr (shortfall)" for s in summaries)
    lines = ["<details><summary>Per point: chosen lr and seed-0 shortfall at the default lr, points</summary>", "",
             f"| method | budget | params | {head} |", "|---" * (3 + len(summaries)) + "|"]
    if summaries:
        for i, p in enumerate(summaries[0].points):
            cells = " | ".join(f"{lr_text(s.points[i].lr)}{' (edge)' if s.points[i].edge else ''} "
                               f"({_pts(s.shortfalls[i])})" for s in summaries)
            lines.append(f"| {base_method(p.method)} | {p.budget} | {p.params:,} | {cells} |")
    return lines + ["", "</details>"]


def task_markdown(task: str, summaries: Sequence[RuleSummary], undecided: dict[str, int], default: float,
                  images: int | None, grid: Sequence[float] = PER_POINT.grid) -> str:
    missing = ", ".join(f"{rule}: {n}" for rule, n in undecided.items() if n)
    noise = (f" One seed on {images} validation images has a standard error of about "
             f"{100 * seed_se(images):.1f} points at 80 %, so seed-0 shortfalls under that are noise."
             if images else "")
    lines = [f"#### {task}", "",
             f"{len(summaries[0].points) if summaries else 0} adapter points have a finished seed-0 sweep under "
             f"every rule" + (f" (points still sweeping or not started — {missing})" if missing else "") + "."
             + noise, "", *table_markdown(summaries, default), "",
             *(line for text in at_default_markdown(summaries, default, images) for line in (text, "")),
             "Each lr of the sweep grid as the one default (seed 0; every point ran every grid lr; \"within 2 SE\": "
             "closer to the point's best than two standard errors of one seed):", "",
             *candidates_markdown(summaries, grid, images), "",
             f"A lead, in sample (seed 0, the runs that chose the lrs): the Tucker-factored points at "
             f"{TUCKER_RATIO:g}× the default lr, the others at it (a per-factoring lr ratio, one of the issue's "
             "candidates; not yet checked on other seeds):", "", *ratio_markdown(summaries, default, images), "",
             *points_markdown(summaries), ""]
    return "\n".join(lines)


def analyse(folders: dict[str, Path], docs: Path, tasks: Sequence[str], protocol: Protocol = PER_POINT,
            expected: int | None = None) -> dict[str, Any]:
    """Compare the rules whose results lie in `folders` (rule -> the per-point re-run's results folder) on every
    task and write the block into `docs`, ending with the rule the declared decision picks (`choose_rule`).
    `expected`: the grid's adapter points per task (to say how many are not decided yet). Returns
    {task: [RuleSummary]}."""
    default = protocol.default_lr
    sections, out, pending = [], {}, {}
    for task in tasks:
        by_rule, undecided, images = {}, {}, None
        for rule, folder in folders.items():
            rows = page.read_one_setup(TABLE, results_path(folder, task))
            points, _ = summarise(rows, task, protocol)
            by_rule[rule] = points
            undecided[rule] = (expected - sum(not p.head for p in points)) if expected else 0
            images = images or (rows[0]["val_size"] if rows else None)
        out[task] = compare(by_rule, default)
        if expected:
            pending[task] = expected - (len(out[task][0].points) if out[task] else 0)
        sections.append(task_markdown(task, out[task], undecided, default, images, protocol.grid))
    rule, why = choose_rule(out)
    verdict = (f"**The declared decision on these points: \"{rule}\"** ({why})." if rule else
               f"**The declared decision cannot be made yet** ({why}).")
    if rule and any(pending.values()):
        verdict += (" Provisional: adapter points not yet decided under every rule: "
                    + ", ".join(f"{task} {n} of {expected}" for task, n in pending.items())
                    + "; the default changes only on the finished sweeps.")
    intro = (f"Chosen lrs under each rank scaling, on the points decided under all of them (seed-0 sweeps; criterion: "
             f"≥ {100 * BAND_SHARE:.0f} % of the points in one factor-{BAND:g} band). Generated by "
             "`python benchmarks/pareto.py analyse --protocol per-point --rank-scaling RULE` from "
             + ", ".join(f"`{Path(f).name}/`" for f in folders.values()) + ".")
    page.write_block(Path(docs), "\n".join([intro, "", verdict, "", *sections]), BEGIN, END, "Rank scalings compared")
    return out
