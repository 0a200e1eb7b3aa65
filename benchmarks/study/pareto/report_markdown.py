"""The per-point re-run's words (issue 12): per task, the protocol, a table of every point at its own lr beside the
shipped default lr, head-only, the Pareto front, the efficiency table, the lr-spread numbers with a plain verdict on
the issue's two criteria, and the partial-results warning; `analyse` writes them and the figures into
docs/benchmarks.md between the pareto-per-point markers."""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.study import page
from benchmarks.study.intervals import BOOTSTRAP_SEED, LEVEL, OVER_SEEDS, RESAMPLES
from benchmarks.study.pareto.analysis import head_only, pareto_front
from benchmarks.study.pareto.headline import headline_markdown
from benchmarks.study.pareto.markdown import efficiency_markdown
from benchmarks.study.pareto.protocol import PER_POINT, Protocol
from benchmarks.study.pareto.report import (BAND, BAND_SHARE, TABLE, WITHIN, LrSpread, PointSummary, long_steps,
                                            lr_spread, plot_task, summarise)
from benchmarks.study.pareto.runner import results_path
from benchmarks.study.sweep import HEAD_ONLY_FAMILY, SEEDS, SWEEP_SEED, Point, base_method, lr_text

BEGIN, END = "<!-- pareto-per-point:begin -->", "<!-- pareto-per-point:end -->"
SCRIPT = "python benchmarks/pareto.py"


def pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _seeds(seeds: Sequence[int], all_: bool = False) -> str:
    """"seeds 0, 1, 2" / "all 3 seeds" (all_); "seed 0" for one."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"all {len(seeds)} seeds" if all_ else "seeds " + ", ".join(map(str, seeds))


def _lrs(values: Sequence[float]) -> str:
    return ", ".join(lr_text(v) for v in values)


def protocol_markdown(protocol: Protocol, steps: tuple[int, int] | None, seeds: Sequence[int] = SEEDS,
                      resamples: int = RESAMPLES) -> str:
    """The protocol in two sentences, with the numbers the code uses (`steps`: the task's (short, long) run
    lengths, None when every point ran one length)."""
    lengths = (f"points under {protocol.long_below:,} adapter parameters train {steps[1]} steps, the others "
               f"{steps[0]}" if steps else "every point trains the same number of steps")
    head = (f"; head-only sweeps its head lr over ({_lrs(protocol.head_grid)}) instead"
            if protocol.head_grid is not None else "")
    held_out = (" The held-out shortfall leaves out the seed that chose the lr: the same difference on the other "
                "seeds, with a paired bootstrap interval (seeds and images drawn again together for both lrs)."
                if len(seeds) > 1 else "")
    default = (f" and again at the shipped default lr {lr_text(protocol.default_lr)} (head-only: head lr "
               f"{lr_text(protocol.default_head_lr)}) where that differs" if protocol.default_lr is not None else "")
    return (f"Every point sweeps its own adapter lr on seed 0 over ({_lrs(protocol.grid)}), extended by "
            f"{protocol.factor:g}× past an edge at most {protocol.max_extensions} times (best validation accuracy, "
            f"ties to the lower loss, then the smaller lr; \"edge\": the chosen lr is the smallest or largest "
            f"tried){head}, and {lengths}. {_seeds(seeds).capitalize()} then run"
            f"{'s' if len(seeds) == 1 else ''} at the chosen lr{default}; "
            f"accuracy is the mean over seeds, with a {100 * LEVEL:.0f} % percentile bootstrap interval over seeds "
            f"× validation images ({resamples:,} resamples, RNG seed {BOOTSTRAP_SEED}), and the shortfall is the "
            "chosen lr's mean minus the default lr's, in points." + held_out)


def _runs(p: PointSummary) -> str:
    text = f"{pct(p.mean)} ± {100 * p.std:.1f} (n={len(p.accuracies)})" if p.accuracies else "–"
    return text + (f", {p.failed} diverged" if p.failed else "")


def _interval(p: PointSummary) -> str:
    over = " (seeds only)" if p.interval_over == OVER_SEEDS else ""
    return f"[{pct(p.interval[0])}, {pct(p.interval[1])}]{over}"


def _default(p: PointSummary) -> str:
    if p.default_lr is None:
        return "–"
    if p.at_default:
        return "(the chosen lr)"
    if not p.default_seeds:
        return "not run yet"
    text = f"{pct(p.default_mean)} (n={len(p.default_accuracies)})" if p.default_accuracies else "–"
    return text + (f", {p.default_failed} diverged" if p.default_failed else "")


def _shortfall(p: PointSummary) -> str:
    if p.default_failed and not p.at_default:
        return "diverged"
    return "–" if math.isnan(p.shortfall) else f"{100 * p.shortfall:.1f}"


def _held_out(p: PointSummary) -> str:
    if p.at_default:
        return "0.0"
    if p.held_out is None:
        return "–"
    mean, low, high = (100 * v for v in p.held_out)
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]"


def points_markdown(points: Sequence[PointSummary], protocol: Protocol, held_out: bool = True) -> list[str]:
    """One row per adapter point (head-only has its own line), fewest parameters first. `held_out`: with the
    held-out shortfall (a run of the sweep seed alone has none)."""
    default = lr_text(protocol.default_lr) if protocol.default_lr is not None else "–"
    extra = " held-out shortfall [95 %] |" if held_out else ""
    lines = ["| method | budget | adapter params | steps | chosen lr | accuracy, % (mean ± sd) | 95 % interval, % | "
             f"at the default lr {default}, % | shortfall, points |{extra}", "|---" * (9 + held_out) + "|"]
    for p in points:
        if not p.head:
            lr = lr_text(p.lr) + (" (edge)" if p.edge else "")
            lines.append(f"| {p.method} | {p.budget} | {p.params:,} | {p.steps} | {lr} | {_runs(p)} | "
                         f"{_interval(p)} | {_default(p)} | {_shortfall(p)} |"
                         + (f" {_held_out(p)} |" if held_out else ""))
    return lines


def sweeps_markdown(points: Sequence[PointSummary]) -> list[str]:
    """Every point's seed-0 sweep, folded away."""
    lines = ["<details><summary>The seed-0 sweeps (lr: validation accuracy, %)</summary>", "",
             "| method | budget | sweep | chosen |", "|---|---|---|---|"]
    for p in points:
        tried = ", ".join(f"{lr_text(lr)}: {pct(accuracy)}" for lr, accuracy in p.sweep)
        lines.append(f"| {p.method} | {p.budget} | {tried} | {lr_text(p.lr)}{' (edge)' if p.edge else ''} |")
    return lines + ["", "</details>"]


def head_only_markdown(points: Sequence[PointSummary]) -> list[str]:
    baseline = head_only(points)
    if baseline is None:
        return ["Head only (0 adapter parameters): no finished head-lr sweep yet."]
    edge = " (edge)" if baseline.edge else ""
    default = (f"; at the default head lr {lr_text(baseline.default_lr)}, %: {_default(baseline)}, shortfall "
               f"{_shortfall(baseline)} points" if baseline.default_lr is not None else "")
    return [f"Head only (0 adapter parameters, {baseline.steps} steps): chosen head lr {lr_text(baseline.lr)}{edge}; "
            f"accuracy, %: {_runs(baseline)}, 95 % interval {_interval(baseline)}{default}."]


def front_markdown(points: Sequence[PointSummary]) -> list[str]:
    front = pareto_front([p for p in points if not p.head])
    steps = " → ".join(f"{p.params:,} ({p.method} {p.budget}: {pct(p.mean)} %)" for p in front)
    return [f"Pareto front of the adapter points (mean accuracy at each point's own lr, fewest parameters first): "
            f"{steps or 'none yet'}."]


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "not decided yet"}[met]


def spread_markdown(spread: LrSpread, protocol: Protocol, seeds: Sequence[int] = SEEDS) -> list[str]:
    """Issue 12's acceptance numbers and a plain verdict on each criterion."""
    if not spread.points:
        return ["No adapter point has finished its lr sweep yet; the issue's criteria cannot be checked."]
    counts = Counter(lr_text(lr) for lr in spread.lrs)
    listed = ", ".join(f"{lr} ×{counts[lr]}" for lr in sorted(counts, key=float))
    band_low, band_high = spread.band
    lines = [f"- Chosen lrs of the {spread.points} adapter points: {listed}; from {lr_text(spread.low)} to "
             f"{lr_text(spread.high)}, a ratio of {spread.ratio:g}×.",
             f"- The factor-{BAND:g} band [{lr_text(band_low)}, {lr_text(band_high)}] holds {spread.in_band} of "
             f"{spread.points} ({100 * spread.share:.0f} %).",
             f"- **Best lrs of ≥ {100 * BAND_SHARE:.0f} % of the points within one factor-{BAND:g} band: "
             f"{_verdict(spread.band_met)}** ({100 * spread.share:.0f} %)."]
    default = lr_text(protocol.default_lr) if protocol.default_lr is not None else "–"
    worst = spread.worst
    worst_text = (f"the largest shortfall is {_shortfall(worst)} points ({worst.method} {worst.budget}, "
                  f"{worst.params:,} parameters, chosen lr {lr_text(worst.lr)})" if worst is not None
                  else "no shortfall measured yet")
    missing = spread.points - spread.complete
    lines += [f"- At the default lr {default}: {spread.within} of the {spread.complete} points with "
              f"{_seeds(seeds, True)} there are within {100 * WITHIN:.1f} points of their own best"
              + (f" ({missing} still lack their default-lr runs)" if missing else "") + f"; {worst_text}.",
              f"- **With the single default lr {default}, every point's {len(seeds)}-seed mean within "
              f"{100 * WITHIN:.1f} points of its own best: {_verdict(spread.default_met)}** ({spread.within} of "
              f"{spread.points})."]
    if spread.measured:
        named = "; ".join(f"{p.method} {p.budget} ({_held_out(p)})" for p in spread.short) or "none"
        lines.append(f"- Held out from the choice (seed 0 picked each point's lr, which favours it there): on the "
                     f"other seeds, paired seed by seed and image by image, the default falls more than "
                     f"{100 * WITHIN:.1f} points short with 95 % confidence for {len(spread.short)} of the "
                     f"{spread.measured} points measured so far: {named}.")
    if spread.held_out_mean is not None:
        mean, low, high = (100 * v for v in spread.held_out_mean)
        lines.append(f"- Across the grid, held out: over the {len(spread.held_out)} points measured so far (a point "
                     f"whose chosen lr is the default counts 0), the default gives away {mean:.1f} points on "
                     f"average [95 % bootstrap over the points: {low:.1f}, {high:.1f}]; what per-point lr selection "
                     f"is worth once seed 0's luck is left out.")
    return lines


def completeness_note(points: Sequence[PointSummary], unfinished: Sequence[tuple[str, str]],
                      expected: Sequence[tuple[str, str]] | None, seeds: Sequence[int] = SEEDS) -> str | None:
    """None when every expected (method, config hash) point has every seed at its chosen lr and at the default lr;
    otherwise a warning that says how much is missing. Without `expected`: the points on file."""
    done = {(p.method, p.config_hash): (set(seeds) <= set(p.seeds),
                                        p.default_lr is None or set(seeds) <= set(p.default_seeds)) for p in points}
    expected = list(expected) if expected is not None else [*done, *unfinished]
    full = sum(all(done.get(key, (False, False))) for key in expected)
    if full == len(expected):
        return None
    chosen = sum(key in done and not done[key][0] for key in expected)
    default = sum(key in done and done[key][0] and not done[key][1] for key in expected)
    sweeping = sum(key in set(unfinished) for key in expected)
    return (f"**Partial results: {full} of {len(expected)} points have {_seeds(seeds, True)} at their chosen lr "
            f"and at the default lr; {chosen} lack seeds at the chosen lr, {default} at the default lr, {sweeping} "
            f"are still in their lr sweep and {len(expected) - full - chosen - default - sweeping} have no run "
            f"yet.** The re-run had not finished when this was written (`{SCRIPT} run` with the same options "
            "resumes it); every number here can still change.")


def setup_markdown(task: str, rows: Sequence[dict[str, Any]]) -> str:
    """The task's setup and cost, from its rows."""
    rows = [r for r in rows if r["task"] == task]
    first = ([r for r in rows if r["family"] != HEAD_ONLY_FAMILY] or rows)[0]
    per_step = [r["seconds_per_step"] for r in rows if not math.isnan(r["seconds_per_step"])]
    return (f"{first['num_classes']} classes (chance: {100 / first['num_classes']:.1f} %); {first['train_size']} "
            f"training / {first['val_size']} validation images; batch {first['batch_size']}; head learning rate "
            f"{first['head_lr']} (adapter points); model `{first['model']}`. The head ({first['head_params']:,} "
            f"parameters) is trained in every run and is not in the adapter counts. {len(rows)} runs, "
            f"{sum(r['seconds'] for r in rows) / 60:.0f} min of training (median "
            f"{statistics.median(per_step) if per_step else math.nan:.3f} s/step).")


def task_markdown(task: str, rows: Sequence[dict[str, Any]], points: Sequence[PointSummary], figure: str,
                  protocol: Protocol = PER_POINT, note: str | None = None, seeds: Sequence[int] = SEEDS) -> str:
    lines = [f"#### {task}", ""] + ([note, ""] if note else [])
    lines += [setup_markdown(task, rows), "", protocol_markdown(protocol, long_steps(points), seeds), "",
              f"![{task}: accuracy against adapter parameters, each point at its own lr]({figure})", "",
              *points_markdown(points, protocol, held_out=set(seeds) != {SWEEP_SEED}), "",
              *sweeps_markdown(points), "", *head_only_markdown(points), "",
              *front_markdown(points), "",
              "Fewest adapter parameters reaching LoRA's accuracy (mean over seeds, within 0.5 points); factor = "
              "LoRA's fewest parameters reaching the same accuracy / the method's:", "",
              *efficiency_markdown(points), "",
              "The learning rates against issue 12's criteria" + (" (on the points finished so far; the verdicts can "
                                                                  "still change):" if note else ":"), "",
              *spread_markdown(lr_spread(points, seeds), protocol, seeds), ""]
    return "\n".join(lines)


def task_section(results_dir: Path, task: str, docs: Path, figures: Path, protocol: Protocol,
                 expected: Sequence[tuple[str, str]] | None, seeds: Sequence[int]
                 ) -> tuple[str, str | None, Path | None, list[PointSummary]]:
    """One task's markdown, its partial-results note (None: complete), its figure (None: nothing to draw yet) and
    its points."""
    # A rule's results tag the method names of the points it changes ("LoRA [sqrt]" beside the untouched "LoRA"
    # r=1); inside one rule's block they are one method, so its curve and efficiency factors are whole.
    rows = [dict(r, method=base_method(r["method"]))
            for r in page.read_one_setup(TABLE, results_path(results_dir, task))]
    summaries, unfinished = summarise(rows, task, protocol)
    note = completeness_note(summaries, unfinished, expected, seeds)
    if not summaries:
        return f"#### {task}\n\n{note or ''}\n\nNo point has finished its lr sweep yet.\n", note, None, []
    figure = plot_task(summaries, task, figures / f"pareto_per_point_{task}.png", rows[0]["head_params"])
    link = os.path.relpath(figure.resolve(), Path(docs).resolve().parent)
    return task_markdown(task, rows, summaries, link, protocol, note, seeds), note, figure, summaries


def analyse(results_dir: Path, docs: Path, figures: Path | None = None, tasks: Sequence[str] | None = None,
            protocol: Protocol = PER_POINT, points: Sequence[Point] | None = None,
            seeds: Sequence[int] = SEEDS, marker: str = "pareto-per-point") -> dict[str, Any]:
    """Read the re-run's `results_dir/pareto_<task>.csv` (the study's columns plus `val_correct`), write
    `figures/pareto_per_point_<task>.png` and the tables into `docs` between the pareto-per-point markers (a page
    with only a title and the markers is created if `docs` does not exist). `points`: the study's grid, to mark
    points still missing as partial. Returns what it wrote: figures, docs, partial (the tasks marked partial) and
    summaries (per task). `marker`: the block's marker name (a rank scaling's run has its own block)."""
    names = [p.stem[len("pareto_"):] for p in sorted(Path(results_dir).glob("pareto_*.csv"))]
    names = [name for name in names if tasks is None or name in tasks]
    if not names:
        raise SystemExit(f"no pareto_<task>.csv in {results_dir}; run the re-run first ({SCRIPT} run)")
    expected = [(base_method(p.method), p.key) for p in points] if points else None
    sections, written = [], {"figures": [], "docs": Path(docs), "partial": [], "summaries": {}}
    for task in names:
        section, note, figure, summaries = task_section(Path(results_dir), task, Path(docs),
                                                        Path(figures or results_dir), protocol, expected, seeds)
        sections.append(section)
        written["partial"] += [task] if note else []
        written["figures"] += [figure] if figure else []
        if summaries:
            written["summaries"][task] = summaries
    top = [f"**Partial results ({', '.join(written['partial'])})**: see the note under each task.", ""] \
        if written["partial"] else []
    headline = [headline_markdown(written["summaries"])] if written["summaries"] else []
    body = "\n".join(["### Results (generated)", "", *top, *headline, *sections])
    page.write_block(Path(docs), body, f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->",
                     "Pareto study, per-point re-run (generated)")
    return written
