"""Training one run of the PEFT baselines study: a PEFT adapter through `train_peft` (a loop built from the parts
of `superlora.train.train`, which only takes SuperLoRA adapters) or a SuperLoRA whole-qkv point through `train()`
itself; both report an `Outcome` with the per-image correctness on the validation set (`encode_correct`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.study.intervals import correct_from_validation, decode_correct, encode_correct  # noqa: F401
from benchmarks.study.peft.matching import SuperLoRAPoint, peft_counts, split_trainable
from superlora.errors import ConfigError

DEFAULT_LRS = (1e-3, 4e-3, 1.6e-2, 6.4e-2)  # the per-point lr sweep's grid (benchmarks/study/sweep.choose_lr)

PROTOCOL_DIFFERENCES = (
    "PEFT rows train with benchmarks/peft_baselines.py's train_peft, not superlora.train.train (which only takes "
    "SuperLoRA adapters); it reuses TrainOptions, the sampling/augmentation, WarmupCosine, the AdamW groups and "
    "evaluate(), and leaves out only what a single-process CPU run without a run folder does not use: the "
    "Accelerator wrapper (a no-op on one CPU process), checkpoints, events and the run folder. It runs on the CPU "
    "only, the study's device.",
    "A non-finite loss ends the run with status 'nonfinite', as train() does (train() also restores the last good "
    "weights, which a benchmark row does not need).",
    "Adapter seeds: the run seed also seeds PEFT's fixed random parts (VeRA and RandLoRA projection_prng_key, "
    "FourierFT random_loc_seed, TinyLoRA projection_seed, Uni-LoRA proj_seed; VB-LoRA draws from the global RNG "
    "seeded by the run seed), as the study's seed drives SuperLoRA's own factor init and projections.",
    "As in train(), weight decay (0.01) applies to every adapter parameter, so it also pulls VeRA's lambda_b and "
    "RandLoRA's gamma (initialised at 1 and 1/576, not 0) slightly towards 0.",
)


@dataclass
class Outcome:
    status: str = "ok"
    accuracy: float = math.nan
    val_loss: float = math.nan
    train_loss: float = math.nan
    adapter: int = 0
    head: int = 0
    step_times: list[tuple[float, float]] = field(default_factory=list)
    fixed_values: int | str = ""  # non-trainable values the adapter adds (PEFT rows)
    correct: tuple[bool, ...] = ()  # per validation image, in order: was it classified right (empty: not known)
    model: Any = None  # the trained model (train_peft only; not part of a row)


def build_base(model: str, num_classes: int, pretrained: bool = True):
    from superlora.base_models import load_model

    return load_model(model, num_classes=num_classes, pretrained=pretrained)


def train_peft(model: str, train_set, val_set, make_config: Callable[[int], Any], options) -> Outcome:
    """Train one PEFT adapter (`make_config(seed)`: its PEFT config) and the head with the study's protocol; see
    PROTOCOL_DIFFERENCES for how this follows `superlora.train.train`."""
    import peft
    import torch
    from accelerate.utils import set_seed

    from superlora.base_models import data_config as input_config
    from superlora.data import ImageClassificationDataset, build_transforms
    from superlora.train.metrics import evaluate

    options.validate()
    if options.device == "cuda":
        raise ConfigError("train_peft runs on the CPU only (the study's device); use device='cpu'")
    classes = list(train_set.classes)
    set_seed(options.seed % 2**32)  # as train(): before the head and the adapter are initialised
    base = build_base(model, len(classes))
    data_config = input_config(base)
    base_buffers = sum(b.numel() for b in base.buffers())
    peft_model = peft.get_peft_model(base, make_config(options.seed))
    outcome = Outcome(model=peft_model, fixed_values=sum(b.numel() for b in peft_model.buffers()) - base_buffers)
    outcome.adapter, outcome.head = peft_counts(peft_model)
    _train_steps(peft_model, train_set, data_config, options, outcome)
    if outcome.status != "ok":
        return outcome
    val_data = ImageClassificationDataset(val_set, build_transforms(data_config, train=False))
    val_loader = torch.utils.data.DataLoader(val_data, batch_size=options.batch_size, num_workers=options.num_workers)
    evaluation = evaluate(peft_model, val_loader, len(classes), torch.device("cpu"))
    outcome.accuracy, outcome.val_loss = evaluation.accuracy, evaluation.loss
    outcome.correct = tuple(p.correct for p in sorted(evaluation.predictions, key=lambda p: p.index))
    return outcome


def _train_steps(peft_model, train_set, data_config, options, outcome: Outcome) -> None:
    """The training steps of `train_peft`: the batches, schedule, AdamW groups and clipping of `train()`; sets
    the outcome's train loss and step times, or its status 'nonfinite'."""
    import torch
    import torch.nn.functional as F
    from torch.optim.lr_scheduler import LambdaLR

    from superlora.data import build_transforms
    from superlora.train.optim import WarmupCosine
    from superlora.train.prepare import keep_frozen_norms_eval
    from superlora.train.sampling import AugmentedImages, StepBatches, steps_per_epoch

    adapter_params, head_params = split_trainable(peft_model)
    train_data = AugmentedImages(train_set, build_transforms(data_config, train=True, hflip=train_set.hflip_safe),
                                 options.seed)
    per_epoch = steps_per_epoch(len(train_set), options.batch_size)
    total = options.total_steps(per_epoch)
    groups = [
        dict(params=adapter_params, lr=options.lr, weight_decay=options.weight_decay),
        dict(params=[p for p in head_params if p.ndim >= 2], lr=options.head_lr, weight_decay=options.weight_decay),
        dict(params=[p for p in head_params if p.ndim < 2], lr=options.head_lr, weight_decay=0.0),
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    scheduler = LambdaLR(optimizer, WarmupCosine(options.warmup_steps(total), total))
    sampler = StepBatches(len(train_set), options.batch_size, options.seed, total)
    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, num_workers=options.num_workers)
    trainable = adapter_params + head_params

    peft_model.train()
    keep_frozen_norms_eval(peft_model)
    step, epoch_loss = 0, [0.0, 0]
    for images, labels in loader:
        logits = peft_model(images)
        loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=options.label_smoothing)
        batch = sampler.global_count(step)
        if not torch.isfinite(loss_sum):
            outcome.status = "nonfinite"
            return
        (loss_sum / batch).backward()
        if options.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        outcome.step_times.append((time.monotonic(), time.process_time()))
        epoch_loss = [epoch_loss[0] + float(loss_sum.detach()), epoch_loss[1] + batch]
        if step % per_epoch == 0 and step != total:
            epoch_loss = [0.0, 0]  # train()'s train_loss is the mean over the last (possibly partial) epoch
    outcome.train_loss = epoch_loss[0] / epoch_loss[1] if epoch_loss[1] else math.nan


def train_superlora(model: str, train_set, val_set, point: SuperLoRAPoint, options) -> Outcome:
    """A SuperLoRA whole-qkv point through `superlora.train.train` itself, as the Pareto study runs it; the
    per-image correctness comes from its validation record (every image not among the mistakes)."""
    from superlora.train import NonFiniteLossError, train

    outcome = Outcome()

    def on_event(event) -> None:
        if event.kind == "step":
            outcome.step_times.append((time.monotonic(), time.process_time()))

    try:
        result = train(model, train_set, val_set, point.config.replace(seed=options.seed), options,
                       callbacks=[on_event])
    except NonFiniteLossError:
        outcome.status = "nonfinite"
        outcome.adapter = point.count
        return outcome
    outcome.adapter = result.model.num_trainable_parameters(include_trainable_modules=False)
    outcome.head = result.model.num_trainable_parameters() - outcome.adapter
    outcome.accuracy, outcome.val_loss = result.best_accuracy, result.metrics["loss"]
    outcome.train_loss = result.history[-1]["train_loss"]
    outcome.correct = correct_from_validation(result.validation)
    return outcome
