"""Validation metrics: accuracy, per-class accuracy and the confusion matrix, from predictions and labels.

`evaluate` runs a model over a loader (each process over its share of the validation set when distributed) and
gathers every prediction before counting, so all processes see the same numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Evaluation:
    """Validation results. `confusion[t][p]` counts images of true class t predicted as p."""

    accuracy: float
    loss: float
    per_class_accuracy: list[float | None]  # None: no validation image of that class
    confusion: list[list[int]]
    count: int

    def as_metrics(self, classes: list[str]) -> dict[str, float]:
        """Flat numbers for events, TensorBoard and CSV: accuracy, loss, accuracy/<class>."""
        metrics = {"accuracy": self.accuracy, "loss": self.loss}
        for name, value in zip(classes, self.per_class_accuracy):
            if value is not None:
                metrics[f"accuracy/{name}"] = value
        return metrics

    def per_class(self, classes: list[str]) -> dict[str, float | None]:
        return dict(zip(classes, self.per_class_accuracy))

    def to_dict(self) -> dict:
        return dict(accuracy=self.accuracy, loss=self.loss, per_class_accuracy=self.per_class_accuracy,
                    confusion=self.confusion, count=self.count)

    @classmethod
    def from_dict(cls, data: dict) -> Evaluation:
        return cls(**data)


def confusion_matrix(labels: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes x num_classes), rows = true class, columns = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    device: torch.device,
    *,
    gather: Callable[[Tensor], Tensor] | None = None,  # (n, 3) rows of this process -> rows of all
    should_abort: Callable[[], bool] = lambda: False,
    autocast: Callable = contextlib.nullcontext,  # the Accelerator's autocast during training
) -> Evaluation | None:
    """Evaluate `model` on `batches`; `gather` collects tensors from every process (None: single process).

    Returns None when `should_abort()` turns true between batches (a stop request during a long evaluation).
    """
    was_training = model.training
    model.eval()
    labels, predictions, losses = [], [], []
    try:
        for images, targets in batches:
            if should_abort():
                return None
            images, targets = images.to(device), targets.to(device)
            with autocast():
                logits = model(images)
            logits = logits.float()
            labels.append(targets)
            predictions.append(logits.argmax(dim=1))
            losses.append(F.cross_entropy(logits, targets, reduction="none"))
    finally:
        model.train(was_training)
    # One (label, prediction, loss) row per image, in float64 (exact for all three), gathered in one call.
    rows = torch.stack([torch.cat(labels).double(), torch.cat(predictions).double(), torch.cat(losses).double()],
                       dim=1) if labels else torch.zeros(0, 3, dtype=torch.float64, device=device)
    if gather is not None:
        rows = gather(rows)
        rows = rows[rows[:, 0] >= 0]  # processes with fewer images pad with label -1
    rows = rows.cpu()
    return summarize(rows[:, 0].long(), rows[:, 1].long(), rows[:, 2], num_classes)
