"""Safe extraction of an uploaded `.zip` dataset.

An archive is untrusted input: every member is checked before a single byte is written, and the whole archive
is refused (with `DataError`) if any member could escape the target directory (absolute path, `..`, a
symlink or other special file), is encrypted, is listed twice, or if the archive holds too many entries or
too many uncompressed bytes. Only plain files and folders are ever created, and only inside the target.
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

from superlora.errors import DataError

DEFAULT_MAX_ARCHIVE_BYTES = 1 << 30
DEFAULT_MAX_ARCHIVE_FILES = 20_000
DEFAULT_MAX_MEMBER_BYTES = 256 << 20

_CHUNK_BYTES = 1 << 20
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


def extract_zip(
    archive: str | Path,
    target: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    max_files: int = DEFAULT_MAX_ARCHIVE_FILES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> None:
    """Extract `archive` into the existing, empty folder `target`, after checking every member.

    Raises `DataError` before writing anything when a member is unsafe or a limit is exceeded. If a member
    turns out corrupt while it is being extracted, `DataError` is raised and `target` may hold a partial
    extraction (still only inside `target`); the caller owns `target` and deletes it.
    """
    archive, target = Path(archive), Path(target)
    if not target.is_dir() or any(target.iterdir()):
        raise ValueError(f"extraction target {target} must be an existing, empty folder")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _checked_members(zf, archive.name, target, max_bytes, max_files, max_member_bytes)
            for info, destination in members:
                _extract_member(zf, info, destination, archive.name)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive.name} is not a readable zip archive ({exc}); re-create it with a standard "
                        "zip tool") from exc
    except OSError as exc:
        raise DataError(f"could not extract {archive.name}: {exc}") from exc


def _checked_members(zf: zipfile.ZipFile, archive_name: str, target: Path, max_bytes: int, max_files: int,
                     max_member_bytes: int) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Check every member against the safety rules and limits; return each with its destination path."""
    infos = zf.infolist()
    if len(infos) > max_files:
        raise DataError(f"{archive_name} holds {len(infos)} entries, over the limit of {max_files}; split the "
                        "dataset or raise max_archive_files")
    root = target.resolve()
    seen: set[str] = set()
    total_bytes = 0
    members = []
    for info in infos:
        name = info.filename
        refuse = f"{archive_name} was refused: member {name!r}"
        if name.startswith(("/", "\\")) or _DRIVE_LETTER.match(name):
            raise DataError(f"{refuse} has an absolute path; archive the dataset with relative paths")
        parts = re.split(r"[\\/]", name)
        if ".." in parts:
            raise DataError(f"{refuse} contains '..' and could write outside the extraction folder")
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if file_type == stat.S_IFLNK:
            raise DataError(f"{refuse} is a symbolic link; archive the files themselves, not links")
        # Zips made on Windows carry no Unix type bits (0): those are plain files or folders.
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(f"{refuse} is a special file (device, pipe or socket); only files and folders "
                            "are allowed")
        if info.flag_bits & 0x1:
            raise DataError(f"{refuse} is encrypted; password-protected archives are not supported")
        if info.file_size > max_member_bytes:
            raise DataError(f"{refuse} is {info.file_size:,} bytes uncompressed, over the per-file limit of "
                            f"{max_member_bytes:,}")
        normalized = str(PurePosixPath(*[p for p in parts if p not in ("", ".")]))
        if normalized in seen:
            raise DataError(f"{refuse} is listed twice; re-create the archive")
        seen.add(normalized)
        destination = (root / normalized).resolve()
        # Belt and braces: whatever the name checks above missed, the resolved path must stay inside.
        if not destination.is_relative_to(root):
            raise DataError(f"{refuse} resolves outside the extraction folder")
        total_bytes += info.file_size
        members.append((info, destination))
    if total_bytes > max_bytes:
        raise DataError(f"{archive_name} expands to {total_bytes:,} bytes, over the limit of {max_bytes:,}; "
                        "split the dataset or raise max_archive_bytes")
    return members


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, archive_name: str) -> None:
    """Write one checked member as a plain folder or file, never more bytes than its header declares."""
    if info.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as source, open(destination, "xb") as sink:
        while chunk := source.read(_CHUNK_BYTES):
            written += len(chunk)
            # zipfile already stops at the declared size; this guards the limits if that ever changes.
            if written > info.file_size:
                raise DataError(f"{archive_name}: member {info.filename!r} is larger than its header says; "
                                "the archive is corrupt or crafted")
            sink.write(chunk)
