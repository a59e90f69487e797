"""The samples a run reads: the prepared sample set as pandas, cut to the run's seeded subsets.

Shared by `ctrsink.train` and `ctrsink.pretrain`, so pre-training an encoder never sees more of the training split
than the fine-tuning run that asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrsink.config import Config

SPLITS = ("train", "valid", "test")


def subsample(frame: pd.DataFrame, n: int, seed: int, rule: str = "seeded", pool: int = 0) -> pd.DataFrame:
    """`n` rows in their original order; the whole frame when n <= 0 or n >= its length.

    A draw of max(n, pool) rows, sorted, then its first n: with pool > n the rows come from the early part of the
    split (the reference's 6,000 of 8,000). rule "seeded" draws with `seed`; "reference" draws as the reference
    code does, `numpy.random.RandomState(0).permutation`, so every seed trains on the same rows.
    """
    if n <= 0 or n >= len(frame):
        return frame
    size = min(max(n, pool), len(frame))
    if rule == "reference":
        drawn = np.random.RandomState(0).permutation(len(frame))[:size]
    else:
        drawn = np.random.default_rng(seed).choice(len(frame), size=size, replace=False)
    keep = np.sort(drawn)[:n]
    return frame.iloc[keep].reset_index(drop=True)


def as_pandas(table: Any) -> pd.DataFrame:
    return table.to_pandas() if hasattr(table, "to_pandas") else table


@dataclass
class Samples:
    """What a run trains and evaluates on (frames keyed by split, already subsampled)."""

    frames: dict[str, pd.DataFrame]
    items: pd.DataFrame
    manifest: dict[str, Any]

    @property
    def history_fields(self) -> list[str]:
        return list(self.manifest["history_fields"])


def load_samples(data_dir: str | Path, cfg: Config, splits: tuple[str, ...] = SPLITS) -> Samples:
    """The sample set with `train_samples` of train (seed `cfg.seed`) and `eval_samples` of valid and of test
    (seed `cfg.seed + 1` for both), drawn by `cfg.subsample_rule`."""
    from ctrsink.data import load_sample_set

    tables, items, manifest = load_sample_set(data_dir)
    frames = {}
    for split in splits:
        n, seed = (cfg.train_samples, cfg.seed) if split == "train" else (cfg.eval_samples, cfg.seed + 1)
        pool = cfg.train_subsample_pool if split == "train" else 0
        frames[split] = subsample(as_pandas(tables[split]), n, seed, cfg.subsample_rule, pool)
    return Samples(frames, as_pandas(items), manifest)
