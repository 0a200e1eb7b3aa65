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
Methods and budgets: `study_grid()` (benchmarks/study/diffusion_transfer/grid.py); `plan` prints it with exact
counts and a measured time estimate.

Learning-rate rule: the ViT study's (benchmarks/study/sweep.py), with the evaluation loss in place of accuracy:
one lr per family, chosen on seed 0 at the family's sweep point from (1e-3, 4e-3, 1.6e-2), extended by 4x past
an edge at most twice, lowest loss wins; every point of the family then runs on seeds 0, 1, 2 at that lr (the
seed drives the batches, timesteps and noise of training and the adapter's own seed). As in the ViT study the
choice is made on the evaluation images themselves: a small optimistic bias, the same for every family.

Code: this file is the command line; the study lives in benchmarks/study/diffusion_transfer/ (grid, runner,
analysis, markdown), on the parts it shares with the ViT study in benchmarks/study/.

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
import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from superlora import diffusion  # noqa: E402

# The study's code lives in benchmarks/study/; its API is importable from this script too (tests load it by path).
from benchmarks.study.diffusion_transfer.analysis import (PAPER_FACTOR, TOLERANCE, Summary,  # noqa: E402,F401
                                                          headline, loss_limits, improvement_share, lora_front, lora_params_at,
                                                          plot, reference, samples_figure, summarise)
from benchmarks.study.diffusion_transfer.grid import (BASELINE, BATCH_SIZE, FULL, QUICK, STEPS,  # noqa: E402,F401
                                                      TARGETS, Counted, Spec, count_grid, quick_grid, study_grid)
from benchmarks.study.diffusion_transfer.markdown import (BEGIN, END, FIGURE_NAME, SAMPLES_NAME,  # noqa: E402,F401
                                                          analyse, completeness_note, markdown, plan_markdown,
                                                          best_factor_lines, replace_between_markers, unstable_lines)
from benchmarks.study.diffusion_transfer.runner import (COLUMNS, CSV_NAME, SAMPLES_DIR, Job,  # noqa: E402,F401
                                                        Setup, append_row, load_results, measure, pending_jobs,
                                                        read_rows, run_job, run_study, weights_digest)
from benchmarks.study.sweep import (LR_GRID, MAX_EXTENSIONS, SEEDS, Point, check_grid,  # noqa: E402,F401
                                    choose_lr, config_hash, lr_text)

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


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
