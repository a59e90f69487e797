"""Evaluate a run on a split, or write one score per sample (pooling: the run's `eval_pooling` unless given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrsink.errors import CtrSinkError
from ctrsink.metrics import ctr_metrics
from ctrsink.run import load_run, score_rows

SPLITS = ("train", "valid", "test")


def _split_frame(data_dir: str | Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ctrsink.data import load_sample_set

    if split not in SPLITS:
        raise CtrSinkError(f"option '--split': {split!r} is not one of {', '.join(SPLITS)}")
    splits, items, _ = load_sample_set(data_dir)
    frame = splits[split]
    frame = frame.to_pandas() if hasattr(frame, "to_pandas") else frame
    items = items.to_pandas() if hasattr(items, "to_pandas") else items
    return frame, items


def predict(
    run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test", pooling: str | None = None
) -> pd.DataFrame:
    """One row per sample: sample_id, user_id, item_id, label, logit, score."""
    return _scores(run_dir, data_dir, split, pooling)[0]


def evaluate(
    run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test", pooling: str | None = None
) -> dict[str, Any]:
    """CTR metrics of a run on a split, and the pooling they were scored with."""
    scores, pooling = _scores(run_dir, data_dir, split, pooling)
    metrics = ctr_metrics(
        scores["label"].to_numpy(), scores["logit"].to_numpy(), scores["user_id"].to_numpy()
    )
    return {"run": str(run_dir), "split": split, "pooling": pooling, **metrics}


def _scores(
    run_dir: str | Path, data_dir: str | Path | None, split: str, pooling: str | None
) -> tuple[pd.DataFrame, str]:
    bundle = load_run(run_dir)
    pooling = pooling or bundle.cfg.eval_pooling
    frame, items = _split_frame(data_dir or bundle.info["data_dir"], split)
    logits = score_rows(bundle, frame.to_dict("records"), pooling=pooling)
    scores = pd.DataFrame(
        {
            "sample_id": frame["sample_id"].to_numpy(),
            "user_id": frame["user_id"].astype(str).to_numpy(),
            "item_id": items["item_id"].to_numpy()[frame["item_idx"].to_numpy()],
            "label": frame["label"].to_numpy(),
            "logit": logits,
            "score": 1.0 / (1.0 + np.exp(-logits.astype(np.float64))),
        }
    )
    return scores, pooling
