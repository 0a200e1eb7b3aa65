#!/usr/bin/env bash
# Resume issue 12's long runs in the background, one thread each, at low priority (see docs/benchmarks.md):
#   1. the per-point re-run under today's scale, seed-0 lr sweeps only (the "before" of the rule comparison);
#   2. the per-point re-run under rank_scaling="sqrt", whole protocol (seeds 0-2; the "after" and the fair re-run);
#   3. with --peft, PEFT's few-parameter methods beside SuperLoRA (whole qkv), instead of run 1.
# Each run resumes from its CSV rows in benchmarks/results/ and skips what is already on file; a run that is
# already going is not started twice. Logs go to runs/. Creates the environment first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
mkdir -p runs
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 GRADIO_ANALYTICS_ENABLED=False
PY=.venv/bin/python

start() {  # start NAME ARGS...: one background run unless a process with the same arguments is running
    local name=$1; shift
    if pgrep -f -- "$*" >/dev/null; then
        echo "$name: already running"
        return
    fi
    nohup nice -n 5 "$PY" "$@" >>"runs/$name.log" 2>&1 &
    echo "$name: started (pid $!, log runs/$name.log)"
}

if [ "${1:-}" = "--peft" ]; then
    start peft_baselines benchmarks/peft_baselines.py run --study-budgets --superlora --workers 1 --threads 1
else
    start pareto_per_point benchmarks/pareto.py run --protocol per-point --seeds 0 --workers 1 --threads 1
fi
start pareto_per_point_sqrt benchmarks/pareto.py run --protocol per-point --rank-scaling sqrt --workers 1 --threads 1
