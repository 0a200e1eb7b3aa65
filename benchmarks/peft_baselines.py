"""The few-parameter methods of PEFT beside SuperLoRA, at matched budgets, under the Pareto study's protocol.

Issue 12, item 6: VeRA, FourierFT, VB-LoRA, Uni-LoRA, TinyLoRA and RandLoRA (PEFT 0.21) run through PEFT itself,
on the study's model, data, steps, batch, head learning rate and seeds, at adapter budgets matched to the
SuperLoRA points, beside those SuperLoRA points on the same targets.

Targets. PEFT adapts whole `nn.Linear` modules, so it cannot cut q and v out of timm's fused `qkv` Linear. Every
row here therefore adapts the WHOLE `qkv` Linear of every block (576 x 192 on the default model), and the
SuperLoRA comparison rows use the same targets: `targets=("qkv",)` names the whole fused Linear in
`superlora.targets` (a plain name matches modules whose name ends in `.qkv`), while `"q"`/`"k"`/`"v"` name its
row blocks. The Pareto study's own rows (q and v) are not comparable with these.

Budgets. For each method, `match(method, budget, geometry)` picks the method's size knob(s) so that the exact
number of trainable adapter parameters (the classifier head excluded) is as large as possible without exceeding
the budget; `plan` checks every choice against PEFT's own `get_nb_trainable_parameters` on the real model. Fixed
random matrices (VeRA's A/B, RandLoRA's bases, TinyLoRA's projections and SVD factors, Uni-LoRA's index maps) are
not trainable and are not counted; `plan` reports the size of the file PEFT saves as well. The head is trained in
full for every method (`modules_to_save=["head"]`), as in the study.

Training. `superlora.train.train` only takes SuperLoRA adapters (its `prepare_model` wraps the model itself), so
PEFT models go through `train_peft`, a loop built from the same parts: `TrainOptions` (its weight decay, warm-up,
clipping and label smoothing), `superlora.train.sampling` (the same images, order and augmentation per step and
seed), `WarmupCosine`, AdamW with the same parameter groups, and `superlora.train.metrics.evaluate` once after the
last step. What differs from `train()` is listed in `PROTOCOL_DIFFERENCES`. SuperLoRA whole-qkv rows go through
`train()` itself.

Learning rate, per point (PEFT configs and SuperLoRA points alike): on seed 0, the lrs of DEFAULT_LRS = (1e-3,
4e-3, 1.6e-2, 6.4e-2), extended by 4x past an edge at most twice (`benchmarks.study.sweep.choose_lr`: the best
validation accuracy wins, ties to the lower loss, then the smaller lr); then seeds 1 and 2 at the chosen lr. The
chosen lr's seed-0 run is one of the sweep's, so each point carries one run chosen on the validation set, the same
small optimistic bias on both sides. `run --lrs ...` instead runs exactly those lrs on every seed given.

Results: `<out>/peft_baselines_<task>.csv`, the columns of `pareto_<task>.csv` plus `targets`, `target_budget`,
`fixed_values` and `val_correct` (which validation images the run got right, as hex digits: bit i is image i), one
row per run, rewritten atomically; a restart skips every (task, method, config, seed, lr) already on file, and
the sweep goes on where it stopped. `analyse` writes `peft_baselines_<task>.png` and the generated block of
docs/benchmarks.md: the best method at 30, 100, 300, 1,000 and 3,000 parameters with 95 % bootstrap intervals
over seeds and validation images, and every point.

Code: this file is the command line; the study lives in benchmarks/study/peft/ (matching, plan, training, runner,
analysis, markdown), on the parts it shares with the Pareto study in benchmarks/study/.

    python benchmarks/peft_baselines.py plan                  # matched configs and exact counts (no training)
    python benchmarks/peft_baselines.py plan --study-budgets --markdown benchmarks/results/peft_baselines_plan.md
    python benchmarks/peft_baselines.py run --study-budgets --superlora --workers 2   # the study (resumable)
    python benchmarks/peft_baselines.py analyse --study-budgets --superlora           # figures + docs tables
    python benchmarks/peft_baselines.py --quick               # 2 methods x 1 budget x 3 steps, tiny data, analysed
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The study's code lives in benchmarks/study/peft/; its API is importable from this script too (tests load it by
# path). `pareto`: the Pareto study's command line, whose data split, setup fingerprint and defaults these rows
# share.
from benchmarks import pareto  # noqa: E402
from benchmarks.study.peft.analysis import (BOOTSTRAP_SEED, Comparison, Headline, PointResult,  # noqa: E402,F401
                                            bootstrap_interval, chosen_lr, headline, plot_task, seed_interval,
                                            summarise, window)
from benchmarks.study.peft.markdown import (BEGIN, END, analyse, completeness_note,  # noqa: E402,F401
                                            headline_markdown, points_markdown)
from benchmarks.study.peft.matching import (FOURIERFT_SCALING, HEAD, METHOD_NAMES, METHODS,  # noqa: E402,F401
                                            STANDARD_BUDGETS, STUDY_LIMIT, TARGET, Layer, Match, SuperLoRAPoint,
                                            _candidates, count, fits, match, peft_config, peft_counts,
                                            smallest_count, split_trainable, superlora_points, target_layers,
                                            tinylora_groups, wrap)
from benchmarks.study.peft.plan import Planned, check_match, plan, plan_markdown  # noqa: E402,F401
from benchmarks.study.peft.runner import (COLUMNS, EXTRA_COLUMNS, TABLE, Job, StudyPoint,  # noqa: E402,F401
                                          load_results, pending_jobs, results_path, row_key, run_job, run_study,
                                          study_points)
from benchmarks.study.peft.training import (DEFAULT_LRS, PROTOCOL_DIFFERENCES, Outcome,  # noqa: E402,F401
                                            build_base, decode_correct, encode_correct, train_peft,
                                            train_superlora)
from benchmarks.study.sweep import MAX_EXTENSIONS, SEEDS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
DEFAULT_MODEL = pareto.DEFAULT_MODEL
QUICK_METHODS = ("fourierft", "unilora")
QUICK_BUDGET = 30


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=("run", "plan", "analyse"))
    p.add_argument("--quick", action="store_true",
                   help=f"{' and '.join(QUICK_METHODS)} at budget {QUICK_BUDGET}, 1 seed, 1 lr, 3 steps of batch 8 "
                        "on a few images per class of the inspection task, into a temporary folder, then the "
                        "analysis into <out>/benchmarks.md (a smoke test)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model: a name or a folder written by save_model")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default {RESULTS.relative_to(ROOT)}; --quick: a new temporary folder)")
    p.add_argument("--docs", type=Path, default=None, help=f"page the analysis writes into (default "
                                                          f"{DOCS.relative_to(ROOT)}; --quick: <out>/benchmarks.md)")
    p.add_argument("--tasks", nargs="+", choices=list(pareto.TASKS), default=list(pareto.TASKS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--budgets", nargs="+", type=int, default=list(STANDARD_BUDGETS))
    p.add_argument("--study-budgets", action="store_true",
                   help=f"add the whole-qkv counts of the Pareto study's points below {STUDY_LIMIT:,} parameters")
    p.add_argument("--superlora", action="store_true",
                   help="run / analyse: also the study's SuperLoRA points below the limit on whole-qkv targets "
                        "(--quick: the smallest one)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--lrs", nargs="+", type=float, default=None,
                   help="run exactly these lrs on every seed instead of the per-point sweep over "
                        + ", ".join(f"{lr:g}" for lr in DEFAULT_LRS))
    p.add_argument("--steps", type=int, default=pareto.STEPS)
    p.add_argument("--batch-size", type=int, default=pareto.BATCH_SIZE)
    p.add_argument("--head-lr", type=float, default=pareto.HEAD_LR)
    p.add_argument("--workers", type=int, default=1, help="training processes (each with --threads threads)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--markdown", type=Path, default=None, help="plan: also write the table to this file")
    p.add_argument("--no-file-sizes", action="store_true", help="plan: skip saving each adapter to measure its file")
    return p.parse_args(argv)


def run_plan(args: argparse.Namespace, budgets: Sequence[int], sl_points, skipped) -> int:
    layers, planned = plan(args.model, budgets, args.methods, measure_files=not args.no_file_sizes)
    head = planned[0].head if planned else 0
    text = plan_markdown(args.model, layers, planned, head, sl_points, skipped)
    print(text)
    if args.markdown:
        from superlora.files import atomic_write

        atomic_write(args.markdown, lambda tmp: Path(tmp).write_text(text))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if any(b < 1 for b in args.budgets):
        raise SystemExit("--budgets must be positive numbers of parameters")
    if args.lrs is not None and any(not lr > 0 for lr in args.lrs):
        raise SystemExit("--lrs must be positive learning rates, e.g. --lrs 0.004 0.016")
    sl_points, skipped = superlora_points(args.model) if (args.study_budgets or args.superlora) else ([], [])
    budgets = sorted(set(args.budgets) | ({p.count for p in sl_points} if args.study_budgets else set()))
    if args.command == "plan":
        return run_plan(args, budgets, sl_points, skipped)

    if args.quick:
        out = args.out or Path(tempfile.mkdtemp(prefix="peft-baselines-quick-"))
        if out.resolve() == RESULTS.resolve():
            raise SystemExit("--quick never writes into benchmarks/results; give another --out")
        task_specs = {"inspection": pareto.QUICK_TASKS["inspection"]}
        methods, budgets, seeds, steps, batch = QUICK_METHODS, [QUICK_BUDGET], args.seeds[:1], 3, 8
        grid, extensions = (args.lrs or DEFAULT_LRS)[:1], 0  # a sweep of one lr: the protocol at its smallest
        sl_points = sorted(sl_points, key=lambda p: p.count)[:1]  # --superlora: the smallest SuperLoRA point
    else:
        out = args.out or RESULTS
        task_specs = {name: pareto.TASKS[name] for name in args.tasks}
        methods, seeds, steps, batch = args.methods, args.seeds, args.steps, args.batch_size
        grid, extensions = DEFAULT_LRS, MAX_EXTENSIONS
        if not args.superlora:
            sl_points = []
    from superlora.base_models import create_meta_model

    layers = target_layers(create_meta_model(args.model, num_classes=2))
    points = study_points(layers, methods, budgets, sl_points)
    docs = args.docs or (out / "benchmarks.md" if args.quick else DOCS)
    if args.command == "analyse":
        return run_analyse(out, docs, list(task_specs), grid, extensions, points, seeds)

    if pareto.weights_digest(args.model) == "none" and (args.model == DEFAULT_MODEL or Path(args.model).exists()):
        raise SystemExit(f"no weights for {args.model}; give another --model, e.g. a save_model folder")
    setup = pareto.Setup(args.model, pareto.weights_digest(args.model), steps, batch, args.head_lr,
                         tuple(task_specs.items()))
    unreachable = [f"{METHOD_NAMES[m]} {b}" for m in methods for b in budgets if not fits(match(m, b, layers))]
    if unreachable:
        print("below the method's smallest config (skipped):", ", ".join(unreachable), flush=True)
    fixed = None if args.quick else args.lrs
    ran = run_study(points, setup, out, layers, seeds, args.workers, args.threads, grid, extensions, fixed)
    print(f"done: {ran} runs; results in {out}", flush=True)
    if args.quick:
        run_analyse(out, docs, list(task_specs), grid, extensions, points, seeds)
    return 0


def run_analyse(out: Path, docs: Path, tasks: Sequence[str], grid: Sequence[float], extensions: int,
                points: Sequence[StudyPoint], seeds: Sequence[int]) -> int:
    written = analyse(out, docs, out, tasks, grid, extensions, [p.key for p in points], seeds)
    print("wrote", ", ".join(str(p) for p in [*written["figures"], written["docs"]]))
    if written["partial"]:
        print("partial results (runs missing) for:", ", ".join(written["partial"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
