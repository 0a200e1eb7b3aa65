"""Image → tensor transforms that match what a timm model expects, with light augmentation for training.

The model's data config (timm's `resolve_model_data_config` / `resolve_data_config` dict) fixes the input size,
normalization, interpolation and, for evaluation, how much border `crop_pct` trims. Training keeps the
augmentation mild because fine-tuning data is small and defects near the border must stay in view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform

TRAIN_SCALE = (0.8, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)
TRAIN_COLOR_JITTER = 0.1


def build_transforms(data_config: Mapping[str, Any], train: bool, *, hflip: bool = True
                     ) -> Callable[[Image.Image], torch.Tensor]:
    """Return a transform from an RGB `PIL.Image` to a normalized float tensor of the model's input size.

    Evaluation resizes so that the center crop keeps `crop_pct` of the image, then crops to `input_size`.
    Training takes a random crop of 80–100 % of the image area (aspect 3:4 to 4:3) resized to `input_size`,
    mirrors it left–right half the time when `hflip` is true (pass `ImageSet.hflip_safe`), and jitters
    brightness, contrast and saturation by up to 10 %.
    """
    common = dict(
        input_size=tuple(data_config["input_size"]),
        interpolation=data_config.get("interpolation", "bilinear"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
    )
    if train:
        return create_transform(**common, is_training=True, scale=TRAIN_SCALE, ratio=TRAIN_RATIO,
                                hflip=0.5 if hflip else 0.0, vflip=0.0, color_jitter=TRAIN_COLOR_JITTER)
    return create_transform(**common, is_training=False, crop_pct=data_config.get("crop_pct"),
                            crop_mode=data_config.get("crop_mode"))
