"""The generated blocks of a docs page: each study rewrites only the text between its own two markers; and the
figures those blocks show (`save_figure`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from superlora.files import atomic_write


def replace_between_markers(text: str, body: str, begin: str, end: str) -> str:
    """`text` with whatever stood between `begin` and `end` replaced by `body` (the markers stay)."""
    if begin not in text or end not in text or text.index(begin) > text.index(end):
        raise ValueError(f"the docs page needs the markers {begin} and {end} (in that order)")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def write_block(docs: Path, body: str, begin: str, end: str, title: str) -> None:
    """Write `body` between the markers of `docs`, atomically; a missing page is created with only a title and the
    markers."""
    docs = Path(docs)
    text = docs.read_text() if docs.is_file() else f"# {title}\n\n{begin}\n{end}\n"
    atomic_write(docs, lambda tmp: Path(tmp).write_text(replace_between_markers(text, body, begin, end)))


def save_figure(fig, path: Path) -> Path:
    """Lay out a matplotlib figure, write it to `path` as a PNG (atomically, its folder made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def read_one_setup(table: Any, path: Path) -> list[dict[str, Any]]:
    """The rows of one study results file (`table`: its `ResultsTable`); a file that mixes runs of different setups
    is refused."""
    rows = table.read(path)
    if len({r["setup"] for r in rows}) > 1:
        raise SystemExit(f"{path} mixes runs of different setups; keep one per file")
    return rows
