"""Predictions for the CLI, the app and the notebooks: top-k classes with probabilities for a list of images.

`predict` works on any classifier: a SuperLoRAModel (adapter applied on the fly), a merged plain timm model, or
the base model. The data config (input size, normalisation) a model was built for is
`superlora.base_models.data_config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from superlora import base_models
from superlora.data import build_transforms, decode_image
from superlora.data.decode import ImageRejected
from superlora.errors import DataError

ImageInput = Image.Image | str | os.PathLike


def jsonable_data_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A data config with lists instead of tuples, for JSON files."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _as_image(item: ImageInput) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        return decode_image(item)
    except FileNotFoundError as err:
        raise DataError(f"image {os.fspath(item)} not found") from err
    except ImageRejected as err:
        raise DataError(f"image {os.fspath(item)} cannot be used: {err.reason}") from err


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[ImageInput],
    data_config: Mapping[str, Any] | None,
    classes: Sequence[str],
    top_k: int = 3,
    *,
    batch_size: int = 32,
) -> list[list[tuple[str, float]]]:
    """For each image (PIL image or file path), the `top_k` most probable classes as (class, probability).

    data_config: the model's data config (None: `superlora.base_models.data_config(model)`); images get the
        evaluation transform.
    """
    if top_k < 1:
        raise DataError(f"top_k={top_k}: ask for at least one class")
    data_config = data_config if data_config is not None else base_models.data_config(model)
    transform = build_transforms(data_config, train=False)
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    results: list[list[tuple[str, float]]] = []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(_as_image(item)) for item in images[start:start + batch_size]])
            logits = model(batch.to(parameter.device)).float()
            if logits.shape[-1] != len(classes):
                raise DataError(f"the model predicts {logits.shape[-1]} classes but {len(classes)} class names "
                                "were given; pass the classes the model was trained on")
            probabilities = logits.softmax(dim=-1).cpu()
            values, indices = probabilities.topk(min(top_k, len(classes)), dim=-1)
            for row_values, row_indices in zip(values.tolist(), indices.tolist()):
                results.append([(classes[i], float(v)) for v, i in zip(row_values, row_indices)])
    finally:
        model.train(was_training)
    return results


# ---------------------------------------------------------------------------------------------------- loading
class Trained:
    """A trained classifier ready to predict: the adapted model, its classes, data config and base model name."""

    def __init__(self, model: nn.Module, classes: list[str], data_config: dict[str, Any], base_model: str | None):
        self.model, self.classes, self.data_config, self.base_model = model, classes, data_config, base_model

    def predict(self, images: Sequence[ImageInput], top_k: int = 3) -> list[list[tuple[str, float]]]:
        return predict(self.model, images, self.data_config, self.classes, top_k)


def adapter_folder(path: str | os.PathLike) -> Path:
    """The adapter folder of a run folder, or `path` itself when it is an adapter folder."""
    from superlora.errors import CheckpointError
    from superlora.model import CONFIG_NAME

    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise CheckpointError(f"{path} is neither a run folder nor an adapter folder (no {CONFIG_NAME} in it or in "
                          f"{path / 'adapter'})")


def load_trained(path: str | os.PathLike, model: str | os.PathLike | None = None) -> Trained:
    """Load a trained adapter (a run folder or an adapter folder) onto its base model.

    The base model is the one recorded at training time unless `model` (a name or path) is given; the classes and
    data config come from the adapter's metadata.
    """
    from superlora.errors import CheckpointError, ConfigError
    from superlora.model import SuperLoRAModel, read_adapter_config

    folder = adapter_folder(path)
    info = read_adapter_config(folder)
    metadata = info.get("metadata") or {}
    base_name = os.fspath(model) if model is not None else metadata.get("base_model")
    if not base_name:
        raise ConfigError(f"{folder} does not record its base model (it was trained on a model object); "
                          "pass the model it was trained on (--model NAME_OR_PATH)")
    classes = metadata.get("classes")
    if not classes:
        raise CheckpointError(f"{folder} does not record its class names; it was not written by superlora.train")
    base = base_models.load_model(base_name, num_classes=len(classes))
    adapted = SuperLoRAModel.from_pretrained(base, folder)
    config = metadata.get("data_config") or base_models.data_config(adapted)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return Trained(adapted.eval(), list(classes), config, base_name)
