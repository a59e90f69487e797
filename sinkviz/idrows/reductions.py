"""Reductions of candidate-over-history distributions: pure numpy functions over (B, L) arrays, one value per row
(entropy, concentration, divergence between candidates, mass by time-gap bucket, at chunk boundaries, on the
candidate's category), and the temporal coefficients of a row's parameters."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import torch

from ctrsink.idview import HORIZON_DAYS, TAU_HOURS
from sinkviz.artifacts import ID_TABLE_COLUMNS

TOP_K = 3  # top attended behaviors compared with the candidate's category
MASS_SHARE = 0.9  # keys holding this share of the mass (concentration)
# SparseCTR-lite's RelTemporal components, in the order of its bias tables (ctrsink/idmodels/sparsectr.py)
LAMBDA_COMPONENTS = {4: ("log_dt", "rel_pos", "hour_diff", "weekday")}


def normalise(weights: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distribution over the L history keys (NaN rows where no mass is on real keys), outside mass share).

    `weights` (B, K >= L) non-negative, the first L columns the history keys, any further ones other keys.
    """
    length = mask.shape[1]
    hist = np.where(mask, weights[:, :length], 0.0)
    inside, total = hist.sum(1), weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where((inside > 0)[:, None], hist / inside[:, None], np.nan)
        outside = np.where(total > 0, 1.0 - inside / total, np.nan)
    return dist, outside


def entropy(dist: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) per row; NaN rows stay NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(dist > 0, dist * np.log(np.where(dist > 0, dist, 1.0)), 0.0)
    out = -terms.sum(1)
    return np.where(np.isnan(dist).any(1), np.nan, out)


def keys_for_mass(dist: np.ndarray, share: float = MASS_SHARE) -> np.ndarray:
    """Fewest keys holding `share` of each row's mass (float, NaN rows NaN)."""
    ordered = -np.sort(-np.nan_to_num(dist), axis=1)
    reached = np.cumsum(ordered, axis=1) >= share - 1e-9
    out = reached.argmax(1).astype(np.float64) + 1
    return np.where(np.isnan(dist).any(1), np.nan, out)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row in bits (0 = identical, 1 = disjoint support); NaN if either is NaN."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(a > 0, a / np.where(m > 0, m, 1.0), 1.0)
            return np.where(a > 0, a * np.log2(ratio), 0.0).sum(1)

    out = np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)
    return np.where(np.isnan(p).any(1) | np.isnan(q).any(1), np.nan, out)


def bucket_mass(dist: np.ndarray, bucket_ids: np.ndarray, n_ids: int) -> np.ndarray:
    """(B, n_ids) mass per bucket id (e.g. the batch's `hist_gap`); each non-NaN row sums to its total mass."""
    onehot = bucket_ids[:, :, None] == np.arange(n_ids)[None, None, :]
    return np.einsum("bl,blk->bk", np.nan_to_num(dist), onehot)


def boundary_tokens(ts: np.ndarray, mask: np.ndarray, gaps: int) -> np.ndarray:
    """(B, L) bool: the two behaviors on either side of each of the row's `gaps` largest time gaps.

    Mirrors SparseCTR-lite's personalised chunking (same gaps, earliest first among equal ones), so for that row
    these are exactly the tokens at chunk edges; for the other rows it is the same rule on the same timestamps.
    """
    b, length = ts.shape
    diff = np.full((b, length), -np.inf)
    real = mask[:, 1:] & mask[:, :-1]
    diff[:, 1:] = np.where(real, (ts[:, 1:] - ts[:, :-1]).astype(np.float64), -np.inf)
    cut = np.zeros((b, length), dtype=bool)
    if gaps > 0 and length > 1:
        order = np.argsort(-diff, axis=1, kind="stable")[:, :gaps]
        np.put_along_axis(cut, order, True, axis=1)
    cut &= diff > -np.inf
    out = cut.copy()
    out[:, :-1] |= cut[:, 1:]  # the behavior before the gap
    return out


def top_category_overlap(
    dist: np.ndarray, cats: np.ndarray, target: np.ndarray, k: int = TOP_K
) -> np.ndarray:
    """Share of the top-min(k, n) attended behaviors whose category is the candidate's; NaN rows NaN."""
    n = (np.nan_to_num(dist) > 0).sum(1)
    order = np.argsort(-np.nan_to_num(dist), axis=1, kind="stable")[:, :k]
    same = np.take_along_axis(cats, order, axis=1) == target[:, None]
    take = np.arange(min(k, dist.shape[1]))[None, :] < np.minimum(n, k)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (same & take).sum(1) / take.sum(1)
    return np.where(np.isnan(dist).any(1) | (n == 0), np.nan, out)


def gap_hours(bucket: int, n_buckets: int) -> float:
    """Lower edge (hours) of a `hist_gap` id (1..n_buckets): inverts `time_gap_bucket` with the ID view's scale."""
    c = (n_buckets - 1) / math.log1p(HORIZON_DAYS * 24.0 / TAU_HOURS)
    return float(TAU_HOURS * math.expm1(max(bucket - 1, 0) / c))


def lambda_table(model: torch.nn.Module) -> pd.DataFrame:
    """Temporal bias coefficients per layer, head and component, from parameters named like lambda (or `lam`)."""
    rows = []
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1].lower()
        if "lambda" not in name.lower() and leaf not in ("lam", "lams"):
            continue
        values = param.detach().float().cpu().numpy()
        values = values.reshape(1, -1) if values.ndim < 2 else values.reshape(-1, values.shape[-1])
        found = re.search(r"(?:^|\.)(\d+)\.", name)
        layer = int(found.group(1)) if found else 0
        names = LAMBDA_COMPONENTS.get(values.shape[1], tuple(f"c{i}" for i in range(values.shape[1])))
        shared = values.shape[0] == 1
        for h, row in enumerate(values):
            for c, value in enumerate(row):
                rows.append((name, layer, -1 if shared else h, names[c], float(value)))
    return pd.DataFrame(rows, columns=list(ID_TABLE_COLUMNS["lambdas"])).astype(
        {"layer": "int64", "head": "int64", "value": "float64"}
    )
