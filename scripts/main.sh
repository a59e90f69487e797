#!/usr/bin/env bash
# The main job on the bundled sample data: prepare -> fine-tune the pretrained MiniLM encoder as a baseline and as
# CTR-Sink (test metrics printed) -> a small scratch ablation with its controls and the comparison rows -> attention
# capture (the pretrained encoder before and after fine-tuning), interventions, head roles, attributions, figures
# -> the dashboard on http://127.0.0.1:${PORT:-8501}.
# Every step is skipped when its output exists, so a second run goes straight to the dashboard.
# NO_DASHBOARD=1 stops after the figures (CI, scripts); QUICK=1 runs the same steps on a few dozen samples (tests).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/demo}
if [ -n "${QUICK:-}" ]; then
  DEMO_ARGS=(--quick); ABLATE_SIZE=(--set train_samples=200 --set eval_samples=128); SAMPLES=16
else
  DEMO_ARGS=(); ABLATE_SIZE=(--set train_samples=800 --set eval_samples=400); SAMPLES=32
fi
# 1-3: prepare the sample data, fine-tune MiniLM without and with time-gap sinks, print test AUC / LogLoss / gAUC
ctrsink demo --out "$OUT" "${DEMO_ARGS[@]}"
# 4: a small scratch ablation (one seed) for the Ablations page: the paper's variants, their controls (the same
#    time-gap signal on the separators, or written into the text) and the ID-based comparison rows
[ -f "$OUT/ablation/summary.md" ] || ctrsink ablate --data "$OUT/data" \
  --variants baseline,sink+signal,full,carrier:separator+time_gap,text:time_gap,din,sparsectr_lite \
  --seeds 1 --out "$OUT/ablation" "${ABLATE_SIZE[@]}" \
  --set epochs=2 --set stage1_epochs=1 --set stage2_epochs=1 --set num_behaviors=6
# 5: where the attention goes: both MiniLM runs, and the CTR-Sink run at every kept epoch (epoch0 = the pretrained
#    encoder with sinks inserted, before any fine-tuning)
for run in baseline ctrsink; do
  [ -f "$OUT/$run/analysis/manifest.json" ] || \
    sinkviz capture --run "$OUT/$run" --split test --samples "$SAMPLES" --out "$OUT/$run/analysis"
done
[ -f "$OUT/ctrsink/epochs/epoch0/manifest.json" ] || \
  sinkviz capture --run "$OUT/ctrsink" --split test --samples "$SAMPLES" --every-epoch --out "$OUT/ctrsink/epochs"
[ -f "$OUT/sparsectr_lite/analysis/manifest.json" ] || \
  sinkviz capture --run "$OUT/ablation/runs/sparsectr_lite/seed1" --split test --samples 256 \
    --out "$OUT/sparsectr_lite/analysis"
# 6: what the model uses: interventions (no head grid: 72 MiniLM heads cost too much here), head roles and
#    deletion curves of each explanation
[ -f "$OUT/ctrsink/studies/interventions.json" ] || {
  sinkviz intervene --run "$OUT/ctrsink" --split test --samples "$SAMPLES" --no-heads --n-boot 200 \
    --out "$OUT/ctrsink/studies"
  sinkviz heads --run "$OUT/ctrsink" --split test --samples "$SAMPLES" --out "$OUT/ctrsink/studies"
  sinkviz faithfulness --run "$OUT/ctrsink" --split test --samples 4 --max-k 2 --random-draws 1 --n-steps 4 \
    --n-boot 200 --out "$OUT/ctrsink/studies"
}
[ -f "$OUT/ctrsink/analysis/attributions.parquet" ] || \
  sinkviz attribute --run "$OUT/ctrsink" --split test --samples 4 --out "$OUT/ctrsink/analysis"
sinkviz figures --analysis "$OUT/ctrsink/analysis" --compare "$OUT/baseline/analysis" --ablation "$OUT/ablation" \
  --out "$OUT/figures"
echo "figures in $OUT/figures"
[ -n "${NO_DASHBOARD:-}" ] && exit 0
echo "dashboard: http://127.0.0.1:${PORT:-8501}  (Ctrl-C to stop)"
exec streamlit run app/app.py --server.headless true --server.address "${ADDRESS:-127.0.0.1}" \
  --server.port "${PORT:-8501}" --browser.gatherUsageStats false -- --root "$OUT" ${READ_ONLY:+--read-only}
