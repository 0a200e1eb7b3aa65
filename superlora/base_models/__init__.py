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

Modules, bottom up: `default_model` (the bundled model's name, folder and hybrid-ViT architecture), `weights`
(reading weights files safely, the `save_model` folder), `hub` (curated names, cache, reachability),
`architectures` (models without weights, `data_config`), `shapes` (a file checked against an architecture before
building), `loading` (`load_model`), `catalog` (`list_models`).
"""

from superlora.base_models.architectures import create_meta_model, create_model, data_config
from superlora.base_models.catalog import ModelInfo, list_models
from superlora.base_models.default_model import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_DIR,
    HYBRID_ARCHITECTURE,
    EfficientNetLiteStem,
    build_hybrid_vit,
    efficientnet_lite0_imagenet,
)
from superlora.base_models.hub import HUB_MODELS, HUB_PROBE_TIMEOUT_S, hub_reachable
from superlora.base_models.loading import load_model
from superlora.base_models.shapes import MAX_CLASSES, expected_shapes
from superlora.base_models.weights import (
    CONFIG_FILE,
    FORMAT_VERSION,
    TORCH_SUFFIXES,
    WEIGHTS_FILE,
    model_config,
    read_state_dict,
    save_model,
)

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
