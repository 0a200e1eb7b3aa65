"""A study's results file: one CSV row per finished run, read with its numbers parsed and appended atomically
(the whole file is rewritten through a temporary file and a rename, so a stopped study never leaves half a row);
and the digest that ties rows to the weights they were measured on."""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superlora.files import atomic_write


@dataclass(frozen=True)
class ResultsTable:
    """The columns of one study's results CSV, in file order, and which of them hold integers and floats."""

    columns: tuple[str, ...]
    ints: tuple[str, ...]
    floats: tuple[str, ...]

    def read(self, path: Path) -> list[dict[str, Any]]:
        """The rows of one results CSV with numbers parsed ("" and "nan" read as NaN; missing file: no rows)."""
        if not Path(path).is_file():
            return []
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != self.columns:
                raise ValueError(f"{path} does not have the columns of this script's results; move it away")
            rows = [dict(row) for row in reader]
        for row in rows:
            for name in self.ints:
                row[name] = int(row[name])
            for name in self.floats:
                row[name] = float(row[name]) if row[name] not in ("", "nan") else math.nan
        return rows

    def append(self, path: Path, row: dict[str, Any]) -> None:
        """Add one row: the whole file is rewritten through a temporary file and a rename (never half-written)."""
        path = Path(path)
        old = path.read_text() if path.is_file() else ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        if not old:
            writer.writeheader()
        writer.writerow({name: row[name] for name in self.columns})
        atomic_write(path, lambda tmp: Path(tmp).write_text(old + buffer.getvalue()))


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256 (a weights file's name alone does not say which weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
