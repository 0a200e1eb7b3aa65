#!/usr/bin/env bash
# The three pretraining stages that made assets/default/ (see its MODEL_CARD.md). Each stage is resumable:
# rerun this script after an interruption and finished stages only re-export. One CPU thread each; wall time
# on the project's shared 2-core machine: about 88 + 23 + 45 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
PY=.venv/bin/python
STAGE2_3_ARGS=(--warmup 50 --lr 5e-4 --glyph-weight 0.12 --quadrant-weight 1 --threads 1)

# Stage 1: 1000 steps of distillation on photos + procedural images.
$PY scripts/pretrain_default.py --out runs/pretrain/default --steps 1000 --threads 1
cp -n runs/pretrain/default/ckpt.pt runs/pretrain/stage1_ckpt.pt  # stage 1's final state, as stage 2 found it
# Stage 2: 500 steps adding typed glyphs / pen strokes and the class-token layout loss, fresh schedule.
$PY scripts/pretrain_default.py --out runs/pretrain/stage2_layout --steps 500 --seed 1 \
    --init-from runs/pretrain/stage1_ckpt.pt "${STAGE2_3_ARGS[@]}"
# Stage 3: 1000 more steps of the stage-2 recipe on new batches, then export.
$PY scripts/pretrain_default.py --out runs/pretrain/stage3_layout --steps 1000 --seed 2 \
    --init-from runs/pretrain/stage2_layout/ckpt.pt "${STAGE2_3_ARGS[@]}" --export assets/default
