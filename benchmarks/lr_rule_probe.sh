#!/usr/bin/env bash
# The lr-transfer probe of issue 12: for each family, its smallest- and largest-rank 100-step points swept on seed 0
# under the per-point protocol with rank_scaling none (rows shared with the per-point re-run), linear and sqrt.
# Resumable (each invocation skips runs on file). Usage: bash benchmarks/lr_rule_probe.sh TASK
set -euo pipefail
task=${1:?task: inspection or digits}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
pairs=("LoRA|r=1 r=8" "SuperLoRA 2D G=1|r=1 r=16" "LoRTA M=3|r=8 r=16" "LoTR|r=8 r=32")
for pair in "${pairs[@]}"; do
  method=${pair%%|*}; read -r -a budgets <<< "${pair#*|}"
  for rule in none linear sqrt; do
    python benchmarks/pareto.py run --protocol per-point --rank-scaling "$rule" --tasks "$task" --seeds 0 \
      --methods "$method" --budgets "${budgets[@]}" --workers 1 --threads 1
  done
done
