"""Training: the one `train()` that the CLI, the app and the notebooks call, and what it talks in.

    from superlora.train import train, TrainOptions, StopSignal
    result = train("superlora-default", train_set, val_set, preset("lora", rank=4),
                   TrainOptions(epochs=3, output_dir="runs/my-run"), callbacks=[print])
    result.model            # SuperLoRAModel with the best adapter
    result.best_accuracy    # validation accuracy of that adapter
    result.validation       # its per-class table, missed defects / false alarms and mistakes

Modules: `options` (TrainOptions, TrainEvent, TrainResult, StopSignal, errors), `loop` (train: the run and its
step loop), `prepare` (the model and data a run starts from), `accelerator` (device, precision, DDP), `optim` (AdamW
and the warm-up/cosine schedule), `resume` (the run's identity and config.json, run-folder checks), `sampling`
(deterministic batches and augmentation), `metrics` (accuracy, per-class precision / recall / F1, confusion,
missed defects and false alarms), `validation` (those results as a record and as the run folder's validation/),
`checkpoint` (resumable state), `callbacks` (tqdm bar, event log), `auto_lr` (the adapter lr picked from short
probe runs: `pick_lr`, `train_at_picked_lr`). Run folders live in `superlora.runs`, the
run report in `superlora.report`; predictions in `superlora.inference`.
"""

from superlora.inference import predict
from superlora.train.auto_lr import LrPick, LrProbe, pick_lr, probe_of, train_at_picked_lr
from superlora.train.callbacks import EventLog, TqdmProgress
from superlora.train.loop import train
from superlora.train.options import (
    Callback,
    NonFiniteLossError,
    StopSignal,
    TrainEvent,
    TrainingError,
    TrainOptions,
    TrainResult,
)

__all__ = [
    "Callback",
    "EventLog",
    "LrPick",
    "LrProbe",
    "NonFiniteLossError",
    "StopSignal",
    "TqdmProgress",
    "TrainEvent",
    "TrainOptions",
    "TrainResult",
    "TrainingError",
    "pick_lr",
    "predict",
    "probe_of",
    "train",
    "train_at_picked_lr",
]
