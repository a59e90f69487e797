"""The ID view of the sample table: the same rows CTR-Sink reads as text, as item / category / feedback / time ids.

Per sample, each history field keeps the behaviors the text view keeps (its `num_behaviors` most recent), and the
fields are merged into one chronological sequence whose feedback id says which field a behavior came from. So an
ID row and a CTR-Sink row see the same behaviors of the same samples, and per-sample predictions join on
`sample_id`. The tensor layout is documented in `ctrsink.idmodels.common`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctrsink.config import Config
from ctrsink.idmodels.common import IDVocab
from ctrsink.sinks.signals import time_gap_bucket

TAU_HOURS, HORIZON_DAYS = 1.0, 365.0  # the same log buckets as the time-gap sink signal's defaults


def first_category(categories: pd.Series) -> pd.Series:
    """The first listed category of each item ('Adventure|Animation' -> 'Adventure'); '' when none."""
    return categories.fillna("").astype(str).str.split("|").str[0].str.strip()


def hour_and_weekday(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTC hour 1-24 and weekday 1-7 (Monday = 1) of Unix seconds; callers zero the padding."""
    ts = np.asarray(ts, dtype=np.int64)
    return (ts // 3600) % 24 + 1, (ts // 86400 + 3) % 7 + 1  # 1970-01-01 was a Thursday


class IDBatcher:
    """Collate function of the ID rows: sample dicts -> {"fields": id tensors, "labels", "sample_id", "user_code"}."""

    def __init__(self, items: pd.DataFrame, cfg: Config, history_fields: list[str]) -> None:
        self.cfg = cfg
        self.history_fields = list(history_fields)
        cats = first_category(items["categories"] if "categories" in items else pd.Series([""] * len(items)))
        names = sorted(cats.unique())
        self.category_names = names
        self.item_cat = np.asarray(pd.Index(names).get_indexer(cats) + 1, dtype=np.int64)  # by item_idx
        self.n_buckets = cfg.id_model.time_buckets
        # gap ids: 1..n buckets, n + 1 = "no previous behavior"
        self.vocab = IDVocab(items=len(items) + 1, cats=len(names) + 1, time_buckets=self.n_buckets + 2)
        self.max_len = cfg.num_behaviors * len(self.history_fields)

    def behaviors(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item_idx, timestamp, label) of the kept behaviors, merged oldest first (ties keep field order)."""
        k = self.cfg.num_behaviors
        parts = [
            (
                np.asarray(row[f"{f}_item_idx"], dtype=np.int64)[-k:],
                np.asarray(row[f"{f}_timestamp"], dtype=np.int64)[-k:],
                np.asarray(row[f"{f}_label"], dtype=np.int64)[-k:],
            )
            for f in self.history_fields
        ]
        items, ts, labels = (np.concatenate([p[i] for p in parts]) for i in range(3))
        order = np.argsort(ts, kind="stable")
        return items[order], ts[order], labels[order]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        b, length = len(rows), self.max_len
        out = {
            k: np.zeros((b, length), dtype=np.int64)
            for k in ("hist_item", "hist_cat", "hist_feedback", "hist_gap", "hist_prev_gap", "hist_ts")
        }
        group = np.zeros(b, dtype=np.int64)
        for i, row in enumerate(rows):
            items, ts, labels = self.behaviors(row)
            n = len(items)
            if n:
                s = slice(length - n, length)  # left padding: the newest behavior sits next to the candidate
                out["hist_item"][i, s] = items + 1
                out["hist_cat"][i, s] = self.item_cat[items]
                out["hist_feedback"][i, s] = np.clip(labels, 0, 1) + 1
                out["hist_ts"][i, s] = ts
                out["hist_gap"][i, s] = self._bucket(int(row["timestamp"]) - ts) + 1
                prev = np.full(n, self.n_buckets + 1, dtype=np.int64)
                prev[1:] = self._bucket(np.diff(ts)) + 1
                out["hist_prev_gap"][i, s] = prev
            digest = hashlib.blake2b(digest_size=7)
            digest.update(str(row.get("user_id", "")).encode())
            for key in ("hist_item", "hist_feedback", "hist_ts"):
                digest.update(out[key][i].tobytes())
            group[i] = int.from_bytes(digest.digest(), "little")
        mask = out["hist_item"] > 0
        hour, weekday = hour_and_weekday(out["hist_ts"])
        out["hist_hour"], out["hist_weekday"] = np.where(mask, hour, 0), np.where(mask, weekday, 0)
        target_ts = np.asarray([int(r["timestamp"]) for r in rows], dtype=np.int64)
        t_hour, t_weekday = hour_and_weekday(target_ts)
        target_item = np.asarray([int(r["item_idx"]) for r in rows], dtype=np.int64)
        fields = {k: torch.from_numpy(v) for k, v in out.items()}
        fields.update(
            hist_mask=torch.from_numpy(mask),
            target_item=torch.from_numpy(target_item + 1),
            target_cat=torch.from_numpy(self.item_cat[target_item]),
            target_ts=torch.from_numpy(target_ts),
            target_hour=torch.from_numpy(t_hour),
            target_weekday=torch.from_numpy(t_weekday),
            user_code=torch.tensor([int(r.get("user_code", -1)) for r in rows], dtype=torch.long),
            group=torch.from_numpy(group),
        )
        return {
            "fields": fields,
            "labels": torch.tensor([float(r["label"]) for r in rows]),
            "sample_id": torch.tensor([int(r["sample_id"]) for r in rows], dtype=torch.long),
            "user_code": fields["user_code"],
        }

    def _bucket(self, gaps: np.ndarray) -> np.ndarray:
        return time_gap_bucket(gaps, self.n_buckets, TAU_HOURS, HORIZON_DAYS)
