#!/usr/bin/env bash
# Resume issue 12's long runs in the background, one thread each, at low priority (see docs/benchmarks.md).
# Two lanes, one per core; each lane runs its steps one after the other, so a core never idles when a run ends:
#   lane 1: the per-point re-run under today's scale, seed-0 lr sweeps only (the "before" of the rule comparison),
#           then the short ones: the studio's defaults under "sqrt" on both samples (3 seeds) and under "none" on
#           digits (its seeds 1-2), the lr probes of the inspection points under "sqrt", then PEFT's few-parameter
#           methods beside SuperLoRA (whole qkv) on the inspection task;
#   lane 2: the per-point re-run under rank_scaling="sqrt", whole protocol (seeds 0-2; the "after" and the fair
#           re-run), then the PEFT comparison on the digits task (each task has its own rows, so the two lanes
#           never write the same file).
# --peft puts the PEFT comparison first on both lanes. Each run resumes from its CSV rows in benchmarks/results/ and
# skips what is already on file, and a run that has nothing left exits at once; a lane whose run is already going
# is not started twice. Logs go to runs/. Creates the environment first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
mkdir -p runs
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 GRADIO_ANALYTICS_ENABLED=False
PY=.venv/bin/python

# LOG:ARGUMENTS, one run each
NONE_RUN="pareto_per_point:benchmarks/pareto.py run --protocol per-point --seeds 0 --workers 1 --threads 1"
SQRT_RUN="pareto_per_point_sqrt:benchmarks/pareto.py run --protocol per-point --rank-scaling sqrt --workers 1 --threads 1"
STUDIO_SQRT_RUN="default_lr_sqrt:benchmarks/default_lr.py run --rank-scaling sqrt --out benchmarks/results/default_lr_sqrt --tasks inspection digits --methods lora loha lokr lotr superlora-2d lorta lonkr --lrs 0.03 --head-lrs 0.01 --seeds 0 1 2"
STUDIO_NONE_RUN="default_lr:benchmarks/default_lr.py run --tasks digits --methods lora loha lokr lotr superlora-2d lorta lonkr --lrs 0.03 --head-lrs 0.01 --seeds 1 2"
PROBE_SQRT_RUN="lr_probe_sqrt:benchmarks/lr_probe.py run --task inspection --rule sqrt"
PEFT="benchmarks/peft_baselines.py run --study-budgets --superlora --workers 1 --threads 1"
PEFT_INSPECTION_RUN="peft_baselines:$PEFT --tasks inspection"
PEFT_DIGITS_RUN="peft_baselines_digits:$PEFT --tasks digits"

lane() {  # lane NAME LOG:ARGS...: the runs one after the other in one background shell, unless one is going
    local name=$1; shift
    local entry script=""
    for entry in "$@"; do
        if pgrep -f -- "${entry#*:}" >/dev/null; then
            echo "$name: already running (${entry#*:})"
            return
        fi
        script+="nice -n 5 $PY ${entry#*:} >>runs/${entry%%:*}.log 2>&1; "
    done
    nohup bash -c "$script" >/dev/null 2>&1 &
    echo "$name: started (pid $!; logs in runs/)"
}

if [ "${1:-}" = "--peft" ]; then
    lane "lane 1" "$PEFT_INSPECTION_RUN" "$NONE_RUN" "$STUDIO_SQRT_RUN" "$STUDIO_NONE_RUN" "$PROBE_SQRT_RUN"
    lane "lane 2" "$PEFT_DIGITS_RUN" "$SQRT_RUN"
else
    lane "lane 1" "$NONE_RUN" "$STUDIO_SQRT_RUN" "$STUDIO_NONE_RUN" "$PROBE_SQRT_RUN" "$PEFT_INSPECTION_RUN"
    lane "lane 2" "$SQRT_RUN" "$PEFT_DIGITS_RUN"
fi
