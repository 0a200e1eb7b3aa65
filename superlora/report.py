"""The one-page run report, and the validation views the studio shows, made from a run folder's files alone.

    from superlora.report import write_report
    write_report("runs/first")                       # runs/first/report.html
    superlora report runs/first --output first.html  # the same from the shell

The report is one self-contained HTML file (figures as inline SVG, mistake thumbnails as base64 JPEG, no script,
no external address), so it opens offline and can be mailed. Sections: summary, data, model and adapter, training
settings, curves, per-class results, missed defects and false alarms, confusion matrix, the mistakes, and how
to reproduce the run. A run saved before `validation/` existed still gets a report: the per-class table and the
good-class numbers come from the confusion matrix in metrics.json, and the mistakes section says why it is empty.

For the studio: `validation_view(source, images)` returns the mistakes as (image, caption) pairs, most confident
first, and the per-class table rows, from a run folder or from an in-memory `TrainResult.validation`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pprint import pformat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from superlora.errors import ConfigError
from superlora.files import atomic_write
from superlora.runs import CONFIG_FILE, METRICS_JSON, RUN_FORMAT, TENSORBOARD_DIR, describe_adapter, read_json
from superlora.train.metrics import Evaluation, resolve_good_class
from superlora.train.validation import (
    VALIDATION_DIR,
    good_class_sentence,
    read_validation,
    validation_record,
)

REPORT_FILE = "report.html"
MAX_REPORT_MISTAKES = 100  # thumbnails embedded in the report; the rest are listed by name
CLASS_TABLE_HEADERS = ["class", "precision", "recall", "F1", "support", "TP", "FP", "FN"]
_THUMBNAIL_NAME = re.compile(r"^mistakes/val-\d+\.jpg$")  # the only files a record may point the report at

__all__ = ["CLASS_TABLE_HEADERS", "REPORT_FILE", "ValidationView", "class_table_rows", "load_validation",
           "mistake_captions", "report_html", "validation_view", "write_report"]


# ---------------------------------------------------------------------------------------------------- reading
def _read_run_config(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run folder ({CONFIG_FILE} is missing); pass a folder that "
                          "`superlora train` or the studio wrote, e.g. runs/<name>")
    config = read_json(run_dir / CONFIG_FILE)
    if config.get("format") != RUN_FORMAT:
        raise ConfigError(f"{run_dir / CONFIG_FILE} is not a superlora run config")
    return config


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / METRICS_JSON) if (run_dir / METRICS_JSON).is_file() else {}


def load_validation(run_dir: str | os.PathLike[str], good_class: str | None = None) -> dict[str, Any] | None:
    """The validation record of a run folder (see `superlora.train.validation`), or None if nothing was evaluated.

    A run saved before validation/ existed gets a record rebuilt from metrics.json's confusion matrix, with
    `mistakes` None. `good_class` recounts missed defects and false alarms with another good class.
    """
    run_dir = Path(run_dir)
    config = _read_run_config(run_dir)
    record = read_validation(run_dir)
    classes = list(config.get("classes") or [])
    if record is None:
        metrics = _read_metrics(run_dir)
        confusion = metrics.get("confusion") or []
        if not confusion or len(confusion) != len(classes):
            return None
        count = sum(map(sum, confusion))
        evaluation = Evaluation(accuracy=metrics.get("best_accuracy") or 0.0,
                                loss=(metrics.get("metrics") or {}).get("loss", float("nan")),
                                per_class_accuracy=[], confusion=confusion, count=count)
        requested = good_class or (config.get("options") or {}).get("good_class")
        chosen, note = resolve_good_class(classes, requested)
        record = validation_record(evaluation, classes, [], good_class=chosen, good_note=note,
                                   step=metrics.get("best_step"), epoch=metrics.get("best_epoch"))
        record["mistakes"] = None
        return record
    if good_class is not None:
        chosen, note = resolve_good_class(record["classes"], good_class)
        evaluation = Evaluation(accuracy=record["accuracy"], loss=record["loss"], per_class_accuracy=[],
                                confusion=record["confusion"], count=record["count"])
        recount = validation_record(evaluation, record["classes"], [], good_class=chosen, good_note=note)
        record = {**record, "good_class": recount["good_class"], "good_class_note": note}
    return record


# ---------------------------------------------------------------------------------------------------- views
def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def class_table_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """Rows of the per-class table under `CLASS_TABLE_HEADERS`: ratios as "87.5 %" text (n/a where undefined)."""
    return [[row["name"], _percent(row["precision"]), _percent(row["recall"]), _percent(row["f1"]), row["support"],
             row["true_positives"], row["false_positives"], row["false_negatives"]] for row in record["per_class"]]


def _caption(mistake: Mapping[str, Any]) -> str:
    top = ", ".join(f"{t['class']} {100 * t['probability']:.0f} %" for t in mistake["top"])
    return (f"true {mistake['true']}, predicted {mistake['predicted']} ({100 * mistake['confidence']:.0f} %) · "
            f"top: {top} · {mistake['file']}")


def mistake_captions(record: Mapping[str, Any]) -> list[str]:
    """One caption per mistake, most confident first: true and predicted class, confidence, top-k, file."""
    return [_caption(m) for m in record.get("mistakes") or []]


@dataclass
class ValidationView:
    """What the studio shows of a run's validation: `mistakes` are (image, caption) pairs, most confident first
    (the image is a thumbnail path for a run folder, a PIL image for an in-memory record); `class_rows` fit
    `CLASS_TABLE_HEADERS`; `quality` is the missed-defect / false-alarm sentence (or why there is none)."""

    mistakes: list[tuple[str | Image.Image, str]]
    class_rows: list[list[Any]]
    quality: str
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def validation_view(source: str | os.PathLike[str] | Mapping[str, Any], images: Sequence[Image.Image] | None = None,
                    *, good_class: str | None = None) -> ValidationView | None:
    """The studio's thin call. `source`: a run folder, or a validation record (`TrainResult.validation`) with
    `images` the validation images it indexes (`val_set.images`). None when nothing was evaluated."""
    notes: list[str] = []
    if isinstance(source, Mapping):
        record = dict(source)
        folder = None
    else:
        folder = Path(source) / VALIDATION_DIR
        record = load_validation(source, good_class)
        if record is None:
            return None
    gallery: list[tuple[str | Image.Image, str]] = []
    mistakes = record.get("mistakes")
    if mistakes is None:
        notes.append("the mistakes were not saved for this run (it predates per-image results)")
    for mistake, caption in zip(mistakes or [], mistake_captions(record)):
        if folder is not None and mistake.get("thumbnail") and _THUMBNAIL_NAME.match(mistake["thumbnail"]):
            gallery.append((str(folder / mistake["thumbnail"]), caption))
        elif images is not None and 0 <= mistake["index"] < len(images):
            gallery.append((images[mistake["index"]], caption))
    if mistakes and len(gallery) < len(mistakes):
        notes.append(f"{len(mistakes) - len(gallery)} mistakes have no saved image; validation/predictions.csv "
                     "lists them all")
    good = record.get("good_class")
    quality = good_class_sentence(good) if good else record.get("good_class_note", "")
    return ValidationView(mistakes=gallery, class_rows=class_table_rows(record), quality=quality, record=record,
                          notes=notes)


# ---------------------------------------------------------------------------------------------------- the page
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1060px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td { text-align: right; } th { background: #f4f4f4; text-align: left; } td.text { text-align: left; }
.headline { display: flex; gap: 1em; flex-wrap: wrap; } .headline div { background: #f4f6f8; padding: 0.6em 1em;
  border-radius: 6px; } .headline b { display: block; font-size: 1.4em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 0.8em; }
figure { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 0.4em; font-size: 0.82em; }
figure img { width: 100%; max-width: 160px; image-rendering: pixelated; display: block; margin: 0 auto 0.3em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.figures { display: flex; gap: 1em; flex-wrap: wrap; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: Sequence[int] = (0,)) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="text">{_e(v)}</td>' if i in text_columns else f"<td>{_e(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f'<tr><th scope="row">{_e(k)}</th><td class="text">{_e(v)}</td></tr>' for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _data_section(config: Mapping[str, Any], record: Mapping[str, Any] | None) -> str:
    data = config.get("data") or {}
    classes = list(config.get("classes") or [])
    rows = [("source", data.get("source", "in memory (not recorded)")),
            ("training images", data.get("train_size", "?")), ("validation images", data.get("val_size", "?"))]
    if "val_fraction" in data:
        rows.append(("validation split", f"{100 * data['val_fraction']:.0f} % of each class, seed "
                                         f"{data.get('split_seed', 0)}"))
    if "labels" in data:
        rows.append(("labels from", data["labels"]))
    counts = data.get("class_counts") or {}
    train_counts, val_counts = counts.get("train") or {}, counts.get("validation") or {}
    if not val_counts and record is not None:
        val_counts = {row["name"]: row["support"] for row in record["per_class"]}
    table = _table(["class", "training images", "validation images"],
                   [[name, train_counts.get(name, "?"), val_counts.get(name, "?")] for name in classes])
    missing = [name for name in classes if val_counts.get(name) == 0]
    note = _note(f"no validation image of {', '.join(missing)}: its recall is not measured (n/a below)") \
        if missing else ""
    return _pairs(rows) + table + note


def _model_section(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    params = metrics.get("parameters") or {}
    adapter = config.get("adapter") or {}
    rows = [("base model", config.get("model", "?")), ("adapter", describe_adapter(adapter))]
    if params:
        trainable = params.get("total_trainable", params.get("adapter", 0) + params.get("head", 0))
        share = f" ({100 * trainable / params['base_model']:.3f} % of the base model's " \
                f"{params['base_model']:,})" if params.get("base_model") else ""
        rows += [("adapter parameters", f"{params.get('adapter', 0):,}"),
                 ("head parameters (trained)", f"{params.get('head', 0):,}"),
                 ("trainable in total", f"{trainable:,}{share}")]
    else:
        rows.append(("parameters", "not recorded (the run stopped before its first metrics were written)"))
    details = _table(["field", "value"], [[k, json.dumps(v)] for k, v in adapter.items()], text_columns=(0, 1))
    return _pairs(rows) + f"<details><summary>every adapter field</summary>{details}</details>"


def _training_section(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    options = config.get("options") or {}
    status = metrics.get("status", "unknown")
    rows = [("status", f"{status} after {metrics.get('step', '?')} of {metrics.get('total_steps', '?')} steps"
                       + (f" ({metrics['elapsed_s']:.0f} s)" if metrics.get("elapsed_s") is not None else "")),
            ("created", config.get("created", "?")), ("processes", config.get("num_processes", 1))]
    if metrics.get("message"):
        rows.append(("message", metrics["message"]))
    rows += [(name, "default" if value is None else value) for name, value in options.items()
             if name != "output_dir"]
    return _pairs(rows)


def _step_losses(run_dir: Path) -> list[tuple[float, float]]:
    """The per-step training loss from the run's TensorBoard files ([] without tensorboard or its files)."""
    folder = run_dir / TENSORBOARD_DIR
    if not folder.is_dir():
        return []
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
        events.Reload()
        return [(float(e.step), float(e.value)) for e in events.Scalars("train/loss")]
    except Exception:  # noqa: BLE001 - the curve is optional; the epoch curves below still come from metrics.json
        return []


def _curves_section(metrics: Mapping[str, Any], run_dir: Path) -> str:
    from superlora.viz.static import line_chart_svg

    history = metrics.get("history") or []
    if not history:
        return _note("no epoch finished, so there are no curves")

    def series(key: str) -> list[tuple[float, float]]:
        return [(row["step"], row[key]) for row in history if row.get(key) is not None]

    curves = {"training loss (epoch)": series("train_loss"), "validation loss": series("val_loss")}
    steps = _step_losses(run_dir)
    if steps:
        curves = {"training loss (step)": steps, **curves}
    loss = line_chart_svg(curves, title="Loss", x_label="optimizer step", y_label="cross-entropy", width=520)
    accuracy = line_chart_svg({"validation accuracy": series("val_accuracy")}, title="Validation accuracy",
                              x_label="optimizer step", y_label="accuracy", y_range=(0.0, 1.0))
    return f'<div class="figures">{loss}{accuracy}</div>'


def _results_section(record: Mapping[str, Any]) -> str:
    macro = record.get("macro") or {}
    table = _table(CLASS_TABLE_HEADERS, class_table_rows(record) +
                   [["macro average", _percent(macro.get("precision")), _percent(macro.get("recall")),
                     _percent(macro.get("f1")), record["count"], "", "", ""]])
    where = f" of the adapter kept (step {record['step']}, epoch {record['epoch']})" if record.get("step") else ""
    return (f"<p>Validation results{_e(where)}: accuracy <b>{_percent(record['accuracy'])}</b> on "
            f"{record['count']} images. Precision: of the images predicted as the class, the share that are; "
            "recall: of the images of the class, the share found; F1: their harmonic mean. TP / FP / FN: correct, "
            "wrongly predicted as the class, the class predicted as another. n/a: no image to divide by.</p>"
            + table)


def _quality_section(record: Mapping[str, Any]) -> str:
    good = record.get("good_class")
    if not good:
        return _note(record.get("good_class_note") or "no good class was chosen")
    rows = [[good["good_class"] + " (good)", good["good_images"], "false alarms", good["false_alarms"],
             _percent(good["false_alarm_rate"])],
            ["defects (every other class)", good["defect_images"], "missed defects", good["missed_defects"],
             _percent(good["missed_defect_rate"])]]
    per_class = _table(["defect class", f"images predicted {good['good_class']}"],
                       [[k, v] for k, v in good["missed_by_class"].items()])
    return (f"<p>{_e(good_class_sentence(good))}. A further {good['wrong_defect_class']} defect image(s) were "
            f"flagged as a defect of another class. ({_e(record.get('good_class_note', ''))}.)</p>"
            + _table(["true", "images", "mistake", "count", "rate"], rows, text_columns=(0, 2))
            + "<p>Missed defects by class:</p>" + per_class)


def _confusion_section(record: Mapping[str, Any]) -> str:
    from superlora.viz.static import confusion_table_html

    return ("<p>Rows: true class; columns: predicted class. Green: correct; red: mistakes, darker for a larger share "
            "of the row.</p>" + confusion_table_html(record["confusion"], record["classes"]))


def _thumbnail_data(folder: Path, relative: str | None) -> str | None:
    if not relative or not _THUMBNAIL_NAME.match(relative):
        return None
    path = folder / relative
    if not path.is_file():
        return None
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _mistakes_section(record: Mapping[str, Any], run_dir: Path) -> str:
    mistakes = record.get("mistakes")
    if mistakes is None:
        return _note(f"{record.get('mistake_count', '?')} validation images were misclassified, but this run was saved "
                     "before superlora kept per-image results, so they cannot be shown; train it again "
                     "(see Reproduce) to get them")
    if not mistakes:
        return f"<p>No mistakes: all {record['count']} validation images were classified correctly.</p>"
    folder = run_dir / VALIDATION_DIR
    figures, unlisted = [], []
    for mistake, caption in zip(mistakes, mistake_captions(record)):
        data = _thumbnail_data(folder, mistake.get("thumbnail")) if len(figures) < MAX_REPORT_MISTAKES else None
        if data is None:
            unlisted.append(mistake)
            continue
        top = "<br>".join(f"{_e(t['class'])} {100 * t['probability']:.1f} %" for t in mistake["top"])
        figures.append(f'<figure title="{_e(caption)}"><img alt="{_e(mistake["file"])}" src="{data}">'
                       f"<figcaption><b>{_e(mistake['true'])} → {_e(mistake['predicted'])}</b> "
                       f"({100 * mistake['confidence']:.1f} %)<br>{top}<br><small>{_e(mistake['file'])}</small>"
                       "</figcaption></figure>")
    parts = [f"<p>{len(mistakes)} of {record['count']} validation images misclassified, the most confident mistake "
             "first (true → predicted, confidence, then the top classes). Every prediction is in "
             f"<code>{VALIDATION_DIR}/predictions.csv</code>.</p>"]
    if figures:
        parts.append(f'<div class="grid">{"".join(figures)}</div>')
    if unlisted:
        parts.append(f"<p>{len(unlisted)} more without a thumbnail:</p>" + _table(
            ["file", "true", "predicted", "confidence"],
            [[m["file"], m["true"], m["predicted"], f"{100 * m['confidence']:.1f} %"] for m in unlisted],
            text_columns=(0, 1, 2)))
    return "".join(parts)


def _reproduce_section(config: Mapping[str, Any], run_dir: Path) -> str:
    data = config.get("data") or {}
    options = {k: v for k, v in (config.get("options") or {}).items() if k != "output_dir"}
    parts = []
    if config.get("model_loadable", True) and data.get("source"):
        parts.append(f"<p>The same model, data, split, adapter and options in a new run folder:</p>"
                     f"<pre>superlora train --config {_e(run_dir / CONFIG_FILE)}</pre>")
    else:
        parts.append(_note("this run was trained on a model object or in-memory data, which the command line cannot "
                           "rebuild; use the Python below with the same model and images"))
    split = f", val_fraction={data.get('val_fraction', 0.2)}, seed={data.get('split_seed', 0)}"
    load = (f"sample_dataset({data['source'][len('sample:'):]!r})" if str(data.get("source", "")).startswith("sample:")
            else f"load_dataset({str(data.get('source', 'YOUR_IMAGES'))!r}, labels={data.get('labels', 'auto')!r})")
    snippet = "\n".join([
        "from superlora import SuperLoRAConfig",
        "from superlora.data import load_dataset, sample_dataset, train_val_split",
        "from superlora.train import TrainOptions, train",
        "",
        f"train_set, val_set = train_val_split({load}{split})",
        f"config = SuperLoRAConfig.from_dict({pformat(config.get('adapter') or {}, width=100, sort_dicts=False)})",
        f"options = TrainOptions.from_dict({pformat(options, width=100, sort_dicts=False)})",
        f"result = train({str(config.get('model'))!r}, train_set, val_set, config, options)",
    ])
    versions = config.get("versions") or {}
    parts.append(f"<p>In Python:</p><pre>{_e(snippet)}</pre>")
    if versions:
        parts.append("<p>Software versions of the run:</p>" + _pairs(sorted(versions.items())))
    parts.append(f"<p>This report again: <code>superlora report {_e(run_dir)}</code></p>")
    parts.append(f"<details><summary>config.json</summary><pre>{_e(json.dumps(config, indent=2))}</pre></details>")
    return "".join(parts)


def _headline(record: Mapping[str, Any] | None, metrics: Mapping[str, Any]) -> str:
    cells = []
    if record is not None:
        cells.append(("validation accuracy", _percent(record["accuracy"])))
        cells.append(("macro F1", _percent((record.get("macro") or {}).get("f1"))))
        good = record.get("good_class")
        if good:
            cells.append(("missed defects", f"{good['missed_defects']} of {good['defect_images']} "
                                            f"({_percent(good['missed_defect_rate'])})"))
            cells.append(("false alarms", f"{good['false_alarms']} of {good['good_images']} "
                                          f"({_percent(good['false_alarm_rate'])})"))
        cells.append(("mistakes", f"{record.get('mistake_count', 0)} of {record['count']}"))
    cells.append(("status", metrics.get("status", "unknown")))
    return '<div class="headline">' + "".join(f"<div>{_e(k)}<b>{_e(v)}</b></div>" for k, v in cells) + "</div>"


def report_html(run_dir: str | os.PathLike[str], *, good_class: str | None = None) -> str:
    """The report of the run folder `run_dir` as one HTML document (see the module docstring)."""
    run_dir = Path(run_dir)
    config = _read_run_config(run_dir)
    metrics = _read_metrics(run_dir)
    record = load_validation(run_dir, good_class)
    sections = [
        _section("data", "Data", _data_section(config, record)),
        _section("model", "Model and adapter", _model_section(config, metrics)),
        _section("training", "Training settings", _training_section(config, metrics)),
        _section("curves", "Curves", _curves_section(metrics, run_dir)),
    ]
    if record is None:
        nothing = _note("the run has no validation results (it stopped before its first evaluation, or trained "
                        "without a validation set)")
        sections += [_section(anchor, title, nothing) for anchor, title in
                     (("per-class", "Per-class results"), ("quality", "Missed defects and false alarms"),
                      ("confusion", "Confusion matrix"), ("mistakes", "Mistakes"))]
    else:
        sections += [
            _section("per-class", "Per-class results", _results_section(record)),
            _section("quality", "Missed defects and false alarms", _quality_section(record)),
            _section("confusion", "Confusion matrix", _confusion_section(record)),
            _section("mistakes", "Mistakes", _mistakes_section(record, run_dir)),
        ]
    sections.append(_section("reproduce", "Reproduce this run", _reproduce_section(config, run_dir)))
    title = f"Run report: {run_dir.name}"
    made = datetime.now().isoformat(timespec="seconds")
    summary = _section("summary", "Summary", _headline(record, metrics) +
                       f"<p>{_e(describe_adapter(config.get('adapter') or {}))} on {_e(config.get('model', '?'))}, "
                       f"{len(config.get('classes') or [])} classes ({_e(', '.join(config.get('classes') or []))}). "
                       f"Report made {_e(made)} from the run folder's files.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>{summary}{''.join(sections)}</body></html>\n")


def write_report(run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None, *,
                 good_class: str | None = None) -> Path:
    """Write the report of `run_dir` to `path` (default RUN_DIR/report.html), atomically; returns the path."""
    document = report_html(run_dir, good_class=good_class)
    target = Path(path) if path is not None else Path(run_dir) / REPORT_FILE
    if target.is_dir():
        target = target / REPORT_FILE
    atomic_write(target, lambda tmp: Path(tmp).write_text(document, encoding="utf-8"))
    return target
