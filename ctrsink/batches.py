"""Samples -> model batches: behavior selection, text rendering, sink signal ids, padding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ctrsink.config import Config
from ctrsink.sinks.signals import sink_signal_ids
from ctrsink.text import FieldEncoding, TextRenderer, pad_field


class SampleDataset(Dataset):
    """Rows of one split as plain dicts; `order` (set per epoch) lets a seeded shuffle survive resume."""

    def __init__(self, frame: pd.DataFrame, user_codes: dict[str, int]) -> None:
        self.rows = frame.to_dict("records")
        for r in self.rows:
            r["user_code"] = user_codes.get(str(r["user_id"]), -1)
        self.order = np.arange(len(self.rows))

    def set_order(self, order: np.ndarray) -> None:
        self.order = np.asarray(order)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[int(self.order[i])]


class Batcher:
    """Callable collate function. Holds what rendering needs: renderer, config, optional item vectors."""

    def __init__(self, renderer: TextRenderer, cfg: Config, item_vectors: np.ndarray | None = None) -> None:
        self.renderer = renderer
        self.cfg = cfg
        self.item_vectors = item_vectors  # L2-normalised, one row per item_idx (for similarity)
        self.pad_id = renderer.tok.pad_token_id

    def select(self, row: dict[str, Any], field: str) -> tuple[np.ndarray, np.ndarray | None]:
        """-> (stored-history indices to keep in display order, similarity of every stored behavior or None)."""
        items = np.asarray(row[f"{field}_item_idx"], dtype=np.int64)
        n, k = len(items), self.cfg.num_behaviors
        sims = None
        if self.item_vectors is not None and n:
            sims = self.item_vectors[items] @ self.item_vectors[int(row["item_idx"])]
        if self.cfg.behavior_selection == "similarity" and sims is not None:
            # top-k by similarity, most similar first (the reference's retrieval order)
            order = np.argsort(-sims, kind="stable")[:k]
        else:
            order = np.arange(max(0, n - k), n)
        return order, sims

    def carriers(self, enc: FieldEncoding) -> tuple[list[int], list[int]]:
        """(positions that carry the sink signal, the kept behavior each follows): the sinks, or with
        signal_carrier=separator the first token of the separator after each behavior but the last, i.e. the
        token the sink would have stood right before. Same behaviors, same signal ids, one row each."""
        if self.cfg.signal_carrier == "separator":
            return enc.separator_positions, enc.separator_behavior
        return (enc.sink_positions, enc.sink_behavior) if self.cfg.use_sink else ([], [])

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        sims = {}
        for f in self.renderer.history_fields:
            row[f"{f}_order"], sims[f] = self.select(row, f)
            if self.cfg.behavior_selection == "similarity" and sims[f] is not None:
                row[f"{f}_keep"] = "first"  # most similar first: truncation drops the least similar
        enc = self.renderer.encode(row)
        signals = {}
        for stream, f in enumerate(self.renderer.history_fields):
            e = enc[f]
            positions, follows = self.carriers(e)
            ids: list[int] = []
            if self.cfg.sink_signal != "off" and positions:
                ids = sink_signal_ids(
                    self.cfg.sink_signal,
                    n=self.cfg.sink_num_embeddings,
                    kept=e.kept,
                    sink_behavior=follows,
                    stored_len=len(row[f"{f}_item_idx"]),
                    timestamps=np.asarray(row[f"{f}_timestamp"]),
                    target_ts=int(row["timestamp"]),
                    sims=sims[f],
                    seed=self.cfg.seed,
                    sample_id=int(row["sample_id"]),
                    index_origin=self.cfg.index_origin,
                    time_gap_ref=self.cfg.time_gap_ref,
                    tau_hours=self.cfg.time_gap_tau_hours,
                    horizon_days=self.cfg.time_gap_horizon_days,
                    stream=stream,
                )
            per_token = [-1] * len(e.input_ids)
            for pos, s in zip(positions, ids):
                per_token[pos] = s
            signals[f] = per_token
        return {"enc": enc, "signals": signals, "row": row}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        encoded = [self.encode(r) for r in rows]
        fields = {}
        for f in self.renderer.fields:
            extra = (
                {"sink_signal_ids": [e["signals"][f] for e in encoded]}
                if f in self.renderer.history_fields
                else None
            )
            fields[f] = pad_field([e["enc"][f] for e in encoded], self.pad_id, extra)
        return {
            "fields": fields,
            "labels": torch.tensor([float(r["label"]) for r in rows]),
            "sample_id": torch.tensor([int(r["sample_id"]) for r in rows], dtype=torch.long),
            "user_code": torch.tensor([int(r.get("user_code", -1)) for r in rows], dtype=torch.long),
        }
