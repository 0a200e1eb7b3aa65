"""The Hugging Face hub, reached only when it answers: the curated names, the local cache, a fast probe.

Weights already in the local cache are found without any network call; otherwise `hub_reachable` decides within
`HUB_PROBE_TIMEOUT_S`, before timm starts its own (retrying, ~45 s) download.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from superlora.base_models.default_model import DEFAULT_MODEL

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
HUB_PROBE_TIMEOUT_S = 1.5


def env_flag(name: str) -> bool:
    """Whether the environment variable `name` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers an HTTPS request within `timeout_s` (any HTTP status counts).

    False at once under HF_HUB_OFFLINE=1. A whole request, not a TCP connect, because transparent proxies
    accept connections to hosts they cannot reach. It runs in a daemon thread that is abandoned when the time
    is up, since DNS lookups ignore socket timeouts. Proxies come from the usual environment variables.
    """
    import urllib.error
    import urllib.request

    if env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE"):
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


def cached_hub_file(pretrained_cfg: dict) -> str | None:
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


def offline_message(name: str, reason: str) -> str:
    """Why the weights of hub model `name` cannot be had, and the offline choices instead."""
    return (f"Pretrained weights for '{name}' are not on this machine and {reason}. Offline you can use the "
            f"bundled default model: load_model('{DEFAULT_MODEL}'), or a local weights file: "
            f"load_model('path/to/weights.safetensors', arch='{name}') (a .pth/.bin state dict also works). "
            f"To download instead, connect to the internet and unset HF_HUB_OFFLINE.")
