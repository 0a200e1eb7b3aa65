"""Tiny models and image sets for the training, CLI, export and distributed tests (fast on a busy 2-core CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from superlora.data import ImageSet, train_val_split

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def colour_images(per_class: int = 12, size: int = 16, seed: int = 0, noise: float = 60.0) -> ImageSet:
    """Noisy squares of three colours: learnable in a few dozen steps, not at step 0."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, rgb in enumerate(COLOURS.values()):
        for _ in range(per_class):
            pixels = np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, noise, (size, size, 3))
            images.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
            labels.append(label)
    return ImageSet(images=images, labels=labels, classes=list(COLOURS))


def colour_split(per_class: int = 12, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    return train_val_split(colour_images(per_class, seed=seed), val_fraction=0.25, seed=0)


def stripe_images(per_class: int = 16, size: int = 16, seed: int = 0, noise: float = 60.0) -> ImageSet:
    """Noisy stripes (horizontal, vertical, diagonal) of random colour, period and phase: a task the tiny ViT
    learns only partly in a few epochs, so accuracies move and float differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for label, coord in enumerate((yy, xx, xx + yy)):
        for _ in range(per_class):
            wave = np.sin(2 * np.pi * coord / rng.integers(3, 7) + rng.uniform(0, 2 * np.pi))[..., None]
            pixels = rng.uniform(60, 190, 3) + 50 * wave + rng.normal(0.0, noise, (size, size, 3))
            images.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
            labels.append(label)
    return ImageSet(images=images, labels=labels, classes=["horizontal", "vertical", "diagonal"], hflip_safe=False)


def tiny_vit(num_classes: int = 3, seed: int = 0, img_size: int = 16) -> nn.Module:
    """A timm-registered ViT (so it has a pretrained_cfg) shrunk to 2 blocks of width 32 at 16 px."""
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, patch_size=8,
                             embed_dim=32, depth=2, num_heads=2, num_classes=num_classes)


# ------------------------------------------------------------------------------------------------ subprocess runs
# `python tests/train_helpers.py OUT [--resume] [--pause-at STEP]` trains the tiny task in a fresh process (the
# resume and distributed tests need real processes) and prints one JSON line per event and a final RESULT line.
def state_digest(state: dict[str, torch.Tensor]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def comparable_history(history: list[dict]) -> list[dict]:
    """History without wall-clock times, which differ between any two runs."""
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in history]


def train_stripes(output: str | None, *, resume: bool = False, callbacks=(), epochs: int = 4,
                  batch_size: int = 8, checkpoint_every: int | None = 3, per_class: int = 16, config=None,
                  pick_lr: bool = False):
    """The reference run of the resume and distributed tests (identical in every process that calls it); with
    `pick_lr`, `train_at_picked_lr` picks the adapter lr first and the result is (TrainResult, LrPick)."""
    from superlora import preset
    from superlora.train import TrainOptions, train, train_at_picked_lr

    train_set, val_set = train_val_split(stripe_images(per_class), val_fraction=0.25, seed=0)
    options = TrainOptions(epochs=epochs, batch_size=batch_size, lr=1e-2, head_lr=1e-2,
                           checkpoint_every=checkpoint_every, output_dir=output)
    config = config if config is not None else preset("lora", rank=2)
    if pick_lr:
        return train_at_picked_lr(tiny_vit(), train_set, val_set, config, options, callbacks=callbacks)
    return train(tiny_vit(), train_set, val_set, config, options, callbacks=callbacks, resume=resume)


def result_summary(result) -> dict:
    """What must be identical between an interrupted-and-resumed run and an uninterrupted one."""
    return {"best_accuracy": result.best_accuracy, "best_step": result.best_step, "metrics": result.metrics,
            "history": comparable_history(result.history), "steps": result.steps,
            "digest": state_digest(result.model.trainable_state_dict())}


def _main(argv: list[str]) -> None:
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-at", type=int, default=None, help="sleep after the checkpoint of this step")
    parser.add_argument("--config", default=None, help="adapter config as JSON (default: LoRA rank 2)")
    parser.add_argument("--pick-lr", action="store_true", help="pick the lr with short probe runs first")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same thread count in every run: float sums must not change order

    def report(event):
        print(json.dumps({"kind": event.kind, "step": event.step, "metrics": event.metrics}), flush=True)
        if event.kind == "checkpoint" and event.step == args.pause_at:
            time.sleep(120)  # the test kills this process here, mid-epoch, right after a checkpoint

    from superlora import SuperLoRAConfig

    config = SuperLoRAConfig.from_json(args.config) if args.config else None
    result = train_stripes(args.output, resume=args.resume, callbacks=[report], config=config, pick_lr=args.pick_lr)
    from accelerate import PartialState

    state = PartialState()
    if args.pick_lr:
        result, pick = result
        # Every process records its pick (they must agree), each in a file of its own beside the run folder: two
        # processes printing to one shared pipe can interleave their lines.
        picked = Path(args.output).parent / f"pick-{state.process_index}.json"
        picked.write_text(json.dumps(pick.record()))
    if state.is_main_process:
        print("RESULT " + json.dumps(result_summary(result)), flush=True)


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
