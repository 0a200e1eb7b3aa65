"""The vocabulary of a training run: what to do (`TrainOptions`), what happened (`TrainEvent`), how it ended
(`TrainResult`), and how to ask it to stop (`StopSignal`).

These are plain data so that the CLI, the Gradio app and the notebook widgets can build, store and render
them without knowing anything about the loop in `superlora.train.loop`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superlora.defaults import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_HEAD_LR, DEFAULT_LR
from superlora.errors import ConfigError, SuperLoRAError

if TYPE_CHECKING:
    from superlora.model import SuperLoRAModel

EVENT_KINDS = ("start", "step", "epoch_end", "eval", "checkpoint", "done", "stopped", "error")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Options that change the numbers a run produces; resuming with any of them changed is refused.
RESULT_OPTIONS = ("epochs", "steps", "batch_size", "lr", "head_lr", "weight_decay", "warmup", "grad_clip",
                  "label_smoothing", "seed", "eval_every_epoch")


class TrainingError(SuperLoRAError):
    """A run that cannot go on: a non-finite loss, a checkpoint that does not fit, a folder already in use."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept on disk."""


@dataclass
class TrainOptions:
    """How to train. Every field has a default that works for a few hundred images on a CPU.

    epochs / steps: run length; `steps` (optimizer steps) overrides `epochs` when both are given.
    batch_size: the GLOBAL batch: with N processes (`accelerate launch`) each takes batch_size / N images,
        so a run gives the same numbers on 1 or N processes.
    lr / head_lr: AdamW learning rates of the adapter factors and of the trainable head (the defaults of all
        fields that the faces show live in `superlora.defaults`). A head-only config has no adapter: `lr` is unused.
    weight_decay: AdamW decoupled weight decay on matrices (adapter factors, head weight), not on biases.
    warmup: linear warm-up before the cosine decay: a fraction of the run (< 1, e.g. 0.05) or a number of steps.
    grad_clip: clip the global gradient norm to this value (0 or None: no clipping).
    label_smoothing: cross-entropy label smoothing in [0, 1).
    seed: seeds every random choice (head initialisation, data order, augmentation, dropout).
    eval_every_epoch: evaluate on the validation set after every epoch (False: only at the end).
    checkpoint_every: write the resumable checkpoint every N steps (None: after every epoch); a final one is
        always written. Needs `output_dir`.
    output_dir: the run folder (config, metrics, adapter, checkpoint, TensorBoard). None: nothing is written,
        the run lives in memory only (so `superlora report` has nothing to read).
    device: "auto" (GPU when there is one), "cpu" or "cuda".
    precision: "auto" (bf16 autocast on GPUs that support it, else fp16 on GPU, fp32 on CPU), "fp32",
        "bf16" or "fp16".
    num_workers: DataLoader worker processes for decoding and augmentation (0: in the training process).
    good_class: the class of defect-free parts, for counting missed defects and false alarms (None: the class
        named ok, good, pass or normal, if exactly one is; otherwise those two numbers are not counted).
    """

    epochs: int | None = DEFAULT_EPOCHS
    steps: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    head_lr: float = DEFAULT_HEAD_LR
    weight_decay: float = 0.01
    warmup: float | int = 0.05
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    eval_every_epoch: bool = True
    checkpoint_every: int | None = None
    output_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    good_class: str | None = None

    def __post_init__(self) -> None:
        if self.output_dir is not None:
            self.output_dir = str(self.output_dir)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value cannot work."""
        def fail(name: str, problem: str, example: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {problem}; {example}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if self.steps is None and self.epochs is None:
            raise ConfigError("give epochs or steps (e.g. epochs=3)")
        if self.epochs is not None and (not is_int(self.epochs) or self.epochs < 1):
            raise fail("epochs", "must be a positive integer", "e.g. epochs=3")
        if self.steps is not None and (not is_int(self.steps) or self.steps < 1):
            raise fail("steps", "must be a positive integer", "e.g. steps=200")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise fail("batch_size", "must be a positive integer", "e.g. batch_size=32")
        if not is_number(self.lr) or not self.lr > 0:
            raise fail("lr", "must be a positive number", "e.g. lr=3e-3")
        if not is_number(self.head_lr) or self.head_lr < 0:
            raise fail("head_lr", "must be a number >= 0", "e.g. head_lr=1e-3")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise fail("weight_decay", "must be a number >= 0", "e.g. weight_decay=0.01")
        if not is_number(self.warmup) or self.warmup < 0 or (isinstance(self.warmup, float) and
                                                              self.warmup >= 1 and not self.warmup.is_integer()):
            raise fail("warmup", "must be a fraction in [0, 1) or a whole number of steps", "e.g. warmup=0.05")
        if self.grad_clip is not None and (not is_number(self.grad_clip) or self.grad_clip < 0):
            raise fail("grad_clip", "must be a number >= 0 or None", "e.g. grad_clip=1.0")
        if not is_number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise fail("label_smoothing", "must lie in [0, 1)", "e.g. label_smoothing=0.1")
        if not is_int(self.seed) or self.seed < 0:
            raise fail("seed", "must be a non-negative integer", "e.g. seed=0")
        if not isinstance(self.eval_every_epoch, bool):
            raise fail("eval_every_epoch", "must be True or False", "e.g. eval_every_epoch=True")
        if self.checkpoint_every is not None and (not is_int(self.checkpoint_every) or self.checkpoint_every < 1):
            raise fail("checkpoint_every", "must be a positive number of steps or None (every epoch)",
                       "e.g. checkpoint_every=50")
        if self.device not in DEVICES:
            raise fail("device", "is not a device", f"use one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise fail("precision", "is not a precision", f"use one of {', '.join(PRECISIONS)}")
        if not is_int(self.num_workers) or self.num_workers < 0:
            raise fail("num_workers", "must be a non-negative integer", "e.g. num_workers=0")
        if self.good_class is not None and (not isinstance(self.good_class, str) or not self.good_class):
            raise fail("good_class", "must be a class name or None", "e.g. good_class='ok'")

    def total_steps(self, steps_per_epoch: int) -> int:
        """The number of optimizer steps of the run: `steps`, or `epochs` whole epochs."""
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch

    def warmup_steps(self, total_steps: int) -> int:
        if isinstance(self.warmup, float) and self.warmup < 1:
            return round(self.warmup * total_steps)
        return min(int(self.warmup), total_steps)

    def replace(self, **changes: Any) -> TrainOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid options are "
                              f"{', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class TrainEvent:
    """One thing that happened during a run, for progress bars, charts and logs.

    kind: "start" | "step" | "epoch_end" | "eval" | "checkpoint" | "done" | "stopped" | "error".
    step: optimizer steps completed so far; total_steps: of the whole run; epoch: 1-based epoch of `step`.
    metrics: numbers of this event: `loss`, `lr`, `head_lr`, `grad_norm` (step); `train_loss` (epoch_end);
        `accuracy`, `loss`, `accuracy/<class>` (eval); `best_accuracy` (eval, done, stopped).
    details: structured extras: `confusion` (list of lists, rows = true class) and `classes` for eval;
        `path` for checkpoint; `run_dir` for start/done.
    """

    kind: str
    step: int
    total_steps: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    eta_s: float | None = None
    elapsed_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[TrainEvent], None]


class StopSignal:
    """A thread-safe stop request: the app's Stop button calls `request()` while `train` runs in a worker thread.

    The loop looks at it once per step, so a run stops within one optimizer step, saving what it has.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()


@dataclass
class TrainResult:
    """What a run produced.

    model: the SuperLoRAModel holding the BEST adapter (highest validation accuracy; the latest one if no
        evaluation ran). metrics / per_class_accuracy / confusion: validation results of that adapter
        (confusion rows are true classes, columns predictions). history: one dict per evaluation (epoch, step,
        train_loss, lr, val_loss, val_accuracy, elapsed_s). run_dir: the run folder, or None for in-memory runs.
        validation: the best adapter's validation results as `superlora.train.validation.validation_record`
        builds them (per-class precision / recall / F1 with counts, good-class numbers, the mistakes), the same
        dict a run folder keeps in validation/results.json; None when nothing was evaluated.
    """

    model: SuperLoRAModel
    best_accuracy: float | None
    metrics: dict[str, float]
    per_class_accuracy: dict[str, float | None]
    confusion: list[list[int]]
    classes: list[str]
    history: list[dict[str, Any]]
    run_dir: Path | None
    stopped: bool
    best_step: int | None = None
    steps: int = 0
    validation: dict[str, Any] | None = None
