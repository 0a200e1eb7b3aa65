"""Running the PEFT baselines study: the results rows (the Pareto study's columns and a few), the points to run
(`study_points`), the runs still to do under the per-point learning-rate protocol (`pending_jobs`), one training
run (`run_job`) and the resumable study loop (`run_study`).

Protocol, per point (a PEFT method's matched config, or a SuperLoRA point on whole qkv: both sides alike): on
seed 0 the lrs of `DEFAULT_LRS`, extended by 4x past an edge at most twice (`benchmarks.study.sweep.choose_lr`),
the best validation accuracy wins; then the other seeds at the chosen lr. `fixed_lrs` replaces the sweep by
exactly those lrs on every seed."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.study.pareto.runner import COLUMNS as PARETO_COLUMNS
from benchmarks.study.pareto.runner import FLOATS, INTS, Setup, task_data
from benchmarks.study.peft.matching import TARGET, Layer, Match, SuperLoRAPoint, fits, match, peft_config
from benchmarks.study.peft.training import DEFAULT_LRS, encode_correct, train_peft, train_superlora
from benchmarks.study.pool import run_until_done
from benchmarks.study.store import ResultsTable
from benchmarks.study.sweep import MAX_EXTENSIONS, SWEEP_SEED, choose_lr, lr_text

# fixed values: as in the plan (PEFT rows); val_correct: per validation image, right or wrong (encode_correct)
EXTRA_COLUMNS = ("targets", "target_budget", "fixed_values", "val_correct")
COLUMNS = tuple(PARETO_COLUMNS) + EXTRA_COLUMNS
TABLE = ResultsTable(COLUMNS, ints=(*INTS, "target_budget"), floats=FLOATS)  # fixed_values: text ("" for SuperLoRA)


def results_path(out: Path, task: str) -> Path:
    return Path(out) / f"peft_baselines_{task}.csv"


def row_key(row: dict[str, Any]) -> tuple[str, str, str, int, str]:
    return (row["task"], row["method"], row["config_hash"], int(row["seed"]), lr_text(float(row["lr"])))


@dataclass(frozen=True)
class StudyPoint:
    """One point of the study: a PEFT match or a SuperLoRA whole-qkv point, named as its rows name it."""

    family: str  # PEFT: the method's key (vera, ...); SuperLoRA: its family in the Pareto study
    method: str  # PEFT: the method's name (VeRA, ...); SuperLoRA: "<the study's method> (qkv)"
    budget: str  # PEFT: the config (Match.describe); SuperLoRA: the study's budget label
    config_hash: str
    target_budget: int  # PEFT: the budget matched; SuperLoRA: its count
    peft_match: Match | None = None
    superlora: SuperLoRAPoint | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.config_hash)


def study_points(layers: Sequence[Layer], methods: Sequence[str], budgets: Sequence[int],
                 sl_points: Sequence[SuperLoRAPoint] = ()) -> list[StudyPoint]:
    """The PEFT configs that fit their budget, each once (two budgets that lead to one config share its runs),
    then the SuperLoRA points."""
    points: list[StudyPoint] = []
    seen: set[tuple[str, str]] = set()
    for method in methods:
        for budget in budgets:
            m = match(method, budget, layers)
            if fits(m) and (method, m.key) not in seen:
                seen.add((method, m.key))
                points.append(StudyPoint(method, m.name, m.describe(), m.key, budget, peft_match=m))
    for p in sl_points:
        points.append(StudyPoint(p.family, f"{p.method} (qkv)", p.budget, p.key, p.count, superlora=p))
    return points


@dataclass(frozen=True)
class Job:
    """One run: a point on one task, seed and lr; phase "sweep" (seed 0 while its lr is chosen) or "main"."""

    task: str
    phase: str
    point: StudyPoint
    seed: int
    lr: float

    def key(self) -> tuple[str, str, str, int, str]:
        return (self.task, self.point.method, self.point.config_hash, self.seed, lr_text(self.lr))

    def describe(self) -> str:
        return (f"{self.task} {self.phase} {self.point.method} {self.point.budget} seed {self.seed} "
                f"lr {lr_text(self.lr)}")


def sweep_results(rows: Iterable[dict[str, Any]], task: str, point: StudyPoint) -> dict[str, tuple[float, float]]:
    """The point's seed-0 runs: lr text -> (accuracy, validation loss); NaN where the run diverged."""
    return {lr_text(r["lr"]): (r["accuracy"], r["val_loss"]) for r in rows
            if r["task"] == task and (r["method"], r["config_hash"]) == point.key and int(r["seed"]) == SWEEP_SEED}


def pending_jobs(rows: Sequence[dict[str, Any]], tasks: Sequence[str], points: Sequence[StudyPoint],
                 seeds: Sequence[int], grid: Sequence[float] = DEFAULT_LRS, max_extensions: int = MAX_EXTENSIONS,
                 fixed_lrs: Sequence[float] | None = None) -> list[Job]:
    """Every run that can be decided now and has no row yet: the sweep runs of every point first, then the main
    runs seed by seed (an interrupted study has whole seeds). Call again after they finish: sweep extensions, and
    the seeds of the points whose sweep has just decided, come next. With `fixed_lrs`: exactly those lrs on every
    seed, no sweep."""
    sweep_jobs, main_jobs = [], []
    for task in tasks:
        for point in points:
            if fixed_lrs:
                main_jobs += [Job(task, "main", point, seed, lr) for seed in seeds for lr in fixed_lrs]
                continue
            chosen, todo = choose_lr(sweep_results(rows, task, point), grid, max_extensions)
            sweep_jobs += [Job(task, "sweep", point, SWEEP_SEED, lr) for lr in todo]
            if chosen is not None:
                main_jobs += [Job(task, "main", point, seed, chosen) for seed in seeds]
    main_jobs.sort(key=lambda job: job.seed)  # stable: within a seed, task then point order
    jobs, seen = [], {row_key(r) for r in rows}
    for job in sweep_jobs + main_jobs:
        if job.key() not in seen:
            seen.add(job.key())
            jobs.append(job)
    return jobs


def run_job(job: Job, setup: Setup, layers: Sequence[Layer], threads: int | None = None) -> dict[str, Any]:
    """Train one job and return its CSV row."""
    import torch

    from superlora.base_models import create_meta_model
    from superlora.train import TrainOptions

    if threads:
        torch.set_num_threads(threads)
    train_set, val_set = task_data(setup, job.task)
    options = TrainOptions(steps=setup.steps, batch_size=setup.batch_size, lr=job.lr, head_lr=setup.head_lr,
                           seed=job.seed, eval_every_epoch=False, device="cpu")
    started, point = time.monotonic(), job.point
    if point.peft_match is not None:
        import peft

        m = point.peft_match
        outcome = train_peft(setup.model, train_set, val_set, lambda seed: peft_config(m, seed), options)
        expected = m.count
        config = {"peft": m.method, "peft_version": peft.__version__, "targets": [TARGET], **m.settings}
    else:
        outcome = train_superlora(setup.model, train_set, val_set, point.superlora, options)
        expected, config = point.superlora.count, point.superlora.config.to_dict()
    if outcome.status == "ok" and outcome.adapter != expected:
        raise RuntimeError(f"{job.describe()}: the trained model has {outcome.adapter} adapter parameters, the plan "
                           f"says {expected}")
    seconds = time.monotonic() - started
    # as the study: every parameter of the base model with its new head (the adapter not included)
    base_params = sum(p.numel() for p in create_meta_model(setup.model, len(train_set.classes)).parameters())
    times = outcome.step_times
    spans = [(b - a) / (len(times) - 1) for a, b in zip(times[0], times[-1])] if len(times) > 1 else [math.nan] * 2
    return dict(
        task=job.task, phase=job.phase, family=point.family, method=point.method, budget=point.budget,
        config_hash=point.config_hash, seed=job.seed, lr=lr_text(job.lr), status=outcome.status,
        accuracy=outcome.accuracy, val_loss=outcome.val_loss, train_loss=outcome.train_loss,
        adapter_params=expected, head_params=outcome.head, base_params=base_params,
        update_size=sum(l.out_features * l.in_features for l in layers),
        lora_r1_params=sum(l.out_features + l.in_features for l in layers), steps=setup.steps,
        batch_size=setup.batch_size, head_lr=lr_text(setup.head_lr), num_classes=len(train_set.classes),
        train_size=len(train_set), val_size=len(val_set), seconds=round(seconds, 2),
        seconds_per_step=round(spans[0], 4), cpu_seconds_per_step=round(spans[1], 4),
        threads=torch.get_num_threads(), model=setup.model, setup=setup.fingerprint(job.task),
        config=json.dumps(config, separators=(",", ":"), sort_keys=True),
        finished=datetime.now().isoformat(timespec="seconds"), targets=TARGET, target_budget=point.target_budget,
        fixed_values=outcome.fixed_values, val_correct=encode_correct(outcome.correct),
    )


def load_results(out: Path, tasks: Sequence[str], setup: Setup) -> list[dict[str, Any]]:
    """The rows of every task on file; rows of another setup are refused."""
    rows = []
    for task in tasks:
        task_rows = TABLE.read(results_path(out, task))
        if {r["setup"] for r in task_rows} - {setup.fingerprint(task)}:
            raise SystemExit(f"{results_path(out, task)} holds runs of another setup (model weights, steps, batch, "
                             "head lr or data differ); continue with the same options, or choose a new --out")
        rows += task_rows
    return rows


def run_study(points: Sequence[StudyPoint], setup: Setup, out: Path, layers: Sequence[Layer], seeds: Sequence[int],
              workers: int, threads: int, grid: Sequence[float] = DEFAULT_LRS, max_extensions: int = MAX_EXTENSIONS,
              fixed_lrs: Sequence[float] | None = None) -> int:
    """Run every job `pending_jobs` names, asking again after each batch until none is left
    (`study.pool.run_until_done`); returns how many ran."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = [name for name, _ in setup.tasks]
    started, finished = time.monotonic(), 0

    def pending() -> tuple[int, list[tuple[Job, Setup, Sequence[Layer]]]]:
        rows = load_results(out, tasks, setup)
        jobs = pending_jobs(rows, tasks, points, seeds, grid, max_extensions, fixed_lrs)
        return len(rows), [(job, setup, layers) for job in jobs]

    def record(job: Job, row: dict[str, Any]) -> None:
        nonlocal finished
        TABLE.append(results_path(out, job.task), row)
        finished += 1
        shown = f"{row['accuracy']:.2%}" if row["status"] == "ok" else row["status"]
        print(f"[{finished}] {job.describe()}: {shown}, {row['adapter_params']:,} params, {row['seconds']:.0f} s; "
              f"{time.monotonic() - started:.0f} s so far", flush=True)

    on_file, calls = pending()
    if not calls:
        print(f"{on_file} runs on file, 0 to run", flush=True)
    run_until_done(pending, run_job, record, workers, threads)
    return finished
