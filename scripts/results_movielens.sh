#!/usr/bin/env bash
# docs/RESULTS.md, MovieLens (read in place from ${CTRSINK_DATA_DIR:-../shared/data}): baseline and CTR-Sink ("full")
# with a scratch Qwen2 decoder and the pretrained MiniLM encoder on ml-latest-small, and a scratch BERT encoder on the
# partial ml-1m ratings. Sizes are cut to what 2 CPU cores finish in about an hour (see docs/RESULTS.md). Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${CTRSINK_DATA_DIR:-../shared/data}
THREADS=${THREADS:-1}
R=runs/results
ALL=baseline,sink,sink+signal,sink+signal+two_stage,full,cls_token,random_signal
QWEN_VARIANTS=${QWEN_VARIANTS:-baseline,sink,sink+signal,sink+signal+two_stage,full,random_signal,signal:index,signal:similarity}  # no cls_token: decoders have no [CLS]
ML1M_VARIANTS=${ML1M_VARIANTS:-$ALL}
mkdir -p $R
[ -f runs/data/mls/manifest.json ] || ctrsink prepare --source movielens --path "$DATA/movielens/ml-latest-small" --out runs/data/mls
[ -f runs/data/ml1m/manifest.json ] || ctrsink prepare --source movielens --path "$DATA/movielens/ml-1m" --out runs/data/ml1m
# scratch Qwen2 decoder, 3 seeds, every variant plus the index and similarity signals: 3,000 training samples, 4 epochs (2 + 2 for two-stage), 2,000 valid and test samples
QWEN="--set backbone=scratch:qwen2-tiny --set train_samples=3000 --set eval_samples=2000 --set epochs=4 --set stage1_epochs=2 --set stage2_epochs=2 --set num_threads=$THREADS"
ctrsink ablate --data runs/data/mls --variants "$QWEN_VARIANTS" --seeds 1,2,3 --out $R/mls_qwen2 $QWEN
# MiniLM (pretrained BERT-family encoder), 3 seeds: 1,000 training samples, 2 epochs (1 + 1), 500 valid and test samples
MINILM="--set backbone=bundled:minilm --set lr=1e-4 --set head_lr=1e-3 --set train_samples=1000 --set eval_samples=500 --set epochs=2 --set stage1_epochs=1 --set stage2_epochs=1 --set num_threads=$THREADS"
ctrsink ablate --data runs/data/mls --variants baseline,full --seeds 1,2,3 --out $R/mls_minilm $MINILM
# partial ml-1m (users 1-2,999), scratch BERT encoder, 3 seeds: 3,000 training samples
ML1M="--set train_samples=3000 --set eval_samples=2000 --set epochs=4 --set stage1_epochs=2 --set stage2_epochs=2 --set num_threads=$THREADS"
ctrsink ablate --data runs/data/ml1m --variants "$ML1M_VARIANTS" --seeds 1,2,3 --out $R/ml1m_bert $ML1M
