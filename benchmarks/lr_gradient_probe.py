"""Would one probe step at initialisation predict a point's best lr? (issue 12, item 1: a candidate rule.)

Adam's first step moves every parameter by about lr in the direction of its gradient's sign. Two readings of that
step could set the lr. (1) The loss falls by about lr x (the gradient's L1 norm): if that first-order rate set the
best lr, lr* x ‖g‖₁ would be the same for every point, and `lr = c / ‖g‖₁` would be a rule. (2) The whole update
ΔW moves by about lr x (its movement rate, ‖ΔW(θ₀ - ε sign g) - ΔW(θ₀)‖_F / ε summed over the targets): a scale that
normalises how far ΔW moves per optimiser step would be `lr = c / movement`. This script measures both at
initialisation (the head left out; at initialisation only the zero-initialised factors have a gradient) on one fixed
batch of 64 training images (eval transforms), one forward and backward pass per point, for every point of the
per-point re-run whose seed-0 lr sweep has decided, under each rank scaling, and fits log2(lr*) against the log10 of
each.

    python benchmarks/lr_gradient_probe.py     # about 1 s per point on one core; writes the results below

Results: benchmarks/results/lr_gradient_probe.md (the fits per task and rule, and every point's numbers).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.pareto import RESULTS, rule_folder  # noqa: E402
from benchmarks.study.pareto.grid import DEFAULT_MODEL, TASKS, task_sets  # noqa: E402
from benchmarks.study.pareto.report import decided_adapter_points  # noqa: E402
from benchmarks.study.sweep import base_method, lr_text  # noqa: E402

FOLDERS = {rule: rule_folder(rule) for rule in ("none", "sqrt")}
OUT = RESULTS / "lr_gradient_probe.md"
BATCH = 64
EPSILON = 1e-4  # the probe step for the movement


def first_step(config_json: str, batch, classes: int) -> tuple[float, float]:
    """(‖g‖₁, movement) at initialisation (seed 0), from one forward and backward pass: ‖g‖₁ of the adapter's
    parameters, and how fast Adam's first step moves the whole update, ‖Σ ΔW(θ₀ - ε sign g) - ΔW(θ₀)‖_F / ε over
    every target (Adam's first step is lr × sign g; ε small enough that the step is linear)."""
    import torch
    import torch.nn.functional as F
    from accelerate.utils import set_seed

    from superlora import SuperLoRAConfig
    from superlora.train.prepare import prepare_model

    set_seed(0)
    _, model = prepare_model(DEFAULT_MODEL, SuperLoRAConfig.from_dict(json.loads(config_json)), classes)
    model.train()
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    head = {id(p) for p in model.base_model.get_classifier().parameters()}
    adapter = [p for p in model.parameters() if p.requires_grad and id(p) not in head and p.grad is not None]
    g1 = float(sum(p.grad.abs().sum() for p in adapter))
    before = model.delta_weights()
    with torch.no_grad():
        for p in adapter:
            p.sub_(EPSILON * p.grad.sign())
    after = model.delta_weights()
    moved = math.sqrt(sum(float((after[name] - before[name]).double().pow(2).sum()) for name in before))
    return g1, moved / EPSILON


def fixed_batch(task: str):
    import torch

    from superlora.base_models import data_config, load_model
    from superlora.data import ImageClassificationDataset, build_transforms

    train, _ = task_sets(task, TASKS[task])
    transform = build_transforms(data_config(load_model(DEFAULT_MODEL, num_classes=len(train.classes))), train=False)
    data = ImageClassificationDataset(train, transform)
    picks = list(range(0, len(data), max(1, len(data) // BATCH)))[:BATCH]
    images, labels = zip(*(data[i] for i in picks))
    return (torch.stack(images), torch.tensor(labels)), len(train.classes)


STATISTICS = {"g1": "‖g‖₁", "moved": "movement"}


def fit(points: list[dict], key: str = "g1") -> tuple[float, float]:
    """(slope of log2 lr* per decade of the statistic `key`, R^2) of a least-squares line."""
    x = [math.log10(p[key]) for p in points]
    y = [math.log2(p["lr"]) for p in points]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / sxx, (sxy * sxy / (sxx * syy) if syy else math.nan)


def measure() -> list[dict]:
    import torch

    torch.set_num_threads(1)
    found = []
    for task in TASKS:
        batch, classes = fixed_batch(task)
        for rule, folder in FOLDERS.items():
            for p, row in decided_adapter_points(folder, task):
                g1, moved = first_step(row["config"], batch, classes)
                found.append(dict(task=task, rule=rule, method=base_method(p.method), budget=p.budget,
                                  params=p.params, lr=p.lr, g1=g1, moved=moved))
                print(task, rule, p.method, p.budget, lr_text(p.lr), f"‖g‖₁ = {g1:.3g}, movement {moved:.3g}",
                      flush=True)
    return found


def markdown(found: list[dict]) -> str:
    lines = ["# One probe step as an lr rule (generated by `python benchmarks/lr_gradient_probe.py`)", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| task | rule | points | lr* range | statistic | its range | slope: log2 lr* per decade | R² |",
             "|---|---|---|---|---|---|---|---|"]
    for task in TASKS:
        for rule in FOLDERS:
            group = [p for p in found if p["task"] == task and p["rule"] == rule]
            if len(group) <= 2:
                continue
            lrs = [p["lr"] for p in group]
            for key, name in STATISTICS.items():
                slope, r2 = fit(group, key)
                values = [p[key] for p in group]
                lines.append(f"| {task} | {rule} | {len(group)} | {lr_text(min(lrs))}–{lr_text(max(lrs))} | {name} | "
                             f"{min(values):.2g}–{max(values):.2g} | {slope:.2f} | {r2:.2f} |")
    lines += ["", "A rule lr = c / statistic needs a slope of -3.3 (one decade of the statistic, a factor 10 in lr) "
              "and R² near 1.", "", "| task | rule | method | budget | params | chosen lr | ‖g‖₁ | movement |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['task']} | {p['rule']} | {p['method']} | {p['budget']} | {p['params']:,} | {lr_text(p['lr'])} | "
              f"{p['g1']:.3g} | {p['moved']:.3g} |" for p in found]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from superlora.files import atomic_write_bytes

    atomic_write_bytes(OUT, markdown(measure()).encode())
    print(f"wrote {OUT}")
