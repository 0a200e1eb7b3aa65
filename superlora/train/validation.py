"""The validation results of a run's best adapter, as one JSON-able record and as files in the run folder:

    validation/
      results.json     per-class precision / recall / F1 with support, TP, FP, FN; macro averages; the confusion
                       matrix; missed defects and false alarms of the good class; every mistake, most confident first
      predictions.csv  one row per validation image: file, true and predicted class, confidence, top-k
      mistakes/        a JPEG thumbnail of each mistake (the MAX_THUMBNAILS most confident ones)

The record is what `TrainResult.validation` holds and what `superlora.report` reads, so a report made from a run
folder and a table shown from an in-memory run say the same thing. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from superlora.errors import ConfigError
from superlora.files import atomic_write
from superlora.runs import spreadsheet_safe
from superlora.train.metrics import Evaluation, ImagePrediction, class_stats, good_class_summary, macro_average

VALIDATION_FORMAT = "superlora-validation/1"
VALIDATION_DIR = "validation"
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.csv"
MISTAKES_DIR = "mistakes"
MAX_THUMBNAILS = 200  # predictions.csv lists every mistake; thumbnails stop here to bound the folder's size
THUMBNAIL_SIZE = 160  # longest side in pixels; smaller images are kept at their size


def _mistake_entry(prediction: ImagePrediction, classes: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    return {"index": prediction.index, "file": str(names[prediction.index]), "true": classes[prediction.label],
            "predicted": classes[prediction.predicted], "confidence": prediction.confidence,
            "top": [{"class": classes[c], "probability": p} for c, p in prediction.top], "thumbnail": None}


def validation_record(evaluation: Evaluation, classes: Sequence[str], names: Sequence[str], *,
                      good_class: str | None = None, good_note: str = "", step: int | None = None,
                      epoch: int | None = None) -> dict[str, Any]:
    """The JSON record of one evaluation: `names[i]` is the file of validation image i (as the data set names it).

    `mistakes` is None (not []) when the evaluation kept no per-image records, so "no mistakes" stays distinct
    from "not known".
    """
    classes = list(classes)
    stats = class_stats(evaluation.confusion, classes)
    known = bool(evaluation.predictions) or evaluation.count == 0
    mistakes = [_mistake_entry(p, classes, names) for p in evaluation.mistakes()] if known else None
    good = good_class_summary(evaluation.confusion, classes, good_class) if good_class is not None else None
    return {
        "format": VALIDATION_FORMAT,
        "step": step,
        "epoch": epoch,
        "classes": classes,
        "count": evaluation.count,
        "accuracy": evaluation.accuracy,
        "loss": evaluation.loss,
        "confusion": evaluation.confusion,
        "per_class": [row.to_dict() for row in stats],
        "macro": macro_average(stats),
        "good_class": good.to_dict() if good is not None else None,
        "good_class_note": good_note,
        "mistake_count": len(mistakes) if mistakes is not None else sum(r.false_negatives for r in stats),
        "mistakes": mistakes,
    }


def _thumbnail(image: Image.Image) -> Image.Image:
    picture = image.convert("RGB")
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return picture


def _predictions_csv(evaluation: Evaluation, classes: Sequence[str], names: Sequence[str]) -> str:
    top_k = max((len(p.top) for p in evaluation.predictions), default=0)
    header = ["index", "file", "true_class", "predicted_class", "confidence", "correct"]
    for k in range(1, top_k + 1):
        header += [f"top{k}_class", f"top{k}_probability"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for p in evaluation.predictions:
        row = [p.index, names[p.index], classes[p.label], classes[p.predicted], f"{p.confidence:.6f}", int(p.correct)]
        for c, probability in p.top:
            row += [classes[c], f"{probability:.6f}"]
        writer.writerow([spreadsheet_safe(cell) for cell in row])
    return buffer.getvalue()


def write_validation(run_path: str | Path, record: dict[str, Any], evaluation: Evaluation,
                     images: Sequence[Image.Image], names: Sequence[str]) -> dict[str, Any]:
    """Write validation/ into the run folder `run_path`; returns `record` with the thumbnails' paths filled in.

    `images[i]` / `names[i]` are validation image i and its file name. Thumbnails are written before the files
    that name them and stale ones removed after, so a reader never finds a name without its image.
    """
    folder = Path(run_path) / VALIDATION_DIR
    mistakes_folder = folder / MISTAKES_DIR
    record = json.loads(json.dumps(record))  # a copy: the caller's record keeps thumbnail None
    kept: set[str] = set()
    for entry in (record["mistakes"] or [])[:MAX_THUMBNAILS]:
        name = f"val-{entry['index']:05d}.jpg"
        path = mistakes_folder / name
        if not path.is_file():  # the same validation image always gives the same thumbnail
            picture = _thumbnail(images[entry["index"]])
            atomic_write(path, lambda tmp, picture=picture: picture.save(tmp, format="JPEG", quality=90))
        entry["thumbnail"] = f"{MISTAKES_DIR}/{name}"
        kept.add(name)
    if evaluation.predictions:
        text = _predictions_csv(evaluation, record["classes"], names)
        atomic_write(folder / PREDICTIONS_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    document = json.dumps(record, indent=2) + "\n"
    atomic_write(folder / RESULTS_FILE, lambda tmp: Path(tmp).write_text(document, encoding="utf-8"))
    if mistakes_folder.is_dir():
        for stale in mistakes_folder.glob("val-*.jpg"):
            if stale.name not in kept:
                stale.unlink(missing_ok=True)
    return record


def read_validation(run_path: str | Path) -> dict[str, Any] | None:
    """The validation record saved in run folder `run_path`, or None for a run made before it was saved."""
    path = Path(run_path) / VALIDATION_DIR / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}); train the run again to rewrite it") from err
    if not isinstance(record, dict) or record.get("format") != VALIDATION_FORMAT:
        raise ConfigError(f"{path} is not a superlora validation record")
    return record


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def good_class_sentence(good: dict[str, Any]) -> str:
    """'missed defects: 3 of 60 defect images (5.0 %); false alarms: ...' for a good-class summary dict."""
    return (f"missed defects (defect images predicted {good['good_class']!r}): {good['missed_defects']} of "
            f"{good['defect_images']} ({_percent(good['missed_defect_rate'])}); false alarms ({good['good_class']!r} "
            f"images predicted as a defect): {good['false_alarms']} of {good['good_images']} "
            f"({_percent(good['false_alarm_rate'])})")


def format_validation_summary(record: dict[str, Any]) -> str:
    """The per-class table and the good-class numbers as plain text (what `superlora train` prints at the end)."""
    rows = [("class", "precision", "recall", "F1", "support", "TP", "FP", "FN")]
    for row in record["per_class"]:
        rows.append((row["name"], _percent(row["precision"]), _percent(row["recall"]), _percent(row["f1"]),
                     str(row["support"]), str(row["true_positives"]), str(row["false_positives"]),
                     str(row["false_negatives"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    good = record.get("good_class")
    lines.append(good_class_sentence(good) if good else record.get("good_class_note", ""))
    count = record.get("mistake_count", 0)
    lines.append(f"{count} of {record['count']} validation images misclassified")
    return "\n".join(line for line in lines if line)
