"""The resumable training checkpoint: one safetensors file, written atomically, never unpickled.

Tensors (trainable weights, the best weights so far, optimizer moments, RNG states) are safetensors entries;
everything else (step, scheduler, optimizer hyper-parameters, history, the run's identity) is JSON stored in
the file's metadata. Reading it back runs no code from the file.

Entry names: `model.<name>` and `best.<name>` (SuperLoRAModel.trainable_state_dict keys),
`optimizer.<param index>.<state key>`, `rng.torch`, `rng.cuda.<device>`, `rng.numpy`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from superlora.errors import CheckpointError
from superlora.files import atomic_write

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "superlora-checkpoint/1"


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it was."""

    step: int
    trainable: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    progress: dict[str, Any]  # history, best accuracy/step/metrics, running epoch loss, elapsed time
    # what a resuming run must match (superlora.train.resume.run_identity); stored under the key "fingerprint"
    run_identity: dict[str, Any]
    best: dict[str, Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The states of torch (CPU and CUDA), numpy and `random`, as tensors plus JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, python_state, gauss = random.getstate()
    info = {"numpy": [kind, int(position), int(has_gauss), float(cached)],
            "python": [version, list(python_state), gauss]}
    return tensors, info


def restore_rng(tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, position, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, cached))
    version, python_state, gauss = info["python"]
    random.setstate((version, tuple(python_state), gauss))


# ---------------------------------------------------------------------------------------------------- optimizer
def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                values.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "values": values}


def _unflatten_optimizer(tensors: dict[str, Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, entries in info["values"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": info["param_groups"]}


# ---------------------------------------------------------------------------------------------------- file
def save_checkpoint(path: Path, state: TrainingState) -> None:
    """Write `state` to `path` through a temporary file and a rename."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in state.trainable.items()}
    if state.best is not None:
        tensors.update({f"best.{k}": v.detach().to("cpu").contiguous() for k, v in state.best.items()})
    optimizer_tensors, optimizer_info = _flatten_optimizer(state.optimizer)
    tensors.update(optimizer_tensors)
    rng_tensors, rng_info = capture_rng() if not state.rng else (state.rng["tensors"], state.rng["info"])
    tensors.update({k: v.contiguous() for k, v in rng_tensors.items()})
    info = {
        "format": FORMAT,
        "step": state.step,
        "optimizer": optimizer_info,
        "scheduler": state.scheduler,
        "rng": rng_info,
        "progress": state.progress,
        "fingerprint": state.run_identity,
        "extra": state.extra,
        "has_best": state.best is not None,
    }
    metadata = {"superlora_state": json.dumps(info)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: Path) -> TrainingState:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError when it is missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}; a run folder gets one every epoch (or every "
                              "checkpoint_every steps) once training has started")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        info = json.loads(metadata["superlora_state"])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a superlora training checkpoint") from err
    except Exception as err:  # safetensors raises its own types for damaged headers
        raise CheckpointError(f"{path} cannot be read ({err}); it is damaged, start the run again") from err
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {info.get('format')!r}, this superlora reads {FORMAT!r}")
    groups: dict[str, dict[str, Tensor]] = {"model": {}, "best": {}, "optimizer": {}, "rng": {}}
    for key, tensor in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in groups:
            raise CheckpointError(f"{path} holds an unexpected entry {key!r}")
        groups[prefix][rest if prefix in ("model", "best") else key] = tensor
    return TrainingState(
        step=int(info["step"]),
        trainable=groups["model"],
        best=groups["best"] if info.get("has_best") else None,
        optimizer=_unflatten_optimizer(groups["optimizer"], info["optimizer"]),
        scheduler=info["scheduler"],
        rng={"tensors": groups["rng"], "info": info["rng"]},
        progress=info["progress"],
        run_identity=info["fingerprint"],
        extra=info.get("extra", {}),
    )
