"""`load_model`: a base model with its weights, from the bundled default, a timm name, or a local file or folder.

Every file is read safely (`weights.read_state_dict`) and checked against the architecture's shapes
(`shapes`) before the real model is built; hub weights come from the local cache or, only when the hub answers,
through timm's own download (`hub`). Every failure is a `CheckpointError` or `ConfigError` with a remedy.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from superlora.base_models.architectures import create_meta_model, create_model, looks_like_path, registered_cfg
from superlora.base_models.default_model import (DEFAULT_MODEL, DEFAULT_MODEL_DIR, HYBRID_ARCHITECTURE,
                                                 build_hybrid_vit, freeze_stem_batchnorm)
from superlora.base_models.hub import cached_hub_file, env_flag, hub_reachable, offline_message
from superlora.base_models.shapes import (MAX_CLASSES, RESIZED_BY_TIMM, check_fits, checked_classes,
                                          expected_shapes, first_mismatch, head_rows, precheck_shapes)
from superlora.base_models.weights import CONFIG_FILE, WEIGHTS_FILE, read_config, read_state_dict
from superlora.errors import CheckpointError, ConfigError


def load_model(
    name_or_path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    pretrained_cfg_overlay: dict | None = None,
    max_classes: int = MAX_CLASSES,
) -> nn.Module:
    """Build a model and load its weights: the bundled default, a timm name, or a local file or folder.

    num_classes: replace the classifier (`head`) with a fresh one of this size (0 removes it); None keeps the
        pretrained head. pretrained=False gives the same architecture randomly initialised (no file or network).
    arch: the architecture of a single weights file (a timm name, or 'superlora-default').
    pretrained_cfg_overlay: passed to timm for hub names, e.g. dict(file=PATH) to load a local file through the
        very code path that loads downloaded weights.
    max_classes: the largest classifier a weights file may declare (`MAX_CLASSES`). Every file is checked against
        the architecture's shapes on the `meta` device before the real model is built, so a file that claims
        tensors it does not hold costs no memory.
    Raises `ConfigError` for unknown names and `CheckpointError` for missing, unsafe or mismatched weights.
    """
    name = os.fspath(name_or_path)
    if name == DEFAULT_MODEL:
        model = _load_folder(DEFAULT_MODEL_DIR, pretrained=pretrained, display=DEFAULT_MODEL,
                             max_classes=max_classes)
    elif looks_like_path(name):
        if not pretrained:
            model = create_model(name, arch=arch)
        else:
            model = _load_local(Path(name), arch, max_classes)
    else:
        model = _load_hub(name, pretrained=pretrained, overlay=pretrained_cfg_overlay, max_classes=max_classes)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
        model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": num_classes}
    return model.to(device)


def _load_folder(folder: Path, *, pretrained: bool, display: str, max_classes: int = MAX_CLASSES) -> nn.Module:
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or (pretrained and not weights_path.is_file()):
        hint = ("the bundled weights ship in assets/default/ of a source checkout (git clone); "
                "scripts/pretrain_default.py recreates them") if display == DEFAULT_MODEL else \
            f"save_model writes both {WEIGHTS_FILE} and {CONFIG_FILE}"
        raise CheckpointError(f"'{display}': expected {weights_path} and {config_path}; {hint}")
    config = read_config(config_path)
    return _build_and_load(config["architecture"], config, weights_path if pretrained else None, display,
                           max_classes)


def _load_local(path: Path, arch: str | None, max_classes: int = MAX_CLASSES) -> nn.Module:
    if path.is_dir():
        return _load_folder(path, pretrained=True, display=str(path), max_classes=max_classes)
    config = {}
    if arch is None:
        for candidate in (path.with_suffix(".json"), path.parent / CONFIG_FILE):
            if candidate.is_file():
                config = read_config(candidate)
                break
        else:
            raise CheckpointError(
                f"{path}: which architecture are these weights for? Pass arch= (e.g. "
                f"load_model('{path}', arch='vit_small_patch16_224')), or keep the config.json that save_model "
                "writes next to the weights")
    architecture = arch or config["architecture"]
    return _build_and_load(architecture, config, path, str(path), max_classes)


def _build_and_load(architecture: str, config: dict, weights: Path | None, display: str,
                    max_classes: int = MAX_CLASSES) -> nn.Module:
    """The architecture with its file's head size, strictly loaded from `weights` (None: random init)."""
    architecture = HYBRID_ARCHITECTURE if architecture == DEFAULT_MODEL else architecture
    state = read_state_dict(weights) if weights is not None else None
    num_classes = (head_rows(state) if state is not None else None) or config.get("num_classes")
    num_classes = checked_classes(num_classes, display, max_classes)
    if architecture == HYBRID_ARCHITECTURE:
        args = dict(config.get("model_args") or {})

        def build() -> nn.Module:
            return build_hybrid_vit(**args, **({"num_classes": num_classes} if num_classes is not None else {}))

        if state is None:
            return build()
        # BatchNorm counters of a stem trained unfrozen have no place in a frozen stem and carry no weights.
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        classes = num_classes if num_classes is not None else 1000
        check_fits(expected_shapes(architecture, classes, args), state, display, architecture)  # before building
        model = build()
        freeze_stem_batchnorm(model)
        model.load_state_dict(state)
        model.pretrained_cfg = {**model.pretrained_cfg, **_tupled(config.get("pretrained_cfg") or {})}
        return model
    if state is None:
        return create_model(architecture, num_classes=num_classes)
    precheck_shapes(expected_shapes(architecture, num_classes if num_classes is not None else 1000), state,
                     display, architecture, RESIZED_BY_TIMM)
    overlay = dict(file=str(weights), custom_load=False)
    if num_classes is not None:
        overlay["num_classes"] = num_classes
    return _timm_pretrained(architecture, overlay, num_classes, display, state)


def _tupled(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _timm_pretrained(name: str, overlay: dict, num_classes: int | None, display: str,
                     state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """timm's own pretrained-loading path (checkpoint filters included), its failures turned into CheckpointError."""
    import timm

    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:  # timm and huggingface_hub raise many types; the user needs one with a remedy
        if overlay.get("file") is None:
            raise CheckpointError(offline_message(name, f"downloading them failed ({type(exc).__name__}: "
                                                         f"{str(exc).splitlines()[0] if str(exc) else ''})")) from exc
        state = state if state is not None else read_state_dict(overlay["file"])
        expected = create_meta_model(name, num_classes=num_classes).state_dict()
        problem = first_mismatch({k: v.shape for k, v in expected.items()}, state) or str(exc).splitlines()[0]
        raise CheckpointError(
            f"{display} does not fit the architecture '{name}': {problem}. The weights were probably saved "
            "from a different model; pass the matching arch= (the name it was trained as) or pick another file"
        ) from exc


def _load_hub(name: str, *, pretrained: bool, overlay: dict | None, max_classes: int = MAX_CLASSES) -> nn.Module:
    cfg = {**registered_cfg(name), **(overlay or {})}
    if not pretrained:
        return create_model(name)
    overlay = dict(overlay or {})
    if overlay.get("file"):
        path = Path(overlay["file"])
        state = read_state_dict(path)  # refuses pickles and unreadable files before timm sees them
        if not str(path).endswith(".npz"):
            overlay.setdefault("custom_load", False)  # AugReg configs default to their .npz loader
        rows = checked_classes(head_rows(state, cfg.get("classifier") or "head"), str(path), max_classes)
        if rows is not None:
            overlay.setdefault("num_classes", rows)
        classes = overlay.get("num_classes") or cfg.get("num_classes") or 1000
        precheck_shapes(expected_shapes(name, classes), state, str(path), name, RESIZED_BY_TIMM)
        return _timm_pretrained(name, overlay, overlay.get("num_classes"), str(path), state)
    if overlay.get("state_dict") is not None:
        return _timm_pretrained(name, overlay, None, name)
    if not (cfg.get("hf_hub_id") or cfg.get("url")):
        raise ConfigError(f"timm has no pretrained weights for '{name}'; use pretrained=False or a local file")
    cached = cached_hub_file(cfg)
    if cached is not None:
        # Loading from the cache path skips huggingface_hub's freshness check, which would block offline.
        return _timm_pretrained(name, {**overlay, "file": cached, "custom_load": False}, None, cached)
    if env_flag("HF_HUB_OFFLINE"):
        raise CheckpointError(offline_message(name, "HF_HUB_OFFLINE=1 forbids downloading them"))
    if not hub_reachable():
        raise CheckpointError(offline_message(name, "the Hugging Face hub cannot be reached from here"))
    return _timm_pretrained(name, overlay, None, name)
