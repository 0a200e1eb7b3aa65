"""What the ViT study's rows say: one summary per point at its family's chosen lr, the Pareto front, the fewest
parameters reaching LoRA's accuracy (the efficiency factors), and the accuracy-against-parameters figure."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study import page
from benchmarks.study.sweep import HEAD_ONLY_FAMILY, LR_GRID, MAX_EXTENSIONS, SWEEP_SEED, choose_lr, lr_text

TOLERANCE = 0.005  # "reaches an accuracy": within 0.5 points of it
REFERENCES = (1, 8)  # LoRA ranks whose accuracy the table asks for


@dataclass(frozen=True)
class Summary:
    """One point of a curve: the runs of one config at its family's chosen lr."""

    task: str
    family: str
    method: str
    budget: str
    params: int
    lr: float
    accuracies: tuple[float, ...]
    failed: int  # runs whose loss became non-finite

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def summarise(rows: Sequence[dict[str, Any]], task: str, grid: Sequence[float] = LR_GRID,
              max_extensions: int = MAX_EXTENSIONS) -> list[Summary]:
    """Per point of `task`: the runs at its family's chosen lr (families whose sweep is unfinished are left out).

    The sweep points are the rows of phase "sweep". A family without sweep rows whose runs all share one lr (a
    `--fixed-lr` smoke run) is shown at that lr."""
    task_rows = [r for r in rows if r["task"] == task]
    sweep_keys = {(r["family"], r["config_hash"]) for r in task_rows if r["phase"] == "sweep"}
    lrs: dict[str, float | None] = {}
    for family, key in sweep_keys:
        results = {lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in task_rows
                   if r["config_hash"] == key and r["seed"] == SWEEP_SEED}
        lrs[family] = choose_lr(results, grid, max_extensions)[0]
    for family in {r["family"] for r in task_rows} - set(lrs):
        used = {lr_text(r["lr"]) for r in task_rows if r["family"] == family}
        if len(used) == 1:
            lrs[family] = float(used.pop())
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in task_rows:
        lr = lrs.get(row["family"])
        if lr is not None and lr_text(row["lr"]) == lr_text(lr):
            groups[(row["method"], row["config_hash"])].append(row)
    summaries = []
    for (method, _), group in groups.items():
        ok = [r["accuracy"] for r in group if r["status"] == "ok"]
        first = group[0]
        summaries.append(Summary(task, first["family"], method, first["budget"], first["adapter_params"],
                                 float(first["lr"]), tuple(ok), len(group) - len(ok)))
    return sorted(summaries, key=lambda s: (s.method, s.params))


def pareto_front(summaries: Sequence[Summary]) -> list[Summary]:
    """The points no other point beats with as few or fewer parameters (by mean accuracy), fewest first."""
    front, best = [], -math.inf
    for s in sorted(summaries, key=lambda s: (s.params, -s.mean)):
        if not math.isnan(s.mean) and s.mean > best:
            front.append(s)
            best = s.mean
    return front


def fewest_reaching(summaries: Sequence[Summary], target: float, tolerance: float = TOLERANCE) -> Summary | None:
    """The point with the fewest parameters whose mean accuracy is at least target - tolerance."""
    reaching = [s for s in summaries if not math.isnan(s.mean) and s.mean >= target - tolerance - 1e-12]
    return min(reaching, key=lambda s: (s.params, -s.mean)) if reaching else None


def reference(summaries: Sequence[Summary], rank: int) -> Summary | None:
    found = [s for s in summaries if s.method == "LoRA" and s.budget == f"r={rank}"]
    return found[0] if found else None


def head_only(summaries: Sequence[Summary]) -> Summary | None:
    """The 0-parameter baseline (the head trained alone), when the study ran it."""
    found = [s for s in summaries if s.family == HEAD_ONLY_FAMILY]
    return found[0] if found else None


def efficiency_table(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """Per adapter method: for each reference (LoRA r=1, r=8), the fewest parameters reaching its mean accuracy
    within 0.5 points, and the factor = LoRA's fewest parameters reaching it / the method's (> 1: fewer than LoRA).
    Head-only (0 parameters, no factor to speak of) is left out; `head_only` reports it."""
    by_method: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        if s.family != HEAD_ONLY_FAMILY:
            by_method[s.method].append(s)
    lora = by_method.get("LoRA", [])
    table = []
    for method, points in sorted(by_method.items(), key=lambda kv: (kv[0] != "LoRA", min(s.params for s in kv[1]))):
        entry: dict[str, Any] = {"method": method, "family": points[0].family,
                                 "best": max(points, key=lambda s: (nan_as_worst(s.mean), -s.params))}
        for rank in REFERENCES:
            ref = reference(summaries, rank)
            if ref is None:
                entry[rank] = None
                continue
            mine = fewest_reaching(points, ref.mean)
            theirs = fewest_reaching(lora, ref.mean)
            factor = theirs.params / mine.params if mine is not None and theirs is not None else None
            entry[rank] = {"target": ref.mean, "point": mine, "factor": factor}
        table.append(entry)
    return table


def nan_as_worst(value: float) -> float:
    """A mean accuracy to rank by: NaN (no finished run) ranks below every number."""
    return -math.inf if math.isnan(value) else value


PANELS = (("LoRA and the per-layer methods", ("lora", "loha", "lokr", "lotr")),
          ("SuperLoRA 2D: groups, grouping, shuffle", ("superlora-2d",)),
          ("LoRTA (order M) and LoNKr (K pieces)", ("lorta", "lonkr")),
          ("Fastfood projection (ρ < 1)", ("fastfood",)))


def spread(s: Summary, intervals: bool = False) -> tuple[float, float]:
    """How far a point's bar reaches below and above its mean: ± std over seeds, or (`intervals`) to the ends of its
    `interval` (a summary that has one, e.g. the per-point report's)."""
    if intervals:
        low, high = s.interval  # type: ignore[attr-defined]
        return s.mean - low, high - s.mean
    return s.std, s.std


def _draw(ax, points: Sequence[Summary], intervals: bool, hollow: Callable[[Summary], bool] | None,
          colour: Any, marker: str, **style: Any) -> None:
    """One method's line with its bars; the points `hollow` picks get an open marker drawn over them."""
    points = sorted(points, key=lambda s: s.params)
    bars = [spread(s, intervals) for s in points]
    ax.errorbar([s.params for s in points], [100 * s.mean for s in points],
                yerr=[[100 * low for low, _ in bars], [100 * high for _, high in bars]], color=colour,
                marker=marker, markersize=5, capsize=2, **style)
    opened = [s for s in points if hollow is not None and hollow(s)]
    if opened:
        ax.scatter([s.params for s in opened], [100 * s.mean for s in opened], marker=marker, s=36,
                   facecolors="white", edgecolors=colour, linewidths=1.2, zorder=style.get("zorder", 2) + 1)


def plot_task(summaries: Sequence[Summary], task: str, path: Path, head_params: int | None = None,
              intervals: bool = False, hollow: Callable[[Summary], bool] | None = None,
              hollow_note: str = "") -> Path:
    """Accuracy (mean ± std over seeds) against adapter parameters: one panel per group of families (`PANELS`),
    one line per method, LoRA and the Pareto front over all adapter methods in every panel, LoRA r=1's and r=8's
    accuracies with their 0.5-point tolerance band, and head-only (0 parameters, off a log axis) as a red line
    with its ± std band. `intervals`: the bars and head-only's band are each point's 95 % bootstrap interval
    instead. `hollow`: the points it picks get open markers, which `hollow_note` explains. A PNG via matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = head_only(summaries)
    summaries = [s for s in summaries if s.family != HEAD_ONLY_FAMILY]
    known = {family for _, families in PANELS for family in families}
    panels = [(title, families) for title, families in PANELS
              if any(s.family in families and s.method != "LoRA" for s in summaries)]
    rest = sorted({s.family for s in summaries} - known)
    if rest:
        panels.append(("other families", tuple(rest)))
    panels = panels or [("LoRA", ("lora",))]
    columns = 1 if len(panels) == 1 else 2
    rows_ = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(7 * columns, 4.8 * rows_), dpi=100, sharex=True, sharey=True,
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    markers = "sD^v<>pPX*h"
    front = pareto_front(summaries)
    lora = sorted((s for s in summaries if s.method == "LoRA"), key=lambda s: s.params)
    for ax, (title, families) in zip(axes.flat, panels):
        for rank, style in zip(REFERENCES, (":", "--")):
            ref = reference(summaries, rank)
            if ref is not None:
                ax.axhline(100 * ref.mean, color="grey", linestyle=style, linewidth=1)
                ax.axhspan(100 * (ref.mean - TOLERANCE), 100 * ref.mean, color="grey", alpha=0.12)
                ax.annotate(f"LoRA r={rank}", (1.0, 100 * ref.mean), xycoords=("axes fraction", "data"),
                            ha="right", va="bottom", fontsize=7, color="grey")
        if baseline is not None and not math.isnan(baseline.mean):
            ax.axhline(100 * baseline.mean, color="tab:red", linestyle="-.", linewidth=1)
            below, above = spread(baseline, intervals)
            ax.axhspan(100 * (baseline.mean - below), 100 * (baseline.mean + above), color="tab:red", alpha=0.08)
            ax.annotate("head only (0 adapter parameters)", (0.0, 100 * baseline.mean),
                        xycoords=("axes fraction", "data"), ha="left", va="bottom", fontsize=7, color="tab:red")
        if front:
            ax.step([s.params for s in front], [100 * s.mean for s in front], where="post", color="grey",
                    linewidth=0.8, label="Pareto front, all methods")
        if lora:
            _draw(ax, lora, intervals, hollow, "black", "o", label="LoRA", linewidth=2, zorder=3)
        # Ties in parameters are broken by name: a set's order changes with the hash seed, and so the colours.
        methods = sorted({s.method for s in summaries if s.family in families and s.method != "LoRA"},
                         key=lambda m: (min(s.params for s in summaries if s.method == m), m))
        for index, method in enumerate(methods):
            _draw(ax, [s for s in summaries if s.method == method], intervals, hollow, colours(index % 10),
                  markers[index % len(markers)], label=method, linewidth=1.2)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    head = f"the head's {head_params:,} not included" if head_params is not None else "the head not included"
    fig.supxlabel(f"adapter parameters (log scale; {head})" + (f"; {hollow_note}" if hollow_note else ""),
                  fontsize=10)
    bars = "mean; bars: 95 % interval" if intervals else "mean ± std over seeds"
    fig.supylabel(f"validation accuracy, % ({bars})", fontsize=10)
    fig.suptitle(f"{task}: accuracy against adapter parameters")
    return page.save_figure(fig, path)
