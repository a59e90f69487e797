"""A run's test metrics on the reference code's own 2,000 test rows, read from its predictions_test.parquet.

The reference reports test AUC on a 2,000-row `RandomState(0)` subset of the test split
(../shared/reference/reference-baseline.md). A run scored on the full test split (data prepared with
`--split-rule timestamp`) holds those rows among its predictions; this picks them out, so a full-split run compares
with the reference's 0.745-0.753 row for row.

python scripts/reference_rows_auc.py results/mls_minilm_ref/runs/baseline/seed1 [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ctrsink.data import load_sample_set
from ctrsink.metrics import ctr_metrics
from ctrsink.run import PREDICTIONS_TEST_FILE
from ctrsink.sampling import subsample

REFERENCE_TEST_ROWS = 2000


def reference_rows_metrics(run: Path) -> dict[str, float]:
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    pred = pd.read_parquet(run / PREDICTIONS_TEST_FILE)
    tables, _, _ = load_sample_set(info["data_dir"])
    test = tables["test"].to_pandas()
    if len(pred) != len(test):
        raise SystemExit(
            f"{run}: scored {len(pred)} of {len(test)} test rows; this needs the full test split"
        )
    rows = subsample(test, REFERENCE_TEST_ROWS, seed=0, rule="reference")["sample_id"]
    picked = pred[pred["sample_id"].isin(set(rows))]
    assert len(picked) == REFERENCE_TEST_ROWS, len(picked)
    out = ctr_metrics(picked["label"].to_numpy(), picked["logit"].to_numpy(), picked["user_code"].to_numpy())
    full = ctr_metrics(pred["label"].to_numpy(), pred["logit"].to_numpy(), pred["user_code"].to_numpy())
    return {
        **{f"ref2000_{k}": v for k, v in out.items()},
        **{f"full_{k}": v for k, v in full.items()},
        "positive_rate_ref2000": float(np.mean(picked["label"])),
    }


def main(runs: list[str]) -> None:
    rows = [{"run": r, **reference_rows_metrics(Path(r))} for r in runs]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main(sys.argv[1:])
