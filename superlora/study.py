"""The Pareto study's measured results, shipped with the package: what `superlora.suggest` ranks by.

benchmarks/ is not installed with the package, so the study's per-point results are kept here as package data
(`study_results.json`, next to this file), generated from the committed CSVs of `benchmarks/pareto.py` by
`study_results_from_csv` (run `python -m superlora.study` in a checkout after the study's CSVs change; a test checks
the shipped file equals what the CSVs give).

Per task and study point the file holds the family, method, budget label, config, adapter parameters on the study
model, the chosen learning rate and the mean, standard deviation and number of validation accuracies over seeds at
that lr. The lr is chosen by the study's rule (docs/benchmarks.md, "Learning rate: the rule"), recomputed here from
the rows as `benchmarks/pareto.py analyse` does: per family, seed 0 at the family's sweep point (its rows of phase
"sweep"), best accuracy, ties to the lower validation loss then the smaller lr, extended 4x past an edge of the
grid at most twice; a point's runs are its rows of either phase at that lr (the sweep's seed-0 run at the chosen lr
is also the point's seed-0 run).

`--protocol per-point` reads the per-point re-run's folder instead (docs/benchmarks.md, issue 12): each point's lr
comes from its own seed-0 sweep (factor-2 steps around the shipped default; head-only sweeps its head lr), and the
point also records its run length and its mean at the shipped default lr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superlora.config import SuperLoRAConfig
from superlora.defaults import DEFAULT_HEAD_LR, DEFAULT_LR
from superlora.errors import ConfigError
from superlora.files import atomic_write

STUDY_FILE = Path(__file__).with_name("study_results.json")
FORMAT_VERSION = 1
CSV_PATTERN = "pareto_{task}.csv"
STUDY_TASKS = ("digits", "inspection")
# The study's lr rule (benchmarks/pareto.py: LR_GRID, LR_FACTOR, MAX_EXTENSIONS, SWEEP_SEED).
LR_GRID = (1e-3, 4e-3, 1.6e-2)
LR_FACTOR = 4.0
MAX_EXTENSIONS = 2
SWEEP_SEED = 0
# The per-point re-run's rule (benchmarks/study/pareto/protocol.py: PER_POINT): every point sweeps its own lr in
# factor-2 steps around the shipped default, head-only its head lr around the shipped head lr.
PER_POINT_GRID = tuple(DEFAULT_LR * 2.0 ** k for k in (-3, -2, -1, 0, 1))
PER_POINT_HEAD_GRID = tuple(DEFAULT_HEAD_LR * 2.0 ** k for k in (-2, -1, 0, 1, 2))
PER_POINT_FACTOR = 2.0
PROTOCOLS = ("family", "per-point")
# Hook for the 0-parameter baseline (issue 12, item 4): points of this family train the head alone. They carry
# no config (None) and count 0 adapter parameters on every model.
HEAD_ONLY_FAMILY = "head-only"


@dataclass(frozen=True)
class Measured:
    """What the study saw for one point on one task: accuracy (a fraction) over seeds at the chosen lr."""

    task: str
    mean: float
    sd: float
    seeds: int
    lr: float
    steps: int = 0  # the point's own run length (the per-point re-run); 0: the task's, as in the first study
    default_mean: float | None = None  # the per-point re-run: the same point at the shipped default lr
    default_lr: float | None = None

    def text(self) -> str:
        """e.g. "74.1 ± 1.1 % (3 seeds, lr 0.064)"; the per-point re-run adds the steps and the default lr's mean,
        e.g. "80.1 ± 1.0 % (3 seeds, lr 0.06, 400 steps; 77.9 % at the default lr 0.03)"."""
        steps = f", {self.steps} steps" if self.steps else ""
        default = (f"; {100 * self.default_mean:.1f} % at the default lr {self.default_lr:g}"
                   if self.default_mean is not None and self.default_lr is not None and self.default_lr != self.lr
                   else "")
        return f"{100 * self.mean:.1f} ± {100 * self.sd:.1f} % ({self.seeds} seeds, lr {self.lr:g}{steps}{default})"


@dataclass(frozen=True)
class StudyPoint:
    """One budget of one method of the study, with its result on every task it was measured on."""

    family: str
    method: str
    budget: str
    config: SuperLoRAConfig | None  # None: the head alone (HEAD_ONLY_FAMILY)
    study_parameters: int  # adapter parameters on the study's model
    measured: dict[str, Measured]


# ---------------------------------------------------------------------------------------------- the generator
def _lr_text(lr: float) -> str:
    return f"{float(lr):.4g}"


def _score(accuracy: float, loss: float, lr: float) -> tuple[float, float, float]:
    """Higher is better: accuracy, then lower loss, then the smaller lr; a diverged run (NaN) is worst."""
    return (-math.inf if math.isnan(accuracy) else accuracy, -math.inf if math.isnan(loss) else -loss, -lr)


def choose_lr(results: dict[str, tuple[float, float]], grid: Sequence[float] = LR_GRID,
              factor: float = LR_FACTOR) -> float | None:
    """The study's chosen lr from the sweep's runs (`_lr_text(lr)` -> (accuracy, val_loss)) over `grid`, extended
    by `factor` past an edge at most MAX_EXTENSIONS times; None when the sweep is unfinished (a grid lr or a due
    extension has no run)."""
    if any(_lr_text(lr) not in results for lr in grid):
        return None
    tried = sorted(grid)
    while True:
        best = max(tried, key=lambda lr: _score(*results[_lr_text(lr)], lr))
        above = sum(lr > max(grid) for lr in tried)
        below = sum(lr < min(grid) for lr in tried)
        if best == tried[-1] and above < MAX_EXTENSIONS:
            step = best * factor
        elif best == tried[0] and below < MAX_EXTENSIONS:
            step = best / factor
        else:
            return best
        if _lr_text(step) not in results:
            return None
        tried = sorted([*tried, step])


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["seed"], row["adapter_params"] = int(row["seed"]), int(row["adapter_params"])
        for name in ("lr", "accuracy", "val_loss"):
            row[name] = float(row[name]) if row[name] not in ("", "nan") else math.nan
    return rows


def _family_lrs(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The chosen lr of every family whose sweep has finished, and head-only's (unused) lr when it ran."""
    sweeps = {(r["family"], r["config_hash"]) for r in rows if r["phase"] == "sweep"}
    lrs = {}
    for family, key in sorted(sweeps):
        results = {_lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in rows
                   if r["config_hash"] == key and r["seed"] == SWEEP_SEED}
        lr = choose_lr(results)
        if lr is not None:
            lrs[family] = lr
    if HEAD_ONLY_FAMILY not in lrs:  # no sweep (no adapter lr): its runs record one unused lr
        used = {_lr_text(r["lr"]) for r in rows if r["family"] == HEAD_ONLY_FAMILY}
        if len(used) == 1:
            lrs[HEAD_ONLY_FAMILY] = float(used.pop())
    return lrs


def _point(group: list[dict[str, Any]], lr: float) -> dict[str, Any]:
    first = group[0]
    ok = [r["accuracy"] for r in group if r["status"] == "ok" and not math.isnan(r["accuracy"])]
    config = json.loads(first["config"]) if first["config"] else None
    if config is not None:
        config["seed"] = 0  # a run with seed s used the point's config with seed s
    return {"family": first["family"], "method": first["method"], "budget": first["budget"], "config": config,
            "adapter_params": first["adapter_params"], "lr": lr,
            "mean": round(statistics.fmean(ok), 6) if ok else None,
            "sd": round(statistics.stdev(ok), 6) if len(ok) > 1 else 0.0, "n": len(ok), "failed": len(group) - len(ok)}


def _per_point(group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One point of the per-point re-run: its own chosen lr (head-only: head lr) from its seed-0 sweep, its runs at
    that lr, its steps, and its runs at the shipped default lr; None while its sweep is unfinished."""
    head = group[0]["family"] == HEAD_ONLY_FAMILY
    grid, default = (PER_POINT_HEAD_GRID, DEFAULT_HEAD_LR) if head else (PER_POINT_GRID, DEFAULT_LR)
    lr = choose_lr({_lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in group if r["seed"] == SWEEP_SEED},
                   grid, PER_POINT_FACTOR)
    if lr is None:
        return None
    point = _point([r for r in group if _lr_text(r["lr"]) == _lr_text(lr)], lr)
    runs = [r for r in group if _lr_text(r["lr"]) == _lr_text(default)]
    at_default = _point(runs, default) if runs else {"mean": None, "n": 0}
    point.update(steps=int(group[0]["steps"]), default_lr=default, default_mean=at_default["mean"],
                 default_n=at_default["n"])
    return point


def task_results(rows: Sequence[dict[str, Any]], protocol: str = "family") -> dict[str, Any]:
    """One task's points (ordered by family, method, parameters) from its CSV rows. `protocol`: "family" (one lr
    per family, the first study) or "per-point" (each point its own lr; points still sweeping are left out)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    if protocol == "per-point":
        for row in rows:
            groups[(row["method"], row["config_hash"])].append(row)
        points = [p for p in map(_per_point, groups.values()) if p is not None]
    else:
        lrs = _family_lrs(rows)
        for row in rows:
            lr = lrs.get(row["family"])
            if lr is not None and _lr_text(row["lr"]) == _lr_text(lr):
                groups[(row["method"], row["config_hash"])].append(row)
        points = [_point(group, lrs[group[0]["family"]]) for group in groups.values()]
    first = rows[0] if rows else {}
    steps = min((int(r.get("steps") or 0) for r in rows), default=0)  # per-point: the shorter; each point has its own
    return {"model": first.get("model"), "steps": steps,
            "val_size": int(first.get("val_size", 0) or 0), "num_classes": int(first.get("num_classes", 0) or 0),
            "points": sorted(points, key=lambda p: (p["family"], p["method"], p["adapter_params"]))}


def study_results_from_csv(folder: Path, tasks: Sequence[str] = STUDY_TASKS, protocol: str = "family"
                           ) -> dict[str, Any]:
    """The content of `study_results.json` from the study's CSVs in `folder` (benchmarks/results; for the
    per-point re-run, its folder, e.g. benchmarks/results/pareto_per_point_sqrt, with `protocol="per-point"`)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    results = {}
    for task in tasks:
        path = Path(folder) / CSV_PATTERN.format(task=task)
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; run the study (benchmarks/pareto.py run) or give its folder")
        results[task] = task_results(_read_csv(path), protocol)
    data = {"format_version": FORMAT_VERSION,
            "source": "benchmarks/pareto.py; regenerate with `python -m superlora.study`",
            "accuracy": "validation accuracy (fraction) over seeds at the family's chosen lr", "tasks": results}
    if protocol == "per-point":
        data.update(protocol=protocol, accuracy="validation accuracy (fraction) over seeds at the point's own chosen "
                    "lr; default_mean: the same at the shipped default lr")
    return data


def _dump(data: dict[str, Any]) -> str:
    """The file's text: one point per line, so a regenerated file's diff shows which points changed."""
    def line(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    tasks = []
    for task, result in data["tasks"].items():
        head = ", ".join(f"{line(k)}: {line(v)}" for k, v in result.items() if k != "points")
        points = ",\n".join(f"    {line(p)}" for p in result["points"])
        tasks.append(f"  {line(task)}: {{{head}, \"points\": [\n{points}\n  ]}}")
    top = "".join(f" {line(k)}: {line(v)},\n" for k, v in data.items() if k != "tasks")
    return "{\n" + top + ' "tasks": {\n' + ",\n".join(tasks) + "\n }\n}\n"


def write_study_results(folder: Path, out: Path = STUDY_FILE, protocol: str = "family") -> dict[str, Any]:
    """Regenerate the shipped file from the CSVs (written atomically)."""
    data = study_results_from_csv(folder, protocol=protocol)
    text = _dump(data)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return data


# ---------------------------------------------------------------------------------------------- the reader
def _points_of(data: dict[str, Any]) -> list[StudyPoint]:
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for task, result in data["tasks"].items():
        for p in result["points"]:
            if p["mean"] is None:
                continue  # every run of the point failed: nothing measured to rank by
            key = (p["family"], p["method"], p["budget"])
            entry = merged.setdefault(key, {"config": p["config"], "params": p["adapter_params"], "measured": {}})
            entry["measured"][task] = Measured(task, p["mean"], p["sd"], p["n"], p["lr"], p.get("steps", 0),
                                               p.get("default_mean"), p.get("default_lr"))
    points = []
    for (family, method, budget), entry in merged.items():
        head_only = family == HEAD_ONLY_FAMILY or entry["config"] is None
        config = None if head_only else SuperLoRAConfig.from_dict(entry["config"])
        points.append(StudyPoint(family, method, budget, config, 0 if head_only else entry["params"],
                                 entry["measured"]))
    return points


def load_study(path: Path = STUDY_FILE) -> list[StudyPoint]:
    """The study's points from the shipped file (or another file of the same format)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"the study's results {path} cannot be read ({err}); reinstall superlora or regenerate "
                          "the file with `python -m superlora.study`") from err
    if data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path} has format {data.get('format_version')!r}, expected {FORMAT_VERSION}; "
                          "regenerate it with `python -m superlora.study`")
    return _points_of(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m superlora.study",
                                     description="Regenerate superlora/study_results.json from the study's CSVs.")
    parser.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"),
                        help="folder of pareto_<task>.csv (default: the checkout's benchmarks/results)")
    parser.add_argument("--out", default=str(STUDY_FILE), help="the JSON file to write")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="family",
                        help="how the CSVs chose their lrs: one per family (the first study) or one per point (the "
                             "re-run; give its folder as --results)")
    args = parser.parse_args(argv)
    data = write_study_results(Path(args.results), Path(args.out), args.protocol)
    counts = ", ".join(f"{task} {len(r['points'])} points" for task, r in data["tasks"].items())
    print(f"wrote {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
