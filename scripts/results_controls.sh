#!/usr/bin/env bash
# docs/RESULTS.md §2b and §2c: is it the sink or the information it carries? Resumable; run it in the background.
# 1) scratch Qwen2 on ml-latest-small (the grid where time-gap and index sinks gained +0.09 AUC), each signal beside
#    its controls: the same signal added to the separators (no sink token) and written into the behavior text.
# 2) MiniLM at the reference's size, on the reference's own rows (reference-baseline.md): the time split by timestamp,
#    its RandomState(0) subsets (6,000 training rows = the first 6,000 of a sorted 8,000-row draw), fields cut on
#    the right, its English prompts and ',' separator, 20 behaviors per field, title text, 128/32 tokens, batch 32,
#    lr 1e-4, no gradient clipping, 2 epochs (1 + 1 for two-stage); valid and test are the FULL splits. About an hour
#    per run on one core: it takes several sittings. Finished runs are committed (results/, without checkpoints), so
#    a later sitting on a new machine resumes where the last one stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${CTRSINK_DATA_DIR:-../shared/data}
THREADS=${THREADS:-1}
PARTS=${PARTS:-1,2}  # PARTS=2: the MiniLM grid only
R=results  # committed without checkpoints (results/.gitignore)
mkdir -p $R
if [[ ,$PARTS, == *,1,* ]]; then
[ -f runs/data/mls/manifest.json ] || ctrsink prepare --source movielens --path "$DATA/movielens/ml-latest-small" --out runs/data/mls
QWEN="--set backbone=scratch:qwen2-tiny --set train_samples=3000 --set eval_samples=2000 --set epochs=4 --set stage1_epochs=2 --set stage2_epochs=2 --set num_threads=$THREADS"
ctrsink ablate --data runs/data/mls --out $R/mls_qwen2_controls --seeds 1,2,3 $QWEN \
  --variants baseline,sink+signal,carrier:separator+time_gap,text:time_gap,signal:index,carrier:separator+index,text:index,signal:index_newest
fi
[[ ,$PARTS, == *,2,* ]] || exit 0
[ -f runs/data/mls50ts/manifest.json ] || ctrsink prepare --source movielens --path "$DATA/movielens/ml-latest-small" --out runs/data/mls50ts --max-history 50 --split-rule timestamp
REF="--set backbone=bundled:minilm --set num_behaviors=20 --set behavior_text=title --set max_user_tokens=128 --set max_item_tokens=32 --set batch_size=32 --set eval_batch_size=64 --set lr=1e-4 --set head_lr=1e-4 --set epochs=2 --set stage1_epochs=1 --set stage2_epochs=1 --set train_samples=6000 --set eval_samples=0 --set max_grad_norm=0 --set subsample_rule=reference --set train_subsample_pool=8000 --set history_truncation=cut_right --set prompt_preset=reference --set separator=, --set num_threads=$THREADS"
# one process per core: e.g. SEEDS=1 VARIANTS=baseline and SEEDS=1 VARIANTS=full side by side (distinct runs only);
# the last process to finish, or a rerun with the defaults, writes the whole table
ctrsink ablate --data runs/data/mls50ts --out $R/mls_minilm_ref --seeds "${SEEDS:-1,2,3}" $REF \
  --variants "${VARIANTS:-baseline,full,sink+signal,carrier:separator+time_gap}"
