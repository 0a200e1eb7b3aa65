"""Shared fixtures and files for the studio tests: a tiny local model folder, a running studio, test images.

The studio runs in-process (`superlora.studio.launch(..., prevent_thread_lock=True)`) on a free port with the
tiny model offered first, so the tests never depend on the bundled default (which may not exist yet) or on
downloads. Import the fixtures into a test module with `from studio_helpers import studio, tiny_model`.
"""

from __future__ import annotations

import io
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

UPLOAD_LIMIT_MB = 2
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210), "yellow": (220, 200, 40)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_model_folder(folder: Path) -> Path:
    """The bundled default's architecture (hybrid ViT) shrunk to 32 px, 2 blocks of width 32: trains in ms."""
    import torch

    from superlora.base_models import build_hybrid_vit, save_model

    torch.manual_seed(0)
    return save_model(build_hybrid_vit(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=4), folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("studio-model") / "tiny")


@pytest.fixture(scope="session")
def studio(tiny_model):
    """A running studio (two training jobs at once, 2 MB uploads); yields (app, url)."""
    from superlora.studio import launch

    port = free_port()
    app = launch(port=port, extra_models=(str(tiny_model),), prevent_thread_lock=True, quiet=True,
                 max_training_jobs=2, max_upload_mb=UPLOAD_LIMIT_MB)
    yield app, f"http://127.0.0.1:{port}/"
    app.close()
    app.sessions.close_all()


# ------------------------------------------------------------------------------------------------ files
def colour_image(colour: str, seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(COLOURS[colour], dtype=np.float64) + rng.normal(0.0, 40.0, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prefixed_images(folder: Path, colours: tuple[str, ...], per_class: int = 6) -> list[Path]:
    """`red_000.png`, ... : labels from file-name prefixes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for colour in colours:
        for index in range(per_class):
            path = folder / f"{colour}_{index:03d}.png"
            colour_image(colour, seed=hash((colour, index)) % 2**32).save(path)
            paths.append(path)
    return paths


def class_folder_zip(path: Path, colours: tuple[str, ...], per_class: int = 6, extra: dict[str, bytes] | None = None
                     ) -> Path:
    """A .zip of class folders (`red/000.png`, ...), plus any `extra` members (name -> bytes)."""
    with zipfile.ZipFile(path, "w") as zf:
        for colour in colours:
            for index in range(per_class):
                zf.writestr(f"{colour}/{index:03d}.png", png_bytes(colour_image(colour, seed=index)))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def corrupt_png(path: Path) -> Path:
    """The first half of a PNG: its header reads fine, its pixel data ends early."""
    data = png_bytes(colour_image("red", seed=1, size=64))
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------------------------------------ raw HTTP
def page_fn_index(app, name: str) -> int:
    """The index of the page's (unnamed) listener that runs the studio function `name`."""
    # Gradio names listeners declared with api_name=False "false", "false_1", ...
    return next(index for index, fn in app.fns.items() if fn.name == name and fn.api_name.startswith("false"))


def page_call(url: str, session_hash: str, fn_index: int, data: list) -> dict:
    """Run one queued listener the way the page does (join the queue, read the event stream); returns Gradio's
    completion message ({"success": bool, "output": {...}})."""
    import json

    import httpx

    api = f"{url.rstrip('/')}/gradio_api"
    joined = httpx.post(f"{api}/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session_hash,
                                                     "event_data": None, "trigger_id": None}, timeout=30)
    joined.raise_for_status()
    with httpx.stream("GET", f"{api}/queue/data", params={"session_hash": session_hash}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event stream ended without a result")


def upload(url: str, path: Path) -> dict:
    """Upload a file as the page does; returns the FileData payload an event sends for it."""
    import httpx

    with open(path, "rb") as file:
        response = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": (path.name, file)}, timeout=30)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def resident_bytes() -> int:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def many_images_zip(path: Path, count: int, side: int = 512, classes: tuple[str, ...] = ("red", "blue")) -> Path:
    """A zip of `count` side x side PNGs in class folders. Only a few distinct images are encoded (smooth ones,
    fast to write and to compress); the rest repeat them under new names, which costs the loader the same."""
    ramp = np.linspace(0, 255, side, dtype=np.float64)
    encoded = {}
    for colour in classes:
        for variant in range(4):
            pixels = np.empty((side, side, 3))
            for channel, level in enumerate(COLOURS[colour]):
                pixels[..., channel] = 0.6 * level + 0.4 * (ramp[None, :] if variant % 2 else ramp[:, None])
            pixels[variant * 8:variant * 8 + 32, 40:90] = 255 - pixels[variant * 8:variant * 8 + 32, 40:90]
            encoded[colour, variant] = png_bytes(Image.fromarray(pixels.astype(np.uint8)))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for index in range(count):
            colour = classes[index % len(classes)]
            zf.writestr(f"{colour}/{index:05d}.png", encoded[colour, index // len(classes) % 4])
    return path
