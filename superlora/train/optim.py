"""The optimizer of a run: AdamW with one learning rate for the adapter and one for the head, and the
learning-rate schedule (linear warm-up, then cosine decay)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from superlora.errors import ConfigError
from superlora.model import SuperLoRAModel
from superlora.train.options import TrainOptions


class WarmupCosine:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay towards 0 at `total`.

    A class rather than a lambda so that LambdaLR's state_dict (saved in checkpoints) holds plain numbers.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: SuperLoRAModel, options: TrainOptions, total_steps: int
                    ) -> tuple[torch.optim.AdamW, LambdaLR, list[nn.Parameter], list[nn.Parameter]]:
    """(optimizer, scheduler, adapter parameters, head parameters) for `model`.

    Adapter factors train at `options.lr`, the trainable modules (the head) at `options.head_lr`; biases and other
    vectors get no weight decay. A head-only config has no adapter factors, so only the head's groups exist.
    """
    adapter_params = list(model.adapter.parameters())
    head_params = [p for name in model.trainable_modules for p in model.base_model.get_submodule(name).parameters()]
    groups = [
        dict(params=adapter_params, lr=options.lr, weight_decay=options.weight_decay),
        dict(params=[p for p in head_params if p.ndim >= 2], lr=options.head_lr, weight_decay=options.weight_decay),
        dict(params=[p for p in head_params if p.ndim < 2], lr=options.head_lr, weight_decay=0.0),
    ]
    if not adapter_params and not head_params:
        raise ConfigError("nothing to train: the config has no adapter (head-only) and the model has no trainable "
                          "classifier head; choose an adapter preset such as 'lora', or a model with a head")
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    scheduler = LambdaLR(optimizer, WarmupCosine(options.warmup_steps(total_steps), total_steps))
    return optimizer, scheduler, adapter_params, head_params
