"""`train`: the one training path the CLI, the app and the notebooks call.

One run: AdamW (separate learning rates for adapter and head) with linear warm-up and cosine decay, gradient
clipping, optional label smoothing, autocast on GPUs, fixed seeds; validation after each epoch; the best adapter
(by validation accuracy) kept. Progress goes out as `TrainEvent`s; a `StopSignal` ends the run within one step.

It runs under Hugging Face Accelerate: alone it is an ordinary single-process loop, under `accelerate launch` it
is DDP on several processes, with the same global batch and the same numbers. Only the main process writes files
and calls the callbacks. With `output_dir` set, everything goes to a run folder (see `superlora.runs`; the best
adapter's validation results to its validation/, see `superlora.train.validation`) and the run can be resumed
from its checkpoint with identical results.

The pieces a run is set up from live beside this file: `prepare` (model and data checks), `accelerator` (device
and precision), `optim` (optimizer and schedule), `resume` (run identity, the run's config.json, folder checks).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from superlora.base_models import data_config
from superlora.config import SuperLoRAConfig
from superlora.data import ImageClassificationDataset, ImageSet, build_transforms
from superlora.inference import jsonable_data_config
from superlora.runs import RunFolder
from superlora.train.accelerator import make_accelerator
from superlora.train.checkpoint import TrainingState, load_checkpoint, restore_rng, save_checkpoint
from superlora.train.metrics import Evaluation, evaluate, resolve_good_class
from superlora.train.optim import build_optimizer
from superlora.train.options import (
    Callback,
    NonFiniteLossError,
    StopSignal,
    TrainEvent,
    TrainOptions,
    TrainResult,
)
from superlora.train.prepare import architecture_name, check_sets, clone_state, keep_frozen_norms_eval, prepare_model
from superlora.train.resume import check_run_folder, check_same_run, run_config, run_identity
from superlora.train.sampling import AugmentedImages, StepBatches, steps_per_epoch
from superlora.train.validation import validation_record, write_validation

__all__ = ["train"]


class _Run:
    """The state of one call to `train` (a class so that the loop, checkpoints and resume share it plainly)."""

    def __init__(self, model, train_set: ImageSet, val_set: ImageSet | None, config, options: TrainOptions,
                 callbacks: Iterable[Callback], stop: StopSignal, resume: bool,
                 run_info: Mapping[str, Any] | None) -> None:
        self.started = time.monotonic()
        self.options, self.stop, self.callbacks = options, stop, list(callbacks)
        self.train_set, self.val_set = train_set, val_set
        self.classes = list(train_set.classes)
        self.good_class, self.good_note = resolve_good_class(self.classes, options.good_class)
        self.accelerator = acc = make_accelerator(options.device, options.precision)
        self.is_main, self.world, self.rank = acc.is_main_process, acc.num_processes, acc.process_index

        from accelerate.utils import set_seed

        set_seed(options.seed % 2**32)  # numpy's seeds are 32-bit
        self.model_name, self.model = prepare_model(model, config, len(self.classes))
        base = self.model.base_model
        self.model_label = self.model_name or architecture_name(base) or type(base).__name__
        self.config = self.model.config
        self.data_config = data_config(self.model)
        self._prepare_data()

        optimizer, self.scheduler, adapter_params, head_params = build_optimizer(self.model, options,
                                                                                  self.total_steps)
        self.trainable_params = adapter_params + head_params
        with warnings.catch_warnings():
            # torch deprecates broadcast_buffers in favour of a flag accelerate cannot pass yet; ours is still right
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            self.ddp_model, self.optimizer = acc.prepare(self.model, optimizer)
        self.parameters = {
            "adapter": self.model.num_trainable_parameters(include_trainable_modules=False),
            "head": sum(p.numel() for p in head_params),
            "base_model": sum(p.numel() for p in self.model.base_model.parameters()),
        }
        self.run_identity = run_identity(self.model_label, self.config, self.classes, train_set, val_set, options,
                                         self.steps_per_epoch)
        self._reset_progress()

        self.run = self._open_run_folder(resume, run_info)
        if resume:
            self._resume()
        if self.run is not None:  # only now: a refused resume must not overwrite the run's config
            self.run.write_config(self.run_config)
            self.run.write_skipped(getattr(self.train_set, "rejected", None))

    def _prepare_data(self) -> None:
        """Datasets and run length. Step t always sees the same images with the same augmentation
        (superlora.train.sampling); each process validates its own shard of the validation set."""
        options, train_set, val_set = self.options, self.train_set, self.val_set
        train_transform = build_transforms(self.data_config, train=True, hflip=train_set.hflip_safe)
        self.train_data = AugmentedImages(train_set, train_transform, options.seed)
        self.steps_per_epoch = steps_per_epoch(len(train_set), options.batch_size, self.world)
        self.total_steps = options.total_steps(self.steps_per_epoch)
        if val_set is not None and len(val_set):
            shard = list(range(self.rank, len(val_set), self.world))
            self.val_indices = shard
            self.val_data = torch.utils.data.Subset(
                ImageClassificationDataset(val_set, build_transforms(self.data_config, train=False)), shard)
        else:
            self.val_data, self.val_indices = None, []

    def _reset_progress(self) -> None:
        """Progress of a fresh run (all of it goes into checkpoints, so that a resumed run continues with
        identical numbers)."""
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"accuracy": None, "step": None, "epoch": None, "evaluation": None}
        self.best_state: dict[str, Tensor] | None = None
        self.epoch_loss = [0.0, 0]  # sum of per-image losses and image count since the epoch began
        self.elapsed_before = 0.0  # seconds spent before a resume
        self.last_checkpoint_step: int | None = None
        self.last_lr = self.options.lr if self.parameters["adapter"] else 0.0  # head-only has no adapter rate
        self.last_good: tuple[int, dict[str, Tensor]] = (0, clone_state(self.model.trainable_state_dict()))
        self.status = "running"

    # ------------------------------------------------------------------ run folder and resume
    def _open_run_folder(self, resume: bool, run_info: Mapping[str, Any] | None) -> RunFolder | None:
        folder = check_run_folder(self.options.output_dir, resume)
        if folder is None:
            return None
        self.accelerator.wait_for_everyone()  # every process checked before the main one writes anything
        if not self.is_main:
            return None
        self.run_config = run_config(
            folder.path, model_name=self.model_name, model_label=self.model_label, config=self.config,
            options=self.options, classes=self.classes, train_set=self.train_set, val_set=self.val_set,
            data_config=self.data_config, num_processes=self.world, run_info=run_info, resume=resume)
        return folder

    def _resume(self) -> None:
        state = load_checkpoint(RunFolder(self.options.output_dir).checkpoint_path)
        check_same_run(self.run_identity, state.run_identity, self.options.output_dir)
        self.model.load_trainable_state_dict(state.trainable)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        restore_rng(state.rng["tensors"], state.rng["info"])
        progress = state.progress
        self.step = state.step
        self.history = progress["history"]
        self.best = progress["best"]
        if self.best["evaluation"] is not None:
            self.best["evaluation"] = Evaluation.from_dict(self.best["evaluation"])
        self.best_state = state.best
        self.epoch_loss = progress["epoch_loss"]
        self.elapsed_before = progress["elapsed_s"]
        self.last_checkpoint_step = self.step
        self.last_good = (self.step, clone_state(state.trainable))

    def _checkpoint(self) -> None:
        """Write the resumable state (main process) and remember it as the last good state (every process)."""
        trainable = self.model.trainable_state_dict()
        self.last_good = (self.step, clone_state(trainable))
        self.last_checkpoint_step = self.step
        if self.run is None:
            return
        best = dict(self.best, evaluation=self.best["evaluation"].to_dict() if self.best["evaluation"] else None)
        save_checkpoint(self.run.checkpoint_path, TrainingState(
            step=self.step,
            trainable=trainable,
            best=self.best_state,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng={},
            progress={"history": self.history, "best": best, "epoch_loss": self.epoch_loss,
                      "elapsed_s": self.elapsed()},
            run_identity=self.run_identity,
        ))
        self.emit("checkpoint", message=f"checkpoint at step {self.step}: {self.run.checkpoint_path}",
                  details={"path": str(self.run.checkpoint_path)})

    def _checkpoint_due(self) -> bool:
        if self.options.output_dir is None:
            return False
        every = self.options.checkpoint_every
        if every is not None:
            return self.step % every == 0
        return self.step % self.steps_per_epoch == 0

    # ------------------------------------------------------------------ events
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    @property
    def epoch(self) -> int:
        """1-based epoch of the step being (or just) taken."""
        return min(self.step, self.total_steps - 1) // self.steps_per_epoch + 1 if self.total_steps else 1

    def emit(self, kind: str, metrics: Mapping[str, float] | None = None, message: str = "",
             eta_s: float | None = None, details: Mapping[str, Any] | None = None, epoch: int | None = None) -> None:
        if not self.is_main or not self.callbacks:
            return
        event = TrainEvent(kind=kind, step=self.step, total_steps=self.total_steps,
                           epoch=epoch if epoch is not None else self.epoch, metrics=dict(metrics or {}),
                           message=message, eta_s=eta_s, elapsed_s=self.elapsed(), details=dict(details or {}))
        for callback in self.callbacks:
            callback(event)

    def _record(self, message: str = "") -> dict[str, Any]:
        evaluation: Evaluation | None = self.best["evaluation"]
        return {
            "status": self.status,
            "message": message,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "elapsed_s": self.elapsed(),
            "best_accuracy": self.best["accuracy"],
            "best_step": self.best["step"],
            "best_epoch": self.best["epoch"],
            "metrics": evaluation.as_metrics(self.classes) if evaluation else {},
            "per_class_accuracy": evaluation.per_class(self.classes) if evaluation else {},
            "confusion": evaluation.confusion if evaluation else [],
            "classes": self.classes,
            "parameters": {**self.parameters, "total_trainable": self.parameters["adapter"] + self.parameters["head"]},
            "history": self.history,
        }

    def _write_record(self, message: str = "", summary: bool = False) -> None:
        if self.run is None:
            return
        record = self._record(message)
        self.run.write_metrics(record)
        if summary:
            self.run.write_summary(self.run_config, record)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self) -> Evaluation | None:
        if self.val_data is None:
            return None
        acc = self.accelerator
        loader = torch.utils.data.DataLoader(self.val_data, batch_size=self.options.batch_size,
                                             num_workers=self.options.num_workers)

        def gather(rows: Tensor) -> Tensor:
            return acc.gather(acc.pad_across_processes(rows, dim=0, pad_index=-1))

        evaluation = evaluate(self.model, loader, len(self.classes), acc.device,
                              gather=gather if self.world > 1 else None,
                              should_abort=lambda: self.world == 1 and self.stop.requested,
                              autocast=acc.autocast, indices=self.val_indices)
        keep_frozen_norms_eval(self.model)  # evaluate() put the whole model back in train mode
        return evaluation

    def _end_epoch(self) -> bool:
        """Epoch bookkeeping and validation. False when a stop request interrupted the evaluation."""
        epoch = (self.step - 1) // self.steps_per_epoch + 1
        loss_sum, count = self.epoch_loss
        train_loss = loss_sum / count if count else float("nan")
        self.epoch_loss = [0.0, 0]
        lr = self.last_lr
        self.emit("epoch_end", {"train_loss": train_loss}, f"epoch {epoch} done, train loss {train_loss:.4f}",
                  epoch=epoch)
        row: dict[str, Any] = {"epoch": epoch, "step": self.step, "train_loss": train_loss, "lr": lr,
                               "val_loss": None, "val_accuracy": None}
        if self.options.eval_every_epoch or self.step == self.total_steps:
            evaluation = self._evaluate()
            if evaluation is None and self.val_data is not None:
                return False
            if evaluation is not None:
                row.update(val_loss=evaluation.loss, val_accuracy=evaluation.accuracy)
                if self.best["accuracy"] is None or evaluation.accuracy > self.best["accuracy"]:
                    self.best = {"accuracy": evaluation.accuracy, "step": self.step, "epoch": epoch,
                                 "evaluation": evaluation}
                    self.best_state = clone_state(self.model.trainable_state_dict())
                    self._write_validation()
                metrics = {**evaluation.as_metrics(self.classes), "best_accuracy": self.best["accuracy"]}
                if self.run is not None:
                    self.run.log_scalars(self.step, evaluation.as_metrics(self.classes), "val")
                self.emit("eval", metrics,
                          f"epoch {epoch}: validation accuracy {evaluation.accuracy:.2%} (best "
                          f"{self.best['accuracy']:.2%}), loss {evaluation.loss:.4f}",
                          details={"confusion": evaluation.confusion, "classes": self.classes}, epoch=epoch)
        row["elapsed_s"] = round(self.elapsed(), 3)
        self.history.append(row)
        if self.run is not None:
            self.run.log_scalars(self.step, {"loss_epoch": train_loss}, "train")
            self.run.flush()
        self._write_record()
        return True

    def _write_validation(self) -> dict[str, Any] | None:
        """The best evaluation's record (per-class table, good-class numbers, mistakes), written to the run
        folder's validation/ when there is one; None when nothing was evaluated."""
        evaluation: Evaluation | None = self.best["evaluation"]
        if evaluation is None:
            return None
        record = validation_record(evaluation, self.classes, self.val_set.names, good_class=self.good_class,
                                   good_note=self.good_note, step=self.best["step"], epoch=self.best["epoch"])
        if self.run is None:
            return record
        return write_validation(self.run.path, record, evaluation, self.val_set.images, self.val_set.names)

    # ------------------------------------------------------------------ the loop
    def execute(self) -> TrainResult:
        try:
            if self.run is not None:
                # a resumed run drops what the interrupted one logged after its checkpoint (step + 1 onwards)
                self.run.open_tensorboard(purge_step=self.step + 1 if self.step else None)
            stopped = self._train()
            return self._finish(stopped)
        except NonFiniteLossError:
            raise
        except BaseException as err:
            self.status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            message = str(err) or type(err).__name__
            try:
                self._write_record(message, summary=True)
                self.emit("error", message=message)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise
        finally:
            if self.run is not None:
                self.run.close()

    def _train(self) -> bool:
        acc, options = self.accelerator, self.options
        where = f"{self.world} processes" if self.world > 1 else str(acc.device)
        self.emit("start", {"trainable_parameters": float(self.parameters["adapter"] + self.parameters["head"])},
                  f"training {self.parameters['adapter']:,} adapter + {self.parameters['head']:,} head parameters "
                  f"for {self.total_steps} steps ({self.steps_per_epoch} per epoch) on {where}"
                  + (f", resuming at step {self.step}" if self.step else ""),
                  details={"run_dir": str(self.run.path) if self.run else None, "classes": self.classes})
        sampler = StepBatches(len(self.train_set), options.batch_size, options.seed, self.total_steps,
                              start_step=self.step, rank=self.rank, world_size=self.world)
        loader = torch.utils.data.DataLoader(self.train_data, batch_sampler=sampler, num_workers=options.num_workers,
                                             pin_memory=acc.device.type == "cuda")
        self.ddp_model.train()
        keep_frozen_norms_eval(self.model)
        session_start, session_steps = time.monotonic(), 0
        for images, labels in loader:
            images, labels = images.to(acc.device, non_blocking=True), labels.to(acc.device, non_blocking=True)
            with acc.autocast():
                logits = self.ddp_model(images)
            loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum",
                                       label_smoothing=options.label_smoothing)
            count = sampler.global_count(self.step)
            # One collective per step carries the global loss, a stop request (main process) and a bad loss (any).
            flags = torch.stack([loss_sum.detach().double(),
                                 torch.tensor(float(self.is_main and self.stop.requested), dtype=torch.float64,
                                              device=acc.device),
                                 (~torch.isfinite(loss_sum.detach())).double()])
            if self.world > 1:
                flags = acc.reduce(flags, reduction="sum")
            if flags[1] > 0:
                return True
            if flags[2] > 0:
                self._non_finite(float(flags[0] / count))
            # Each process holds a share of the global batch; DDP averages over processes, so scale by N / count.
            acc.backward(loss_sum * (self.world / count))
            grad_norm = None
            if options.grad_clip:
                grad_norm = acc.clip_grad_norm_(self.trainable_params, options.grad_clip)
            lrs = [group["lr"] for group in self.optimizer.param_groups]  # the rates this step uses
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

            loss = float(flags[0]) / count
            self.step += 1
            session_steps += 1
            self.epoch_loss = [self.epoch_loss[0] + loss * count, self.epoch_loss[1] + count]
            self.last_lr = lrs[0] if self.parameters["adapter"] else 0.0  # head-only: no adapter rate
            metrics = {"loss": loss, "lr": self.last_lr, "head_lr": lrs[-1]}
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            if self.run is not None:
                self.run.log_scalars(self.step, metrics, "train")
            rate = (time.monotonic() - session_start) / session_steps
            self.emit("step", metrics, eta_s=rate * (self.total_steps - self.step))

            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                if not self._end_epoch():
                    return True
            if self._checkpoint_due():
                self._checkpoint()
        return False

    def _non_finite(self, value: float) -> None:
        """Stop on a NaN/inf loss: keep the last good checkpoint, put the last good weights back, explain."""
        good_step, good_state = self.last_good
        self.model.load_trainable_state_dict(self.best_state if self.best_state is not None else good_state)
        where = (f"the last good checkpoint (step {self.last_checkpoint_step}) is kept in {self.run.checkpoint_path}"
                 if self.run is not None and self.last_checkpoint_step is not None else
                 f"the model keeps its weights from step {good_step}")
        clipping = "" if self.options.grad_clip else " and turn gradient clipping on (grad_clip=1.0)"
        message = (f"training stopped: the loss became {value} at step {self.step + 1} (epoch {self.epoch}); "
                   f"{where}. Lower the learning rate (now lr={self.options.lr}, head_lr={self.options.head_lr})"
                   f"{clipping}, then train again")
        self.status = "failed"
        self._write_record(message, summary=True)
        if self.run is not None:
            self._save_adapter()
        self.emit("error", message=message)
        raise NonFiniteLossError(message)

    def _save_adapter(self) -> None:
        """The model's current trainable state as the run's adapter (main process)."""
        metadata = {"base_model": self.model_name, "architecture": architecture_name(self.model.base_model),
                    "classes": self.classes,
                    "data_config": jsonable_data_config(self.data_config),
                    "best_accuracy": self.best["accuracy"], "step": self.step}
        self.model.save_pretrained(self.run.adapter_path, metadata=metadata)

    def _finish(self, stopped: bool) -> TrainResult:
        if self.run is not None and self.last_checkpoint_step != self.step:
            self._checkpoint()
        if self.best_state is not None:
            self.model.load_trainable_state_dict(self.best_state)
        self.status = "stopped" if stopped else "done"
        best = self.best["accuracy"]
        outcome = f"stopped at step {self.step} of {self.total_steps}" if stopped else \
            f"finished {self.total_steps} steps"
        message = outcome + (f"; best validation accuracy {best:.2%} at step {self.best['step']}"
                             if best is not None else "")
        if self.run is not None:
            self._save_adapter()
            self._write_record(message, summary=True)
        validation = self._write_validation()
        self.accelerator.wait_for_everyone()
        evaluation: Evaluation | None = self.best["evaluation"]
        self.emit("stopped" if stopped else "done", {"best_accuracy": best} if best is not None else {}, message,
                  details={"run_dir": str(self.run.path) if self.run else None})
        return TrainResult(
            model=self.model,
            best_accuracy=best,
            metrics=evaluation.as_metrics(self.classes) if evaluation else {},
            per_class_accuracy=evaluation.per_class(self.classes) if evaluation else {},
            confusion=evaluation.confusion if evaluation else [],
            classes=self.classes,
            history=self.history,
            run_dir=Path(self.options.output_dir) if self.options.output_dir else None,
            stopped=stopped,
            best_step=self.best["step"],
            steps=self.step,
            validation=validation,
        )


def train(
    model: nn.Module | str,
    train_set: ImageSet,
    val_set: ImageSet | None,
    config: SuperLoRAConfig | dict | str | None,
    options: TrainOptions | None = None,
    *,
    callbacks: Iterable[Callback] = (),
    stop: StopSignal | None = None,
    resume: bool = False,
    run_info: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune `model` with a SuperLoRA adapter on `train_set`, validating on `val_set`.

    model: a model name or path (`superlora.base_models.load_model`), a timm-style nn.Module with a `head` (adapted in
        place; its head is resized to the classes), or a SuperLoRAModel (then `config` may be None).
    config: the adapter: a SuperLoRAConfig, a dict of its fields, or a preset name ("lora").
    callbacks: functions called with every `TrainEvent` (main process only).
    stop: `StopSignal`; after `request()` the run ends within one step, writes its checkpoint and adapter and
        returns with `stopped=True`.
    resume: continue the run in `options.output_dir` from its checkpoint (same config, data and options).
    run_info: extra JSON fields for the run's config.json (the CLI records the data source there).
    Returns a `TrainResult` whose model holds the best adapter. Raises `NonFiniteLossError` on a NaN/inf loss,
    `ConfigError`/`DataError`/`CheckpointError` for unusable inputs.
    """
    options = options if options is not None else TrainOptions()
    options.validate()
    check_sets(train_set, val_set)
    return _Run(model, train_set, val_set, config, options, callbacks, stop or StopSignal(), resume,
                run_info).execute()
