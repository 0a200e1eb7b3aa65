"""Weights files: reading tensors safely (never unpickling) and the `save_model` folder format.

A saved model is a folder with `model.safetensors` and `config.json` (architecture, model arguments, data config);
`read_state_dict` also reads single `.safetensors` and `torch.save`d `.pth`/`.pt`/`.bin` state dicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from superlora.errors import CheckpointError, ConfigError
from superlora.files import atomic_write_bytes

FORMAT_VERSION = "superlora-model/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_DATA_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: `.safetensors`, or `.pth`/`.pt`/`.bin` through `torch.load(weights_only=True)`.

    Training checkpoints that wrap the weights (`{"state_dict": ...}`, `{"model": ...}`) and DataParallel
    prefixes (`module.`) are unwrapped. Anything else raises `CheckpointError`; nothing is ever unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path} is not a readable .safetensors file ({exc}); "
                                  "re-export it, or pick another file") from exc
    elif suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for corrupt archives
            # torch's own message advises weights_only=False; we never do that, so it is not repeated here.
            raise CheckpointError(
                f"{path} could not be read as plain tensors with torch.load(weights_only=True) "
                f"({type(exc).__name__}). Files holding Python objects are refused for safety, and this one is "
                "either such a file or corrupt: re-save the weights with torch.save(model.state_dict(), ...) "
                "or as .safetensors"
            ) from exc
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    else:
        raise CheckpointError(f"{path}: unsupported weights file type '{path.suffix}'; "
                              "use .safetensors (preferred) or .pth/.pt/.bin saved with torch.save(state_dict)")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def model_config(model: nn.Module) -> dict:
    """The JSON-able description `load_model` needs to rebuild `model`: architecture, arguments, data config."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    architecture = cfg.get("architecture")
    if architecture is None:
        raise ConfigError("this model has no timm `pretrained_cfg['architecture']`; build it with "
                          "superlora.base_models.load_model or timm.create_model so that it can be saved and rebuilt")
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in _DATA_KEYS}
    return dict(format=FORMAT_VERSION, architecture=architecture,
                model_args=dict(getattr(model, "superlora_model_args", {})),
                num_classes=getattr(model, "num_classes", None), pretrained_cfg=data)


def save_model(model: nn.Module, folder, *, extra: dict | None = None) -> Path:
    """Save `model` as `folder/model.safetensors` + `folder/config.json` (each written atomically).

    `load_model(folder)` rebuilds it offline. `extra` adds JSON-able fields to config.json (e.g. provenance).
    """
    from safetensors.torch import save

    folder = Path(folder)
    config = model_config(model)
    config.update(extra or {})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(tensors, metadata={"format": FORMAT_VERSION}))
    atomic_write_bytes(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def read_config(path: Path) -> dict:
    """A model's config.json (written by `save_model`), checked to name an architecture."""
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); fix or delete it, or pass arch=") from exc
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointError(f"{path} does not name an 'architecture'; pass arch= to load_model instead")
    return config
