"""Architectures without weights: a model built from its name, randomly initialised or on the `meta` device,
and the data config (input size, normalisation) it was built for."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from superlora.base_models.default_model import (DEFAULT_MODEL, DEFAULT_MODEL_DIR, HYBRID_ARCHITECTURE,
                                                 build_hybrid_vit, freeze_stem_batchnorm)
from superlora.base_models.hub import HUB_MODELS
from superlora.base_models.weights import CONFIG_FILE, TORCH_SUFFIXES, read_config
from superlora.errors import CheckpointError, ConfigError


def registered_cfg(name: str) -> dict:
    """timm's registered pretrained config of a timm name (empty when it has none); ConfigError for unknown names."""
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ConfigError(f"unknown model '{name}': use '{DEFAULT_MODEL}', a timm model name such as "
                          f"{', '.join(list(HUB_MODELS)[:3])}, or a path to a weights file or folder")
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    return cfg.to_dict() if cfg is not None else {}


def looks_like_path(name: str) -> bool:
    """Whether `load_model` treats `name` as a file or folder rather than a registry name."""
    if name.startswith(("hf-hub:", "hf_hub:")):  # timm's own hub-repo names contain a slash but are not paths
        return False
    return os.path.exists(name) or os.sep in name or name.lower().endswith((".safetensors", *TORCH_SUFFIXES))


def create_model(name_or_path: str, *, num_classes: int | None = None, arch: str | None = None) -> nn.Module:
    """The architecture of `name_or_path`, randomly initialised (no weights read, no network)."""
    name = os.fspath(name_or_path)
    if name == DEFAULT_MODEL or name == HYBRID_ARCHITECTURE:
        config = read_config(DEFAULT_MODEL_DIR / CONFIG_FILE) if (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file() else {}
        args = dict(config.get("model_args") or {})
        return build_hybrid_vit(**args, num_classes=num_classes if num_classes is not None else
                                config.get("num_classes", 1000))
    if looks_like_path(name):
        path = Path(name)
        config_path = path / CONFIG_FILE if path.is_dir() else path.parent / CONFIG_FILE
        if arch is None and not config_path.is_file():
            raise CheckpointError(f"{path}: pass arch= to say which architecture it is")
        config = read_config(config_path) if arch is None else {}
        architecture = arch or config["architecture"]
        if architecture in (HYBRID_ARCHITECTURE, DEFAULT_MODEL):
            args = dict(config.get("model_args") or {})
            classes = num_classes if num_classes is not None else config.get("num_classes", 1000)
            return build_hybrid_vit(**args, num_classes=classes)
        return create_model(architecture, num_classes=num_classes if num_classes is not None else
                            config.get("num_classes"))
    import timm

    registered_cfg(name)  # unknown names raise ConfigError
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    return timm.create_model(name, pretrained=False, **kwargs)


def create_meta_model(name: str, num_classes: int | None = None) -> nn.Module:
    """What `load_model(name, num_classes=...)` returns, on the `meta` device: shapes only, no memory.

    For counting the parameters of big models (ViT-B/16, ViT-L) in well under a second. As in `load_model`, the
    bundled default's stem BatchNorm is frozen, so its scale and shift are buffers, not parameters.
    """
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
        if getattr(model, "pretrained_cfg", {}).get("architecture") == HYBRID_ARCHITECTURE:
            freeze_stem_batchnorm(model)
        return model


def data_config(model: nn.Module | str | os.PathLike) -> dict:
    """The data config (input_size, interpolation, mean, std, crop_pct, crop_mode) `model` was built for.

    `model` is a model (a timm model, or a wrapper with a `base_model` such as `SuperLoRAModel`) or a name or path
    (its architecture is built on the `meta` device). This is timm's resolved data config, except that the input
    size is the one the ViT's patch embedding was built with: timm keeps the registered size when a model is created
    with another `img_size` (a 32 px test ViT would report 224 px).
    """
    from timm.data import resolve_data_config

    if isinstance(model, (str, os.PathLike)):
        model = create_meta_model(os.fspath(model))
    base = getattr(model, "base_model", model)
    config = dict(resolve_data_config(model=base))
    patch_embed = getattr(base, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and not getattr(patch_embed, "dynamic_img_size", False):
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        config["input_size"] = (config["input_size"][0], int(height), int(width))
    return config
