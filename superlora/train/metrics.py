"""Validation metrics: accuracy, per-class precision / recall / F1 with their counts, the confusion matrix, the
quality numbers of a "good" class (missed defects, false alarms), and one prediction record per image.

`evaluate` runs a model over a loader (each process over its share of the validation set when distributed) and
gathers every prediction before counting, so all processes see the same numbers. Everything else here is a pure
function of the confusion matrix or of the per-image records, so a past run's saved matrix gives the same table.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from superlora.errors import ConfigError

TOP_K = 5  # classes kept per validation image (fewer when the model has fewer classes)
GOOD_CLASS_NAMES = ("ok", "good", "pass", "normal")  # names taken as the defect-free class when none is given


@dataclass(frozen=True)
class ImagePrediction:
    """What the model said about one validation image (`index` is its position in the validation set)."""

    index: int
    label: int
    predicted: int
    confidence: float  # softmax probability of the predicted class
    top: tuple[tuple[int, float], ...]  # (class index, probability), most probable first

    @property
    def correct(self) -> bool:
        return self.label == self.predicted

    def to_dict(self) -> dict:
        return dict(index=self.index, label=self.label, predicted=self.predicted, confidence=self.confidence,
                    top=[list(pair) for pair in self.top])

    @classmethod
    def from_dict(cls, data: dict) -> ImagePrediction:
        return cls(index=int(data["index"]), label=int(data["label"]), predicted=int(data["predicted"]),
                   confidence=float(data["confidence"]), top=tuple((int(c), float(p)) for c, p in data["top"]))


@dataclass(frozen=True)
class ClassStats:
    """One row of the per-class table. None where the ratio has no images behind it (nothing to divide by)."""

    name: str
    support: int  # validation images of this class
    true_positives: int
    false_positives: int  # images of other classes predicted as this one
    false_negatives: int  # images of this class predicted as another one
    precision: float | None  # TP / (TP + FP): None when the class was never predicted
    recall: float | None  # TP / support: None when the class has no validation image
    f1: float | None  # 2TP / (2TP + FP + FN): None when the class was neither present nor predicted

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GoodClassSummary:
    """The two numbers a quality manager asks for, with one class standing for defect-free parts.

    A missed defect is a defect image (any other class) predicted as the good class; a false alarm is a good
    image predicted as any defect class. Rates divide by the defect images and the good images respectively.
    """

    good_class: str
    good_images: int
    defect_images: int
    missed_defects: int
    false_alarms: int
    wrong_defect_class: int  # defect images flagged as a defect, but as another defect class
    missed_defect_rate: float | None
    false_alarm_rate: float | None
    missed_by_class: dict[str, int]  # defect class -> its images predicted good

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """Validation results. `confusion[t][p]` counts images of true class t predicted as p.

    `predictions` holds one record per validation image, ordered by `index` (empty for evaluations saved
    before the records were kept).
    """

    accuracy: float
    loss: float
    per_class_accuracy: list[float | None]  # None: no validation image of that class
    confusion: list[list[int]]
    count: int
    predictions: tuple[ImagePrediction, ...] = ()

    def as_metrics(self, classes: list[str]) -> dict[str, float]:
        """Flat numbers for events, TensorBoard and CSV: accuracy, loss, accuracy/<class>."""
        metrics = {"accuracy": self.accuracy, "loss": self.loss}
        for name, value in zip(classes, self.per_class_accuracy):
            if value is not None:
                metrics[f"accuracy/{name}"] = value
        return metrics

    def per_class(self, classes: list[str]) -> dict[str, float | None]:
        return dict(zip(classes, self.per_class_accuracy))

    def class_stats(self, classes: list[str]) -> list[ClassStats]:
        return class_stats(self.confusion, classes)

    def mistakes(self) -> list[ImagePrediction]:
        """The misclassified images, the most confident mistake first (ties: validation order)."""
        return sorted((p for p in self.predictions if not p.correct), key=lambda p: (-p.confidence, p.index))

    def to_dict(self) -> dict:
        return dict(accuracy=self.accuracy, loss=self.loss, per_class_accuracy=self.per_class_accuracy,
                    confusion=self.confusion, count=self.count,
                    predictions=[p.to_dict() for p in self.predictions])

    @classmethod
    def from_dict(cls, data: dict) -> Evaluation:
        data = dict(data)
        data["predictions"] = tuple(ImagePrediction.from_dict(p) for p in data.get("predictions", ()))
        return cls(**data)


def confusion_matrix(labels: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes x num_classes), rows = true class, columns = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def class_stats(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[ClassStats]:
    """Precision, recall and F1 of every class, with the counts they come from, from a confusion matrix."""
    if len(confusion) != len(classes) or any(len(row) != len(classes) for row in confusion):
        raise ValueError(f"the confusion matrix must be {len(classes)} x {len(classes)} for {len(classes)} classes")
    rows = []
    for c, name in enumerate(classes):
        tp = int(confusion[c][c])
        support = int(sum(confusion[c]))
        predicted = int(sum(row[c] for row in confusion))
        fp, fn = predicted - tp, support - tp
        rows.append(ClassStats(name=name, support=support, true_positives=tp, false_positives=fp,
                               false_negatives=fn, precision=_ratio(tp, tp + fp), recall=_ratio(tp, support),
                               f1=_ratio(2 * tp, 2 * tp + fp + fn)))
    return rows


def macro_average(stats: Sequence[ClassStats]) -> dict[str, float | None]:
    """Unweighted means of precision, recall and F1 over the classes where each is defined."""
    averages: dict[str, float | None] = {}
    for key in ("precision", "recall", "f1"):
        values = [getattr(row, key) for row in stats if getattr(row, key) is not None]
        averages[key] = sum(values) / len(values) if values else None
    return averages


def resolve_good_class(classes: Sequence[str], requested: str | None) -> tuple[str | None, str]:
    """(the good class or None, a sentence saying how it was chosen or why there is none).

    `requested` names a class (exactly, or ignoring case when that is unambiguous); None picks the one class
    named ok, good, pass or normal. A requested name that is not a class raises ConfigError.
    """
    if requested is not None:
        if requested in classes:
            return requested, f"good class {requested!r} as chosen"
        matches = [name for name in classes if name.lower() == requested.lower()]
        if len(matches) == 1:
            return matches[0], f"good class {matches[0]!r} as chosen"
        raise ConfigError(f"good_class={requested!r} is not one of the classes ({', '.join(classes)}); name the "
                          "class of defect-free parts, or leave it out to pick ok/good/pass/normal automatically")
    candidates = [name for name in classes if name.lower() in GOOD_CLASS_NAMES]
    if len(candidates) == 1:
        return candidates[0], f"good class {candidates[0]!r} picked by its name"
    if candidates:
        return None, (f"several classes could be the good one ({', '.join(candidates)}); set good_class "
                      "(--good-class) to get missed defects and false alarms")
    return None, ("no class is named ok, good, pass or normal, so missed defects and false alarms are not "
                  "counted; set good_class (--good-class) to the class of defect-free parts to get them")


def good_class_summary(confusion: Sequence[Sequence[int]], classes: Sequence[str], good_class: str) -> GoodClassSummary:
    """Missed defects and false alarms from a confusion matrix, with `good_class` as the defect-free class."""
    g = list(classes).index(good_class)
    defects = [c for c in range(len(classes)) if c != g]
    good_images = int(sum(confusion[g]))
    defect_images = int(sum(sum(confusion[c]) for c in defects))
    missed_by_class = {classes[c]: int(confusion[c][g]) for c in defects}
    missed = sum(missed_by_class.values())
    false_alarms = good_images - int(confusion[g][g])
    wrong_defect = sum(int(confusion[c][p]) for c in defects for p in defects if p != c)
    return GoodClassSummary(good_class=good_class, good_images=good_images, defect_images=defect_images,
                            missed_defects=missed, false_alarms=false_alarms, wrong_defect_class=wrong_defect,
                            missed_defect_rate=_ratio(missed, defect_images),
                            false_alarm_rate=_ratio(false_alarms, good_images), missed_by_class=missed_by_class)


def summarize(labels: Tensor, predictions: Tensor, losses: Tensor, num_classes: int) -> Evaluation:
    """Evaluation from per-image true labels, predicted labels and cross-entropy losses."""
    confusion = confusion_matrix(labels, predictions, num_classes)
    support = confusion.sum(dim=1)
    correct = confusion.diagonal()
    count = int(labels.numel())
    per_class = [float(c) / float(s) if s > 0 else None for c, s in zip(correct.tolist(), support.tolist())]
    return Evaluation(
        accuracy=float(correct.sum()) / count if count else 0.0,
        # float64 sum: the mean must not depend on how the images were split over processes
        loss=float(losses.double().sum()) / count if count else 0.0,
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        count=count,
    )


def _image_predictions(rows: Tensor, top_k: int) -> tuple[ImagePrediction, ...]:
    """Records from gathered rows (label, prediction, loss, index, confidence, k classes, k probabilities)."""
    records = []
    for row in rows.tolist():
        classes, probabilities = row[5:5 + top_k], row[5 + top_k:5 + 2 * top_k]
        records.append(ImagePrediction(index=int(row[3]), label=int(row[0]), predicted=int(row[1]),
                                       confidence=float(row[4]),
                                       top=tuple((int(c), float(p)) for c, p in zip(classes, probabilities))))
    return tuple(sorted(records, key=lambda p: p.index))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    device: torch.device,
    *,
    gather: Callable[[Tensor], Tensor] | None = None,  # rows of this process -> rows of all processes
    should_abort: Callable[[], bool] = lambda: False,
    autocast: Callable = contextlib.nullcontext,  # the Accelerator's autocast during training
    indices: Sequence[int] | None = None,  # validation-set index of each image this process sees, in order
) -> Evaluation | None:
    """Evaluate `model` on `batches`; `gather` collects tensors from every process (None: single process).

    The result keeps one `ImagePrediction` per image; its `index` comes from `indices` (default: the position
    in `batches`). Returns None when `should_abort()` turns true between batches (a stop request during a long
    evaluation).
    """
    was_training = model.training
    model.eval()
    top_k = min(TOP_K, num_classes)
    labels, predictions, losses, confidences, top_classes, top_probabilities = [], [], [], [], [], []
    try:
        for images, targets in batches:
            if should_abort():
                return None
            images, targets = images.to(device), targets.to(device)
            with autocast():
                logits = model(images)
            logits = logits.float()
            predicted = logits.argmax(dim=1)
            probabilities = logits.softmax(dim=1)
            top = probabilities.topk(top_k, dim=1)
            labels.append(targets)
            predictions.append(predicted)
            losses.append(F.cross_entropy(logits, targets, reduction="none"))
            confidences.append(probabilities.gather(1, predicted[:, None])[:, 0])
            top_classes.append(top.indices)
            top_probabilities.append(top.values)
    finally:
        model.train(was_training)
    # One row per image, in float64 (exact for labels, indices and float32 values), gathered in one call:
    # label, prediction, loss, index, confidence, top-k classes, top-k probabilities.
    width = 5 + 2 * top_k
    if labels:
        count = sum(t.numel() for t in labels)
        positions = torch.as_tensor(list(indices)[:count] if indices is not None else range(count),
                                    dtype=torch.float64, device=device)
        rows = torch.cat([torch.stack([torch.cat(labels).double(), torch.cat(predictions).double(),
                                       torch.cat(losses).double(), positions, torch.cat(confidences).double()], dim=1),
                          torch.cat(top_classes).double(), torch.cat(top_probabilities).double()], dim=1)
    else:
        rows = torch.zeros(0, width, dtype=torch.float64, device=device)
    if gather is not None:
        rows = gather(rows)
        rows = rows[rows[:, 0] >= 0]  # processes with fewer images pad with label -1
    rows = rows.cpu()
    evaluation = summarize(rows[:, 0].long(), rows[:, 1].long(), rows[:, 2], num_classes)
    return dataclasses.replace(evaluation, predictions=_image_predictions(rows, top_k))
