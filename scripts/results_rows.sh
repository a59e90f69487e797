#!/usr/bin/env bash
# docs/RESULTS.md §6: the comparison rows (DIN, SparseCTR-lite, SRP4CTR-lite) trained into the same ablation folders
# as the CTR-Sink variants (scripts/results_sample.sh, scripts/results_movielens.sh: run those first), with the same
# base config, samples and seeds, so one table holds both; then the history-length curve on the partial ml-1m.
# Resumable: finished runs are read back. ROWS / LENGTHS / THREADS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${CTRSINK_DATA_DIR:-../shared/data}
THREADS=${THREADS:-1}
ROWS=${ROWS:-din,sparsectr_lite,srp4ctr_lite}
R=runs/results
for grid in sample_ablation:synthetic mls_qwen2:mls ml1m_bert:ml1m; do
  dir=${grid%%:*} data=${grid##*:}
  [ -f $R/$dir/base_config.yaml ] || { echo "run the CTR-Sink grid for $dir first" >&2; exit 2; }
  ctrsink ablate --data runs/data/$data --config $R/$dir/base_config.yaml --set num_threads=$THREADS \
    --variants "$ROWS" --seeds 1,2,3 --out $R/$dir
done
# rewrite each folder's table and summary over every variant it holds (every run is read back, nothing retrains),
# then print CTR-Sink baseline and full beside the rows
ALL=baseline,sink,sink+signal,sink+signal+two_stage,full,cls_token,random_signal
for grid in sample_ablation:synthetic:$ALL mls_qwen2:mls:$ALL,signal:index,signal:similarity ml1m_bert:ml1m:$ALL; do
  IFS=: read -r dir data variants <<< "$grid"
  ctrsink ablate --data runs/data/$data --config $R/$dir/base_config.yaml --set num_threads=$THREADS \
    --variants "$variants,$ROWS" --seeds 1,2,3 --out $R/$dir > /dev/null
  ctrsink summarize --ablation $R/$dir --variants "baseline,full,$ROWS" > $R/rows_$dir.md
done

# history-length curve: partial ml-1m prepared with 100 behaviors per field (2 fields: 20, 50, 100, 200 behaviors),
# same 3,000 / 2,000 / 2,000 samples as §3, seed 1. Text rows run at 25 per field (10 per field is §3's setting;
# 50 per field needs ~650 tokens per field, over the 512 positions of BERT-family backbones: they stop there).
[ -f runs/data/ml1m_h100/manifest.json ] || ctrsink prepare --source movielens --path "$DATA/movielens/ml-1m" \
  --out runs/data/ml1m_h100 --max-history 100
for n in ${LENGTHS:-10 25 50 100}; do
  variants=$ROWS
  [ "$n" -eq 25 ] && variants="baseline,full,$ROWS"
  ctrsink ablate --data runs/data/ml1m_h100 --config $R/ml1m_bert/base_config.yaml --set num_threads=$THREADS \
    --set num_behaviors=$n --set max_user_tokens=512 --variants "$variants" --seeds 1 --out $R/length/n$n
done
