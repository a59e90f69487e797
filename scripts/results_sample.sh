#!/usr/bin/env bash
# docs/RESULTS.md, sample data: the ablation grid (3 seeds) with the default config (scratch BERT encoder).
# Resumable: rerun the same command after an interruption. Log: runs/results/sample_ablation.log
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
THREADS=${THREADS:-1}
mkdir -p runs/results
[ -f runs/data/synthetic/manifest.json ] || ctrsink prepare --source csv --path sample_data/synthetic --out runs/data/synthetic
ctrsink ablate --data runs/data/synthetic --seeds 1,2,3 --out runs/results/sample_ablation --set num_threads="$THREADS" \
  --variants baseline,sink,sink+signal,sink+signal+two_stage,full,cls_token,random_signal
