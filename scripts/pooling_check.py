"""docs/RESULTS.md §2: test metrics of the MiniLM `full` runs with all-token and with sink-only pooling, on the same
seeded 500-sample test subset the runs were evaluated on (post hoc: the checkpoints were selected on all-token
pooling). Run after scripts/results_movielens.sh: python scripts/pooling_check.py
"""

import json

import torch

from ctrsink.data import load_sample_set
from ctrsink.metrics import ctr_metrics
from ctrsink.run import load_run, score_rows
from ctrsink.sampling import subsample as _subsample

torch.set_num_threads(2)
splits, _, _ = load_sample_set("runs/data/mls")
test = splits["test"].to_pandas()
out = {}
for seed in (1, 2, 3):
    b = load_run(f"runs/results/mls_minilm/runs/full/seed{seed}")
    frame = _subsample(test, b.cfg.eval_samples, b.cfg.seed + 1)
    users = {u: i for i, u in enumerate(sorted(frame["user_id"].astype(str).unique()))}
    rows = frame.to_dict("records")
    for r in rows:
        r["user_code"] = users[str(r["user_id"])]
    for pooling in ("all_tokens", "sink_only"):
        logits = score_rows(b, rows, pooling=pooling)
        m = ctr_metrics(frame["label"].to_numpy(), logits, frame["user_id"].astype(str).to_numpy())
        out[f"{seed}/{pooling}"] = {k: round(m[k], 4) for k in ("auc", "logloss", "gauc")}
        print(seed, pooling, out[f"{seed}/{pooling}"], flush=True)
json.dump(out, open("runs/results/mls_minilm/sink_only_test.json", "w"), indent=1)
