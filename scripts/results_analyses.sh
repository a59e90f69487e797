#!/usr/bin/env bash
# docs/RESULTS.md §5c: what the models rely on. Interventions, head roles, rollout, faithfulness of explanations and
# (scratch decoder) sink formation over epochs, for a scratch Qwen2 decoder pair on ml-latest-small and, when they
# exist, the MiniLM runs of the reference-size grid (results/mls_minilm_ref, scripts/results_controls.sh).
# Resumable: every step is skipped when its output exists. One thread per job (THREADS).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${CTRSINK_DATA_DIR:-../shared/data}
THREADS=${THREADS:-1}
R=runs/results/analyses
mkdir -p $R
[ -f runs/data/mls/manifest.json ] || ctrsink prepare --source movielens --path "$DATA/movielens/ml-latest-small" --out runs/data/mls
# the scratch decoder pair: the §2 Qwen2 setting (3,000 / 2,000 / 2,000 samples, 4 epochs, 2 + 2 for two-stage), seed 1
QWEN="--set backbone=scratch:qwen2-tiny --set train_samples=3000 --set eval_samples=2000 --set epochs=4 --set stage1_epochs=2 --set stage2_epochs=2 --set num_threads=$THREADS --set seed=1 --set keep_epoch_checkpoints=true"
FULL="--set use_sink=true --set sink_signal=time_gap --set two_stage=true --set inter_sink=true"
[ -f $R/qwen2_baseline/final_metrics.json ] || ctrsink train --data runs/data/mls --out $R/qwen2_baseline $QWEN
[ -f $R/qwen2_full/final_metrics.json ] || ctrsink train --data runs/data/mls --out $R/qwen2_full $QWEN $FULL
# study sizes: interventions score every sample once per intervention (the head grid: once per head)
study() {  # run name, samples for interventions, for faithfulness
  local run=$1 out=$1/studies
  [ -f $out/head_roles.parquet ] || sinkviz heads --run $run --samples 256 --out $out
  [ -f $out/interventions.parquet ] || sinkviz intervene --run $run --samples $2 --out $out
  [ -f $out/rollout.parquet ] || sinkviz rollout --run $run --samples 128 --out $out
  [ -f $out/deletion_curves.parquet ] || sinkviz faithfulness --run $run --samples $3 --max-k 5 --out $out
}
study $R/qwen2_baseline 1000 200
study $R/qwen2_full 1000 200
[ -f $R/qwen2_full/epochs/manifest.json ] || [ -d $R/qwen2_full/epochs ] || sinkviz capture --run $R/qwen2_full --every-epoch --samples 128 --out $R/qwen2_full/epochs
# MiniLM: the grid's seed-1 runs that still carry their weights (trained on this machine; committed runs carry none)
for v in baseline full sink_signal carrier-separator_time_gap; do
  run=results/mls_minilm_ref/runs/$v/seed1
  [ -f $run/checkpoint/best/model.safetensors ] || continue
  mkdir -p $R/minilm_$v
  [ -L $R/minilm_$v/run ] || ln -s "$(pwd)/$run" $R/minilm_$v/run
  out=$R/minilm_$v/studies
  [ -f $out/head_roles.parquet ] || sinkviz heads --run $run --samples 128 --out $out
  # no head grid: 72 MiniLM heads cost ~110x plain scoring (benchmarks/bench_analyses.py); head roles cover heads
  [ -f $out/interventions.parquet ] || sinkviz intervene --run $run --samples 256 --no-heads --out $out
  [ -f $out/rollout.parquet ] || sinkviz rollout --run $run --samples 64 --out $out
  [ -f $out/deletion_curves.parquet ] || sinkviz faithfulness --run $run --samples 64 --max-k 5 --n-steps 16 --out $out
done
python scripts/analyses_table.py $R
