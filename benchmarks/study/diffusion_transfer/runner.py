"""Running the diffusion study: the results rows, the runs still to do (the bare UNet, sweeps, then whole seeds),
one fine-tuning run with its evaluation loss and sample strip, the resumable study loop, and timing a step for
`plan`."""

from __future__ import annotations

import hashlib
import io
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.study.diffusion_transfer.grid import BASELINE, TARGETS, Counted, Spec, count_grid
from benchmarks.study.pool import run_until_done
from benchmarks.study.store import ResultsTable, file_digest
from benchmarks.study.sweep import LR_GRID, MAX_EXTENSIONS, SWEEP_SEED, Point, check_grid, choose_lr, lr_text
from superlora import diffusion, get_superlora_model, preset
from superlora.files import atomic_write

CSV_NAME = "diffusion_transfer.csv"
SAMPLES_DIR = "diffusion_samples"
SAMPLE_SEED = 0

COLUMNS = ("phase", "family", "method", "budget", "config_hash", "seed", "lr", "status", "eval_loss", "train_loss",
           "adapter_params", "base_params", "update_size", "lora_r1_params", "steps", "batch_size", "train_images",
           "eval_images", "eval_timesteps", "eval_draws", "seconds", "seconds_per_step", "threads", "model", "setup",
           "config", "finished")


INTS = ("seed", "adapter_params", "base_params", "update_size", "lora_r1_params", "steps", "batch_size",
        "train_images", "eval_images", "eval_timesteps", "eval_draws", "threads")


FLOATS = ("lr", "eval_loss", "train_loss", "seconds", "seconds_per_step")
TABLE = ResultsTable(COLUMNS, INTS, FLOATS)
read_rows, append_row = TABLE.read, TABLE.append  # the study's results file (benchmarks/study/store.py)


def row_key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return (row["method"], row["config_hash"], int(row["seed"]), lr_text(float(row["lr"])))


@dataclass(frozen=True)
class Job:
    phase: str  # "baseline", "sweep" or "main"
    point: Point | None  # None: the pretrained model without an adapter
    seed: int
    lr: float

    def key(self) -> tuple[str, str, int, str]:
        if self.point is None:
            return (BASELINE, "none", 0, lr_text(0))
        return (self.point.method, self.point.key, self.seed, lr_text(self.lr))


def sweep_scores(rows: Sequence[dict[str, Any]], key: str) -> dict[str, tuple[float, float]]:
    """lr -> (score, loss) of a sweep point's seed-0 runs in the shape `choose_lr` ranks: higher score first, so the
    score is minus the evaluation loss (a diverged run, NaN, counts as worst)."""
    return {lr_text(r["lr"]): (-r["eval_loss"], r["eval_loss"]) for r in rows
            if r["config_hash"] == key and r["seed"] == SWEEP_SEED and r["phase"] != "baseline"}


def chosen_lrs(rows: Sequence[dict[str, Any]], points: Sequence[Point], grid: Sequence[float],
               max_extensions: int) -> tuple[dict[str, float | None], list[Job]]:
    lrs: dict[str, float | None] = {}
    todo: list[Job] = []
    for point in points:
        if point.sweep:
            lr, next_lrs = choose_lr(sweep_scores(rows, point.key), grid, max_extensions)
            lrs[point.family] = lr
            todo += [Job("sweep", point, SWEEP_SEED, x) for x in next_lrs]
    return lrs, todo


def pending_jobs(rows: Sequence[dict[str, Any]], points: Sequence[Point], seeds: Sequence[int],
                 grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS) -> list[Job]:
    """Every run that can be decided now and has no row yet: the baseline, sweep runs, then main runs seed by seed.
    Call again after they finish (sweep extensions and newly decided families come next)."""
    lrs, sweep_jobs = chosen_lrs(rows, points, grid, max_extensions)
    main_jobs = [Job("main", p, s, lrs[p.family]) for s in seeds for p in points if lrs.get(p.family) is not None]
    done = {row_key(r) for r in rows}
    jobs = []
    for job in [Job("baseline", None, 0, 0.0), *sweep_jobs, *main_jobs]:
        if job.key() not in done:
            done.add(job.key())
            jobs.append(job)
    return jobs


@dataclass(frozen=True)
class Setup:
    """Everything besides the adapter and seed that changes a run's numbers."""

    model: str
    weights: str  # sha256 prefix of model.safetensors
    spec: Spec
    device: str = "cpu"  # kernels differ between devices in the last digits: one device per results file

    def fingerprint(self) -> str:
        data = [self.weights, self.spec.__dict__, self.device, diffusion.DATA_SEED, diffusion.HOLDOUT,
                diffusion.TRANSFER_EVAL, diffusion.SCHEDULER_CONFIG, SAMPLE_SEED, "bold_strokes width 1"]
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def weights_digest(model: Path) -> str:
    path = Path(model) / "model.safetensors"
    if not path.is_file():
        raise SystemExit(f"{model} holds no model.safetensors: the bundled UNet is written by "
                         "scripts/pretrain_diffusion.py --export assets/diffusion; or give --model DIR")
    return file_digest(path)


_DATA: dict[int, Any] = {}


def task_data(eval_images: int):
    """(training, evaluation) images: the fixed transfer split; a smaller eval takes the first of the 256."""
    if eval_images not in _DATA:
        train, evaluation = diffusion.transfer_split()
        _DATA[eval_images] = (train, evaluation[:eval_images])
    return _DATA[eval_images]


def sample_strip(model, spec: Spec):
    """One row of `spec.sample_count` DDIM samples from the fixed noise seed, as a uint8 image."""
    return diffusion.image_grid(diffusion.sample(model, spec.sample_count, seed=SAMPLE_SEED, steps=spec.sample_steps),
                                columns=spec.sample_count)


def strip_path(out: Path, key: str, lr: float) -> Path:
    return Path(out) / SAMPLES_DIR / f"{key}_lr{lr_text(lr)}.png"


def write_png(path: Path, image) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def run_job(job: Job, setup: Setup, counted: Counted | None, out: Path, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune one (point, seed, lr) (or evaluate the bare model) and return its CSV row."""
    import torch

    from superlora.train import NonFiniteLossError

    if threads:
        torch.set_num_threads(threads)
    spec = setup.spec
    train_images, eval_images = task_data(spec.eval_images)
    scheduler = diffusion.noise_scheduler()
    unet = diffusion.load_unet(setup.model).to(setup.device)
    base_params = sum(p.numel() for p in unet.parameters())
    started = time.monotonic()
    status, train_loss, per_step = "ok", math.nan, math.nan
    if job.point is None:
        model, config_text, key = unet, "", "none"
    else:
        config = job.point.config.replace(seed=job.seed)
        torch.manual_seed(job.seed)
        model = get_superlora_model(unet, config, trainable=())
        live = model.num_trainable_parameters()
        if live != counted.adapter:
            raise RuntimeError(f"{job.point.method} {job.point.budget}: {live} live adapter parameters but "
                               f"count_parameters says {counted.adapter}")
        config_text, key = json.dumps(config.to_dict(), separators=(",", ":")), job.point.key
        try:
            losses = diffusion.fine_tune(model, train_images, spec.steps, job.lr, spec.batch_size, seed=job.seed,
                                         scheduler=scheduler)
        except NonFiniteLossError:
            status = "nonfinite"
        else:
            tail = losses[-max(1, len(losses) // 10):]
            train_loss = statistics.fmean(tail)
        per_step = (time.monotonic() - started) / spec.steps
    eval_loss = math.nan
    if status == "ok":
        eval_loss = diffusion.evaluation_loss(model, eval_images, scheduler, spec.eval_timesteps, spec.eval_draws)
        if job.seed == SAMPLE_SEED:
            write_png(strip_path(out, key, job.lr), sample_strip(model, spec))
    return dict(
        phase=job.phase, family=job.point.family if job.point else "pretrained",
        method=job.point.method if job.point else BASELINE, budget=job.point.budget if job.point else "–",
        config_hash=key, seed=job.seed, lr=lr_text(job.lr), status=status, eval_loss=eval_loss,
        train_loss=train_loss, adapter_params=counted.adapter if counted else 0, base_params=base_params,
        update_size=counted.update_size if counted else 0, lora_r1_params=counted.lora_r1 if counted else 0,
        steps=spec.steps if job.point else 0, batch_size=spec.batch_size, train_images=len(train_images),
        eval_images=len(eval_images), eval_timesteps=spec.eval_timesteps, eval_draws=spec.eval_draws,
        seconds=round(time.monotonic() - started, 2), seconds_per_step=round(per_step, 4),
        threads=torch.get_num_threads(), model=str(setup.model), setup=setup.fingerprint(), config=config_text,
        finished=datetime.now().isoformat(timespec="seconds"),
    )


def load_results(out: Path, setup: Setup) -> list[dict[str, Any]]:
    rows = read_rows(Path(out) / CSV_NAME)
    if {r["setup"] for r in rows} - {setup.fingerprint()}:
        raise SystemExit(f"{Path(out) / CSV_NAME} holds runs of another setup (model weights, steps, data or metric "
                         "differ); continue with the same options, or choose a new --out")
    return rows


def run_study(points: Sequence[Point], setup: Setup, out: Path, seeds: Sequence[int], workers: int, threads: int,
              grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS) -> None:
    check_grid(points)
    counts = {c.point.key: c for c in count_grid(points, Path(setup.model))}
    out.mkdir(parents=True, exist_ok=True)
    started, finished = time.monotonic(), 0

    def pending() -> tuple[int, list[tuple[Job, Setup, Counted | None, Path]]]:
        rows = load_results(out, setup)
        jobs = pending_jobs(rows, points, seeds, grid, max_extensions)
        return len(rows), [(job, setup, counts[job.point.key] if job.point else None, out) for job in jobs]

    def record(job: Job, row: dict[str, Any]) -> None:
        nonlocal finished
        append_row(out / CSV_NAME, row)
        finished += 1
        print(f"[{finished}] {row['phase']} {row['method']} {row['budget']} seed {row['seed']} lr {row['lr']}: "
              f"loss {row['eval_loss']:.5f} ({row['status']}), {row['adapter_params']:,} params, "
              f"{row['seconds']:.0f} s; {time.monotonic() - started:.0f} s so far", flush=True)

    run_until_done(pending, run_job, record, workers, threads)
    print(f"done: {finished} runs in {time.monotonic() - started:.0f} s; results in {out}", flush=True)


def measure(model: Path, spec: Spec, threads: int, device: str = "cpu") -> tuple[float, float]:
    """(seconds per training step with LoRA r=8, seconds per evaluated image and timestep) on this machine."""
    import torch

    torch.set_num_threads(threads)
    unet = diffusion.load_unet(model) if (Path(model) / "model.safetensors").is_file() else diffusion.build_unet()
    unet = unet.to(device)
    wrapped = get_superlora_model(unet, preset("lora", rank=8, targets=TARGETS), trainable=())
    images = torch.rand(spec.batch_size, 1, diffusion.IMAGE_SIZE, diffusion.IMAGE_SIZE)
    diffusion.fine_tune(wrapped, images, 1, 1e-3, spec.batch_size)  # warm-up
    started = time.monotonic()
    diffusion.fine_tune(wrapped, images, 3, 1e-3, spec.batch_size)
    per_step = (time.monotonic() - started) / 3
    started = time.monotonic()
    diffusion.evaluation_loss(wrapped, images, diffusion.noise_scheduler(), timesteps=2, draws=1)
    per_image = (time.monotonic() - started) / (2 * len(images))
    return per_step, per_image
