"""Running the ViT study: the results rows, the runs still to do (sweep first, then whole seeds), one training run
with `train()`, and the resumable study loop over worker processes."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.study.intervals import correct_from_validation, encode_correct
from benchmarks.study.pareto.grid import DEFAULT_MODEL, SPLIT_SEED, Counted, TaskSpec, count_grid, task_sets
from benchmarks.study.pareto.protocol import FAMILY, Protocol
from benchmarks.study.pool import run_until_done
from benchmarks.study.store import ResultsTable, file_digest
from benchmarks.study.sweep import HEAD_ONLY_FAMILY, HEAD_ONLY_LR, LR_GRID, MAX_EXTENSIONS, SWEEP_SEED, Point, \
    check_grid, choose_lr, lr_text

STEPS = 100
BATCH_SIZE = 32
HEAD_LR = 5e-3

COLUMNS = ("task", "phase", "family", "method", "budget", "config_hash", "seed", "lr", "status", "accuracy",
           "val_loss", "train_loss", "adapter_params", "head_params", "base_params", "update_size",
           "lora_r1_params", "steps", "batch_size", "head_lr", "num_classes", "train_size", "val_size", "seconds",
           "seconds_per_step", "cpu_seconds_per_step", "threads", "model", "setup", "config", "finished")
INTS = ("seed", "adapter_params", "head_params", "base_params", "update_size", "lora_r1_params", "steps",
        "batch_size", "num_classes", "train_size", "val_size", "threads")
FLOATS = ("lr", "head_lr", "accuracy", "val_loss", "train_loss", "seconds", "seconds_per_step", "cpu_seconds_per_step")
TABLE = ResultsTable(COLUMNS, INTS, FLOATS)
read_rows, append_row = TABLE.read, TABLE.append  # the results file of one task (benchmarks/study/store.py)
# The per-point protocol's rows also keep each validation image's right/wrong (benchmarks/study/intervals.py).
CORRECT_COLUMNS = COLUMNS + ("val_correct",)
CORRECT_TABLE = ResultsTable(CORRECT_COLUMNS, INTS, FLOATS)


def table_for(protocol: Protocol) -> ResultsTable:
    return CORRECT_TABLE if protocol.per_point else TABLE


def row_key(row: dict[str, Any]) -> tuple[str, str, str, int, str]:
    return (row["task"], row["method"], row["config_hash"], int(row["seed"]), lr_text(float(row["lr"])))


def results_path(out: Path, task: str) -> Path:
    return Path(out) / f"pareto_{task}.csv"


@dataclass(frozen=True)
class Job:
    task: str
    phase: str  # "sweep" or "main"
    point: Point
    seed: int
    lr: float  # the adapter lr; for head-only under the per-point protocol, the head lr it sweeps
    head_lr: float | None = None  # None: the setup's head lr

    def key(self) -> tuple[str, str, str, int, str]:
        return (self.task, self.point.method, self.point.key, self.seed, lr_text(self.lr))


def _in_order(sweep_jobs: list[Job], main_jobs: list[Job], done: set) -> list[Job]:
    """Sweep runs first, then main runs seed by seed (stable: within a seed, task then grid order); each run once,
    and none whose key is in `done`."""
    main_jobs = sorted(main_jobs, key=lambda j: j.seed)
    jobs, seen = [], set(done)
    for job in sweep_jobs + main_jobs:
        if job.key() not in seen:
            seen.add(job.key())
            jobs.append(job)
    return jobs


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
            if point.family == HEAD_ONLY_FAMILY:
                lrs[point.family] = HEAD_ONLY_LR  # no adapter: nothing to sweep, the lr is unused
            elif fixed_lr is not None:
                lrs[point.family] = fixed_lr
            elif point.sweep:
                lr, todo = choose_lr(sweep_results(rows, task, point), grid, max_extensions)
                lrs[point.family] = lr
                sweep_jobs += [Job(task, "sweep", point, SWEEP_SEED, x) for x in todo]
        for seed in seeds:
            for point in points:
                if lrs.get(point.family) is not None:
                    main_jobs.append(Job(task, "main", point, seed, lrs[point.family]))
    return _in_order(sweep_jobs, main_jobs, done)


def pending_per_point(rows: Sequence[dict[str, Any]], tasks: Sequence[str], points: Sequence[Point],
                      seeds: Sequence[int], protocol: Protocol) -> list[Job]:
    """`pending_jobs` under a per-point protocol: every point sweeps its own lr on seed 0 (head-only its head lr),
    then runs its seeds at the chosen lr and at the protocol's default lr (where the sweep chose another), sweep
    runs first and main runs seed by seed."""
    done = {row_key(r) for r in rows}
    sweep_jobs, main_jobs = [], []
    for task in tasks:
        for point in points:
            head = protocol.sweeps_head(point.family)

            def job(phase: str, seed: int, lr: float) -> Job:
                return Job(task, phase, point, seed, lr, head_lr=lr if head else None)

            chosen, todo = choose_lr(sweep_results(rows, task, point), protocol.sweep_grid(point.family),
                                     protocol.max_extensions, protocol.factor)
            sweep_jobs += [job("sweep", SWEEP_SEED, lr) for lr in todo]
            if chosen is None:
                continue
            default = protocol.default_for(point.family)
            lrs = [chosen] + ([default] if default is not None and lr_text(default) != lr_text(chosen) else [])
            main_jobs += [job("main", seed, lr) for seed in seeds for lr in lrs]
    return _in_order(sweep_jobs, main_jobs, done)


@dataclass(frozen=True)
class Setup:
    """Everything besides the adapter and seed that changes a run's numbers; rows of another setup are refused."""

    model: str
    weights: str  # sha256 prefix of the model's weights file (the name alone does not say which weights)
    steps: int
    batch_size: int
    head_lr: float
    tasks: tuple[tuple[str, TaskSpec], ...]
    protocol: Protocol = FAMILY

    def fingerprint(self, task: str) -> str:
        spec = dict(self.tasks)[task]
        fields = [self.model, self.weights, self.steps, self.batch_size, lr_text(self.head_lr), spec.sample,
                  spec.train_per_class, spec.val_per_class, SPLIT_SEED]
        if self.protocol.per_point:  # (the original protocol's fingerprints stay as they were)
            fields += [self.protocol.name, self.protocol.long_steps, self.protocol.long_below]
        text = json.dumps(fields)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def weights_digest(model: str) -> str:
    from superlora.base_models import DEFAULT_MODEL_DIR, WEIGHTS_FILE

    path = DEFAULT_MODEL_DIR / WEIGHTS_FILE if model == DEFAULT_MODEL else Path(model)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        return "none"  # a hub name; load_model reports a missing file itself
    return file_digest(path)


_DATA: dict[tuple[str, TaskSpec], Any] = {}


def task_data(setup: Setup, task: str) -> tuple[Any, Any]:
    """The task's (training, validation) sets, loaded once per process."""
    spec = dict(setup.tasks)[task]
    if (task, spec) not in _DATA:
        _DATA[(task, spec)] = task_sets(task, spec)
    return _DATA[(task, spec)]


def run_job(job: Job, setup: Setup, counted: Counted, threads: int | None = None) -> dict[str, Any]:
    """Train one (task, point, seed, lr) with `train()` and return its CSV row."""
    import torch

    from superlora.train import NonFiniteLossError, TrainOptions, train

    if threads:
        torch.set_num_threads(threads)
    train_set, val_set = task_data(setup, job.task)
    step_times: list[tuple[float, float]] = []  # (wall, CPU time of this process) after each step

    def on_event(event) -> None:
        if event.kind == "step":
            step_times.append((time.monotonic(), time.process_time()))

    steps = setup.protocol.steps_for(counted.adapter, setup.steps)
    head_lr = setup.head_lr if job.head_lr is None else job.head_lr
    options = TrainOptions(steps=steps, batch_size=setup.batch_size, lr=job.lr, head_lr=head_lr,
                           seed=job.seed, eval_every_epoch=False, device="cpu")
    started = time.monotonic()
    status, accuracy, val_loss, train_loss, correct = "ok", math.nan, math.nan, math.nan, ()
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
        correct = correct_from_validation(result.validation)
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
        steps=steps, batch_size=setup.batch_size, head_lr=lr_text(head_lr),
        num_classes=len(train_set.classes), train_size=len(train_set), val_size=len(val_set), seconds=round(seconds, 2),
        seconds_per_step=round(spans[0], 4), cpu_seconds_per_step=round(spans[1], 4),
        threads=torch.get_num_threads(), model=setup.model, setup=setup.fingerprint(job.task),
        config=json.dumps(job.point.config.to_dict(), separators=(",", ":")),
        finished=datetime.now().isoformat(timespec="seconds"), val_correct=encode_correct(correct),
    )


def _describe(job: Job) -> str:
    lr = f"head lr {lr_text(job.lr)}" if job.head_lr is not None else f"lr {lr_text(job.lr)}"
    return f"{job.task} {job.phase} {job.point.method} {job.point.budget} seed {job.seed} {lr}"


def load_results(out: Path, tasks: Sequence[str], setup: Setup) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        task_rows = table_for(setup.protocol).read(results_path(out, task))
        other = {r["setup"] for r in task_rows} - {setup.fingerprint(task)}
        if other:
            raise SystemExit(f"{results_path(out, task)} holds runs of another setup (model weights, steps, batch, "
                             "head lr or data differ); continue with the same options, or choose a new --out")
        rows += task_rows
    return rows


def borrow_rows(source: Path, out: Path, tasks: Sequence[str], setup: Setup, keys: set[str]) -> int:
    """Copy into `out`'s results the seed-0 rows of `source` (another run of the same setup) for the points whose
    config hash is in `keys` and that `out` lacks; returns how many. The rows are copied as text, unchanged."""
    import csv

    table = table_for(setup.protocol)
    load_results(source, tasks, setup)  # refuses a source of another setup
    own = {row_key(r) for r in load_results(out, tasks, setup)}
    copied = 0
    for task in tasks:
        path = results_path(source, task)
        if not path.is_file():
            continue
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if row["config_hash"] in keys and int(row["seed"]) == SWEEP_SEED and row_key(row) not in own:
                table.append(results_path(out, task), row)
                own.add(row_key(row))
                copied += 1
    return copied


def run_study(points: Sequence[Point], setup: Setup, out: Path, seeds: Sequence[int], workers: int, threads: int,
              grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS,
              fixed_lr: float | None = None, borrow: tuple[Path, set[str]] | None = None) -> None:
    """Run every pending job of the study into `out` until none is left. `borrow` = (folder, config hashes): the
    seed-0 runs (the lr sweep) of those points come from that folder's results, which another process may still be
    writing; they are copied in whenever pending runs are decided and never run here (the later seeds are)."""
    check_grid(points, need_sweep=fixed_lr is None and not setup.protocol.per_point)
    tasks = [name for name, _ in setup.tasks]
    counts = {(task, c.point.key): c for task, spec in setup.tasks
              for c in count_grid(points, setup.model, spec.classes)}
    out.mkdir(parents=True, exist_ok=True)
    started, finished = time.monotonic(), 0

    def pending() -> tuple[int, list[tuple[Job, Setup, Counted]]]:
        if borrow is not None:
            copied = borrow_rows(borrow[0], out, tasks, setup, borrow[1])
            if copied:
                print(f"copied {copied} seed-0 runs from {borrow[0]}", flush=True)
        rows = load_results(out, tasks, setup)
        jobs = pending_per_point(rows, tasks, points, seeds, setup.protocol) if setup.protocol.per_point \
            else pending_jobs(rows, tasks, points, seeds, grid, max_extensions, fixed_lr)
        if borrow is not None:
            jobs = [job for job in jobs if not (job.seed == SWEEP_SEED and job.point.key in borrow[1])]
        return len(rows), [(job, setup, counts[(job.task, job.point.key)]) for job in jobs]

    def record(job: Job, row: dict[str, Any]) -> None:
        nonlocal finished
        table_for(setup.protocol).append(results_path(out, job.task), row)
        finished += 1
        shown = f"{row['accuracy']:.2%}" if row["status"] == "ok" else row["status"]
        print(f"[{finished}] {_describe(job)}: {shown}, {row['adapter_params']:,} params, "
              f"{row['seconds']:.0f} s ({row['seconds_per_step']:.3f} s/step, "
              f"{row['cpu_seconds_per_step']:.3f} CPU s/step); "
              f"{time.monotonic() - started:.0f} s so far", flush=True)

    run_until_done(pending, run_job, record, workers, threads)
    print(f"done: {finished} runs in {time.monotonic() - started:.0f} s; results in {out}", flush=True)
