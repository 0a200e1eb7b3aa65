"""Writing files so that nobody sees half of one: atomic single files and atomic folders.

Every module that writes user-visible files (adapters, models, run folders, reports, benchmark results) writes
through these helpers: a crash or a full disk leaves the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Any) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        # Flush to disk before the rename, so a crash cannot leave a renamed but empty file.
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_folder(folder: str | os.PathLike[str], files: Mapping[str, Callable[[str], None]]) -> Path:
    """Write the files of one folder as a unit: into a temporary sibling folder, then renamed into place.

    `files` maps a file name to a function that writes it to a given path. An existing folder holding only
    these names is swapped out and removed, so a crash leaves either the old folder or the new one, never a
    mix. A folder that also holds other files is not replaced (they would be lost): its files are then
    replaced one by one, each atomically, in the order given.
    """
    folder = Path(folder).resolve()
    if folder.is_dir() and set(os.listdir(folder)) - set(files):
        for name, write in files.items():
            atomic_write(folder / name, write)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    old: Path | None = None
    try:
        for name, write in files.items():
            atomic_write(staging / name, write)
        os.chmod(staging, 0o777 & ~_umask())
        if folder.exists():
            # rename() onto an empty directory replaces it, which reserves a fresh name for the old folder.
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old)
        try:
            os.replace(staging, folder)
        except BaseException:
            if old is not None:
                os.replace(old, folder)
                old = None
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes through `atomic_write` (temporary file, fsync, rename)."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
