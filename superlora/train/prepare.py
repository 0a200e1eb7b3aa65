"""What a run starts from: the model to adapt (a name, a plain model or an adapted one) and the data sets,
checked and put in the shape the loop needs."""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import Tensor, nn

from superlora.config import SuperLoRAConfig, as_config
from superlora.data import ImageSet
from superlora.errors import ConfigError, DataError
from superlora.model import SuperLoRAModel, get_superlora_model


def _fit_head(model: nn.Module, num_classes: int) -> None:
    """Give a plain model a classifier with `num_classes` outputs (timm's reset_classifier)."""
    if getattr(model, "num_classes", None) == num_classes:
        return
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or head.out_features != num_classes:
        raise ConfigError(f"the model's classifier does not have {num_classes} outputs and the model has no "
                          "reset_classifier(); pass a timm model or a model whose `head` fits the classes")


def prepare_model(model: nn.Module | str | os.PathLike, config: SuperLoRAConfig | dict | str | None,
                  num_classes: int) -> tuple[str | None, SuperLoRAModel]:
    """(name, SuperLoRAModel) from a registry name or path, a plain model, or an already adapted model.

    The name is the one `superlora.base_models.load_model` can load again, so it is None for model objects.
    """
    if isinstance(model, SuperLoRAModel):
        if config is not None and as_config(config) != model.config:
            raise ConfigError("the model already carries a different adapter config; pass config=None to keep it, "
                              "or pass the plain base model")
        head = getattr(model.base_model, "num_classes", None)
        if head is not None and head != num_classes:
            raise ConfigError(f"the adapted model predicts {head} classes but the data has {num_classes}")
        return None, model
    if config is None:
        raise ConfigError("train() needs an adapter config: a SuperLoRAConfig, a dict of fields, or a preset name "
                          "such as 'lora'")
    config = as_config(config)
    if isinstance(model, (str, os.PathLike)):
        from superlora.base_models import load_model

        name = os.fspath(model)
        base = load_model(name, num_classes=num_classes)
    elif isinstance(model, nn.Module):
        name = None
        base = model
        _fit_head(base, num_classes)
    else:
        raise ConfigError(f"model must be a model name, a path or an nn.Module, not {type(model).__name__}")
    return name, get_superlora_model(base, config)


def architecture_name(model: nn.Module) -> str | None:
    """The timm architecture name a model was built as; None for models timm did not build."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture")


def keep_frozen_norms_eval(model: nn.Module) -> None:
    """Norm layers with frozen weights must not re-estimate running statistics in train mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


def check_sets(train_set: ImageSet, val_set: ImageSet | None) -> None:
    """DataError unless the sets can train a classifier: images, two classes or more, one class list."""
    if len(train_set) == 0:
        raise DataError("the training set is empty; add images")
    if len(train_set.classes) < 2:
        raise DataError(f"training needs at least 2 classes, the data has {len(train_set.classes)}")
    if val_set is not None and list(val_set.classes) != list(train_set.classes):
        raise DataError("the training and validation sets have different class lists; split one ImageSet "
                        "with superlora.data.train_val_split")


def clone_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detached copy of a state dict, unaffected by later optimizer steps."""
    return {k: v.detach().clone() for k, v in state.items()}
