"""`load_dataset`: turn a folder of class folders, a `.zip` of one, or a list of files into a checked `ImageSet`;
`resolve_label_mode`: the rule that picks where the classes come from when labels="auto".

Loading never stops at a bad file: each one that cannot be used is skipped and reported (`ImageSet.rejected`,
with the reason). It stops with `DataError` only when the dataset as a whole is unusable: fewer than two
classes, a class without enough usable images, an unsafe or oversized archive, or an unreadable label CSV.
"""

from __future__ import annotations

import csv as csv_module
import io
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from superlora.data.archive import DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_ARCHIVE_FILES, extract_zip
from superlora.data.decode import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageRejected, decode_image
from superlora.data.imageset import ImageSet, Rejected, image_bytes
from superlora.errors import DataError

LABEL_MODES = ("auto", "folders", "prefix", "csv")
IMBALANCE_WARNING_RATIO = 5.0

PathLike = str | os.PathLike


@dataclass(frozen=True)
class _Candidate:
    """A file to decode: the name shown to the user, where it is, and the class it was given."""

    name: str
    path: Path
    class_name: str


@dataclass
class _Labelled:
    """Files with their classes, files already rejected, declared classes (folders, even empty), the mode."""

    candidates: list[_Candidate]
    rejected: list[Rejected]
    declared: set[str]
    mode: str


class MemoryBudgetExceeded(DataError):
    """The decoded images would take more memory than `max_image_bytes` allowed; loading stopped there."""

    def __init__(self, message: str, *, budget: int, decoded: int, total: int):
        super().__init__(message)
        self.budget, self.decoded, self.total = budget, decoded, total


def load_dataset(
    source: PathLike | Sequence[PathLike],
    *,
    labels: str = "auto",
    csv: PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    max_archive_files: int = DEFAULT_MAX_ARCHIVE_FILES,
    min_images_per_class: int = 1,
    max_image_bytes: int | None = None,
) -> ImageSet:
    """Load a labelled image-classification dataset.

    `source` is a folder, a `.zip` archive (extracted safely into a temporary folder, deleted afterwards), or
    a list of image files. `labels` says where each image's class comes from:

    - "folders": the first sub-folder under the dataset root (for a list: the file's parent folder);
    - "prefix": the file name up to its first underscore, `scratch_0001.png` → "scratch";
    - "csv": the `csv` file, rows `path,label` (optional header `path,label`); a row labels the files
      whose path (relative to the root; for a list, as given) ends with the row's path, e.g. `sub/b.png`
      or just `b.png`;
    - "auto": "csv" when `csv` is given; for a folder or zip, "folders" if the root has sub-folders, else
      "prefix"; for a list, "prefix" if every file name has one, else "folders" (`resolve_label_mode`).

    Images over `max_pixels` pixels are rejected; larger than `max_side` per side, they are shrunk on load
    (None keeps full size). Archives over `max_archive_bytes` uncompressed or `max_archive_files` entries are
    refused before extraction. Raises `DataError` when fewer than 2 classes remain or a class has fewer than
    `min_images_per_class` usable images; warns (in `ImageSet.warnings`) about strong class imbalance.
    With `max_image_bytes`, decoding stops with `MemoryBudgetExceeded` (a `DataError`) as soon as the decoded
    pixels (`image_bytes`) pass that many bytes, so memory never holds more than the budget plus one image.
    """
    _check_label_options(labels, csv is not None)
    csv_labels = _read_label_csv(Path(csv)) if csv is not None else None
    checks = dict(max_pixels=max_pixels, max_side=max_side, min_images_per_class=min_images_per_class,
                  max_image_bytes=max_image_bytes)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file() and path.suffix.lower() == ".zip":
            with tempfile.TemporaryDirectory(prefix="superlora-zip-") as extracted:
                extract_zip(path, extracted, max_bytes=max_archive_bytes, max_files=max_archive_files)
                labelled = _tree_candidates(_unwrap_single_folder(Path(extracted)), Path(extracted), labels,
                                            csv_labels, None)
                # Decode while the extracted files still exist; only decoded images outlive this block.
                return _decode_and_check(labelled, str(path), **checks)
        if not path.exists():
            raise DataError(f"{path} does not exist")
        if not path.is_dir():
            raise DataError(f"{path} is neither a folder nor a .zip archive; give a folder of class folders, "
                            "a .zip of one, or a list of image files")
        return _decode_and_check(_tree_candidates(path, path, labels, csv_labels, csv), str(path), **checks)
    files = [Path(item) for item in source]
    if not files:
        raise DataError("the list of files is empty; give at least one image per class")
    labelled = _list_candidates(files, [str(item) for item in source], labels, csv_labels)
    return _decode_and_check(labelled, f"the {len(files)} listed files", **checks)


def resolve_label_mode(labels: str = "auto", *, csv: bool = False, class_folders: bool | None = None,
                       file_names: Sequence[str] = ()) -> str:
    """Where the images' classes come from ("folders", "prefix" or "csv"): `labels` itself unless it is "auto".

    "auto" is resolved by this one rule, which `load_dataset` uses too:

    1. "csv" when a label CSV is given (`csv=True`);
    2. when it is known whether the images sit in class folders (`class_folders` True or False): "folders" if they
       do, else "prefix". `load_dataset` passes whether a folder's (or a zip's) root has sub-folders; a caller
       whose files lost their folders on the way (a browser upload of single images) passes False;
    3. otherwise (a list of files on disk, `class_folders=None`): "prefix" when every name in `file_names` has a
       `label_` prefix, else "folders" (each file's parent folder).

    Raises `DataError` for an unknown mode, for "csv" without a CSV, and for a CSV with a mode other than "auto"
    or "csv".
    """
    _check_label_options(labels, csv)
    if labels != "auto":
        return labels
    if csv:
        return "csv"
    if class_folders is not None:
        return "folders" if class_folders else "prefix"
    return "prefix" if all(_prefix_label(name) is not None for name in file_names) else "folders"


def _check_label_options(labels: str, csv_given: bool) -> None:
    if labels not in LABEL_MODES:
        raise DataError(f"labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    if labels == "csv" and not csv_given:
        raise DataError("labels='csv' needs the csv= argument: a file with rows 'path,label'")
    if csv_given and labels not in ("auto", "csv"):
        raise DataError(f"a CSV was given but labels={labels!r}; use labels='csv' (or 'auto') with a CSV")


def _tree_candidates(root: Path, display_root: Path, labels: str, csv_labels: dict[str, str] | None,
                     csv_path: PathLike | None) -> _Labelled:
    """Label every visible file under `root` (named relative to `display_root`), skipping the CSV itself."""
    skip = Path(csv_path).resolve() if csv_path is not None else None
    files, linked_folders = _visible_files(root)
    named = [(f.relative_to(display_root).as_posix(), f) for f in files if f.resolve() != skip]
    rejected = [Rejected(f.relative_to(display_root).as_posix(),
                         "is a link to a folder, which is not followed; copy the folder in instead")
                for f in linked_folders]
    class_folders = {entry.name for entry in root.iterdir()
                     if entry.is_dir() and not entry.is_symlink() and not _hidden(entry.name)}
    labels = resolve_label_mode(labels, csv=csv_labels is not None, class_folders=bool(class_folders))
    if labels == "folders":
        candidates = []
        for name, file in named:
            parts = file.relative_to(root).parts
            if len(parts) == 1:
                rejected.append(Rejected(name, "not inside a class folder; move it into the folder of its class"))
            else:
                candidates.append(_Candidate(name, file, parts[0]))
        return _Labelled(candidates, rejected, class_folders, labels)
    if labels == "prefix":
        candidates, label_rejected = _prefix_candidates(named)
    else:
        candidates, label_rejected = _csv_candidates(named, csv_labels)
    return _Labelled(candidates, rejected + label_rejected, set(), labels)


def _list_candidates(files: list[Path], names: list[str], labels: str, csv_labels: dict[str, str] | None
                     ) -> _Labelled:
    """Label each listed file; a list declares no classes beyond those its files carry."""
    rejected = []
    named = []
    for name, file in zip(names, files):
        if not file.is_file():
            reason = "is a folder; give the folder itself as the source" if file.is_dir() else "file not found"
            rejected.append(Rejected(name, reason))
        else:
            named.append((name, file))
    labels = resolve_label_mode(labels, csv=csv_labels is not None, file_names=[file.name for _, file in named])
    if labels == "folders":
        candidates = [_Candidate(name, file, file.absolute().parent.name) for name, file in named]
    elif labels == "prefix":
        candidates, prefix_rejected = _prefix_candidates(named)
        rejected += prefix_rejected
    else:
        candidates, csv_rejected = _csv_candidates(named, csv_labels)
        rejected += csv_rejected
    return _Labelled(candidates, rejected, set(), labels)


def _prefix_candidates(named: list[tuple[str, Path]]) -> tuple[list[_Candidate], list[Rejected]]:
    """Label files by their `label_` file-name prefix; files without one are rejected."""
    candidates, rejected = [], []
    for name, file in named:
        class_name = _prefix_label(file.name)
        if class_name is None:
            rejected.append(Rejected(name, "file name has no 'label_' prefix (expected e.g. scratch_0001.png)"))
        else:
            candidates.append(_Candidate(name, file, class_name))
    return candidates, rejected


def _csv_candidates(named: list[tuple[str, Path]], csv_labels: dict[str, str]
                    ) -> tuple[list[_Candidate], list[Rejected]]:
    """Label files by the longest CSV path their name ends with; report files and rows without a partner."""
    candidates, rejected = [], []
    used_rows = set()
    for name, file in named:
        parts = _normalize_csv_path(name).split("/")
        suffixes = ("/".join(parts[start:]) for start in range(len(parts)))
        key = next((suffix for suffix in suffixes if suffix in csv_labels), None)
        if key is None:
            rejected.append(Rejected(name, "not listed in the label CSV"))
        else:
            used_rows.add(key)
            candidates.append(_Candidate(name, file, csv_labels[key]))
    rejected += [Rejected(row, "listed in the label CSV, but no such file was given")
                 for row in csv_labels if row not in used_rows]
    return candidates, rejected


def _decode_and_check(labelled: _Labelled, source_name: str, *, max_pixels: int, max_side: int | None,
                      min_images_per_class: int, max_image_bytes: int | None) -> ImageSet:
    """Decode every candidate, then check the dataset as a whole (classes, counts, balance)."""
    images, class_names, names = [], [], []
    rejected = list(labelled.rejected)
    rejected_by_class: dict[str, list[Rejected]] = {}
    decoded_bytes = 0
    for candidate in labelled.candidates:
        try:
            image = decode_image(candidate.path, max_pixels=max_pixels, max_side=max_side)
        except ImageRejected as exc:
            rejection = Rejected(candidate.name, exc.reason)
        except OSError as exc:
            rejection = Rejected(candidate.name, f"cannot read the file ({exc.strerror or exc})")
        else:
            decoded_bytes += image_bytes(image)
            if max_image_bytes is not None and decoded_bytes > max_image_bytes:
                raise _over_budget(len(images) + 1, len(labelled.candidates), decoded_bytes, max_image_bytes)
            images.append(image)
            class_names.append(candidate.class_name)
            names.append(candidate.name)
            continue
        rejected.append(rejection)
        rejected_by_class.setdefault(candidate.class_name, []).append(rejection)

    if not images:
        raise DataError(f"no usable image in {source_name}" + _summarize(rejected))
    classes = sorted(labelled.declared | set(class_names))
    if len(classes) < 2:
        hint = {"folders": "put the images of each class in their own sub-folder",
                "prefix": "start each file name with its class, e.g. scratch_0001.png",
                "csv": "give at least two different labels in the CSV"}[labelled.mode]
        raise DataError(f"found {len(classes)} class ({', '.join(classes)}) in {source_name} with labels from "
                        f"{labelled.mode}; a classifier needs at least 2: {hint}")
    counts = Counter(class_names)
    for class_name in classes:
        if counts[class_name] < min_images_per_class:
            raise DataError(f"class {class_name!r} has {counts[class_name]} usable image(s), fewer than the "
                            f"{min_images_per_class} required; add images or remove the class"
                            + _summarize(rejected_by_class.get(class_name, [])))
    warnings = []
    smallest, largest = min(counts.values()), max(counts.values())
    if largest >= IMBALANCE_WARNING_RATIO * smallest:
        few = [c for c in classes if counts[c] == smallest]
        many = [c for c in classes if counts[c] == largest]
        warnings.append(f"classes are strongly imbalanced: {many[0]!r} has {largest} images, {few[0]!r} only "
                        f"{smallest}; the model will favour large classes, so add images to small ones or "
                        "judge it by per-class accuracy")
    class_index = {name: index for index, name in enumerate(classes)}
    return ImageSet(images=images, labels=[class_index[c] for c in class_names], classes=classes, names=names,
                    rejected=rejected, warnings=warnings)


def _over_budget(decoded: int, total: int, used: int, budget: int) -> MemoryBudgetExceeded:
    mib = 1 << 20
    return MemoryBudgetExceeded(
        f"the images need more memory than the budget of {budget / mib:,.0f} MiB: the first {decoded} of {total} "
        f"files already take {used / mib:,.0f} MiB decoded; load fewer images, or smaller ones",
        budget=budget, decoded=decoded, total=total)


def _read_label_csv(path: Path) -> dict[str, str]:
    """Read a `path,label` CSV into {normalized path: label}; malformed rows raise `DataError`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the label CSV {path}: {exc}") from exc
    reader = csv_module.reader(io.StringIO(text))
    labels: dict[str, str] = {}
    for row in reader:
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if reader.line_num == 1 and [cell.lower() for cell in cells] == ["path", "label"]:
            continue
        if len(cells) != 2 or not all(cells):
            raise DataError(f"{path.name}, line {reader.line_num}: expected two values 'path,label', got "
                            f"{row!r}")
        key = _normalize_csv_path(cells[0])
        if key in labels:
            raise DataError(f"{path.name}, line {reader.line_num}: {cells[0]!r} is listed twice")
        labels[key] = cells[1]
    if not labels:
        raise DataError(f"the label CSV {path.name} has no rows; write one 'path,label' row per image")
    return labels


def _normalize_csv_path(text: str) -> str:
    """Compare paths the same way whichever separator or `./` prefix the CSV's author used."""
    text = text.replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def _prefix_label(file_name: str) -> str | None:
    """`scratch_0001.png` → "scratch"; None when the name has no non-empty prefix before an underscore."""
    prefix, underscore, _ = file_name.partition("_")
    return prefix if underscore and prefix else None


def _hidden(name: str) -> bool:
    """Operating-system clutter (`.DS_Store`, `.git`, macOS's `__MACOSX`) is skipped without a report."""
    return name.startswith(".") or name == "__MACOSX"


def _visible_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Every non-hidden file under `root` in a stable order, and the folder links met (not followed)."""
    files, linked_folders = [], []
    for folder, subfolders, file_names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not _hidden(name))
        # os.walk lists links to folders among the sub-folders but does not enter them.
        linked_folders += [Path(folder, name) for name in subfolders if Path(folder, name).is_symlink()]
        files += [Path(folder, name) for name in sorted(file_names) if not _hidden(name)]
    return files, linked_folders


def _summarize(rejected: list[Rejected], limit: int = 3) -> str:
    """A short parenthesised list of rejected files and reasons, for an error message."""
    if not rejected:
        return ""
    shown = "; ".join(f"{r.name}: {r.reason}" for r in rejected[:limit])
    more = f"; and {len(rejected) - limit} more" if len(rejected) > limit else ""
    return f" (rejected: {shown}{more})"


def _unwrap_single_folder(root: Path) -> Path:
    """Archives often wrap the dataset in one top folder (`dataset/ok/…`); descend to the real root."""
    while True:
        entries = [entry for entry in root.iterdir() if not _hidden(entry.name)]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        root = entries[0]
