"""The in-memory labelled image collection every data path produces, its stratified split, and its torch view.

`ImageSet` holds decoded RGB images (shrunk on load, so a few thousand fit comfortably in memory), integer
labels indexing a sorted class list, and the load report: which files were rejected and why, and warnings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from superlora.errors import DataError

_ONE_BYTE_MODES = ("1", "L", "P")


def image_bytes(image: Image.Image) -> int:
    """The memory Pillow holds for an image's pixels: 1 byte per pixel in modes 1, L and P, otherwise 4 (Pillow
    stores RGB pixels padded to 4 bytes)."""
    return image.width * image.height * (1 if image.mode in _ONE_BYTE_MODES else 4)


@dataclass(frozen=True)
class Rejected:
    """A file that was skipped while loading: its name (relative to the dataset root) and the reason."""

    name: str
    reason: str


@dataclass
class ImageSet:
    """Labelled RGB images: `labels[i]` indexes `classes` and belongs to `images[i]`, read from `names[i]`.

    `names` defaults to the image indices when the images did not come from files.

    `hflip_safe` says whether a horizontally mirrored image keeps its label (true for surface textures, false
    for digits); pass it to `build_transforms(..., hflip=...)`.
    """

    images: list[Image.Image]
    labels: list[int]
    classes: list[str]
    names: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hflip_safe: bool = True

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [str(i) for i in range(len(self.images))]
        if not len(self.images) == len(self.labels) == len(self.names):
            raise ValueError(f"images, labels and names differ in length: "
                             f"{len(self.images)}, {len(self.labels)}, {len(self.names)}")
        if any(not 0 <= label < len(self.classes) for label in self.labels):
            raise ValueError(f"labels must index the {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={count}" for name, count in self.class_counts().items())
        return f"ImageSet({len(self)} images; {counts}; {len(self.rejected)} rejected)"

    def memory_bytes(self) -> int:
        """The pixel memory of all images (`image_bytes` each); a subset shares its images with the whole set."""
        return sum(image_bytes(image) for image in self.images)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in class order (classes without images count 0)."""
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}

    def subset(self, indices: Sequence[int], *, extra_warnings: Sequence[str] = ()) -> ImageSet:
        """The images at `indices`, with the same classes and load report (plus `extra_warnings`)."""
        return dataclasses.replace(
            self,
            images=[self.images[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            names=[self.names[i] for i in indices],
            rejected=list(self.rejected),
            warnings=[*self.warnings, *extra_warnings],
        )


def train_val_split(image_set: ImageSet, val_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Split into (train, validation), class by class, so both keep the class proportions.

    Each class puts round(n × val_fraction) of its n images into validation, at least 1 and at most n − 1, so
    every class with 2 or more images appears in both halves; a class with a single image goes to training
    (with a warning). The same `seed` always gives the same split; both halves keep the original order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(image_set.labels, dtype=np.int64)
    train_indices: list[int] = []
    val_indices: list[int] = []
    split_warnings = []
    for class_index, class_name in enumerate(image_set.classes):
        members = rng.permutation(np.flatnonzero(labels == class_index))
        if len(members) < 2:
            split_warnings.append(f"class {class_name!r} has {len(members)} image(s), so it is not in the "
                                  "validation set and its accuracy is not measured")
            n_val = 0
        else:
            # round(…, 9) drops binary error (50 × 0.29 = 14.4999…); floor(x + 0.5) then rounds halves up.
            n_val = min(max(math.floor(round(len(members) * val_fraction, 9) + 0.5), 1), len(members) - 1)
        val_indices += members[:n_val].tolist()
        train_indices += members[n_val:].tolist()
    if not val_indices:
        raise DataError("no class has 2 or more images, so no validation set can be made; add images")
    return (image_set.subset(sorted(train_indices), extra_warnings=split_warnings),
            image_set.subset(sorted(val_indices), extra_warnings=split_warnings))


class ImageClassificationDataset(torch.utils.data.Dataset):
    """A torch `Dataset` over an `ImageSet`: item i is (transform(image i), label i)."""

    def __init__(self, image_set: ImageSet, transform: Callable[[Image.Image], torch.Tensor]):
        self.image_set = image_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image_set.images[index]), self.image_set.labels[index]
