"""Sink signals (spec §4): which bucket each sink's embedding comes from, and the module that puts it on sink rows
(or adds it to separator rows, the `signal_carrier=separator` control)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def time_gap_bucket(gap_seconds: np.ndarray, n: int, tau_hours: float, horizon_days: float) -> np.ndarray:
    """Log-bucketed elapsed time: floor(c * ln(1 + gap / tau)), c = (n-1) / ln(1 + horizon / tau), clipped to [0, n-1].

    A gap at or beyond the horizon is n-1 exactly: c * ln(1 + horizon / tau) rounds to just below n-1 for many
    (n, tau, horizon), so the floor alone would put the horizon in bucket n-2.
    """
    tau = tau_hours * 3600.0
    horizon = horizon_days * 86400.0
    c = (n - 1) / math.log1p(horizon / tau)
    gap = np.clip(np.asarray(gap_seconds, dtype=np.float64), 0.0, None)
    ids = np.minimum(n - 1, np.floor(c * np.log1p(gap / tau)))
    return np.where(gap >= horizon, n - 1, ids).astype(np.int64)


def time_gap_bucket_start(bucket: int, n: int, tau_hours: float, horizon_days: float) -> float:
    """The smallest gap (seconds) in `bucket` of `time_gap_bucket`: tau * (exp(bucket / c) - 1); n-1 -> the horizon."""
    if bucket >= n - 1:
        return horizon_days * 86400.0
    tau = tau_hours * 3600.0
    c = (n - 1) / math.log1p(horizon_days * 86400.0 / tau)
    return tau * math.expm1(max(bucket, 0) / c)


def similarity_bucket(sims: np.ndarray, n: int) -> np.ndarray:
    """Min-max scaled over the field's kept behaviors; all equal -> n-1 (as the reference)."""
    sims = np.asarray(sims, dtype=np.float64)
    if sims.size == 0:
        return sims.astype(np.int64)
    lo, hi = sims.min(), sims.max()
    if hi - lo < 1e-12:
        return np.full(sims.shape, n - 1, dtype=np.int64)
    return np.floor((sims - lo) / (hi - lo) * (n - 1)).astype(np.int64)


def sink_signal_ids(
    kind: str,
    *,
    n: int,
    kept: list[int],
    sink_behavior: list[int],
    stored_len: int,
    timestamps: np.ndarray,
    target_ts: int,
    sims: np.ndarray | None,
    seed: int,
    sample_id: int,
    index_origin: str = "oldest",
    time_gap_ref: str = "target",
    tau_hours: float = 1.0,
    horizon_days: float = 365.0,
    stream: int = 0,
) -> list[int]:
    """One bucket id per sink. The sink after kept behavior k carries behavior k's signal.

    `stream` separates the `random` draws of a sample's history fields (0 keeps the original seeding).
    """
    if not sink_behavior:
        return []
    stored = np.asarray([kept[k] for k in sink_behavior], dtype=np.int64)  # index into the stored history
    if kind == "none":
        ids = np.zeros(len(stored), dtype=np.int64)
    elif kind == "index":
        pos = stored if index_origin == "oldest" else stored_len - 1 - stored
        ids = np.clip(pos, 0, n - 1)
    elif kind == "time_gap":
        ts = np.asarray(timestamps, dtype=np.int64)
        if time_gap_ref == "target":
            gaps = target_ts - ts[stored]
        else:  # gap to the next kept behavior
            nxt = np.asarray([kept[k + 1] for k in sink_behavior], dtype=np.int64)
            gaps = ts[nxt] - ts[stored]
        ids = time_gap_bucket(gaps, n, tau_hours, horizon_days)
    elif kind == "similarity":
        if sims is None:  # no item vectors: all scores equal, so every id is n-1 (spec §4, as the reference)
            sims = np.zeros(stored_len, dtype=np.float64)
        all_kept = similarity_bucket(np.asarray(sims)[np.asarray(kept)], n)
        ids = all_kept[np.asarray(sink_behavior)]
    elif kind == "random":  # seeded once per sample, identical at train and eval (spec weakness #10)
        key = [seed, int(sample_id)] + ([int(stream)] if stream else [])
        ids = np.random.default_rng(key).integers(0, n, size=len(stored))
    else:
        raise ValueError(kind)
    return ids.astype(np.int64).tolist()


SIGNAL_MODES = ("replace", "add")


class SinkSignalEmbedding(nn.Module):
    """e_k = W E[s_k] + b at every position that carries a signal (spec §4).

    mode 'replace': the row becomes e_k (a sink token: its own embedding carries nothing of the behavior).
    mode 'add': the row becomes word + e_k (a separator carrying the signal, `signal_carrier=separator`): the
    separator stays a separator, so the text the model reads is the baseline's.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, hidden_size: int, mode: str = "replace"
    ) -> None:
        super().__init__()
        if mode not in SIGNAL_MODES:
            raise ValueError(mode)
        self.mode = mode
        self.table = nn.Embedding(num_embeddings, embedding_dim)
        self.proj = nn.Linear(embedding_dim, hidden_size)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, token_embeds: torch.Tensor, signal_ids: torch.Tensor) -> torch.Tensor:
        """`signal_ids` (B, T): bucket id at the carrying positions (sinks or separators), -1 elsewhere."""
        carries = signal_ids >= 0
        if not bool(carries.any()):
            return token_embeds
        signal = self.proj(self.table(signal_ids.clamp(min=0))).to(token_embeds.dtype)
        if self.mode == "add":
            return token_embeds + torch.where(carries.unsqueeze(-1), signal, torch.zeros_like(signal))
        return torch.where(carries.unsqueeze(-1), signal, token_embeds)
