"""Yardsticks for docs/RESULTS.md: logistic regression on hand-made history features of the SAME prepared samples
(train split -> test split), with and without time. Shows what the planted structure allows on these splits.

    python scripts/feature_baselines.py --data runs/data/synthetic
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.linear_model import LogisticRegression

from ctrsink.data import load_sample_set
from ctrsink.metrics import ctr_metrics


def features(frame, genres: list[set[str]], with_time: bool) -> np.ndarray:
    rows = []
    for r in frame.itertuples():
        target = genres[r.item_idx]
        related = [bool(target & genres[i]) for i in r.pos_item_idx]
        gaps = [r.timestamp - t for t, rel in zip(r.pos_timestamp, related) if rel]
        n_pos, n_neg = len(r.pos_item_idx), len(r.neg_item_idx)
        f = [sum(related[-3:]), sum(related[-5:]), sum(related), n_pos / max(1, n_pos + n_neg)]
        if with_time:
            f += [
                any(g <= 7200 for g in gaps),
                any(g <= 86400 for g in gaps),
                np.log1p(min(gaps) / 3600) if gaps else 10.0,
            ]
        rows.append(f)
    return np.asarray(rows, dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    splits, items, _ = load_sample_set(args.data)
    genres = [set(c.split("|")) for c in items.to_pandas()["categories"]]
    train, test = splits["train"].to_pandas(), splits["test"].to_pandas()
    out = {}
    for name, with_time in (("order_only", False), ("time_aware", True)):
        model = LogisticRegression(max_iter=1000).fit(features(train, genres, with_time), train["label"])
        logit = model.decision_function(features(test, genres, with_time))
        m = ctr_metrics(test["label"].to_numpy(), logit, test["user_id"].to_numpy())
        out[name] = {k: round(m[k], 4) for k in ("auc", "logloss", "gauc")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
