"""Does a rank scaling make one learning rate carry across ranks? A probe on the Pareto study's grid.

For each family, its smallest- and largest-rank points that train 100 steps (LoRA r=1/r=8, SuperLoRA 2D G=1
r=1/r=16, LoRTA M=3 r=8/r=16, LoTR r=8/r=32) sweep their adapter lr on seed 0 under the per-point protocol
(benchmarks/study/pareto/protocol.py: factor-2 steps around the shipped default 0.03, extended past an edge at most
twice) with `rank_scaling` "none" (today's scale 1; these rows are the per-point re-run's own), "linear" (s = 1/T)
and "sqrt" (s = 1/sqrt(T)), T the rank-one terms each update entry sums (docs/method.md, "Scale").

What it reports per task and rule: each point's chosen lr; how far the two points of a family lie apart (the
ratio of their chosen lrs: 1x means the lr carried from the small to the large rank); the spread over all probe
points (largest / smallest chosen lr, the share in the best factor-4 band); and the seed-0 accuracy at the chosen
and at the default lr, so that a rule that moves lrs together but costs accuracy shows it.

    python benchmarks/lr_rule.py run --task inspection     # resumable, one run at a time (pareto.py underneath)
    python benchmarks/lr_rule.py analyse                   # -> benchmarks/results/lr_rule.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import pareto  # noqa: E402
from benchmarks.study.pareto.report import TABLE, PointSummary, lr_spread, summarise  # noqa: E402
from benchmarks.study.sweep import base_method, lr_text  # noqa: E402

RULES = ("none", "linear", "sqrt")
PROBE = (("LoRA", ("r=1", "r=8")), ("SuperLoRA 2D G=1", ("r=1", "r=16")), ("LoRTA M=3", ("r=8", "r=16")),
         ("LoTR", ("r=8", "r=32")))
OUT = ROOT / "benchmarks" / "results" / "lr_rule.md"


def folder(rule: str, results: Path = pareto.PER_POINT_RESULTS) -> Path:
    return pareto.rule_folder(rule, results)


def rank_terms(method: str, budget: str, model: str = pareto.DEFAULT_MODEL) -> int:
    """T of a study point on `model` (benchmarks/study/pareto/grid.py: `rank_terms`)."""
    point = next(p for p in pareto.study_grid() if (p.method, p.budget) == (method, budget))
    return pareto.rank_terms(point, model)


def run(task: str, rules: Sequence[str] = RULES, workers: int = 1) -> None:
    """Every probe point under every rule, family by family (so a stopped probe has whole families). A point with
    T = 1 has the same scale under every rule, so only "none" runs it."""
    for method, budgets in PROBE:
        for rule in rules:
            chosen = [b for b in budgets if rule == "none" or rank_terms(method, b) > 1]
            if chosen:
                pareto.main(["run", "--protocol", "per-point", "--rank-scaling", rule, "--tasks", task, "--seeds",
                             "0", "--methods", method, "--budgets", *chosen, "--workers", str(workers),
                             "--threads", "1"])


def probe_points(rows: Sequence[dict], task: str) -> dict[tuple[str, str], PointSummary]:
    """(method without the rule, budget) -> summary, for the probe's points whose sweep has decided."""
    wanted = {(m, b) for m, budgets in PROBE for b in budgets}
    return {(base_method(p.method), p.budget): p for p in summarise(rows, task)[0]
            if (base_method(p.method), p.budget) in wanted}


def seed0_at(point: PointSummary, lr: float) -> float:
    return next((acc for x, acc in point.sweep if lr_text(x) == lr_text(lr)), math.nan)


def good_lrs(point: PointSummary, images: int) -> list[float]:
    """The swept lrs whose seed-0 accuracy is within one binomial standard error (at the best accuracy, on `images`
    validation images) of the best: with one seed, the lrs the data cannot tell from the best."""
    best = max(acc for _, acc in point.sweep if not math.isnan(acc))
    se = math.sqrt(best * (1 - best) / images)
    return [lr for lr, acc in point.sweep if not math.isnan(acc) and acc >= best - se - 1e-12]


def _lrs(values: Sequence[float]) -> str:
    return ", ".join(lr_text(x) for x in values) or "none"


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def rule_rows(rule: str, points: dict[tuple[str, str], PointSummary], default: float, images: int) -> list[str]:
    lines = []
    for method, budgets in PROBE:
        got = [points.get((method, b)) for b in budgets]
        for budget, p in zip(budgets, got):
            if p is None:
                lines.append(f"| {rule} | {method} {budget} | (sweep unfinished) | | | | |")
                continue
            lr = lr_text(p.lr) + (" (edge)" if p.edge else "")
            lines.append(f"| {rule} | {method} {budget} | {lr} | {_pct(seed0_at(p, p.lr))} | "
                         f"{_pct(seed0_at(p, default))} | {_pct(seed0_at(p, p.lr) - seed0_at(p, default))} | "
                         f"{_lrs(good_lrs(p, images))} |")
        if all(got):
            lines.append(f"| {rule} | {method}: large / small rank lr | {got[1].lr / got[0].lr:.3g}× | | | | |")
    return lines


def spread_line(rule: str, points: dict[tuple[str, str], PointSummary], default: float, images: int) -> str:
    found = list(points.values())
    if not found:
        return f"- {rule}: no point has finished its sweep."
    spread = lr_spread(found, seeds=(0,))
    pairs = [points[(m, b[1])].lr / points[(m, b[0])].lr for m, b in PROBE if all((m, x) in points for x in b)]
    worst = max(found, key=lambda p: seed0_at(p, p.lr) - seed0_at(p, default))
    common = sorted(set.intersection(*(set(lr_text(x) for x in good_lrs(p, images)) for p in found)), key=float)
    return (f"- {rule}: {len(found)} points; chosen lrs {lr_text(spread.low)}–{lr_text(spread.high)} "
            f"({spread.ratio:.3g}×); best factor-4 band holds {spread.in_band} of {spread.points}; "
            + (f"large/small-rank ratios per family {', '.join(f'{x:.3g}×' for x in pairs)}; " if pairs else "")
            + f"mean seed-0 accuracy at the chosen lrs {_pct(sum(seed0_at(p, p.lr) for p in found) / len(found))} %; "
            f"worst seed-0 shortfall at {lr_text(default)}: "
            f"{_pct(seed0_at(worst, worst.lr) - seed0_at(worst, default))} points ({worst.method} {worst.budget}); "
            f"lrs within one standard error of every point's best: {', '.join(common) or 'none'}.")


def analyse(results: Path = pareto.PER_POINT_RESULTS, out: Path = OUT, tasks: Sequence[str] = tuple(pareto.TASKS),
            default: float = pareto.PER_POINT.default_lr) -> str:
    from superlora.files import atomic_write

    lines = ["# Does a rank scaling carry one lr across ranks? (generated by `python benchmarks/lr_rule.py analyse`)",
             "", (__doc__ or "").split("\n\n")[1].replace("\n", " "), ""]
    for task in tasks:
        per_rule = {rule: probe_points(TABLE.read(folder(rule, results) / f"pareto_{task}.csv"), task)
                    for rule in RULES}
        for rule in RULES[1:]:  # T = 1: every rule is "none" (scale 1), so its sweep is "none"'s
            for key, point in per_rule["none"].items():
                if key not in per_rule[rule] and rank_terms(*key) == 1:
                    per_rule[rule][key] = point
        images = pareto.TASKS[task].val_per_class * pareto.TASKS[task].classes
        lines += [f"## {task}", "", f"{images} validation images: one seed's accuracy has a standard error of about "
                  f"{100 * math.sqrt(0.8 * 0.2 / images):.1f} points at 80 %, so lrs closer than that to the best "
                  "are listed as good.", "",
                  f"| rule | point | chosen lr | seed-0 acc at it, % | at {lr_text(default)}, % | shortfall, points | "
                  "good lrs (within one standard error) |", "|---|---|---|---|---|---|---|"]
        for rule in RULES:
            lines += rule_rows(rule, per_rule[rule], default, images)
        lines += ["", *[spread_line(rule, per_rule[rule], default, images) for rule in RULES], ""]
    text = "\n".join(lines)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "analyse"))
    p.add_argument("--task", choices=list(pareto.TASKS), default="inspection")
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    args = p.parse_args(argv)
    if args.command == "run":
        run(args.task, args.rules)
    else:
        print(analyse())
    return 0


if __name__ == "__main__":
    sys.exit(main())
