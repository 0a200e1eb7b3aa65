"""`list_models`: the models the app and the CLI offer, with what they show next to each name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from superlora.base_models.architectures import create_meta_model, registered_cfg
from superlora.base_models.default_model import DEFAULT_MODEL, DEFAULT_MODEL_DIR
from superlora.base_models.hub import HUB_MODELS, cached_hub_file
from superlora.base_models.weights import CONFIG_FILE, WEIGHTS_FILE, read_config


@dataclass(frozen=True)
class ModelInfo:
    """One entry of `list_models()`: what the app shows next to a model name."""

    name: str
    description: str
    source: Literal["bundled", "hub"]
    input_size: tuple[int, int, int]
    params: int  # every parameter, including the pretrained classifier head
    available_offline: bool  # bundled, or its hub weights are in the local cache


@lru_cache(maxsize=None)
def _meta_param_count(name: str) -> int:
    return sum(p.numel() for p in create_meta_model(name).parameters())


def list_models() -> list[ModelInfo]:
    """The bundled default first, then the curated hub ViT/DeiT names (which need a download once)."""
    infos = []
    if (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file():
        config = read_config(DEFAULT_MODEL_DIR / CONFIG_FILE)
        args = config.get("model_args", {})
        description = (f"Hybrid ViT bundled with SuperLoRA: ImageNet EfficientNet-Lite0 stem + {args.get('depth')} "
                       f"transformer blocks ({args.get('embed_dim')}-d, {args.get('num_heads')} heads), "
                       f"{args.get('img_size')} px, distilled offline from EfficientNet-Lite0")
        infos.append(ModelInfo(DEFAULT_MODEL, description, "bundled",
                               tuple(config["pretrained_cfg"]["input_size"]), _meta_param_count(DEFAULT_MODEL),
                               (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file()))
    for name, description in HUB_MODELS.items():
        cfg = registered_cfg(name)
        infos.append(ModelInfo(name, description, "hub", tuple(cfg["input_size"]), _meta_param_count(name),
                               cached_hub_file(cfg) is not None))
    return infos
