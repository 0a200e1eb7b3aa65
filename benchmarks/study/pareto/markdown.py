"""The ViT study's words: per-task tables, the claims against the paper's headline, the partial-results warning,
`analyse` (figures and tables into docs/benchmarks.md) and `plan` (the grid with counts and a time estimate)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.study import page
from benchmarks.study.pareto.analysis import (REFERENCES, Summary, efficiency_table, head_only, nan_as_worst,
                                              pareto_front, plot_task, reference, summarise)
from benchmarks.study.pareto.grid import TaskSpec, count_grid
from benchmarks.study.pareto.runner import read_rows, results_path
from benchmarks.study.pareto.protocol import FAMILY, Protocol
from benchmarks.study.sweep import HEAD_ONLY_FAMILY, LR_GRID, MAX_EXTENSIONS, SWEEP_SEED, Point, choose_lr, \
    lr_text

BEGIN, END = "<!-- pareto-results:begin -->", "<!-- pareto-results:end -->"


def replace_between_markers(text: str, body: str, begin: str = BEGIN, end: str = END) -> str:
    """`text` with this study's generated block (or the one between `begin` and `end`) replaced by `body`."""
    return page.replace_between_markers(text, body, begin, end)


def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _mean_std(s: Summary) -> str:
    text = f"{_pct(s.mean)} ± {100 * s.std:.1f} (n={len(s.accuracies)})"
    return text + (f", {s.failed} diverged" if s.failed else "")


def efficiency_markdown(summaries: Sequence[Summary]) -> list[str]:
    """The table of `efficiency_table`: per method, its best point and the fewest parameters reaching LoRA r=1's
    and r=8's accuracies, with the factor against LoRA."""
    table = efficiency_table(summaries)
    header = "| method | best accuracy, % (params) |"
    rule = "|---|---|"
    for rank in REFERENCES:
        ref = reference(summaries, rank)
        target = f" ({_pct(ref.mean)} %)" if ref else " (not run)"
        header += f" ≥ LoRA r={rank}{target}: params | factor |"
        rule += "---|---|"
    lines = [header, rule]
    for entry in table:
        best = entry["best"]
        cells = [entry["method"], f"{_pct(best.mean)} ({best.params:,})"]
        for rank in REFERENCES:
            found = entry[rank]
            if found is None:
                cells += ["–", "–"]
            elif found["point"] is None:
                cells += ["not reached", "–"]
            else:
                cells += [f"{found['point'].params:,} ({found['point'].budget})",
                          f"{found['factor']:.1f}×" if found["factor"] else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def task_markdown(task: str, rows: Sequence[dict[str, Any]], summaries: Sequence[Summary], figure: str,
                  grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
                  note: str | None = None) -> str:
    ok_rows = [r for r in rows if r["task"] == task]
    first = ok_rows[0]
    per_step = [r["seconds_per_step"] for r in ok_rows if not math.isnan(r["seconds_per_step"])]
    lines = [f"### {task}", ""] + ([note, ""] if note else [])
    lines.append(f"{first['num_classes']} classes (chance: {100 / first['num_classes']:.1f} %); "
                 f"{first['train_size']} training / {first['val_size']} validation images; {first['steps']} steps of "
                 f"batch {first['batch_size']}; head learning rate {first['head_lr']}; model `{first['model']}`. "
                 f"The head ({first['head_params']:,} parameters) is trained in every run and is not in the "
                 f"adapter counts. {len(ok_rows)} runs, {sum(r['seconds'] for r in ok_rows) / 60:.0f} min of "
                 f"training (median {statistics.median(per_step) if per_step else math.nan:.3f} s/step).")
    lines += ["", f"![{task}: accuracy against adapter parameters]({figure})", ""]

    lines += ["Learning rate per family (seed 0 at the sweep point; validation accuracy, %):", "",
              "| family | sweep point | lr: accuracy | chosen |", "|---|---|---|---|"]
    sweep_points = {}
    for r in ok_rows:
        if r["phase"] == "sweep":
            sweep_points[r["family"]] = (r["method"], r["budget"], r["config_hash"])
    for family, (method, budget, key) in sorted(sweep_points.items()):
        results = {lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in ok_rows
                   if r["config_hash"] == key and r["seed"] == SWEEP_SEED}
        chosen, todo = choose_lr(results, grid, max_extensions)
        tried = ", ".join(f"{lr}: {_pct(results[lr][0])}" for lr in sorted(results, key=float))
        note = lr_text(chosen) if chosen is not None else "sweep unfinished"
        if chosen is not None and (float(lr_text(chosen)) in (min(map(float, results)), max(map(float, results)))):
            note += " (edge of the range tried)"
        lines.append(f"| {family} | {method} {budget} | {tried} | {note} |")

    lines += ["", "Fewest adapter parameters reaching LoRA's accuracy (mean over seeds, within 0.5 points); factor = "
              "LoRA's fewest parameters reaching the same accuracy / the method's:", ""]
    lines += efficiency_markdown(summaries)

    on_front = {id(s) for family in {s.family for s in summaries}
                for s in pareto_front([s for s in summaries if s.family == family])}
    lines += ["", "<details><summary>Every point (mean ± std over seeds, %; ✓: on its family's Pareto "
              "front)</summary>", "",
              "| family | method | budget | adapter params | lr | accuracy | front |", "|---|---|---|---|---|---|---|"]
    for s in sorted(summaries, key=lambda s: (s.family, s.method, s.params)):
        lr = "– (head only)" if s.family == HEAD_ONLY_FAMILY else lr_text(s.lr)
        lines.append(f"| {s.family} | {s.method} | {s.budget} | {s.params:,} | {lr} | {_mean_std(s)} | "
                     f"{'✓' if id(s) in on_front else ''} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def claims_markdown(per_task: dict[str, list[Summary]], partial: Sequence[str] = (),
                    baseline_claim: Callable[[str, Sequence[Summary], Sequence[Summary]], list[str]] | None = None,
                    title: str = "### The headline against these runs") -> str:
    """What the measured numbers say about the paper's headline, task by task (generated, no hand-typed numbers).
    `partial`: the tasks whose grid is not complete yet, named in a warning on top. `baseline_claim(task, points,
    points of at most 1,000 parameters)`: the lines on the head-only baseline (default `head_only_claim`)."""
    baseline_claim = baseline_claim or head_only_claim
    lines = [title, ""]
    if partial:
        lines += [f"**Partial results ({', '.join(partial)}): the study was still running; see the note under each "
                  "task.**", ""]
    for task, summaries in per_task.items():
        table = efficiency_table(summaries)
        for rank in REFERENCES:
            ref = reference(summaries, rank)
            if ref is None:
                lines.append(f"- {task}: LoRA r={rank} was not run, so its accuracy cannot be compared.")
                continue
            others = [e for e in table if e["method"] != "LoRA" and e[rank] and e[rank]["factor"]]
            if not others:
                lines.append(f"- {task}, LoRA r={rank}'s accuracy ({_pct(ref.mean)} %): no other method reaches it "
                             "within 0.5 points.")
                continue
            top = max(others, key=lambda e: e[rank]["factor"])
            found = top[rank]["point"]
            lines.append(
                f"- {task}, LoRA r={rank}'s accuracy ({_pct(ref.mean)} ± {100 * ref.std:.1f} %): "
                f"{len(others)} of {len(table) - 1} other methods reach it within 0.5 points; the largest "
                f"factor is {top[rank]['factor']:.1f}× ({top['method']} {found.budget}, {found.params:,} "
                f"parameters, {_pct(found.mean)} ± {100 * found.std:.1f} %). The paper reports up to about 10×.")
        few = [s for s in summaries if s.params <= 1000 and s.family != HEAD_ONLY_FAMILY]
        if few:
            best = max(few, key=lambda s: nan_as_worst(s.mean))
            ref = reference(summaries, 1)
            versus = f" (LoRA r=1: {_pct(ref.mean)} % with {ref.params:,})" if ref else ""
            lines.append(f"- {task}, at most 1,000 adapter parameters: best {_pct(best.mean)} ± "
                         f"{100 * best.std:.1f} % ({best.method} {best.budget}, {best.params:,}){versus}.")
        lines += baseline_claim(task, summaries, few)
    return "\n".join(lines) + "\n"


def head_only_claim(task: str, summaries: Sequence[Summary], few: Sequence[Summary]) -> list[str]:
    """The 0-parameter baseline against the adapters of at most 1,000 parameters: how many beat it by more than
    one standard deviation of the two (a plain margin, not a test)."""
    baseline = head_only(summaries)
    if baseline is None or math.isnan(baseline.mean):
        return [f"- {task}: the head-only baseline (0 adapter parameters) has not been run."]
    measured = [s for s in few if not math.isnan(s.mean)]
    above = [s for s in measured if s.mean - baseline.mean > max(s.std, baseline.std)]
    below = [s for s in measured if s.mean < baseline.mean]
    return [f"- {task}, head only (0 adapter parameters): {_pct(baseline.mean)} ± {100 * baseline.std:.1f} %. Of "
            f"the {len(measured)} adapter points with at most 1,000 parameters, {len(above)} beat it by more than "
            f"one standard deviation and {len(below)} score below it."]


def completeness_note(summaries: Sequence[Summary], points: Sequence[Point], seeds: Sequence[int]) -> str | None:
    """None when every point of the grid has a run for every seed at its family's chosen lr; otherwise a warning
    that says how much is missing (an analysis of a study that is still running, or was stopped)."""
    have = {(s.method, s.budget): len(s.accuracies) + s.failed for s in summaries}
    counts = [have.get((p.method, p.budget), 0) for p in points]
    full = sum(n >= len(seeds) for n in counts)
    if full == len(points):
        return None
    fewer, none = sum(0 < n < len(seeds) for n in counts), sum(n == 0 for n in counts)
    return (f"**Partial results: {full} of {len(points)} points have all {len(seeds)} seeds, {fewer} have fewer and "
            f"{none} none yet.** The study had not finished when this was written (`python benchmarks/pareto.py "
            "run` resumes it); points with fewer seeds are noisier, and every number here can still change.")


def analyse(results: Path, docs: Path, figures: Path | None = None, tasks: Sequence[str] | None = None,
            grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
            points: Sequence[Point] | None = None, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Read `results/pareto_<task>.csv`, write `figures/pareto_<task>.png` and the tables into `docs` between the
    markers (a new page with only the markers is created if `docs` does not exist). With the study's `points` and
    `seeds`, a task with runs still missing is marked as partial. Returns what it wrote."""
    figures = Path(figures or results)
    found = sorted(Path(results).glob("pareto_*.csv"))
    names = [p.stem[len("pareto_"):] for p in found if tasks is None or p.stem[len("pareto_"):] in tasks]
    if not names:
        raise SystemExit(f"no pareto_<task>.csv in {results}; run the study first (python benchmarks/pareto.py run)")
    sections, per_task, partial, written = [], {}, [], {"figures": [], "docs": Path(docs)}
    for task in names:
        rows = read_rows(results_path(results, task))
        if len({r["setup"] for r in rows}) > 1:
            raise SystemExit(f"{results_path(results, task)} mixes runs of different setups; keep one setup per file")
        summaries = summarise(rows, task, grid, max_extensions)
        if not summaries:
            continue
        figure = plot_task(summaries, task, figures / f"pareto_{task}.png", rows[0]["head_params"])
        written["figures"].append(figure)
        link = os.path.relpath(figure, Path(docs).resolve().parent)
        note = completeness_note(summaries, points, seeds) if points and seeds else None
        if note:
            partial.append(task)
        sections.append(task_markdown(task, rows, summaries, link, grid, max_extensions, note))
        per_task[task] = summaries
    claims = claims_markdown(per_task, partial) if per_task else (
        "**No results yet**: no family has finished its learning-rate sweep (`python benchmarks/pareto.py run` "
        "resumes the study).\n")
    written["partial"] = partial
    body = "\n".join([claims, *sections])
    page.write_block(Path(docs), body, BEGIN, END, "Pareto study (generated)")
    written["summaries"] = per_task
    return written


def plan_markdown(points: Sequence[Point], model: str, seeds: Sequence[int], steps: int,
                  seconds_per_step: float | None, overhead_s: float, workers: int,
                  tasks: dict[str, TaskSpec], protocol: Protocol = FAMILY) -> str:
    counted = count_grid(points, model, 4)
    first = next((c for c in counted if c.point.family != HEAD_ONLY_FAMILY), counted[0])  # head-only has no D
    lines = [f"Model `{model}`: D = {first.update_size:,} update entries (q and v of every block), "
             f"LoRA r=1 = {first.lora_r1:,} adapter parameters. Head: "
             + ", ".join(f"{t} {count_grid(points[:1], model, s.classes)[0].head:,}" for t, s in tasks.items())
             + f" parameters (not in the adapter counts). Protocol: {protocol.name}.", "",
             "| family | method | budget | adapter params | steps | sweep point |", "|---|---|---|---|---|---|"]
    for c in counted:
        p = c.point
        sweeps = "yes" if p.sweep or protocol.per_point else ""
        lines.append(f"| {p.family} | {p.method} | {p.budget} | {c.adapter:,} | "
                     f"{protocol.steps_for(c.adapter, steps)} | {sweeps} |")
    if protocol.per_point:
        # per point: its sweep (seed 0 at every grid lr), the other seeds at the chosen lr and, where the sweep
        # chose another lr than the default, at the default too
        low = [len(protocol.sweep_grid(c.point.family)) + len(seeds) - 1 for c in counted]
        high = [n + len(seeds) - 1 for n in low]
        runs_per_point = list(zip(low, high))
        span = f"{sum(low)}–{sum(high)} runs per task"
    else:
        families = len({p.family for p in points} - {HEAD_ONLY_FAMILY})
        sweep_runs = families * (len(protocol.grid) - 1)  # the chosen lr's run is also the sweep point's seed-0 run
        runs_per_point = [(len(seeds), len(seeds))] * len(counted)
        runs_per_point[0] = (len(seeds) + sweep_runs, len(seeds) + sweep_runs)  # (the sum is what matters)
        span = f"{len(points)} points × {len(seeds)} seeds + {sweep_runs} extra sweep runs = " \
               f"{sum(n for n, _ in runs_per_point)} runs per task"
    steps_low = sum(n * protocol.steps_for(c.adapter, steps) for (n, _), c in zip(runs_per_point, counted))
    steps_high = sum(n * protocol.steps_for(c.adapter, steps) for (_, n), c in zip(runs_per_point, counted))
    runs = sum(high for _, high in runs_per_point) * len(tasks)
    total_steps = steps_high * len(tasks)
    lines += ["", f"{span}; for {len(tasks)} tasks at most {runs} runs and {total_steps:,} steps "
              f"(at least {steps_low * len(tasks):,}; each sweep extension past the lr range adds one run)."]
    if seconds_per_step:
        hours = (total_steps * seconds_per_step + runs * overhead_s) / 3600 / workers
        lines.append(f"At {seconds_per_step} s/step and {overhead_s} s per run on each of {workers} worker(s): "
                     f"at most about {hours:.1f} h.")
    return "\n".join(lines)
