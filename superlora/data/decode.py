"""Decode one untrusted image file into an 8-bit RGB `PIL.Image`, or say why it cannot be used.

Only common raster formats are opened (no PostScript or other formats that run external programs). The pixel
count is checked from the header before any pixel is decoded, so a small file that declares a huge image (a
decompression bomb) costs nothing. Large images are shrunk while they are read (JPEG at 1/2, 1/4 or 1/8 scale by
the decoder itself, other formats by block averaging right after decoding), so decoding costs at most one frame
at full size. Modes are converted so that values keep their meaning: 16-bit images are
scaled to 8 bits (not clipped), transparency is composited over white, palettes are expanded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_SIDE = 512
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa", "P")
_REDUCIBLE_MODES = ("RGB", "RGBA", "L", "LA", "CMYK", "YCbCr")
_REDUCING_GAP = 1.0


class ImageRejected(Exception):
    """One file is not a usable image; `reason` says why in words a user understands."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_side: int | None = DEFAULT_MAX_SIDE) -> Image.Image:
    """Return the file at `path` as an 8-bit RGB image, shrunk to at most `max_side` pixels per side.

    Raises `ImageRejected` for an empty, non-image, corrupt or truncated file, an unsupported pixel format,
    or an image with more than `max_pixels` pixels. Only the first frame of an animation is used, and the
    EXIF orientation of photos is applied.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its own limit and twice that; for untrusted files that is a rejection.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=ALLOWED_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRejected(f"image is {width}×{height} = {width * height:,} pixels, over the limit "
                                        f"of {max_pixels:,} (possible decompression bomb); raise max_pixels "
                                        "if the image is genuine")
                if max_side is not None and image.format == "JPEG":
                    # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: faster and far less memory.
                    image.draft(None, (max_side, max_side))
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # copies only when the photo is turned
                rgb = to_rgb(_shrunk(image, max_side))
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not a readable image: an unsupported format or a damaged header (supported: "
                            f"{', '.join(ALLOWED_FORMATS)})")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"too many pixels, possible decompression bomb ({exc})")
    except Exception as exc:  # decoders raise many types on malformed data; each means "this file is broken"
        raise ImageRejected(f"corrupt or truncated image ({type(exc).__name__}: {exc})")
    return rgb


def _shrunk(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` with no side above `max_side`, made before any full-size copy so the peak stays one decoded frame.

    `reducing_gap` first averages whole pixel blocks (`Image.reduce`, cheap) down to the smallest whole-factor
    size not below the target, then resamples the rest of the way with Lanczos (nothing is left for 512 → 256).
    Palette, 1-bit and 16-bit images cannot be averaged as they are, so they become RGB first (4 bytes per
    pixel, as an RGB decode).
    """
    if max_side is None or max(image.size) <= max_side:
        return image
    if image.mode not in _REDUCIBLE_MODES:
        image = to_rgb(image)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any supported PIL mode to 8-bit RGB, keeping what each value means."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own convert("L") clips 16-bit values at 255; keeping the high byte scales 0..65535 to 0..255.
        high_bytes = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(high_bytes).convert("RGB")
    if image.mode in ("I", "F"):
        raise ImageRejected(f"32-bit {'float' if image.mode == 'F' else 'integer'} pixels are not supported; "
                            "save the image with 8 or 16 bits per channel")
    if image.mode in _ALPHA_MODES:
        # What is stored under fully transparent pixels is arbitrary; compositing makes it a known colour.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
