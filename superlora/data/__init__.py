"""Image-classification data: load a user's images safely, split them, and turn them into model inputs.

    image_set = load_dataset("my_images/")            # a folder of class folders, a .zip, or a list of files
    train_set, val_set = train_val_split(image_set, val_fraction=0.2, seed=0)
    transform = build_transforms(timm.data.resolve_model_data_config(model), train=True,
                                 hflip=train_set.hflip_safe)
    loader = DataLoader(ImageClassificationDataset(train_set, transform), batch_size=32, shuffle=True)

Submodules, bottom up: `archive` (safe zip extraction), `decode` (one untrusted file → RGB image), `imageset`
(the `ImageSet` container, split, torch dataset), `loading` (`load_dataset`, `resolve_label_mode`),
`transforms`, `samples`.
"""

from superlora.data.archive import DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_ARCHIVE_FILES, extract_zip
from superlora.data.decode import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, decode_image
from superlora.data.imageset import ImageClassificationDataset, ImageSet, Rejected, image_bytes, train_val_split
from superlora.data.loading import LABEL_MODES, MemoryBudgetExceeded, load_dataset, resolve_label_mode
from superlora.data.samples import SAMPLE_DIR, SAMPLES, sample_dataset
from superlora.data.transforms import build_transforms

__all__ = [
    "DEFAULT_MAX_ARCHIVE_BYTES",
    "DEFAULT_MAX_ARCHIVE_FILES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "LABEL_MODES",
    "SAMPLES",
    "SAMPLE_DIR",
    "ImageClassificationDataset",
    "ImageSet",
    "MemoryBudgetExceeded",
    "Rejected",
    "build_transforms",
    "decode_image",
    "extract_zip",
    "image_bytes",
    "load_dataset",
    "resolve_label_mode",
    "sample_dataset",
    "train_val_split",
]
