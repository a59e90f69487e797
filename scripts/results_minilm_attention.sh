#!/usr/bin/env bash
# docs/RESULTS.md §5b: a pretrained LM's attention on ml-latest-small at the reference's text settings.
# The pretrained MiniLM with time-gap sinks inserted, before any fine-tuning (checkpoint epoch0 of a run that keeps
# per-epoch checkpoints; its one training step is never used), and the MiniLM baseline fine-tuned at the reference's
# size (results/mls_minilm_ref, from scripts/results_controls.sh, once its runs exist with weights). 64 test samples each.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
R=runs/results/minilm_attention
REF="--set backbone=bundled:minilm --set num_behaviors=20 --set behavior_text=title --set max_user_tokens=128 --set max_item_tokens=32 --set num_threads=1"
[ -f runs/data/mls50/manifest.json ] || ctrsink prepare --source movielens --path "${CTRSINK_DATA_DIR:-../shared/data}/movielens/ml-latest-small" --out runs/data/mls50 --max-history 50
for name in baseline ctrsink; do
  extra=""; [ $name = ctrsink ] && extra="--set use_sink=true --set sink_signal=time_gap --set inter_sink=true"
  [ -f $R/pretrained_$name/final_metrics.json ] || ctrsink train --data runs/data/mls50 --out $R/pretrained_$name $REF $extra \
    --set keep_epoch_checkpoints=true --set train_samples=32 --set eval_samples=64 --set epochs=1
  [ -f $R/pretrained_$name/analysis/manifest.json ] || sinkviz capture --run $R/pretrained_$name --checkpoint epoch0 \
    --samples 64 --out $R/pretrained_$name/analysis
  [ -f $R/pretrained_$name/studies/head_roles.parquet ] || sinkviz heads --run $R/pretrained_$name --checkpoint epoch0 \
    --samples 64 --out $R/pretrained_$name/studies
done
for run in results/mls_minilm_ref/runs/*/seed1; do
  [ -f $run/checkpoint/best/model.safetensors ] || continue  # committed runs carry no weights
  name=$(basename $(dirname $run))
  [ -f $R/trained_$name/analysis/manifest.json ] || sinkviz capture --run $run --samples 64 --out $R/trained_$name/analysis
  [ -f $R/trained_$name/studies/head_roles.parquet ] || sinkviz heads --run $run --samples 64 --out $R/trained_$name/studies
done
