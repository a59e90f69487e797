#!/usr/bin/env bash
# docs/RESULTS.md, attention: capture baseline and CTR-Sink ("full") runs of scripts/results_movielens.sh (scratch
# Qwen2, ml-latest-small, seed 1) on 256 test samples, then draw the paper's figures. Run after results_movielens.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
R=runs/results
for v in baseline full; do
  [ -f $R/attention/mls_qwen2_$v/manifest.json ] || \
    sinkviz capture --run $R/mls_qwen2/runs/$v/seed1 --split test --samples 256 --out $R/attention/mls_qwen2_$v
done
[ -f $R/attention/mls_qwen2_full/attributions.parquet ] || \
  sinkviz attribute --run $R/mls_qwen2/runs/full/seed1 --split test --samples 16 --out $R/attention/mls_qwen2_full \
    --baseline-token 222  # a space: the scratch Qwen2 pad row is all zeros, where RMSNorm is stiff (large delta)
sinkviz figures --analysis $R/attention/mls_qwen2_full --compare $R/attention/mls_qwen2_baseline \
  --ablation $R/mls_qwen2 --out docs/figures/mls_qwen2
