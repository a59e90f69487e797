#!/usr/bin/env bash
# The main job on the bundled sample data: prepare -> baseline and CTR-Sink training (test metrics printed) -> a
# small ablation with the comparison rows -> attention capture, attributions, figures -> the dashboard on http://localhost:${PORT:-8501}.
# Every step is skipped when its output exists, so a second run goes straight to the dashboard.
# NO_DASHBOARD=1 stops after the figures (CI, scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/demo}
# 1-3: prepare the sample data, train baseline and CTR-Sink (time-gap sinks), print test AUC / LogLoss / gAUC
ctrsink demo --out "$OUT"
# 4: a small ablation (one seed, a subset of the training split) for the dashboard's ablation page, with the
#    ID-based comparison rows (DIN, SparseCTR-lite, SRP4CTR-lite) on the same samples
[ -f "$OUT/ablation/summary.md" ] || ctrsink ablate --data "$OUT/data" \
  --variants baseline,sink+signal,full,din,sparsectr_lite,srp4ctr_lite \
  --seeds 1 --out "$OUT/ablation" --set train_samples=1500 --set epochs=2 --set stage1_epochs=1 --set stage2_epochs=1
# 5: where the attention goes
for run in baseline ctrsink; do
  [ -f "$OUT/$run/analysis/manifest.json" ] || \
    sinkviz capture --run "$OUT/$run" --split test --samples 256 --out "$OUT/$run/analysis"
done
[ -f "$OUT/sparsectr_lite/analysis/manifest.json" ] || \
  sinkviz capture --run "$OUT/ablation/runs/sparsectr_lite/seed1" --split test --samples 256 \
    --out "$OUT/sparsectr_lite/analysis"
[ -f "$OUT/ctrsink/analysis/attributions.parquet" ] || \
  sinkviz attribute --run "$OUT/ctrsink" --split test --samples 8 --out "$OUT/ctrsink/analysis"
sinkviz figures --analysis "$OUT/ctrsink/analysis" --compare "$OUT/baseline/analysis" --ablation "$OUT/ablation" \
  --out "$OUT/figures"
echo "figures in $OUT/figures"
[ -n "${NO_DASHBOARD:-}" ] && exit 0
echo "dashboard: http://localhost:${PORT:-8501}  (Ctrl-C to stop)"
exec streamlit run app/app.py --server.headless true --server.address "${ADDRESS:-127.0.0.1}" \
  --server.port "${PORT:-8501}" --browser.gatherUsageStats false -- --root "$OUT" ${READ_ONLY:+--read-only}
