"""The diffusion study's words: its section of docs/benchmarks.md (what reproduced, the tables), the
partial-results warning, `analyse` (figures and section) and `plan` (the grid with counts and a time estimate)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.study import page
from benchmarks.study.diffusion_transfer.analysis import (PAPER_FACTOR, TOLERANCE, Summary, headline,
                                                          improvement_share, lora_front, lora_params_at, plot,
                                                          reference, samples_figure, summarise)
from benchmarks.study.diffusion_transfer.grid import TARGETS, Spec, count_grid
from benchmarks.study.diffusion_transfer.runner import CSV_NAME, read_rows, sweep_scores, task_data
from benchmarks.study.sweep import LR_GRID, MAX_EXTENSIONS, Point, choose_lr, lr_text
from superlora import diffusion

FIGURE_NAME = "diffusion_transfer.png"
SAMPLES_NAME = "diffusion_samples.png"
BEGIN, END = "<!-- diffusion-results:begin -->", "<!-- diffusion-results:end -->"


def replace_between_markers(text: str, body: str) -> str:
    return page.replace_between_markers(text, body, BEGIN, END)


def _loss(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.5f}"


def best_factor_lines(summaries: Sequence[Summary], front: Sequence[Summary]) -> list[str]:
    """The claims line for the largest equal-loss factor against LoRA at any loss LoRA's curve covers."""
    factors = [(lora_params_at(s.mean, front) / s.params, s) for s in summaries
               if s.method != "LoRA" and lora_params_at(s.mean, front) is not None]
    if not factors:
        return []
    factor, s = max(factors, key=lambda fs: (fs[0], -fs[1].params))
    return [f"- Largest equal-loss factor at any loss LoRA's ranks span: {factor:.1f}× ({s.method} {s.budget}, "
            f"{s.params:,} parameters, loss {_loss(s.mean)}, which LoRA reaches with about "
            f"{lora_params_at(s.mean, front):,.0f}); {sum(f > 1 for f, _ in factors)} point(s) beat LoRA at their "
            "own loss."]


def unstable_lines(summaries: Sequence[Summary], base: Summary | None) -> list[str]:
    """The claims line for points that ended worse than the untouched model in some seed: at their family's one lr
    they are unstable, so their row says more about the lr rule than about the method."""
    if base is None or math.isnan(base.mean):
        return []
    bad = [s for s in summaries if s.failed or any(loss > base.mean for loss in s.losses)]
    if not bad:
        return []
    named = "; ".join(f"{s.method} {s.budget} ({', '.join(_loss(x) for x in s.losses)}"
                      f"{f', {s.failed} diverged' if s.failed else ''})" for s in bad)
    return [f"- **Unstable at their family's lr**: {len(bad)} point(s) ended above the untouched model's loss in at "
            f"least one seed: {named}. One lr per family, chosen at its sweep point, is too large for them; "
            "their numbers measure that rule, not the method (the ViT study's per-point protocol, "
            "benchmarks/study/pareto/protocol.py, gives every point its own lr)."]


def markdown(rows: Sequence[dict[str, Any]], base: Summary | None, summaries: Sequence[Summary], figure: str,
             samples: str | None, note: str | None, grid: Sequence[float], max_extensions: int) -> str:
    """The generated part of the diffusion section: the plain statement, the figure, the tables."""
    first = next((r for r in rows if r["phase"] != "baseline"), rows[0])
    ref = reference(summaries)
    found = headline(summaries)
    front = lora_front(summaries)
    lines = ([note, ""] if note else []) + ["#### What reproduced and what did not", ""]
    if base is not None:
        lines.append(f"- The pretrained UNet without an adapter: loss {_loss(base.mean)} on the bold evaluation "
                     "digits.")
    if found is None:
        lines.append("- LoRA r=8 was not run, so the paper's comparison at its loss cannot be made yet.")
    else:
        lines.append(f"- LoRA r=8 ({ref.params:,} parameters): loss {_loss(ref.mean)} ± {ref.std:.5f}.")
        if found["point"] is None:
            lines.append(f"- **Not reproduced**: no other method reaches LoRA r=8's loss (within {100 * TOLERANCE:.1f} "
                         f"%), so there is no factor to set against the paper's {PAPER_FACTOR:.1f}×.")
        else:
            p, factor = found["point"], found["factor"]
            verdict = ("**Reproduced**" if factor >= PAPER_FACTOR else "**Partly reproduced**" if factor > 1
                       else "**Not reproduced**")
            lines.append(f"- {verdict}: the fewest parameters reaching LoRA r=8's loss (within "
                         f"{100 * TOLERANCE:.1f} %) are {p.params:,} ({p.method} {p.budget}, loss {_loss(p.mean)} "
                         f"± {p.std:.5f}), "
                         f"{factor:.1f}× fewer than LoRA r=8; the paper reports about {PAPER_FACTOR:.1f}× "
                         f"(8,160 against 75,776). {found['reaching']} method(s) besides LoRA reach that loss.")
    few = [s for s in summaries if s.params <= 100 and not math.isnan(s.mean)]
    if few:
        best = min(few, key=lambda s: s.mean)
        share = improvement_share(best, base, ref)
        text = f", {100 * share:.0f} % of LoRA r=8's loss reduction" if share is not None else ""
        lines.append(f"- At most 100 parameters (the paper's 31-parameter regime): best loss {_loss(best.mean)} "
                     f"({best.method} {best.budget}, {best.params:,} parameters{text}).")
    lines += best_factor_lines(summaries, front)
    lines += unstable_lines(summaries, base)
    lines += ["", f"![denoising loss against adapter parameters]({figure})", ""]
    if samples:
        lines += [f"![samples of every method, same noise]({samples})", ""]
    lines += [f"{first['train_images']} training / {first['eval_images']} evaluation images; {first['steps']} steps of "
              f"batch {first['batch_size']}; loss over {first['eval_timesteps']} timesteps × {first['eval_draws']} "
              f"noise draw(s); {len(rows)} runs, {sum(r['seconds'] for r in rows) / 60:.0f} min.", ""]
    lines += ["Equal-loss factor: LoRA's parameters at the same loss (its curve interpolated in log parameters "
              "between measured ranks) / the method's. Share: the fraction of LoRA r=8's loss reduction from the "
              "pretrained model.", "",
              "| method | budget | adapter params | lr | loss (mean ± std, n) | share of LoRA r=8's gain | "
              "equal-loss factor vs LoRA |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        share = improvement_share(s, base, ref)
        equal = lora_params_at(s.mean, front)
        if equal is not None:
            factor = f"{equal / s.params:.1f}×"
        elif front and not math.isnan(s.mean) and s.mean < front[-1].mean:
            factor = f"> {front[-1].params / s.params:.1f}× (below LoRA's lowest loss)"
        else:
            factor = "– (above LoRA r=1's loss)" if front else "–"
        lines.append(f"| {s.method} | {s.budget} | {s.params:,} | {lr_text(s.lr)} | {_loss(s.mean)} ± {s.std:.5f} "
                     f"(n={len(s.losses)}{f', {s.failed} diverged' if s.failed else ''}) | "
                     f"{'–' if share is None else f'{100 * share:.0f} %'} | {factor} |")
    lines += ["", "Learning rate per family (seed 0 at the sweep point; evaluation loss):", "",
              "| family | sweep point | lr: loss | chosen |", "|---|---|---|---|"]
    sweeps = {(r["family"], r["method"], r["budget"], r["config_hash"]) for r in rows if r["phase"] == "sweep"}
    for family, method, budget, key in sorted(sweeps):
        scores = sweep_scores(rows, key)
        chosen = choose_lr(scores, grid, max_extensions)[0]
        tried = ", ".join(f"{lr}: {_loss(scores[lr][1])}" for lr in sorted(scores, key=float))
        lines.append(f"| {family} | {method} {budget} | {tried} | "
                     f"{lr_text(chosen) if chosen is not None else 'sweep unfinished'} |")
    return "\n".join(lines) + "\n"


def completeness_note(summaries: Sequence[Summary], points: Sequence[Point], seeds: Sequence[int]) -> str | None:
    """None when every point has all seeds at its family's chosen lr; otherwise a warning saying how many do."""
    have = {s.key: len(s.losses) + s.failed for s in summaries}
    full = sum(have.get(p.key, 0) >= len(seeds) for p in points)
    if full == len(points):
        return None
    return (f"**Partial results: {full} of {len(points)} points have all {len(seeds)} seeds.** The study had not "
            "finished when this was written (`python benchmarks/diffusion_transfer.py run` resumes it); every number "
            "here can still change.")


def analyse(out: Path, docs: Path, points: Sequence[Point], seeds: Sequence[int], spec: Spec,
            grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS) -> dict[str, Any]:
    """Read `out/diffusion_transfer.csv`; write the figure and the sample grid beside it and the section into `docs`
    between the diffusion markers (a page with only the markers is created if `docs` does not exist)."""
    rows = read_rows(Path(out) / CSV_NAME)
    if not rows:
        raise SystemExit(f"no {CSV_NAME} in {out}; run the study first (python benchmarks/diffusion_transfer.py run)")
    if len({r["setup"] for r in rows}) > 1:
        raise SystemExit(f"{Path(out) / CSV_NAME} mixes runs of different setups; keep one setup per file")
    base, summaries = summarise(rows, grid, max_extensions)
    docs = Path(docs)
    figure = plot(base, summaries, Path(out) / FIGURE_NAME)
    _, evaluation = task_data(spec.eval_images)
    targets = diffusion.image_grid(evaluation[:spec.sample_count], columns=spec.sample_count)
    samples = samples_figure(Path(out), base, summaries, targets, Path(out) / SAMPLES_NAME)

    def link(path: Path | None) -> str | None:
        return os.path.relpath(path, docs.resolve().parent) if path else None

    note = completeness_note(summaries, points, seeds)
    body = markdown(rows, base, summaries, link(figure), link(samples), note, grid, max_extensions)
    page.write_block(docs, body, BEGIN, END, "Diffusion transfer (generated)")
    return {"figure": figure, "samples": samples, "docs": docs, "base": base, "summaries": summaries,
            "headline": headline(summaries), "partial": note is not None}


def plan_markdown(points: Sequence[Point], model: Path, seeds: Sequence[int], spec: Spec, workers: int,
                  timing: tuple[float, float] | None) -> str:
    counted = count_grid(points, model)
    first = counted[0]
    lines = [f"Model `{model}`: targets {', '.join(TARGETS)} of every attention block, D = {first.update_size:,} "
             f"update entries, LoRA r=1 = {first.lora_r1:,} adapter parameters; base model {first.base:,} "
             "parameters.", "",
             "| family | method | budget | adapter params | sweep point |", "|---|---|---|---|---|"]
    for c in counted:
        p = c.point
        lines.append(f"| {p.family} | {p.method} | {p.budget} | {c.adapter:,} | {'yes' if p.sweep else ''} |")
    families = len({p.family for p in points})
    sweep_runs = families * (len(LR_GRID) - 1)
    runs = len(points) * len(seeds) + sweep_runs
    seed0 = len(points) + sweep_runs + 1
    lines += ["", f"{len(points)} points × {len(seeds)} seeds + {sweep_runs} extra sweep runs + the pretrained "
              f"model = {runs + 1} runs of {spec.steps} steps (each sweep extension past the lr range adds one)."]
    if timing:
        per_step, per_image = timing
        train = runs * spec.steps * per_step
        evaluate = (runs + 1) * spec.eval_images * spec.eval_timesteps * spec.eval_draws * per_image
        sampling = seed0 * spec.sample_count * spec.sample_steps * per_image
        hours = (train + evaluate + sampling) / 3600 / workers
        lines.append(f"Measured here: {per_step:.2f} s per training step (batch {spec.batch_size}, LoRA r=8), "
                     f"{1000 * per_image:.1f} ms per image and timestep evaluated. Training {train / 3600:.1f} h, "
                     f"evaluation {evaluate / 3600:.1f} h, samples {sampling / 3600:.2f} h: about {hours:.1f} h on "
                     f"{workers} worker(s) (if each has a core of its own).")
    return "\n".join(lines)
