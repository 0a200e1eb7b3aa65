"""The paper's diffusion experiment at this machine's scale: denoising loss against adapter parameters.

The paper (arXiv:2403.11887) adapts the attention projections of a diffusion UNet to a new style and reports
that LoRTA reaches the loss of LoRA r=8 with about 9.3x fewer parameters (8,160 against 75,776), down to a
31-parameter LoRTA with Fastfood rho = 0.01. This script measures the same comparison on the bundled UNet.

What is measured. Base: `--model` (default `assets/diffusion/`, the bundled DDPM UNet pretrained on MNIST),
frozen. Targets: `to_q`, `to_k`, `to_v`, `to_out` of its 7 attention blocks (28 matrices of 64 x 64,
D = 114,688). Task: the 1,000 MNIST digits pretraining held out, redrawn with bold strokes
(`superlora.diffusion.transfer_split`: 744 train adapters, the last 256 are the evaluation images).
Every run: `superlora.diffusion.fine_tune` for the same steps and batch (AdamW, 5 % warm-up, cosine), then
`evaluation_loss` on the evaluation images: the noise-prediction MSE over a fixed grid of timesteps and fixed
noise draws, identical for every model (lower is better). The untouched pretrained model is the 0-parameter point.
Methods and budgets: `study_grid()`; `plan` prints it with exact counts and a measured time estimate.

Learning-rate rule: the ViT study's (benchmarks/pareto.py), with the evaluation loss in place of accuracy:
one lr per family, chosen on seed 0 at the family's sweep point from (1e-3, 4e-3, 1.6e-2), extended by 4x past
an edge at most twice, lowest loss wins; every point of the family then runs on seeds 0, 1, 2 at that lr (the
seed drives the batches, timesteps and noise of training and the adapter's own seed). As in the ViT study the
choice is made on the evaluation images themselves: a small optimistic bias, the same for every family.

Resumable: each finished run adds one row to `<out>/diffusion_transfer.csv` (rewritten through a temporary file
and a rename); a restart skips every run already there. Rows of another setup (weights, steps, data, metric) are
refused. Seed-0 runs also write a strip of generated samples (`<out>/diffusion_samples/`, same noise seeds for
every method); `analyse` puts them into one grid.

    python benchmarks/diffusion_transfer.py plan        # grid, parameter counts, run count, measured time estimate
    nohup python benchmarks/diffusion_transfer.py run --workers 2 > runs/diffusion_transfer.log 2>&1 &
    python benchmarks/diffusion_transfer.py analyse     # figure, sample grid, section of docs/benchmarks.md
    python benchmarks/diffusion_transfer.py --quick --model DIR   # a seconds-long smoke run into a temporary folder
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from superlora import SuperLoRAConfig, count_parameters, get_superlora_model, preset  # noqa: E402
from superlora import diffusion  # noqa: E402
from superlora.files import atomic_write  # noqa: E402


def _load_pareto():
    """The ViT study's module: this script shares its grid point type, config hash and learning-rate rule."""
    name = "pareto_for_diffusion_transfer"  # its own name: tests load pareto.py as another module too
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "pareto.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


pareto = _load_pareto()
Point, config_hash, lr_text, choose_lr = pareto.Point, pareto.config_hash, pareto.lr_text, pareto.choose_lr
LR_GRID, MAX_EXTENSIONS, SWEEP_SEED, SEEDS = pareto.LR_GRID, pareto.MAX_EXTENSIONS, pareto.SWEEP_SEED, pareto.SEEDS

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
CSV_NAME = "diffusion_transfer.csv"
FIGURE_NAME = "diffusion_transfer.png"
SAMPLES_NAME = "diffusion_samples.png"
SAMPLES_DIR = "diffusion_samples"
TARGETS = diffusion.ATTENTION_TARGETS

STEPS = 150
BATCH_SIZE = 32
EVAL_TIMESTEPS = 8
EVAL_DRAWS = 1
SAMPLE_COUNT = 8
SAMPLE_STEPS = 25
SAMPLE_SEED = 0
TOLERANCE = 0.005  # "reaches a loss": at most 0.5 % above it
PAPER_FACTOR = 75_776 / 8_160  # LoRA r=8's parameters / LoRTA's at the same loss, from the paper's figure files
BASELINE = "pretrained, no adapter"


@dataclass(frozen=True)
class Spec:
    """The sizes of one study: the full one or `--quick`."""

    steps: int
    batch_size: int
    eval_images: int
    eval_timesteps: int
    eval_draws: int
    sample_count: int
    sample_steps: int


FULL = Spec(STEPS, BATCH_SIZE, diffusion.TRANSFER_EVAL, EVAL_TIMESTEPS, EVAL_DRAWS, SAMPLE_COUNT, SAMPLE_STEPS)
QUICK = Spec(3, 4, 8, 2, 1, 4, 2)


# ---------------------------------------------------------------------------------------------------- the grid
def study_grid() -> list[Point]:
    """Families x budgets. The paper's settings mapped to this UNet (28 targets of 64 x 64, D = 114,688, LoRA r=1 =
    3,584): its 8,160-parameter LoRTA (M=3, r=5, one group per weight of its 12) becomes M=3 with one group per
    attention block (G=7, r=8: 7,952) or per weight (G=28, r=5: 10,220); its 31-parameter LoRTA (M=5, r=1,
    rho=0.01) becomes 26 here. `plan` prints every count."""
    points: list[Point] = []

    def add(family: str, method: str, budget: str, config: SuperLoRAConfig, sweep: bool = False) -> None:
        points.append(Point(family, method, budget, config.replace(targets=TARGETS), sweep))

    for r in (1, 2, 4, 8):
        add("lora", "LoRA", f"r={r}", preset("lora", rank=r), sweep=r == 2)
    for r in (4, 8, 16):
        add("lorta", "LoRTA M=3 G=1", f"r={r}", preset("lorta", order=3, rank=r), sweep=r == 8)
    add("lorta", "LoRTA M=3 G=7 (per block)", "r=8", preset("lorta", order=3, groups=7, rank=8))
    add("lorta", "LoRTA M=3 G=28 (per weight)", "r=5", preset("lorta", order=3, groups=28, rank=5))
    add("lorta", "LoRTA M=4 G=1", "r=4", preset("lorta", order=4, rank=4))
    add("lorta", "LoRTA M=5 G=1", "r=2", preset("lorta", order=5, rank=2))

    def fastfood(name: str, ratio: float, **fields: Any) -> SuperLoRAConfig:
        return preset(name, projection="fastfood", ratio=ratio, **fields)

    add("fastfood", "LoRTA M=5 ρ=0.01", "r=1", fastfood("lorta", 0.01, order=5, rank=1))
    add("fastfood", "LoRTA M=3 ρ=0.1", "r=4", fastfood("lorta", 0.1, order=3, rank=4), sweep=True)
    add("fastfood", "LoRTA M=3 G=4 ρ=0.01", "r=4", fastfood("lorta", 0.01, order=3, groups=4, rank=4))
    add("fastfood", "SuperLoRA 2D G=4 ρ=0.5", "r=4", fastfood("superlora-2d", 0.5, groups=4, rank=4))

    add("lonkr", "LoNKr K=3", "r=1", preset("lonkr", splits=3, rank=1))
    for r in (1, 4):
        add("lonkr", "LoNKr K=2", f"r={r}", preset("lonkr", splits=2, rank=r), sweep=r == 4)

    for r in (1, 4, 16):
        add("superlora-2d", "SuperLoRA 2D G=1", f"r={r}", preset("superlora-2d", rank=r), sweep=r == 4)
    return points


def quick_grid() -> list[Point]:
    """Three points that exercise every part: two LoRA ranks (a curve to interpolate) and a projected LoRTA."""
    return [
        Point("lora", "LoRA", "r=1", preset("lora", rank=1, targets=TARGETS), sweep=True),
        Point("lora", "LoRA", "r=8", preset("lora", rank=8, targets=TARGETS)),
        Point("fastfood", "LoRTA M=3 ρ=0.1", "r=2",
              preset("lorta", order=3, rank=2, projection="fastfood", ratio=0.1, targets=TARGETS), sweep=True),
    ]


@dataclass(frozen=True)
class Counted:
    point: Point
    adapter: int
    base: int
    update_size: int
    lora_r1: int


def model_skeleton(model: Path):
    """A meta-device UNet of `model`'s architecture (its config.json; the bundled one when the folder is missing)."""
    import torch

    config_file = Path(model) / "config.json"
    unet_config = json.loads(config_file.read_text())["unet"] if config_file.is_file() else None
    with torch.device("meta"):
        return diffusion.build_unet(unet_config)


def count_grid(points: Sequence[Point], model: Path) -> list[Counted]:
    skeleton = model_skeleton(model)
    counted = []
    for point in points:
        c = count_parameters(skeleton, point.config, trainable=())
        counted.append(Counted(point, c.adapter, c.base_model, c.update_size, c.lora_r1))
    return counted


# ---------------------------------------------------------------------------------------------------- rows
COLUMNS = ("phase", "family", "method", "budget", "config_hash", "seed", "lr", "status", "eval_loss", "train_loss",
           "adapter_params", "base_params", "update_size", "lora_r1_params", "steps", "batch_size", "train_images",
           "eval_images", "eval_timesteps", "eval_draws", "seconds", "seconds_per_step", "threads", "model", "setup",
           "config", "finished")
INTS = ("seed", "adapter_params", "base_params", "update_size", "lora_r1_params", "steps", "batch_size",
        "train_images", "eval_images", "eval_timesteps", "eval_draws", "threads")
FLOATS = ("lr", "eval_loss", "train_loss", "seconds", "seconds_per_step")


def row_key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return (row["method"], row["config_hash"], int(row["seed"]), lr_text(float(row["lr"])))


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise SystemExit(f"{path} does not have the columns of this script's results; move it away")
        rows = [dict(row) for row in reader]
    for row in rows:
        for name in INTS:
            row[name] = int(row[name])
        for name in FLOATS:
            row[name] = float(row[name]) if row[name] not in ("", "nan") else math.nan
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add one row; the whole file is rewritten through a temporary file and a rename (never half-written)."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerow({name: row[name] for name in COLUMNS})
    atomic_write(path, lambda tmp: Path(tmp).write_text(old + buffer.getvalue()))


# ---------------------------------------------------------------------------------------------------- jobs
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


# ---------------------------------------------------------------------------------------------------- running
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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


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
    pareto.check_grid(points)
    counts = {c.point.key: c for c in count_grid(points, Path(setup.model))}
    out.mkdir(parents=True, exist_ok=True)
    started, finished = time.monotonic(), 0
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=pareto._worker_init, initargs=(threads,))
    try:
        while True:
            rows = load_results(out, setup)
            jobs = pending_jobs(rows, points, seeds, grid, max_extensions)
            if not jobs:
                break
            print(f"{len(rows)} runs on file, {len(jobs)} to run now", flush=True)

            def record(job: Job, row: dict[str, Any]) -> None:
                nonlocal finished
                append_row(out / CSV_NAME, row)
                finished += 1
                print(f"[{finished}] {row['phase']} {row['method']} {row['budget']} seed {row['seed']} lr {row['lr']}: "
                      f"loss {row['eval_loss']:.5f} ({row['status']}), {row['adapter_params']:,} params, "
                      f"{row['seconds']:.0f} s; {time.monotonic() - started:.0f} s so far", flush=True)

            def counted(job: Job) -> Counted | None:
                return counts[job.point.key] if job.point else None

            if pool is None:
                for job in jobs:
                    record(job, run_job(job, setup, counted(job), out, threads))
            else:
                from concurrent.futures import as_completed

                futures = {pool.submit(run_job, job, setup, counted(job), out): job for job in jobs}
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

    family: str
    method: str
    budget: str
    key: str
    params: int
    lr: float
    losses: tuple[float, ...]
    failed: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.losses) if self.losses else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.losses) if len(self.losses) > 1 else 0.0


def summarise(rows: Sequence[dict[str, Any]], grid: Sequence[float] = LR_GRID,
              max_extensions: int = MAX_EXTENSIONS) -> tuple[Summary | None, list[Summary]]:
    """(the pretrained model's point, every adapter point at its family's chosen lr; unfinished sweeps left out)."""
    baseline = [r for r in rows if r["phase"] == "baseline"]
    base = Summary("pretrained", BASELINE, "–", "none", 0, 0.0, (baseline[0]["eval_loss"],), 0) if baseline else None
    lrs: dict[str, float] = {}
    for family, key in {(r["family"], r["config_hash"]) for r in rows if r["phase"] == "sweep"}:
        lr = choose_lr(sweep_scores(rows, key), grid, max_extensions)[0]
        if lr is not None:
            lrs[family] = lr
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        lr = lrs.get(row["family"])
        if row["phase"] != "baseline" and lr is not None and lr_text(row["lr"]) == lr_text(lr):
            groups[(row["method"], row["config_hash"])].append(row)
    summaries = []
    for (method, key), group in groups.items():
        ok = tuple(r["eval_loss"] for r in group if r["status"] == "ok")
        first = group[0]
        summaries.append(Summary(first["family"], method, first["budget"], key, first["adapter_params"],
                                 float(first["lr"]), ok, len(group) - len(ok)))
    return base, sorted(summaries, key=lambda s: (s.method != "LoRA", s.method, s.params))


def lora_front(summaries: Sequence[Summary]) -> list[Summary]:
    """LoRA's points by parameters, keeping each one that beats every smaller rank (a curve falling with params)."""
    front, best = [], math.inf
    for s in sorted((s for s in summaries if s.method == "LoRA"), key=lambda s: s.params):
        if not math.isnan(s.mean) and s.mean < best:
            front.append(s)
            best = s.mean
    return front


def lora_params_at(loss: float, front: Sequence[Summary]) -> float | None:
    """The LoRA parameters that reach `loss`, interpolating LoRA's loss linearly in log(parameters) between its
    measured ranks; None outside the measured range (worse than its smallest rank, better than its largest)."""
    if not front or math.isnan(loss) or loss > front[0].mean or loss < front[-1].mean:
        return None
    if len(front) == 1 or loss == front[0].mean:
        return float(front[0].params)
    for low, high in zip(front, front[1:]):
        if high.mean <= loss <= low.mean:
            t = (low.mean - loss) / (low.mean - high.mean)
            return math.exp(math.log(low.params) + t * (math.log(high.params) - math.log(low.params)))
    return None


def reference(summaries: Sequence[Summary], rank: int = 8) -> Summary | None:
    found = [s for s in summaries if s.method == "LoRA" and s.budget == f"r={rank}"]
    return found[0] if found else None


def headline(summaries: Sequence[Summary]) -> dict[str, Any] | None:
    """The fewest-parameter non-LoRA point reaching LoRA r=8's mean loss (within TOLERANCE) and its factor."""
    ref = reference(summaries)
    if ref is None:
        return None
    reaching = [s for s in summaries if s.method != "LoRA" and not math.isnan(s.mean)
                and s.mean <= ref.mean * (1 + TOLERANCE)]
    best = min(reaching, key=lambda s: (s.params, s.mean)) if reaching else None
    return {"reference": ref, "point": best, "factor": ref.params / best.params if best else None,
            "reaching": len({s.method for s in reaching})}


def improvement_share(s: Summary, base: Summary | None, ref: Summary | None) -> float | None:
    """How much of LoRA r=8's loss reduction (from the pretrained model) a point achieves: 1 = as much."""
    if base is None or ref is None or base.mean == ref.mean:
        return None
    return (base.mean - s.mean) / (base.mean - ref.mean)


PANELS = (("LoRTA and its Fastfood projections", ("lorta", "fastfood")),
          ("SuperLoRA 2D and LoNKr", ("superlora-2d", "lonkr")))


def plot(base: Summary | None, summaries: Sequence[Summary], path: Path) -> Path:
    """Evaluation loss (mean ± std over seeds) against adapter parameters, log x; LoRA in both panels, the
    pretrained model and LoRA r=8 as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if any(s.family in p[1] for s in summaries)] or [("LoRA", ())]
    known = {f for _, families in PANELS for f in families}
    rest = tuple(sorted({s.family for s in summaries} - known - {"lora"}))
    if rest:
        panels.append(("other families", rest))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), dpi=100, sharey=True, squeeze=False)
    colours, markers = plt.get_cmap("tab10"), "sD^v<>pPX*h"
    lora = sorted((s for s in summaries if s.method == "LoRA"), key=lambda s: s.params)
    ref = reference(summaries)
    for ax, (title, families) in zip(axes.flat, panels):
        if base is not None:
            ax.axhline(base.mean, color="#d62728", linestyle="--", linewidth=1)
            ax.annotate(BASELINE, (0.01, base.mean), xycoords=("axes fraction", "data"), va="bottom", fontsize=7,
                        color="#d62728")
        if ref is not None:
            ax.axhline(ref.mean, color="grey", linestyle=":", linewidth=1)
            ax.axhspan(ref.mean, ref.mean * (1 + TOLERANCE), color="grey", alpha=0.15)
            ax.annotate("LoRA r=8", (1.0, ref.mean), xycoords=("axes fraction", "data"), ha="right", va="top",
                        fontsize=7, color="grey")
        if lora:
            ax.errorbar([s.params for s in lora], [s.mean for s in lora], yerr=[s.std for s in lora], label="LoRA",
                        color="black", marker="o", markersize=5, linewidth=2, capsize=2, zorder=3)
        methods = sorted({s.method for s in summaries if s.family in families},
                         key=lambda m: min(s.params for s in summaries if s.method == m))
        for index, method in enumerate(methods):
            points = sorted((s for s in summaries if s.method == method), key=lambda s: s.params)
            ax.errorbar([s.params for s in points], [s.mean for s in points], yerr=[s.std for s in points],
                        label=method, color=colours(index % 10), marker=markers[index % len(markers)], markersize=5,
                        linewidth=1.2, capsize=2)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper right")
    fig.supxlabel("adapter parameters (log scale)", fontsize=10)
    fig.supylabel("held-out denoising loss (lower is better)", fontsize=10)
    fig.suptitle("Bold-stroke digits: denoising loss against adapter parameters")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def samples_figure(out: Path, base: Summary | None, summaries: Sequence[Summary], targets_strip,
                   path: Path) -> Path | None:
    """One labelled row per method and budget (seed 0 at the chosen lr), under the target style and the
    pretrained model's samples; every row is sampled from the same noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    rows = [("target style (evaluation images)", targets_strip)]
    for s in ([base] if base else []) + sorted(summaries, key=lambda s: (s.family != "lora", s.family, s.params)):
        strip = strip_path(out, s.key, s.lr)
        if strip.is_file():
            label = s.method if s is base else f"{s.method} {s.budget} ({s.params:,})"
            rows.append((label, np.asarray(Image.open(strip))))
    if len(rows) < 2:
        return None
    height, width = rows[0][1].shape
    fig, axes = plt.subplots(len(rows), 1, figsize=(width / 40 + 3.2, len(rows) * (height / 40 + 0.05)), dpi=100,
                             squeeze=False)
    for ax, (label, image) in zip(axes.flat, rows):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.42, right=0.99, top=0.99, bottom=0.01, hspace=0.08)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def _loss(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.5f}"


def markdown(rows: Sequence[dict[str, Any]], base: Summary | None, summaries: Sequence[Summary], figure: str,
             samples: str | None, note: str | None, grid: Sequence[float], max_extensions: int) -> str:
    """The generated part of the diffusion section: the plain statement, the figure, the tables."""
    first = next((r for r in rows if r["phase"] != "baseline"), rows[0])
    ref = reference(summaries)
    found = headline(summaries)
    front = lora_front(summaries)
    lines = ([note, ""] if note else []) + ["#### What reproduced and what did not", ""]
    if base is not None:
        lines.append(f"- The pretrained UNet without an adapter: loss {_loss(base.mean)} on the bold evaluation "
                     "digits.")
    if found is None:
        lines.append("- LoRA r=8 was not run, so the paper's comparison at its loss cannot be made yet.")
    else:
        lines.append(f"- LoRA r=8 ({ref.params:,} parameters): loss {_loss(ref.mean)} ± {ref.std:.5f}.")
        if found["point"] is None:
            lines.append(f"- **Not reproduced**: no other method reaches LoRA r=8's loss (within {100 * TOLERANCE:.1f} "
                         f"%), so there is no factor to set against the paper's {PAPER_FACTOR:.1f}×.")
        else:
            p, factor = found["point"], found["factor"]
            verdict = ("**Reproduced**" if factor >= PAPER_FACTOR else "**Partly reproduced**" if factor > 1
                       else "**Not reproduced**")
            lines.append(f"- {verdict}: the fewest parameters reaching LoRA r=8's loss (within "
                         f"{100 * TOLERANCE:.1f} %) are {p.params:,} ({p.method} {p.budget}, loss {_loss(p.mean)} "
                         f"± {p.std:.5f}), "
                         f"{factor:.1f}× fewer than LoRA r=8; the paper reports about {PAPER_FACTOR:.1f}× "
                         f"(8,160 against 75,776). {found['reaching']} method(s) besides LoRA reach that loss.")
    few = [s for s in summaries if s.params <= 100 and not math.isnan(s.mean)]
    if few:
        best = min(few, key=lambda s: s.mean)
        share = improvement_share(best, base, ref)
        text = f", {100 * share:.0f} % of LoRA r=8's loss reduction" if share is not None else ""
        lines.append(f"- At most 100 parameters (the paper's 31-parameter regime): best loss {_loss(best.mean)} "
                     f"({best.method} {best.budget}, {best.params:,} parameters{text}).")
    lines += ["", f"![denoising loss against adapter parameters]({figure})", ""]
    if samples:
        lines += [f"![samples of every method, same noise]({samples})", ""]
    lines += [f"{first['train_images']} training / {first['eval_images']} evaluation images; {first['steps']} steps of "
              f"batch {first['batch_size']}; loss over {first['eval_timesteps']} timesteps × {first['eval_draws']} "
              f"noise draw(s); {len(rows)} runs, {sum(r['seconds'] for r in rows) / 60:.0f} min.", ""]
    lines += ["Equal-loss factor: LoRA's parameters at the same loss (its curve interpolated in log parameters "
              "between measured ranks) / the method's. Share: the fraction of LoRA r=8's loss reduction from the "
              "pretrained model.", "",
              "| method | budget | adapter params | lr | loss (mean ± std, n) | share of LoRA r=8's gain | "
              "equal-loss factor vs LoRA |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        share = improvement_share(s, base, ref)
        equal = lora_params_at(s.mean, front)
        if equal is not None:
            factor = f"{equal / s.params:.1f}×"
        elif front and not math.isnan(s.mean) and s.mean < front[-1].mean:
            factor = f"> {front[-1].params / s.params:.1f}× (below LoRA's lowest loss)"
        else:
            factor = "– (above LoRA r=1's loss)" if front else "–"
        lines.append(f"| {s.method} | {s.budget} | {s.params:,} | {lr_text(s.lr)} | {_loss(s.mean)} ± {s.std:.5f} "
                     f"(n={len(s.losses)}{f', {s.failed} diverged' if s.failed else ''}) | "
                     f"{'–' if share is None else f'{100 * share:.0f} %'} | {factor} |")
    lines += ["", "Learning rate per family (seed 0 at the sweep point; evaluation loss):", "",
              "| family | sweep point | lr: loss | chosen |", "|---|---|---|---|"]
    sweeps = {(r["family"], r["method"], r["budget"], r["config_hash"]) for r in rows if r["phase"] == "sweep"}
    for family, method, budget, key in sorted(sweeps):
        scores = sweep_scores(rows, key)
        chosen = choose_lr(scores, grid, max_extensions)[0]
        tried = ", ".join(f"{lr}: {_loss(scores[lr][1])}" for lr in sorted(scores, key=float))
        lines.append(f"| {family} | {method} {budget} | {tried} | "
                     f"{lr_text(chosen) if chosen is not None else 'sweep unfinished'} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- diffusion-results:begin -->", "<!-- diffusion-results:end -->"


def replace_between_markers(text: str, body: str) -> str:
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"the docs page needs the markers {BEGIN} and {END} (in that order)")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body.strip()}\n{END}{tail}"


def completeness_note(summaries: Sequence[Summary], points: Sequence[Point], seeds: Sequence[int]) -> str | None:
    """None when every point has all seeds at its family's chosen lr; otherwise a warning saying how many do."""
    have = {s.key: len(s.losses) + s.failed for s in summaries}
    full = sum(have.get(p.key, 0) >= len(seeds) for p in points)
    if full == len(points):
        return None
    return (f"**Partial results: {full} of {len(points)} points have all {len(seeds)} seeds.** The study had not "
            "finished when this was written (`python benchmarks/diffusion_transfer.py run` resumes it); every number "
            "here can still change.")


def analyse(out: Path, docs: Path, points: Sequence[Point], seeds: Sequence[int], spec: Spec,
            grid: Sequence[float] = LR_GRID, max_extensions: int = MAX_EXTENSIONS) -> dict[str, Any]:
    """Read `out/diffusion_transfer.csv`; write the figure and the sample grid beside it and the section into `docs`
    between the diffusion markers (a page with only the markers is created if `docs` does not exist)."""
    rows = read_rows(Path(out) / CSV_NAME)
    if not rows:
        raise SystemExit(f"no {CSV_NAME} in {out}; run the study first (python benchmarks/diffusion_transfer.py run)")
    if len({r["setup"] for r in rows}) > 1:
        raise SystemExit(f"{Path(out) / CSV_NAME} mixes runs of different setups; keep one setup per file")
    base, summaries = summarise(rows, grid, max_extensions)
    docs = Path(docs)
    figure = plot(base, summaries, Path(out) / FIGURE_NAME)
    _, evaluation = task_data(spec.eval_images)
    targets = diffusion.image_grid(evaluation[:spec.sample_count], columns=spec.sample_count)
    samples = samples_figure(Path(out), base, summaries, targets, Path(out) / SAMPLES_NAME)

    def link(path: Path | None) -> str | None:
        return os.path.relpath(path, docs.resolve().parent) if path else None

    note = completeness_note(summaries, points, seeds)
    body = markdown(rows, base, summaries, link(figure), link(samples), note, grid, max_extensions)
    text = docs.read_text() if docs.is_file() else f"# Diffusion transfer (generated)\n\n{BEGIN}\n{END}\n"
    atomic_write(docs, lambda tmp: Path(tmp).write_text(replace_between_markers(text, body)))
    return {"figure": figure, "samples": samples, "docs": docs, "base": base, "summaries": summaries,
            "headline": headline(summaries), "partial": note is not None}


# ---------------------------------------------------------------------------------------------------- plan
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


def plan_markdown(points: Sequence[Point], model: Path, seeds: Sequence[int], spec: Spec, workers: int,
                  timing: tuple[float, float] | None) -> str:
    counted = count_grid(points, model)
    first = counted[0]
    lines = [f"Model `{model}`: targets {', '.join(TARGETS)} of every attention block, D = {first.update_size:,} "
             f"update entries, LoRA r=1 = {first.lora_r1:,} adapter parameters; base model {first.base:,} "
             "parameters.", "",
             "| family | method | budget | adapter params | sweep point |", "|---|---|---|---|---|"]
    for c in counted:
        p = c.point
        lines.append(f"| {p.family} | {p.method} | {p.budget} | {c.adapter:,} | {'yes' if p.sweep else ''} |")
    families = len({p.family for p in points})
    sweep_runs = families * (len(LR_GRID) - 1)
    runs = len(points) * len(seeds) + sweep_runs
    seed0 = len(points) + sweep_runs + 1
    lines += ["", f"{len(points)} points × {len(seeds)} seeds + {sweep_runs} extra sweep runs + the pretrained "
              f"model = {runs + 1} runs of {spec.steps} steps (each sweep extension past the lr range adds one)."]
    if timing:
        per_step, per_image = timing
        train = runs * spec.steps * per_step
        evaluate = (runs + 1) * spec.eval_images * spec.eval_timesteps * spec.eval_draws * per_image
        sampling = seed0 * spec.sample_count * spec.sample_steps * per_image
        hours = (train + evaluate + sampling) / 3600 / workers
        lines.append(f"Measured here: {per_step:.2f} s per training step (batch {spec.batch_size}, LoRA r=8), "
                     f"{1000 * per_image:.1f} ms per image and timestep evaluated. Training {train / 3600:.1f} h, "
                     f"evaluation {evaluate / 3600:.1f} h, samples {sampling / 3600:.2f} h: about {hours:.1f} h on "
                     f"{workers} worker(s) (if each has a core of its own).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=("run", "plan", "analyse"))
    p.add_argument("--quick", action="store_true", help="3 points, seed 0, 3 steps, 8 evaluation images, into a "
                                                        "temporary folder; then the analysis (a smoke test)")
    p.add_argument("--model", type=Path, default=diffusion.DIFFUSION_ASSET, help="folder of the base UNet "
                   "(model.safetensors + config.json)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results; --quick: a "
                                                         "new temporary folder)")
    p.add_argument("--docs", type=Path, default=None, help="page the analysis writes into (default "
                                                          "docs/benchmarks.md; --quick: <out>/benchmarks.md)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {STEPS})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch (default {BATCH_SIZE})")
    p.add_argument("--workers", type=int, default=1, help="training processes (each with --threads threads)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: 2 / workers, >= 1)")
    p.add_argument("--device", default="cpu", help="torch device of the runs, e.g. cuda (rows of one results file "
                                                 "share a device)")
    p.add_argument("--no-measure", action="store_true", help="plan: skip timing a step (no estimate)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    points = quick_grid() if args.quick else study_grid()
    spec = QUICK if args.quick else FULL
    spec = dataclasses.replace(spec, steps=args.steps or spec.steps, batch_size=args.batch_size or spec.batch_size)
    seeds = args.seeds[:1] if args.quick else args.seeds
    grid, extensions = ((4e-3, 1.6e-2), 0) if args.quick else (LR_GRID, MAX_EXTENSIONS)
    # Tiny --quick models run fastest on one thread; the study gives each worker its share of the 2 cores.
    threads = args.threads or (1 if args.quick else max(1, 2 // args.workers))
    if args.command == "plan":
        timing = None if args.no_measure else measure(args.model, spec, threads, args.device)
        print(plan_markdown(points, args.model, seeds, spec, args.workers, timing))
        return 0
    if args.quick:
        out = args.out or Path(tempfile.mkdtemp(prefix="diffusion-quick-"))
        if out.resolve() == RESULTS.resolve():
            raise SystemExit("--quick never writes into benchmarks/results; give another --out")
    else:
        out = args.out or RESULTS
    docs = args.docs or (out / "benchmarks.md" if args.quick else DOCS)
    if args.command == "run":
        setup = Setup(str(args.model), weights_digest(args.model), spec, args.device)
        run_study(points, setup, out, seeds, args.workers, threads, grid, extensions)
        if not args.quick:
            return 0
    written = analyse(out, docs, points, seeds, spec, grid, extensions)
    print("wrote", ", ".join(str(p) for p in (written["figure"], written["samples"], written["docs"]) if p))
    if written["partial"]:
        print("partial results: runs are missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
