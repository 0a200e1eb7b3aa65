"""What the diffusion study's rows say: one summary per point at its family's chosen lr, LoRA's loss curve
interpolated in log parameters, the headline factor at LoRA r=8's loss, and the loss and sample figures."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study import page
from benchmarks.study.diffusion_transfer.grid import BASELINE
from benchmarks.study.diffusion_transfer.runner import strip_path, sweep_scores
from benchmarks.study.sweep import LR_GRID, MAX_EXTENSIONS, choose_lr, lr_text
from superlora.files import atomic_write

TOLERANCE = 0.005  # "reaches a loss": at most 0.5 % above it
PAPER_FACTOR = 75_776 / 8_160  # LoRA r=8's parameters / LoRTA's at the same loss, from the paper's figure files


@dataclass(frozen=True)
class Summary:
    """One point of a curve: the runs of one config at its family's chosen lr."""

    family: str
    method: str
    budget: str
    key: str
    params: int
    lr: float
    losses: tuple[float, ...]
    failed: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.losses) if self.losses else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.losses) if len(self.losses) > 1 else 0.0


def summarise(rows: Sequence[dict[str, Any]], grid: Sequence[float] = LR_GRID,
              max_extensions: int = MAX_EXTENSIONS) -> tuple[Summary | None, list[Summary]]:
    """(the pretrained model's point, every adapter point at its family's chosen lr; unfinished sweeps left out)."""
    baseline = [r for r in rows if r["phase"] == "baseline"]
    base = Summary("pretrained", BASELINE, "–", "none", 0, 0.0, (baseline[0]["eval_loss"],), 0) if baseline else None
    lrs: dict[str, float] = {}
    for family, key in {(r["family"], r["config_hash"]) for r in rows if r["phase"] == "sweep"}:
        lr = choose_lr(sweep_scores(rows, key), grid, max_extensions)[0]
        if lr is not None:
            lrs[family] = lr
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        lr = lrs.get(row["family"])
        if row["phase"] != "baseline" and lr is not None and lr_text(row["lr"]) == lr_text(lr):
            groups[(row["method"], row["config_hash"])].append(row)
    summaries = []
    for (method, key), group in groups.items():
        ok = tuple(r["eval_loss"] for r in group if r["status"] == "ok")
        first = group[0]
        summaries.append(Summary(first["family"], method, first["budget"], key, first["adapter_params"],
                                 float(first["lr"]), ok, len(group) - len(ok)))
    return base, sorted(summaries, key=lambda s: (s.method != "LoRA", s.method, s.params))


def lora_front(summaries: Sequence[Summary]) -> list[Summary]:
    """LoRA's points by parameters, keeping each one that beats every smaller rank (a curve falling with params)."""
    front, best = [], math.inf
    for s in sorted((s for s in summaries if s.method == "LoRA"), key=lambda s: s.params):
        if not math.isnan(s.mean) and s.mean < best:
            front.append(s)
            best = s.mean
    return front


def lora_params_at(loss: float, front: Sequence[Summary]) -> float | None:
    """The LoRA parameters that reach `loss`, interpolating LoRA's loss linearly in log(parameters) between its
    measured ranks; None outside the measured range (worse than its smallest rank, better than its largest)."""
    if not front or math.isnan(loss) or loss > front[0].mean or loss < front[-1].mean:
        return None
    if len(front) == 1 or loss == front[0].mean:
        return float(front[0].params)
    for low, high in zip(front, front[1:]):
        if high.mean <= loss <= low.mean:
            t = (low.mean - loss) / (low.mean - high.mean)
            return math.exp(math.log(low.params) + t * (math.log(high.params) - math.log(low.params)))
    return None


def reference(summaries: Sequence[Summary], rank: int = 8) -> Summary | None:
    found = [s for s in summaries if s.method == "LoRA" and s.budget == f"r={rank}"]
    return found[0] if found else None


def headline(summaries: Sequence[Summary]) -> dict[str, Any] | None:
    """The fewest-parameter non-LoRA point reaching LoRA r=8's mean loss (within TOLERANCE) and its factor."""
    ref = reference(summaries)
    if ref is None:
        return None
    reaching = [s for s in summaries if s.method != "LoRA" and not math.isnan(s.mean)
                and s.mean <= ref.mean * (1 + TOLERANCE)]
    best = min(reaching, key=lambda s: (s.params, s.mean)) if reaching else None
    return {"reference": ref, "point": best, "factor": ref.params / best.params if best else None,
            "reaching": len({s.method for s in reaching})}


def improvement_share(s: Summary, base: Summary | None, ref: Summary | None) -> float | None:
    """How much of LoRA r=8's loss reduction (from the pretrained model) a point achieves: 1 = as much."""
    if base is None or ref is None or base.mean == ref.mean:
        return None
    return (base.mean - s.mean) / (base.mean - ref.mean)


PANELS = (("LoRTA and its Fastfood projections", ("lorta", "fastfood")),
          ("SuperLoRA 2D and LoNKr", ("superlora-2d", "lonkr")))


def loss_limits(base: Summary | None, summaries: Sequence[Summary]) -> tuple[float, float] | None:
    """The loss axis: from a little below the lowest mean to a little above the untouched model's loss (None
    without the untouched model, or when every mean fits within that range anyway)."""
    means = [s.mean for s in summaries if not math.isnan(s.mean)]
    if base is None or not means or max(means) <= base.mean:
        return None
    span = base.mean - min(means)
    return min(means) - 0.15 * span, base.mean + 0.35 * span


def plot(base: Summary | None, summaries: Sequence[Summary], path: Path) -> Path:
    """Evaluation loss (mean ± std over seeds) against adapter parameters, log x; LoRA in both panels, the
    pretrained model and LoRA r=8 as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if any(s.family in p[1] for s in summaries)] or [("LoRA", ())]
    known = {f for _, families in PANELS for f in families}
    rest = tuple(sorted({s.family for s in summaries} - known - {"lora"}))
    if rest:
        panels.append(("other families", rest))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), dpi=100, sharey=True, squeeze=False)
    colours, markers = plt.get_cmap("tab10"), "sD^v<>pPX*h"
    lora = sorted((s for s in summaries if s.method == "LoRA"), key=lambda s: s.params)
    ref = reference(summaries)
    for ax, (title, families) in zip(axes.flat, panels):
        if base is not None:
            ax.axhline(base.mean, color="#d62728", linestyle="--", linewidth=1)
            ax.annotate(BASELINE, (0.01, base.mean), xycoords=("axes fraction", "data"), va="bottom", fontsize=7,
                        color="#d62728")
        if ref is not None:
            ax.axhline(ref.mean, color="grey", linestyle=":", linewidth=1)
            ax.axhspan(ref.mean, ref.mean * (1 + TOLERANCE), color="grey", alpha=0.15)
            ax.annotate("LoRA r=8", (1.0, ref.mean), xycoords=("axes fraction", "data"), ha="right", va="top",
                        fontsize=7, color="grey")
        if lora:
            ax.errorbar([s.params for s in lora], [s.mean for s in lora], yerr=[s.std for s in lora], label="LoRA",
                        color="black", marker="o", markersize=5, linewidth=2, capsize=2, zorder=3)
        # Ties in parameters are broken by name: a set's order changes with the hash seed, and so the colours.
        methods = sorted({s.method for s in summaries if s.family in families},
                         key=lambda m: (min(s.params for s in summaries if s.method == m), m))
        for index, method in enumerate(methods):
            points = sorted((s for s in summaries if s.method == method), key=lambda s: s.params)
            ax.errorbar([s.params for s in points], [s.mean for s in points], yerr=[s.std for s in points],
                        label=method, color=colours(index % 10), marker=markers[index % len(markers)], markersize=5,
                        linewidth=1.2, capsize=2)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6.5, loc="center right")
    limits = loss_limits(base, summaries)
    if limits is not None:  # unstable points far above the untouched model would flatten every other point
        for ax, (_, families) in zip(axes.flat, panels):
            ax.set_ylim(*limits)
            off = [s for s in summaries if s.family in families and s.mean > limits[1]]
            for s in off:
                ax.plot([s.params], [limits[1]], marker="^", color="#d62728", markersize=7, clip_on=False)
            if off:
                ax.annotate("▲ off scale (unstable at the family's lr): " + "; ".join(
                    f"{s.method} {s.budget} {s.mean:.3f}" for s in off), (0.01, 0.97), xycoords="axes fraction",
                    va="top", fontsize=6.5, color="#d62728", wrap=True)
    fig.supxlabel("adapter parameters (log scale)", fontsize=10)
    fig.supylabel("held-out denoising loss (lower is better)", fontsize=10)
    fig.suptitle("Bold-stroke digits: denoising loss against adapter parameters")
    return page.save_figure(fig, path)


def samples_figure(out: Path, base: Summary | None, summaries: Sequence[Summary], targets_strip,
                   path: Path) -> Path | None:
    """One labelled row per method and budget (seed 0 at the chosen lr), under the target style and the
    pretrained model's samples; every row is sampled from the same noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    rows = [("target style (evaluation images)", targets_strip)]
    for s in ([base] if base else []) + sorted(summaries, key=lambda s: (s.family != "lora", s.family, s.params)):
        strip = strip_path(out, s.key, s.lr)
        if strip.is_file():
            label = s.method if s is base else f"{s.method} {s.budget} ({s.params:,})"
            rows.append((label, np.asarray(Image.open(strip))))
    if len(rows) < 2:
        return None
    height, width = rows[0][1].shape
    fig, axes = plt.subplots(len(rows), 1, figsize=(width / 40 + 3.2, len(rows) * (height / 40 + 0.05)), dpi=100,
                             squeeze=False)
    for ax, (label, image) in zip(axes.flat, rows):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.42, right=0.99, top=0.99, bottom=0.01, hspace=0.08)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
