"""Would short probe runs pick each point's lr? (issue 12: a candidate for "the user never tunes the lr").

No fixed rank scaling carries one lr across the study's points on digits (docs/benchmarks.md, "Before and after"),
so the library could pick the lr per run instead: train a few candidate lrs for a fraction of the run, keep the
one with the lowest validation loss, then train the whole run at it. This script measures what that choice
would be worth before anything is built. For every point of the per-point re-run whose seed-0 sweep has decided
(under one rank scaling), it trains each candidate lr for `--fraction` of the point's steps (the warm-up and cosine
schedule compressed to the probe's length; everything else as in the study, seed 0), picks the best probe as `superlora.train.pick_lr` does (lowest validation loss, then accuracy,
then the smaller lr), and reads the full-length seed-0 accuracy at that lr from the point's sweep. The shortfall against the point's own best is set beside the fixed default's.

    python benchmarks/lr_probe.py run --task digits [--rule none] [--fraction 0.25]   # resumable rows
    python benchmarks/lr_probe.py analyse                                             # the markdown below

Rows: benchmarks/results/lr_probe.csv; results: benchmarks/results/lr_probe.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.pareto import RESULTS, rule_folder  # noqa: E402
from benchmarks.study.pareto.grid import DEFAULT_MODEL, TASKS, task_sets  # noqa: E402
from benchmarks.study.pareto.protocol import PER_POINT  # noqa: E402
from benchmarks.study.pareto.report import decided_adapter_points  # noqa: E402
from benchmarks.study.store import ResultsTable  # noqa: E402
from benchmarks.study.sweep import base_method, lr_text  # noqa: E402
from superlora.train.auto_lr import LR_CANDIDATES  # noqa: E402

FOLDERS = {rule: rule_folder(rule) for rule in ("none", "sqrt")}
ROWS, OUT = RESULTS / "lr_probe.csv", RESULTS / "lr_probe.md"
# One row per finished probe, appended atomically; lr stays text (lr_text), the key it is compared by.
PROBES = ResultsTable(("task", "rule", "method", "budget", "config_hash", "params", "full_steps", "steps", "lr",
                       "accuracy", "val_loss", "seconds"), ("params", "full_steps", "steps"),
                      ("accuracy", "val_loss", "seconds"))
CANDIDATES = LR_CANDIDATES  # the library's own (superlora.train.auto_lr), probed the way `pick_lr` probes


def read_rows() -> list[dict]:
    return PROBES.read(ROWS)


def decided_points(task: str, rule: str) -> list[tuple]:
    """(summary, config JSON, head lr) of every adapter point whose seed-0 sweep has decided."""
    return [(p, row["config"], row["head_lr"]) for p, row in decided_adapter_points(FOLDERS[rule], task)]


def probe(task: str, rule: str, fraction: float, lrs: tuple[float, ...]) -> None:
    import time

    import torch

    from superlora import SuperLoRAConfig
    from superlora.train import NonFiniteLossError, TrainOptions, train

    torch.set_num_threads(1)
    train_set, val_set = task_sets(task, TASKS[task])
    rows = read_rows()
    done = {(r["task"], r["rule"], r["config_hash"], r["steps"], r["lr"]) for r in rows}
    # a point a rule leaves unscaled has the same config (and hash) under every rule: its probes are copied
    same = {(r["task"], r["config_hash"], r["steps"], r["lr"]): r for r in rows}
    # the shortest runs first: an interrupted run has covered as many points as it could
    for point, config, head_lr in sorted(decided_points(task, rule), key=lambda t: (t[0].steps, t[0].params)):
        steps = probe_length(fraction, point.steps)
        for lr in lrs:
            if (task, rule, point.config_hash, steps, lr_text(lr)) in done:
                continue
            copy = same.get((task, point.config_hash, steps, lr_text(lr)))
            if copy is not None:
                PROBES.append(ROWS, dict(copy, rule=rule))
                continue
            options = TrainOptions(steps=steps, batch_size=32, lr=lr, head_lr=float(head_lr), seed=0,
                                   eval_every_epoch=False, device="cpu")
            started = time.monotonic()
            try:
                result = train(DEFAULT_MODEL, train_set, val_set, SuperLoRAConfig.from_dict(json.loads(config)),
                               options)
                accuracy, loss = result.best_accuracy, result.metrics["loss"]
            except NonFiniteLossError:  # a diverged probe: recorded as pick_lr scores it (accuracy 0, loss inf)
                accuracy, loss = 0.0, math.inf
            PROBES.append(ROWS, dict(task=task, rule=rule, method=base_method(point.method), budget=point.budget,
                                     config_hash=point.config_hash, params=point.params, full_steps=point.steps,
                                     steps=steps, lr=lr_text(lr), accuracy=accuracy, val_loss=loss,
                                     seconds=round(time.monotonic() - started, 1)))
            print(f"{task} {rule} {point.method} {point.budget} lr {lr_text(lr)} {steps} steps: "
                  f"{100 * accuracy:.1f} %", flush=True)


def pick(probes: list[dict]) -> str:
    """The lr `pick_lr` would choose from these probe rows (`superlora.train.auto_lr.best_probe`)."""
    from superlora.train.auto_lr import LrProbe, best_probe

    best = best_probe([LrProbe(float(r["lr"]), int(r.get("steps", 0)), float(r["accuracy"]), float(r["val_loss"]),
                               diverged=math.isinf(float(r["val_loss"]))) for r in probes])
    return lr_text(best.lr)


def probe_length(fraction: float, full_steps: int) -> int:
    return max(1, round(fraction * full_steps))


def fractions(rows: list[dict]) -> list[float]:
    """The probe fractions on file (a probe's steps over its point's, to two places)."""
    return sorted({round(int(r["steps"]) / int(r["full_steps"]), 2) for r in rows})


def outcomes(task: str, rule: str, rows: list[dict], fraction: float = 0.25) -> list[dict]:
    """Per decided point with every probe of `fraction` finished: the picked lr, and the seed-0 full-run
    shortfalls (points) of the pick and of the default lr against the point's best."""
    found = []
    for point, _, _ in decided_points(task, rule):
        steps = str(probe_length(fraction, point.steps))
        probes = [r for r in rows if r["task"] == task and r["rule"] == rule and r["config_hash"] == point.config_hash
                  and str(r["steps"]) == steps]
        full = {lr_text(lr): (0.0 if math.isnan(acc) else acc) for lr, acc in point.sweep}
        if not probes or len({r["lr"] for r in probes}) < len(CANDIDATES):
            continue
        best = max(full.values())
        chosen = pick(probes)
        found.append(dict(method=base_method(point.method), budget=point.budget, params=point.params,
                          steps=probes[0]["steps"], full_steps=point.steps, best_lr=lr_text(point.lr), picked=chosen,
                          probes="; ".join(f"{r['lr']}: {float(r['val_loss']):.3f} / {100 * float(r['accuracy']):.1f}"
                                         for r in probes),
                          picked_short=100 * (best - full.get(chosen, math.nan)),
                          default_short=100 * (best - full[lr_text(PER_POINT.default_lr)])))
    return found


def markdown(rows: list[dict]) -> str:
    lines = ["# Short probe runs as the lr rule (generated by `python benchmarks/lr_probe.py analyse`)", "",
             " ".join(__doc__.split("\n\n")[1].split()), ""]
    for task, rule, fraction in ((t, r, f) for t in TASKS for r in FOLDERS for f in fractions(rows)):
        found = outcomes(task, rule, rows, fraction)
        if found:
            images = TASKS[task].val_per_class * TASKS[task].classes
            noise = 200 * math.sqrt(0.8 * 0.2 / images)
            lines += [f"## {task}, rank scaling \"{rule}\", probes of {fraction:g} of the run", "",
                      "| method | budget | params | probe steps (of) | probes (lr: val loss / accuracy, %) | picked | best full "
                      "lr | shortfall at the pick | at the default 0.03 |", "|---" * 9 + "|"]
            lines += [f"| {f['method']} | {f['budget']} | {f['params']:,} | {f['steps']} ({f['full_steps']}) | "
                      f"{f['probes']} | {f['picked']} | {f['best_lr']} | {f['picked_short']:.1f} | "
                      f"{f['default_short']:.1f} |" for f in found]
            for key, name in (("picked_short", "the probes' pick"), ("default_short", "the default 0.03")):
                values = [f[key] for f in found]
                lines.append(f"\n- {name}: within 1.5 points of the point's best for "
                             f"{sum(v <= 1.5 + 1e-9 for v in values)} of {len(values)}, within two standard errors "
                             f"of one seed ({noise:.1f}) for {sum(v <= noise + 1e-9 for v in values)}; worst "
                             f"{max(values):.1f}, mean {sum(values) / len(values):.1f} points.")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "analyse"))
    parser.add_argument("--task", choices=tuple(TASKS), default="digits")
    parser.add_argument("--rule", choices=tuple(FOLDERS), default="none")
    parser.add_argument("--fraction", type=float, default=0.25)
    args = parser.parse_args(argv)
    if args.command == "run":
        probe(args.task, args.rule, args.fraction, CANDIDATES)
    from superlora.files import atomic_write_bytes

    atomic_write_bytes(OUT, markdown(read_rows()).encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
