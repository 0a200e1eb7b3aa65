"""Checking a weights file against an architecture before the real model is built.

Shapes come from a model built on the `meta` device (no memory), so a file that declares a huge classifier or
tensors of another architecture is refused with the first mismatching tensor named, before anything is allocated.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from superlora.base_models.architectures import create_model
from superlora.base_models.default_model import HYBRID_ARCHITECTURE, build_hybrid_vit, freeze_stem_batchnorm
from superlora.errors import CheckpointError

# The most classes a weights file may declare through its head (ImageNet-21k's 21,843 fit). A file claiming more is
# refused before anything is built, so a tiny hostile file cannot make the loader allocate a huge classifier.
MAX_CLASSES = 32_768
# Tensors that timm's checkpoint filters legitimately resize while loading (position embeddings for another image
# size, a patch embedding for another patch size): their shapes are left to timm.
RESIZED_BY_TIMM = ("pos_embed", "patch_embed.proj.weight", "relative_position_bias_table")


def first_mismatch(expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> str | None:
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


def head_rows(state: dict[str, torch.Tensor], classifier: str = "head") -> int | None:
    """The class count a state dict's classifier weight declares; None without one."""
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def checked_classes(classes: int | None, display: str, max_classes: int) -> int | None:
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
            freeze_stem_batchnorm(model)
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


def precheck_shapes(expected: dict[str, tuple], state: dict[str, torch.Tensor], display: str, architecture: str,
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


def check_fits(expected: dict[str, tuple], state: dict[str, torch.Tensor], display: str,
                architecture: str) -> None:
    """CheckpointError naming the first tensor where `state` and `expected` disagree (names and shapes)."""
    problem = first_mismatch(expected, state)
    if problem:
        raise CheckpointError(
            f"{display} does not fit the architecture '{architecture}': {problem}. The weights were probably "
            "saved from a different model; pass the matching arch= (the name it was trained as) or pick another file")
