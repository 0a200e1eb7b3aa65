"""Generate the "inspection" sample: surface crops in four classes (ok, scratch, spot, crack).

The surfaces are real photographs of brick, grass and gravel that scikit-image ships (CC0 textures); the
defects are drawn on them here. Every image is a random crop (zoom 1–2×, rotated by a multiple of 90°, maybe
mirrored) with random brightness, contrast, illumination gradient and sensor noise. Defect sizes are set in
units of a 64-pixel image, the bundled model's input size, so they stay visible after resizing:

- scratch: a straight or slightly bent line, 2–3.5 px thick, 35–60 % of the image long, bright or dark;
- crack: a jagged random walk, 2–3 px thick, sometimes with a branch, always dark;
- spot: a soft-edged ellipse 8–14 px across, bright or dark;
- ok: the bare surface.

Contrast varies (the defect blends 55–90 % of the way to black or white) so the task is learnable but not
trivial. Defects keep 15 % of the image clear at each border, so random training crops keep them in view.
Each class has the same number of crops of each texture, so the texture says nothing about the class.

Usage (the committed sample was made with the defaults):
    python scripts/make_inspection_sample.py [--out assets/samples/inspection] [--per-class 80] [--size 128]
        [--seed 0] [--preview assets/samples/inspection_preview.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("ok", "scratch", "spot", "crack")
TEXTURES = {"brick": skimage.data.brick, "grass": skimage.data.grass, "gravel": skimage.data.gravel}
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "assets" / "samples" / "inspection"
JPEG_QUALITY = 90
BORDER = 0.15  # fraction of the image kept clear of defects at each side
SUPERSAMPLE = 4  # defects are drawn at 4× and averaged down, for anti-aliased edges


def render_sample(texture: np.ndarray, defect: str, rng: np.random.Generator, size: int = 128
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One `size`×`size` uint8 surface crop with `defect` drawn on it, and the defect's mask in [0, 1]."""
    surface = _random_crop(texture, rng, size)
    mask, target, strength = _defect_mask(defect, rng, size)
    blended = surface * (1 - strength * mask) + target * strength * mask
    return _photometric_jitter(blended, rng), mask


def _random_crop(texture: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square of the texture, 1–2× the output size, turned, maybe mirrored, resized to `size`."""
    side = int(rng.integers(size, 2 * size + 1))
    top, left = rng.integers(0, texture.shape[0] - side + 1), rng.integers(0, texture.shape[1] - side + 1)
    crop = np.rot90(texture[top:top + side, left:left + side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float64)


def _defect_mask(defect: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, float]:
    """The defect's soft mask, the grey level it pulls towards (0 or 255) and how far (0–1)."""
    unit = size / 64 * SUPERSAMPLE  # one pixel of the 64-px image, on the supersampled canvas
    canvas = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
    draw = ImageDraw.Draw(canvas)
    low, high = BORDER * size * SUPERSAMPLE, (1 - BORDER) * size * SUPERSAMPLE
    if defect == "ok":
        return np.zeros((size, size)), 0.0, 0.0
    if defect == "scratch":
        (line,) = _inside(lambda: [_bent_line(rng, unit)], low, high)
        draw.line(line, fill=255, width=round(rng.uniform(2, 3.5) * unit), joint="curve")
        target = 255.0 if rng.random() < 0.6 else 0.0
    elif defect == "crack":
        trunk, branch = _inside(lambda: _random_walk_crack(rng, unit), low, high)
        width = rng.uniform(2, 3) * unit
        draw.line(trunk, fill=255, width=round(width), joint="curve")
        if branch:
            draw.line(branch, fill=255, width=round(0.75 * width), joint="curve")
        target = 0.0
    elif defect == "spot":
        _draw_spot(draw, rng, unit, low, high)
        canvas = canvas.filter(ImageFilter.GaussianBlur(0.6 * unit))
        target = 0.0 if rng.random() < 0.65 else 255.0
    else:
        raise ValueError(f"unknown defect {defect!r}; expected one of {CLASSES}")
    mask = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255
    return mask, target, rng.uniform(0.55, 0.9)


def _bent_line(rng: np.random.Generator, unit: float) -> list[tuple[float, float]]:
    """A scratch: a quadratic curve 22–38 units long whose middle bends by up to 8 % of its length."""
    length = rng.uniform(22, 38) * unit
    angle = rng.uniform(0, np.pi)
    center = rng.uniform(0.3, 0.7, size=2) * 64 * unit
    direction, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    start, end = center - direction * length / 2, center + direction * length / 2
    control = center + normal * rng.uniform(-0.08, 0.08) * length
    t = np.linspace(0, 1, 24)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end
    return [tuple(p) for p in curve]


def _random_walk_crack(rng: np.random.Generator, unit: float) -> list[list[tuple[float, float]]]:
    """A crack: 7–11 zigzag steps of 3–5 units along a slowly drifting course, maybe with a shorter branch."""
    course = rng.uniform(0, 2 * np.pi)
    points = [rng.uniform(0.3, 0.7, size=2) * 64 * unit]
    for _ in range(int(rng.integers(7, 12))):
        course += rng.normal(0, 0.15)
        points.append(points[-1] + _zigzag_step(rng, course, rng.uniform(3, 5) * unit))
    branch = []
    if rng.random() < 0.5:
        fork = int(rng.integers(2, len(points) - 2))
        branch_course = course + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
        branch = [points[fork]]
        for _ in range(int(rng.integers(3, 6))):
            branch.append(branch[-1] + _zigzag_step(rng, branch_course, rng.uniform(2.5, 4) * unit))
    return [[tuple(p) for p in points], [tuple(p) for p in branch]]


def _zigzag_step(rng: np.random.Generator, course: float, length: float) -> np.ndarray:
    """One step of a crack: its own sharp deviation from the course, so the line is jagged but not curly."""
    heading = course + rng.normal(0, 0.6)
    return length * np.array([np.cos(heading), np.sin(heading)])


def _draw_spot(draw: ImageDraw.ImageDraw, rng: np.random.Generator, unit: float, low: float, high: float
               ) -> None:
    """A spot: a filled ellipse 8–14 units across (aspect 0.6–1), turned at random, inside the border."""
    radius = rng.uniform(4, 7) * unit
    aspect, angle = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    center = rng.uniform(low + radius, high - radius, size=2)
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x, y = radius * np.cos(theta), aspect * radius * np.sin(theta)
    outline = np.stack([x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle)], axis=1)
    draw.polygon([tuple(p) for p in outline + center], fill=255)


def _inside(make_polylines, low: float, high: float, attempts: int = 1000) -> list[list[tuple[float, float]]]:
    """Make polylines until a set lies wholly within [low, high]² (retrying keeps the distribution's shape)."""
    for _ in range(attempts):
        polylines = make_polylines()
        points = np.array([point for line in polylines for point in line])
        if points.min() >= low and points.max() <= high:
            return polylines
    raise RuntimeError("no defect fitted inside the border; the size ranges are inconsistent")


def _photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vary brightness, contrast and illumination across the image, add sensor noise, round to uint8."""
    size = image.shape[0]
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.75, 1.25) + mean + rng.uniform(-20, 20)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * np.arange(size)[None, :] + np.sin(angle) * np.arange(size)[:, None]) / size
    image = image + rng.uniform(0, 15) * (ramp - ramp.mean())
    image = image + rng.normal(0, rng.uniform(1.5, 4), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate(out_dir: Path, per_class: int = 80, size: int = 128, seed: int = 0) -> None:
    """Write `per_class` JPEGs per class to `out_dir/<class>/<class>_<texture>_<nnn>.jpg`, atomically.

    The whole tree is written to a temporary sibling folder and renamed into place, so a crash never leaves
    a half-written sample behind.
    """
    rng = np.random.default_rng(seed)
    textures = {name: load() for name, load in TEXTURES.items()}
    texture_names = list(textures)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new.", dir=out_dir.parent))
    try:
        for defect in CLASSES:
            (staging / defect).mkdir()
            for index in range(per_class):
                texture_name = texture_names[index % len(texture_names)]
                image, _ = render_sample(textures[texture_name], defect, rng, size)
                Image.fromarray(image).save(staging / defect / f"{defect}_{texture_name}_{index:03d}.jpg",
                                            quality=JPEG_QUALITY)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the sample is meant to be shared
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_folder(new: Path, destination: Path) -> None:
    """Rename `new` to `destination`, moving an existing `destination` aside first and deleting it after."""
    if not destination.exists():
        new.rename(destination)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
    old.rmdir()
    destination.rename(old)
    new.rename(destination)
    shutil.rmtree(old)


def write_preview(sample_dir: Path, preview_path: Path, per_class: int = 8, scale: int = 64) -> None:
    """A contact sheet: one row per class, `per_class` images each, shown at the model's `scale` px."""
    sheet = Image.new("L", (per_class * scale, len(CLASSES) * scale), 255)
    for row, defect in enumerate(CLASSES):
        # By index, not by name, so the row cycles through the textures.
        paths = sorted((sample_dir / defect).glob("*.jpg"), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
        for column, path in enumerate(paths[:per_class]):
            with Image.open(path) as image:
                sheet.paste(image.resize((scale, scale), Image.Resampling.BICUBIC), (column * scale, row * scale))
    staging = preview_path.with_name(f".{preview_path.name}.tmp")
    sheet.save(staging, format="PNG", optimize=True)
    staging.replace(preview_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="sample folder to (re)create")
    parser.add_argument("--per-class", type=int, default=80, help="images per class")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument("--preview", type=Path, default=None, help="also write a 64-px contact sheet here")
    args = parser.parse_args(argv)
    generate(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
    if args.preview is not None:
        write_preview(args.out, args.preview)
    total = sum(f.stat().st_size for f in args.out.rglob("*.jpg"))
    print(f"wrote {len(CLASSES) * args.per_class} images ({total / 1e6:.2f} MB) to {args.out}")


if __name__ == "__main__":
    main()
