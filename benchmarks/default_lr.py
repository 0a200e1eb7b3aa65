"""The evidence behind `superlora.defaults`: which adapter lr and head lr to start every method from.

A user who presses Start in the studio (or runs `superlora train` without --lr) trains with DEFAULT_LR and
DEFAULT_HEAD_LR whatever method they picked. This script measures, for every method at the studio's default
settings (rank 4, q and v, each preset's own groups/fold/order/...; head-only without an adapter), the validation
accuracy the studio's default run reaches (DEFAULT_STEPS steps, batch DEFAULT_BATCH_SIZE, the studio's fixed
80/20 split) over a grid of adapter lr x head lr, on both bundled samples. The pair to ship is the one whose worst
shortfall against each (task, method)'s own best pair is smallest (minimax regret), so that no method is left
far behind by the shared default.

Stages (resumable: one CSV row per run in `<out>/default_lr.csv`, keyed by task, method, lr, head lr, seed):

    python benchmarks/default_lr.py run                  # the grid on seed 0 (LRS x HEAD_LRS; head-only: HEAD_LRS)
    python benchmarks/default_lr.py run --seeds 0 1 2 --lrs 0.03 --head-lrs 0.01   # seeds at one pair
    python benchmarks/default_lr.py pick --tasks inspection --seeds 0 1 2   # the studio's "pick the lr" box
    python benchmarks/default_lr.py analyse              # the table into benchmarks/results/default_lr.md

`pick` trains each method as the studio does with *Pick the adapter learning rate for me* ticked
(`superlora.train.train_at_picked_lr`: three short runs, then the run at the lr they picked), one row per (task,
method, seed) in `<out>/default_lr_pick.csv`; `analyse` sets it beside the shipped lr on the same seeds.

Validation accuracy is the run's best evaluation (what the studio shows as the run's result) and, beside it, the
accuracy after the last step. Times are this machine's wall-clock seconds per run (one thread).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from study.pool import run_until_done  # noqa: E402
from study.store import ResultsTable  # noqa: E402
from superlora.config import HEAD_ONLY, METHODS, RANK_SCALINGS  # noqa: E402
from superlora.defaults import DEFAULT_BATCH_SIZE, DEFAULT_HEAD_LR, DEFAULT_LR, DEFAULT_STEPS  # noqa: E402
from superlora.files import atomic_write  # noqa: E402

TASKS = ("inspection", "digits")
LRS = (3e-3, 1e-2, 3e-2, 1e-1)
HEAD_LRS = (3e-3, 1e-2, 3e-2)
VAL_FRACTION, SPLIT_SEED = 0.2, 0  # the studio's split (superlora/studio/data_tab.py)
RESULTS = ROOT / "benchmarks" / "results"
TABLE = ResultsTable(("task", "method", "lr", "head_lr", "seed", "steps", "adapter_params", "best_accuracy",
                      "final_accuracy", "final_val_loss", "seconds"),
                     ints=("seed", "steps", "adapter_params"),
                     floats=("lr", "head_lr", "best_accuracy", "final_accuracy", "final_val_loss", "seconds"))


PICK_TABLE = ResultsTable(("task", "method", "seed", "steps", "adapter_params", "picked_lr", "probe_losses",
                           "best_accuracy", "final_accuracy", "seconds"),
                          ints=("seed", "steps", "adapter_params"),
                          floats=("picked_lr", "best_accuracy", "final_accuracy", "seconds"))


def lr_text(lr: float) -> str:
    return f"{float(lr):.4g}"


def method_config(method: str, seed: int = 0, rank_scaling: str = "none"):
    """The config the studio trains for `method` when only the method control is changed from its defaults, with
    `rank_scaling` pinned (adapter methods), so that rows keep their meaning whatever the library's default."""
    from superlora.controls import ADAPTER_CONTROLS, VIT_TARGETS, config_from_values, preset_values

    values = {control.name: control.default for control in ADAPTER_CONTROLS}
    values["preset_name"] = method
    if method != HEAD_ONLY:
        values.update(preset_values(method))
    values["seed"] = seed
    config = config_from_values(values, VIT_TARGETS)
    return config if method == HEAD_ONLY else config.replace(rank_scaling=rank_scaling)


def adapter_lr_key(method: str, lr: float | str) -> str:
    """The adapter lr as a key: "-" for head-only, which has none (its rows record whatever lr was passed)."""
    return "-" if method == HEAD_ONLY else lr_text(lr)


def run_key(task: str, method: str, lr: float, head_lr: float, seed: int) -> tuple:
    return (task, method, adapter_lr_key(method, lr), lr_text(head_lr), int(seed))


_DATA: dict[str, Any] = {}


def task_sets(task: str):
    from superlora.data import sample_dataset, train_val_split

    if task not in _DATA:
        _DATA[task] = train_val_split(sample_dataset(task), val_fraction=VAL_FRACTION, seed=SPLIT_SEED)
    return _DATA[task]


def run_one(key: tuple, steps: int, rank_scaling: str = "none", threads: int | None = None) -> dict[str, Any]:
    """Train one (task, method, lr, head lr, seed) as the studio does and return its row."""
    import torch

    from superlora.base_models import DEFAULT_MODEL
    from superlora.train import NonFiniteLossError, TrainOptions, train

    if threads:
        torch.set_num_threads(threads)
    task, method, lr, head_lr, seed = key
    lr = DEFAULT_LR if lr == "-" else float(lr)  # head-only: any positive lr (TrainOptions wants one), unused
    train_set, val_set = task_sets(task)
    config = method_config(method, seed, rank_scaling)
    options = TrainOptions(steps=steps, epochs=None, lr=float(lr), head_lr=float(head_lr),
                           batch_size=DEFAULT_BATCH_SIZE, seed=seed, device="cpu")
    started = time.monotonic()
    row = dict(task=task, method=method, lr=lr, head_lr=head_lr, seed=seed, steps=steps)
    try:
        result = train(DEFAULT_MODEL, train_set, val_set, config, options)
        last = result.history[-1]
        row.update(adapter_params=result.model.num_trainable_parameters(include_trainable_modules=False),
                   best_accuracy=result.best_accuracy,
                   final_accuracy=last["val_accuracy"], final_val_loss=last["val_loss"])
    except NonFiniteLossError:
        row.update(adapter_params=-1, best_accuracy=math.nan, final_accuracy=math.nan, final_val_loss=math.nan)
    row["seconds"] = round(time.monotonic() - started, 1)
    return row


def pick_one(key: tuple, steps: int, rank_scaling: str = "none", threads: int | None = None) -> dict[str, Any]:
    """Train one (task, method, seed) as the studio does with the lr pick ticked and return its row."""
    import torch

    from superlora.base_models import DEFAULT_MODEL
    from superlora.train import TrainOptions, train_at_picked_lr

    if threads:
        torch.set_num_threads(threads)
    task, method, seed = key
    train_set, val_set = task_sets(task)
    options = TrainOptions(steps=steps, epochs=None, lr=DEFAULT_LR, head_lr=DEFAULT_HEAD_LR,
                           batch_size=DEFAULT_BATCH_SIZE, seed=seed, device="cpu")
    started = time.monotonic()
    result, pick = train_at_picked_lr(DEFAULT_MODEL, train_set, val_set, method_config(method, seed, rank_scaling),
                                      options)
    last = result.history[-1]
    losses = " ".join(f"{p.lr:g}:{p.loss:.4f}" for p in pick.probes)
    return dict(task=task, method=method, seed=seed, steps=steps, picked_lr=pick.lr, probe_losses=losses,
                adapter_params=result.model.num_trainable_parameters(include_trainable_modules=False),
                best_accuracy=result.best_accuracy, final_accuracy=last["val_accuracy"],
                seconds=round(time.monotonic() - started, 1))


def pick(args: argparse.Namespace) -> int:
    keys = [(task, method, seed) for seed in args.seeds for task in args.tasks for method in args.methods
            if method != HEAD_ONLY]  # head-only has no adapter lr to pick
    return run_missing(args, PICK_TABLE, args.out / "default_lr_pick.csv", keys, pick_one,
                       key_of=lambda r: (r["task"], r["method"], r["seed"]),
                       describe=lambda r: f"picked {r['picked_lr']:g} ({r['probe_losses']}), best "
                                          f"{r['best_accuracy']:.3f}")


def pick_markdown(rows: list[dict[str, Any]], picks: list[dict[str, Any]]) -> list[str]:
    """The lr pick beside the shipped lr: per (task, method), the seeds picked, the lrs picked and the mean best
    accuracy of both on those seeds (the shipped lr's rows where all of those seeds ran), and the time per run."""
    if not picks:
        return []
    shipped = {(r["task"], r["method"], r["seed"]): r for r in rows
               if lr_text(r["lr"]) == lr_text(DEFAULT_LR) and lr_text(r["head_lr"]) == lr_text(DEFAULT_HEAD_LR)}
    lines = ["", "With *Pick the adapter learning rate for me* ticked (`python benchmarks/default_lr.py pick`: three "
             "short runs of a quarter of the run at 0.015, 0.03 and 0.06, then the run at the lr with the lowest "
             "short-run validation loss), beside the shipped lr on the same seeds:", "",
             "| task | method | seeds | lrs picked | picked: best accuracy | shipped lr: best accuracy | "
             "difference, points | s per run (picked / shipped) |", "|---|---|---:|---|---:|---:|---:|---:|"]
    cells = sorted({(r["task"], r["method"]) for r in picks})
    for cell in cells:
        mine = sorted((r for r in picks if (r["task"], r["method"]) == cell), key=lambda r: r["seed"])
        seeds = [r["seed"] for r in mine]
        base = [shipped.get((*cell, seed)) for seed in seeds]
        picked = statistics.mean(r["best_accuracy"] for r in mine)
        lrs = ", ".join(f"{r['picked_lr']:g}" for r in mine)
        time_text = f"{statistics.median(r['seconds'] for r in mine):.0f}"
        if all(b is not None for b in base):
            at_default = statistics.mean(b["best_accuracy"] for b in base)
            time_text += f" / {statistics.median(b['seconds'] for b in base):.0f}"
            tail = f"{at_default:.1%} | {100 * (picked - at_default):+.1f} | {time_text} |"
        else:
            tail = f"not run on these seeds | – | {time_text} |"
        lines.append(f"| {cell[0]} | {cell[1]} | {', '.join(map(str, seeds))} | {lrs} | {picked:.1%} | {tail}")
    lines.append("")
    lines.append("Times are of different sessions when the shipped-lr rows are older (their machine may differ); "
                 "compare within a row only the accuracies.")
    return lines


def planned(methods: Sequence[str], tasks: Sequence[str], lrs: Sequence[float], head_lrs: Sequence[float],
            seeds: Sequence[int]) -> list[tuple]:
    keys = []
    for seed in seeds:
        for task in tasks:
            for method in methods:
                for lr in ([DEFAULT_LR] if method == HEAD_ONLY else lrs):  # head-only has no adapter lr
                    for head_lr in head_lrs:
                        keys.append(run_key(task, method, lr, head_lr, seed))
    return keys


def run(args: argparse.Namespace) -> int:
    keys = planned(args.methods, args.tasks, args.lrs, args.head_lrs, args.seeds)
    return run_missing(args, TABLE, args.out / "default_lr.csv", keys, run_one,
                       key_of=lambda r: run_key(r["task"], r["method"], r["lr"], r["head_lr"], r["seed"]),
                       describe=lambda r: f"best {r['best_accuracy']:.3f} final {r['final_accuracy']:.3f}")


def run_missing(args: argparse.Namespace, table: ResultsTable, path: Path, keys: list[tuple],
                work: Callable[..., dict[str, Any]], *, key_of: Callable[[dict[str, Any]], tuple],
                describe: Callable[[dict[str, Any]], str]) -> int:
    """Run `work(key, steps, rank_scaling)` for every key whose row (`key_of(row)`) is not yet in `table` at `path`,
    appending each row as it finishes (so a restart resumes) and printing `describe(row)`."""
    done = {key_of(r) for r in table.read(path)}
    started = time.monotonic()

    def pending():
        return len(done), [(key, args.steps, args.rank_scaling) for key in keys if key not in done]

    def record(key: tuple, row: dict[str, Any]) -> None:
        table.append(path, row)
        done.add(key)
        print(f"{' '.join(map(str, key))}: {describe(row)} ({row['seconds']:.0f} s; "
              f"{time.monotonic() - started:.0f} s so far)", flush=True)

    run_until_done(pending, work, record, args.workers, args.threads)
    return 0


def choose(rows: list[dict[str, Any]], seed: int = 0) -> tuple[tuple[str, str] | None, dict]:
    """The (lr, head_lr) pair with the smallest worst regret over (task, method) on `seed`, and every pair's
    regrets. Head-only rows answer for every adapter lr (it has none). Pairs missing a (task, method) are skipped."""
    accuracy: dict[tuple, float] = {}
    for r in rows:
        if r["seed"] == seed:
            score = r["best_accuracy"] if math.isfinite(r["best_accuracy"]) else 0.0
            accuracy[(r["task"], r["method"], adapter_lr_key(r["method"], r["lr"]), lr_text(r["head_lr"]))] = score
    cells = sorted({k[:2] for k in accuracy})
    pairs = sorted({k[2:] for k in accuracy if k[1] != HEAD_ONLY}, key=lambda p: (float(p[0]), float(p[1])))
    best = {cell: max(v for k, v in accuracy.items() if k[:2] == cell) for cell in cells}

    def score(cell: tuple, pair: tuple) -> float | None:
        return accuracy.get((*cell, adapter_lr_key(cell[1], pair[0]), pair[1]))

    regrets = {}
    for pair in pairs:
        values = [score(cell, pair) for cell in cells]
        if all(v is not None for v in values):
            regrets[pair] = {cell: best[cell] - v for cell, v in zip(cells, values)}
    if not regrets:
        return None, {}
    chosen = min(regrets, key=lambda p: (max(regrets[p].values()), statistics.mean(regrets[p].values())))
    return chosen, regrets


def markdown(rows: list[dict[str, Any]], picks: Sequence[dict[str, Any]] = ()) -> str:
    chosen, regrets = choose(rows)
    lines = ["# Default learning rates: the evidence", "",
             "Generated by `python benchmarks/default_lr.py analyse` from `benchmarks/results/default_lr.csv` "
             "(see the script's docstring for the setup). Accuracy: the run's best validation accuracy, as the "
             f"studio reports it, after {DEFAULT_STEPS} steps of batch {DEFAULT_BATCH_SIZE} on the studio's 80/20 "
             "split; seed 0 unless said.", ""]
    if chosen is None:
        return "\n".join(lines + ["No complete grid yet.", ""])
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        tried = sorted({float(r["lr"]) for r in mine if r["method"] != HEAD_ONLY})
        heads = sorted({float(r["head_lr"]) for r in mine})
        lines.append(f"- {task}: {len(mine)} runs; adapter lrs {', '.join(f'{x:g}' for x in tried)}; head lrs "
                     f"{', '.join(f'{x:g}' for x in heads)} (pairs are compared only where every method ran).")
    lines.append("")
    lines += [f"Shipped in `superlora/defaults.py`: lr {DEFAULT_LR:g}, head lr {DEFAULT_HEAD_LR:g}. "
              f"The grid's minimax-regret pair: lr {chosen[0]}, head lr {chosen[1]} (worst shortfall "
              f"{max(regrets[chosen].values()):.1%} against a (task, method)'s own best pair).", "",
              "| pair (lr, head lr) | worst shortfall | mean shortfall |", "|---|---:|---:|"]
    for pair in sorted(regrets, key=lambda p: max(regrets[p].values()))[:8]:
        lines.append(f"| {pair[0]}, {pair[1]} | {max(regrets[pair].values()):.1%} | "
                     f"{statistics.mean(regrets[pair].values()):.1%} |")
    lines += ["", "Per task and method, at the chosen pair and at its own best pair (seed 0):", "",
              "| task | method | adapter params | at the chosen pair | own best (lr, head lr) | s per run |",
              "|---|---|---:|---:|---|---:|"]
    by_cell = defaultdict(list)
    for r in rows:
        if r["seed"] == 0:
            by_cell[(r["task"], r["method"])].append(r)
    for cell, cell_rows in sorted(by_cell.items()):
        top = max(cell_rows, key=lambda r: r["best_accuracy"] if math.isfinite(r["best_accuracy"]) else -1)
        lr = adapter_lr_key(cell[1], chosen[0])
        at = [r for r in cell_rows if adapter_lr_key(cell[1], r["lr"]) == lr and lr_text(r["head_lr"]) == chosen[1]]
        seconds = statistics.median(r["seconds"] for r in cell_rows)
        lines.append(f"| {cell[0]} | {cell[1]} | {top['adapter_params']:,} | {at[0]['best_accuracy']:.1%} | "
                     f"{top['best_accuracy']:.1%} ({adapter_lr_key(cell[1], top['lr'])}, {lr_text(top['head_lr'])}) | "
                     f"{seconds:.0f} |")
    seeds = sorted({r["seed"] for r in rows} - {0})
    if seeds:
        lines += ["", "Seeds at the shipped pair (best accuracy, mean ± sd over seeds):", "",
                  "| task | method | seeds | best accuracy | final accuracy |", "|---|---|---:|---:|---:|"]
        shipped = (lr_text(DEFAULT_LR), lr_text(DEFAULT_HEAD_LR))
        for cell, cell_rows in sorted(by_cell.items()):
            at = [r for r in rows if (r["task"], r["method"]) == cell and lr_text(r["head_lr"]) == shipped[1]
                  and adapter_lr_key(cell[1], r["lr"]) == adapter_lr_key(cell[1], shipped[0])]
            if len(at) > 1:
                best = [r["best_accuracy"] for r in at]
                final = [r["final_accuracy"] for r in at]
                lines.append(f"| {cell[0]} | {cell[1]} | {len(at)} | {statistics.mean(best):.1%} ± "
                             f"{statistics.stdev(best):.1%} | {statistics.mean(final):.1%} ± "
                             f"{statistics.stdev(final):.1%} |")
    lines += pick_markdown(rows, list(picks))
    return "\n".join(lines) + "\n"


def _at_shipped_pair(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(task, method) -> its rows at the shipped (lr, head lr), every seed."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if lr_text(r["head_lr"]) == lr_text(DEFAULT_HEAD_LR) and \
                adapter_lr_key(r["method"], r["lr"]) == adapter_lr_key(r["method"], DEFAULT_LR):
            cells[(r["task"], r["method"])].append(r)
    return cells


def rule_markdown(rows: Sequence[dict[str, Any]], rule_rows: Sequence[dict[str, Any]], rule: str) -> list[str]:
    """Every method at the studio's defaults under "none" (`rows`) and under `rank_scaling=rule` (`rule_rows`), on
    the seeds both ran at the shipped pair: best accuracy, mean over those seeds, and the difference."""
    plain, scaled = _at_shipped_pair(rows), _at_shipped_pair(rule_rows)
    lines = ["", f"## The studio's defaults under rank_scaling \"{rule}\"", "",
             f"Each adapter method at the studio's defaults (lr {DEFAULT_LR:g}, head lr {DEFAULT_HEAD_LR:g}, "
             f"{DEFAULT_STEPS} steps) with rank_scaling \"none\" (the rows above) and \"{rule}\" (`default_lr.py run "
             f"--rank-scaling {rule} --out benchmarks/results/default_lr_{rule}`), on the seeds both ran; best "
             "validation accuracy, mean ± sd over the seeds. The rank scaling changes nothing for head-only.", "",
             f"| task | method | seeds | none | {rule} | {rule} − none, points | s per run ({rule}) |",
             "|---|---|---|---:|---:|---:|---:|"]
    diffs = []
    for cell in sorted(set(plain) & set(scaled)):
        seeds = sorted({r["seed"] for r in plain[cell]} & {r["seed"] for r in scaled[cell]})
        if not seeds:
            continue
        a = [r["best_accuracy"] for r in plain[cell] if r["seed"] in seeds]
        b = [r["best_accuracy"] for r in scaled[cell] if r["seed"] in seeds]
        diffs.append((100 * (statistics.mean(b) - statistics.mean(a)), cell))
        sd = (lambda xs: f" ± {statistics.stdev(xs):.1%}" if len(xs) > 1 else "")
        lines.append(f"| {cell[0]} | {cell[1]} | {', '.join(map(str, seeds))} | {statistics.mean(a):.1%}{sd(a)} | "
                     f"{statistics.mean(b):.1%}{sd(b)} | {diffs[-1][0]:+.1f} | "
                     f"{statistics.median(r['seconds'] for r in scaled[cell]):.0f} |")
    if not diffs:
        return lines[:2] + ["No runs under both rules yet."]
    worst, best = min(diffs), max(diffs)
    lines += ["", f"Over {len(diffs)} (task, method) cells: mean {statistics.mean(d for d, _ in diffs):+.1f} points, "
                  f"from {worst[0]:+.1f} ({' '.join(worst[1])}) to {best[0]:+.1f} ({' '.join(best[1])})."]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "pick", "analyse"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LRS))
    parser.add_argument("--head-lrs", nargs="+", type=float, default=list(HEAD_LRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank-scaling", choices=RANK_SCALINGS, default="none",
                        help="the adapters' rank_scaling (docs/method.md, \"Scale\"); give another --out for a rule "
                             "other than none, whose rows are the ones on file in benchmarks/results/")
    args = parser.parse_args(argv)
    if min(args.lrs + args.head_lrs) <= 0:
        parser.error("learning rates must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command in ("run", "pick"):
        return run(args) if args.command == "run" else pick(args)
    rows = TABLE.read(args.out / "default_lr.csv")
    text = markdown(rows, PICK_TABLE.read(args.out / "default_lr_pick.csv"))
    for rule in RANK_SCALINGS[1:]:  # the other rules' runs, where they were made (see --rank-scaling)
        if (args.out / f"default_lr_{rule}" / "default_lr.csv").exists():
            text += "\n".join(rule_markdown(rows, TABLE.read(args.out / f"default_lr_{rule}" / "default_lr.csv"),
                                            rule)) + "\n"
    atomic_write(args.out / "default_lr.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
