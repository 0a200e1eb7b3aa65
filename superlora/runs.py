"""Run folders: what every training run leaves on disk, and the listing that compares past runs.

    runs/2024-05-01-1200-lora-r4/
      config.json              everything needed to re-run it (`superlora train --config .../config.json`)
      metrics.json, metrics.csv  status, best accuracy, per-class accuracy, confusion matrix, per-epoch history
      summary.md               a short human-readable report
      adapter/                 the best adapter, `SuperLoRAModel.save_pretrained` format
      checkpoint.safetensors   the resumable training state (`--resume`)
      skipped.csv              every data file that was not used, and why (written only when files were skipped)
      tensorboard/             TensorBoard event files (`tensorboard --logdir runs`)

Every file is written through a temporary file and a rename, so a run killed at any moment leaves readable files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from superlora.errors import ConfigError
from superlora.files import atomic_write

RUN_FORMAT = "superlora-run/1"
CONFIG_FILE = "config.json"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
SUMMARY_FILE = "summary.md"
SKIPPED_FILE = "skipped.csv"
ADAPTER_DIR = "adapter"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_FILE = "checkpoint.safetensors"  # written by superlora.train.checkpoint
HISTORY_COLUMNS = ("epoch", "step", "train_loss", "lr", "val_loss", "val_accuracy", "elapsed_s")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


def default_run_name(model: str, adapter: Mapping[str, Any]) -> str:
    """A sortable, readable folder name: date-time, model, method and rank."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    model_name = Path(str(model)).name.replace(".", "-") or "model"
    rank = f"-r{_rank_text(adapter.get('rank', 1))}" if adapter.get("targets", True) else ""  # head-only: no rank
    return f"{stamp}-{model_name}-{adapter.get('name', 'custom')}{rank}"


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: strings starting with =, +, -, @ (a formula) get a leading '.

    File and class names come from users' uploads; a name like `=HYPERLINK(...).png` must not become a live formula
    when a manager opens predictions.csv or skipped.csv in a spreadsheet.
    """
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def reserve_run_folder(root: str | os.PathLike[str], name: str) -> Path:
    """Create and return a new, empty run folder `root/name`, or `root/name-2`, `-3`, ... if that exists.

    The folder is claimed with an atomic mkdir, so runs started at the same moment (same second, same settings,
    hence the same default name) never share a folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        path = root / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"{root} already holds 10,000 runs named {name}*; choose another output folder")


def _rank_text(rank: Any) -> str:
    return "x".join(map(str, rank)) if isinstance(rank, (list, tuple)) else str(rank)


def describe_adapter(adapter: Mapping[str, Any]) -> str:
    """One line for an adapter config dict, e.g. "lorta r=4 G=1 M=3 rho=0.1 fastfood shuffle sqrt-scaled on q,v"
    (the scale is named when it is not 1: "alpha=8", or the rank scaling); a config without targets is head-only:
    "head-only (no adapter)"."""
    if not adapter.get("targets", True):
        return f"{adapter.get('name', 'custom')} (no adapter)"
    parts = [str(adapter.get("name", "custom")), f"r={_rank_text(adapter.get('rank', 1))}",
             f"G={adapter.get('groups', 1)}"]
    if adapter.get("fold") == "auto":
        parts.append(f"M={adapter.get('order', 2)}")
    if adapter.get("splits", 1) != 1:
        parts.append(f"K={adapter['splits']}")
    if adapter.get("ratio", 1.0) != 1.0:
        parts.append(f"rho={adapter['ratio']:g} {adapter.get('projection', '')}".rstrip())
    if adapter.get("shuffle"):
        parts.append("shuffle")
    if adapter.get("alpha") is not None:
        parts.append(f"alpha={adapter['alpha']:g}")
    elif adapter.get("rank_scaling", "none") != "none":
        parts.append(f"{adapter['rank_scaling']}-scaled")
    targets = adapter.get("targets", ())
    parts.append("on " + ",".join(targets))
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------- writing
class RunFolder:
    """Writes one run's files. Only the main process of a distributed run creates one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._writer: Any = None

    @staticmethod
    def holds_run(path: str | os.PathLike[str]) -> bool:
        path = Path(path)
        return (path / CONFIG_FILE).is_file() or (path / CHECKPOINT_FILE).is_file()

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_DIR

    def write_config(self, config: Mapping[str, Any]) -> None:
        _write_json(self.path / CONFIG_FILE, {"format": RUN_FORMAT, **config})

    def write_metrics(self, record: Mapping[str, Any]) -> None:
        """metrics.json (the whole record) and metrics.csv (one row per evaluation)."""
        _write_json(self.path / METRICS_JSON, {"format": RUN_FORMAT, **record})
        buffer = io.StringIO()
        history = record.get("history", [])
        extra = sorted({key for row in history for key in row} - set(HISTORY_COLUMNS))
        writer = csv.DictWriter(buffer, fieldnames=[*HISTORY_COLUMNS, *extra], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        _write_text(self.path / METRICS_CSV, buffer.getvalue())

    def write_skipped(self, rejected: Any) -> None:
        """skipped.csv: every data file that was not used (`file`, `reason`); no file when nothing was skipped."""
        if not rejected:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", "reason"])
        writer.writerows([spreadsheet_safe(item.name), spreadsheet_safe(item.reason)] for item in rejected)
        _write_text(self.path / SKIPPED_FILE, buffer.getvalue())

    def write_summary(self, config: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        _write_text(self.path / SUMMARY_FILE, summary_markdown(self.path, config, record))

    # TensorBoard: optional (the `tensorboard` package); without it the other files are still written.
    def open_tensorboard(self, purge_step: int | None = None) -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return False
        # purge_step: TensorBoard hides earlier events at steps >= purge_step, so a resumed run has no doubles
        self._writer = SummaryWriter(str(self.path / TENSORBOARD_DIR), purge_step=purge_step or None)
        return True

    def log_scalars(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
        if self._writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def summary_markdown(path: Path, config: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """The human-readable report of a run (summary.md)."""
    classes = list(record.get("classes") or config.get("classes") or [])
    params = record.get("parameters", {})
    data = config.get("data", {})
    lines = [
        f"# Run {path.name}",
        "",
        f"- Status: **{record.get('status', 'unknown')}** after {record.get('step', 0)} of "
        f"{record.get('total_steps', '?')} steps ({record.get('elapsed_s', 0.0):.0f} s)"
        + (f": {record['message']}" if record.get("message") else ""),
        f"- Model: `{config.get('model')}`, {len(classes)} classes ({', '.join(classes)})",
        f"- Data: {data.get('source', 'in memory')}, {data.get('train_size', '?')} training / "
        f"{data.get('val_size', '?')} validation images",
        f"- Adapter: {describe_adapter(config.get('adapter', {}))}: {params.get('adapter', 0):,} adapter + "
        f"{params.get('head', 0):,} head parameters trainable",
    ]
    options = config.get("options", {})
    lines.append(f"- Training: batch {options.get('batch_size')}, lr {options.get('lr')} (head "
                 f"{options.get('head_lr')}), seed {options.get('seed')}, {config.get('num_processes', 1)} process(es)")
    if record.get("best_accuracy") is not None:
        lines.append(f"- Best validation accuracy: **{_percent(record['best_accuracy'])}** at step "
                     f"{record.get('best_step')} (epoch {record.get('best_epoch')}); the adapter in `adapter/` is "
                     "this one")
        per_class = record.get("per_class_accuracy", {})
        lines.append("- Per class: " + ", ".join(f"{name} {_percent(per_class.get(name))}" for name in classes))
        confusion = record.get("confusion") or []
        if confusion:
            lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", "",
                      "| true \\ predicted | " + " | ".join(classes) + " |",
                      "|---|" + "---|" * len(classes)]
            lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(classes, confusion)]
    lines += ["", f"Re-run: `superlora train --config {path / CONFIG_FILE}`  ",
              f"Continue an interrupted run: `superlora train --resume {path}`  ",
              f"Curves: `tensorboard --logdir {path.parent}`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class RunRecord:
    """One past run, as `superlora runs` lists it."""

    path: Path
    status: str
    model: str
    adapter: str
    adapter_parameters: int | None
    head_parameters: int | None
    best_accuracy: float | None
    step: int
    total_steps: int | None
    created: str
    config: dict[str, Any]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path} not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """The record of the run folder `path` (ConfigError when it is not one)."""
    path = Path(path)
    config = read_json(path / CONFIG_FILE)
    if config.get("format") != RUN_FORMAT:
        raise ConfigError(f"{path / CONFIG_FILE} is not a superlora run config")
    try:
        record = read_json(path / METRICS_JSON)
    except ConfigError:
        record = {}
    params = record.get("parameters", {})
    return RunRecord(
        path=path,
        status=record.get("status", "unknown"),
        model=str(config.get("model")),
        adapter=describe_adapter(config.get("adapter", {})),
        adapter_parameters=params.get("adapter"),
        head_parameters=params.get("head"),
        best_accuracy=record.get("best_accuracy"),
        step=int(record.get("step", 0)),
        total_steps=record.get("total_steps"),
        created=str(config.get("created", "")),
        config=config,
    )


def list_runs(root: str | os.PathLike[str] = "runs") -> list[RunRecord]:
    """Every run folder directly under `root` (and `root` itself if it is one), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; pass the folder your runs are in (default: runs)")
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    records = []
    for folder in candidates:
        if (folder / CONFIG_FILE).is_file():
            try:
                records.append(read_run(folder))
            except ConfigError:
                continue  # not a run folder (another tool's config.json)
    return sorted(records, key=lambda r: (r.created, str(r.path)))


def format_runs_table(records: list[RunRecord]) -> str:
    """A plain-text table: run, status, model, adapter, trainable parameters, best accuracy, steps."""
    header = ("run", "status", "model", "adapter", "adapter params", "head params", "best acc", "steps")
    rows = [
        (r.path.name, r.status, r.model, r.adapter,
         "?" if r.adapter_parameters is None else f"{r.adapter_parameters:,}",
         "?" if r.head_parameters is None else f"{r.head_parameters:,}",
         _percent(r.best_accuracy), f"{r.step}/{r.total_steps if r.total_steps is not None else '?'}")
        for r in records
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    numeric = {4, 5, 6, 7}
    lines = []
    for row in [header, *rows]:
        cells = [str(v).rjust(w) if i in numeric else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
