"""Training figures: loss and accuracy curves from a run's events, history or metrics file; confusion matrix.

Curves accept one run or several (a mapping run name -> run) so two configs can be compared on one figure.
A run is any of: a list of metric records (dicts with a `step` and metric values, as `TrainResult.history`
holds them), a list of `TrainEvent`s (their `metrics`, tagged with the event kind), the path of a `.jsonl`,
`.json` or `.csv` metrics file holding such records, or a run folder (its `metrics.json` history).

Names follow the run folder's history columns: a step event's `loss` stays `loss` (per step), an epoch-end
`train_loss` stays `train_loss`, and an eval event's `loss` / `accuracy` become `val_loss` / `val_accuracy`, so
live events and a finished run's history draw the same lines.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from superlora.errors import DataError
from superlora.viz.common import GROUP_PALETTE, TEMPLATE, new_figure

# Event kinds whose metrics are points on a curve (start/checkpoint/done carry none worth plotting).
CURVE_KINDS = ("step", "epoch_end", "eval")
PANELS = (("loss", "loss"), ("acc", "accuracy"))
_NOT_A_CURVE = ("step", "epoch", "kind", "total_steps", "eta_s", "elapsed_s", "best_step", "best_epoch")


def _on_panel(name: str, needle: str) -> bool:
    """Loss-like or accuracy-like curves; per-class (`accuracy/ok`) and running-best values stay off the chart."""
    return needle in name.lower() and "/" not in name and "best" not in name

Run = Union[str, os.PathLike, Sequence[Mapping[str, Any]], Sequence[Any]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """A serialised event {kind, step, metrics: {...}} or a flat record -> one flat record."""
    flat = {k: v for k, v in record.items() if k != "metrics"}
    if isinstance(record.get("metrics"), Mapping):
        flat.update(record["metrics"])
    return flat


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        from superlora.runs import METRICS_JSON

        path = path / METRICS_JSON
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"cannot read metrics file {path}: {err}") from err
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.suffix == ".json":
            data = json.loads(text)
            return list(data.get("history", data) if isinstance(data, dict) else data)
    except json.JSONDecodeError as err:
        raise DataError(f"metrics file {path} is not valid JSON: {err}") from err
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    raise DataError(f"metrics file {path}: expected .jsonl, .json or .csv")


def metric_records(run: Run) -> list[dict[str, Any]]:
    """The flat metric records of a run (see the module docstring for what a run may be)."""
    if isinstance(run, (str, os.PathLike)):
        items: Iterable[Any] = _read_file(Path(run))
    else:
        items = run
    records = []
    for item in items:
        if isinstance(item, Mapping):
            record = _flatten(item)
        elif hasattr(item, "metrics") and hasattr(item, "kind"):
            record = {"kind": item.kind, "step": item.step, "epoch": getattr(item, "epoch", None), **item.metrics}
        else:
            raise DataError(f"a run holds metric dicts or TrainEvents, not {type(item).__name__}")
        if record.get("kind", "step") in CURVE_KINDS:
            records.append(record)
    return records


def metric_name(key: str, kind: str | None) -> str:
    """The curve a metric belongs to: eval metrics get the `val_` prefix of the run history's columns."""
    if kind == "eval" and not key.startswith("val_"):
        return f"val_{key}"
    return key


def metric_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Series name (see `metric_name`) -> (steps, values), for every numeric metric of the records."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, record in enumerate(records):
        step = _number(record.get("step"))
        step = float(index) if step is None else step
        kind = record.get("kind")
        for key, value in record.items():
            number = _number(value)
            if key in _NOT_A_CURVE or number is None:
                continue
            label = metric_name(key, kind)
            xs, ys = series.setdefault(label, ([], []))
            xs.append(step)
            ys.append(number)
    return series


def curves_figure(runs: Run | Mapping[str, Run], title: str | None = None) -> go.Figure:
    """Loss (left) and accuracy (right) against step; several runs share colours per run.

    Every metric whose name contains "loss" goes left and "acc" right (per-class and best-so-far values are
    left out); trace meta holds {"run", "metric"} so a caller can find a curve again.
    """
    named = dict(runs) if isinstance(runs, Mapping) else {"": runs}
    figure = make_subplots(rows=1, cols=2, subplot_titles=[label for _, label in PANELS], horizontal_spacing=0.1)
    dashes = ("solid", "dot", "dash", "dashdot", "longdash")
    for run_index, (run_name, run) in enumerate(named.items()):
        series = metric_series(metric_records(run))
        for col, (needle, _) in enumerate(PANELS, start=1):
            chosen = [label for label in series if _on_panel(label, needle)]
            for line_index, label in enumerate(chosen):
                xs, ys = series[label]
                # One run: a colour per metric (the same in both panels). Several: a colour per run, a dash per metric.
                colour_index = run_index if len(named) > 1 else list(series).index(label)
                figure.add_trace(go.Scatter(
                    x=xs, y=ys, mode="lines+markers" if len(xs) < 30 else "lines",
                    name=f"{run_name}: {label}" if run_name else label,
                    line=dict(color=GROUP_PALETTE[colour_index % len(GROUP_PALETTE)],
                              dash=dashes[line_index % len(dashes)] if len(named) > 1 else "solid"),
                    meta=dict(run=run_name, metric=label),
                ), row=1, col=col)
    figure.update_xaxes(title="step")
    figure.update_yaxes(title="loss", row=1, col=1)
    # Accuracy is a fraction: a fixed 0-100 % axis reads the same for every run, even with a single point
    # (plotly would otherwise centre an axis from -0.5 to 1.5 on a lone value).
    figure.update_yaxes(title="accuracy", range=[0, 1.02], tickformat=".0%", row=1, col=2)
    figure.update_layout(template=TEMPLATE, title=title or "Training curves", height=380,
                         margin=dict(l=60, r=30, t=70, b=50))
    return figure


def confusion_figure(confusion: Any, classes: Sequence[str], normalize: bool = False,
                     title: str | None = None) -> go.Figure:
    """Rows = true class, columns = predicted class. normalize=True divides each row by its total (recall)."""
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.shape != (len(classes), len(classes)):
        raise DataError(f"confusion matrix of shape {counts.shape} does not match {len(classes)} classes")
    z = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    figure = new_figure(title or f"Confusion matrix (accuracy {100 * accuracy:.1f}%)")
    figure.add_trace(go.Heatmap(
        z=z, x=list(classes), y=list(classes), colorscale="Blues", texttemplate="%{z:.2f}" if normalize else "%{z:d}",
        customdata=counts, colorbar=dict(title="share of row" if normalize else "images"),
        hovertemplate="true %{y}, predicted %{x}: %{customdata:d} images<extra></extra>",
    ))
    figure.update_yaxes(title="true class", autorange="reversed")
    figure.update_xaxes(title="predicted class", side="bottom")
    return figure
