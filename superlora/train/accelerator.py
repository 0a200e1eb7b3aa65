"""The Hugging Face Accelerate side of a run: the mixed-precision mode and the `Accelerator` itself.

Alone, the accelerator is an ordinary single process on the CPU or one GPU; under `accelerate launch` it is one
process of a DDP group.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from superlora.errors import ConfigError


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """Accelerate's mixed_precision value ("no", "bf16", "fp16") for an option value."""
    if precision == "auto":
        if not on_gpu:
            return "no"
        from_launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
        if from_launcher:
            return from_launcher
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not on_gpu:
        raise ConfigError("precision='fp16' needs a GPU; use precision='bf16' or 'fp32' on a CPU")
    return "no" if precision == "fp32" else precision


def make_accelerator(device: str, precision: str) -> Any:
    """An `accelerate.Accelerator` for this run (single process, or one process of `accelerate launch`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedDataParallelKwargs

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'")
    on_gpu = device != "cpu" and torch.cuda.is_available()
    kwargs = dict(
        cpu=not on_gpu,
        mixed_precision=resolve_precision(precision, on_gpu),
        # Buffers never change here (frozen base, norms kept in eval mode, fixed maps regenerated from the seed on
        # every process), and the fixed projection maps can be large: do not broadcast them on every forward.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    try:
        return Accelerator(**kwargs)
    except ValueError:
        # Accelerate keeps one process-wide state; a later run in the same process (the app) with another
        # device or precision must reset it, which is safe only when no process group exists.
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)
