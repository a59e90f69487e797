"""One analysed sample: its row in the sample set, its history as a table, and what-if edits of that history.

Kept behavior k (the index in analysis and attribution tables) is the stored behavior the model's batcher put at
position k: `FieldEncoding.kept`, recorded by `sinkviz capture` in the analysis' `kept` table. With `recent`
selection that is the most recent behaviors, oldest first; with `similarity` the most similar, most similar first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import discover
import numpy as np
import pandas as pd

HOUR = 3600.0
Kept = dict[str, list[int]]  # per history field: the stored-history index of kept behavior k


def sample_row(root: str | Path, manifest: dict[str, Any], sample_id: int) -> dict[str, Any]:
    """The sample's row (a dict in the sample schema) from the data and split the analysis was captured on."""
    split = discover.load_split(root, manifest["data_dir"], manifest.get("split", "test"))
    if sample_id not in split.index:
        raise KeyError(
            f"sample {sample_id} is not in the {manifest.get('split')} split of {manifest['data_dir']}"
        )
    return split.loc[sample_id].to_dict()


def kept_counts(
    tokens: pd.DataFrame | None, attributions: pd.DataFrame | None, sample_id: int
) -> dict[str, int]:
    """Behaviors the model saw per field, from the token table or the attribution table of the sample."""
    out: dict[str, int] = {}
    for table, col in ((attributions, "behavior"), (tokens, "behavior_index")):
        if table is None or table.empty:
            continue
        rows = table[(table["sample_id"] == sample_id) & (table[col] >= 0)]
        if "role" in rows.columns:
            rows = rows[rows["role"] == "behavior"]
        for fld, part in rows.groupby("field"):
            out.setdefault(str(fld), int(part[col].max()) + 1)
    return out


def recent_kept(row: dict[str, Any], fields: list[str], num_behaviors: int, counts: dict[str, int]) -> Kept:
    """The fallback for analyses without a `kept` table: the most recent behaviors, oldest first (right only for
    `recent` selection); `counts` (from `kept_counts`) covers histories the token budget truncated."""
    out = {}
    for f in fields:
        n = len(row[f"{f}_item_idx"])
        n_kept = counts.get(f, min(n, num_behaviors))
        out[f] = list(range(n - n_kept, n))
    return out


def history_frame(row: dict[str, Any], fields: list[str], items: pd.DataFrame, kept: Kept) -> pd.DataFrame:
    """Stored behaviors of each history field: position, item, title, hours before the target, kept index k."""
    rows = []
    for f in fields:
        idx = np.asarray(row[f"{f}_item_idx"], dtype=np.int64)
        ts = np.asarray(row[f"{f}_timestamp"], dtype=np.int64)
        labels = np.asarray(row.get(f"{f}_label", np.zeros(len(idx))), dtype=np.int64)
        k_of = {int(j): k for k, j in enumerate(kept.get(f, []))}
        for i in range(len(idx)):
            k = k_of.get(i, -1)
            rows.append(
                {
                    "field": f,
                    "position": i,
                    "item_idx": int(idx[i]),
                    "title": item_title(items, int(idx[i])),
                    "timestamp": int(ts[i]),
                    "hours_before": (int(row["timestamp"]) - int(ts[i])) / HOUR,
                    "label": int(labels[i]),
                    "kept": k >= 0,
                    "k": k,
                }
            )
    return pd.DataFrame(
        rows,
        columns=["field", "position", "item_idx", "title", "timestamp", "hours_before", "label", "kept", "k"],
    )


def item_title(items: pd.DataFrame, item_idx: int) -> str:
    return str(items.at[item_idx, "title"]) if item_idx in items.index else f"item {item_idx} (unknown)"


def with_attributions(
    history: pd.DataFrame, attributions: pd.DataFrame | None, sample_id: int
) -> pd.DataFrame:
    """Adds `attribution` (integrated gradients) and `occlusion` per kept behavior, NaN elsewhere."""
    out = history.assign(attribution=np.nan, occlusion=np.nan)
    if attributions is None or attributions.empty:
        return out
    rows = attributions[(attributions["sample_id"] == sample_id) & (attributions["role"] == "behavior")]
    for method, col in (("integrated_gradients", "attribution"), ("occlusion", "occlusion")):
        part = rows[rows["method"] == method].set_index(["field", "behavior"])["attr_sum"]
        out[col] = [part.get((f, k), np.nan) if k >= 0 else np.nan for f, k in zip(out["field"], out["k"])]
    return out


# ------------------------------------------------------------------------------------------------ what-if


def editable(history: pd.DataFrame, field: str) -> pd.DataFrame:
    """The table a what-if editor starts from for one field (position decides the order)."""
    part = history[history["field"] == field]
    return pd.DataFrame(
        {
            "position": part["position"].astype("int64").to_numpy(),
            "item_idx": part["item_idx"].astype("int64").to_numpy(),
            "title": part["title"].astype(str).to_numpy(),
            "hours_before": part["hours_before"].astype(float).to_numpy(),
            "label": part["label"].astype("int64").to_numpy(),
        }
    )


def edited_field(
    table: pd.DataFrame, target_ts: int, n_items: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """An edited history table -> the field's arrays (ordered by position), and notes on rows left out."""
    notes = []
    t = table.copy()
    bad_item = t["item_idx"].isna() | ~t["item_idx"].fillna(-1).astype(float).between(0, n_items - 1)
    if bad_item.any():
        notes.append(f"{int(bad_item.sum())} row(s) without a valid item_idx (0..{n_items - 1}) left out")
        t = t[~bad_item]
    t = t.assign(
        position=pd.to_numeric(t["position"], errors="coerce").fillna(np.inf),
        hours_before=pd.to_numeric(t["hours_before"], errors="coerce").fillna(0.0),
        label=pd.to_numeric(t["label"], errors="coerce").fillna(1).astype(np.int64),
        order=np.arange(len(t)),
    ).sort_values(["position", "order"], kind="stable")
    ts = np.rint(target_ts - t["hours_before"].to_numpy(dtype=float) * HOUR).astype(np.int64)
    return {
        "item_idx": t["item_idx"].astype(np.int64).to_numpy(),
        "timestamp": ts,
        "label": t["label"].to_numpy(dtype=np.int64),
    }, notes


def edited_row(
    row: dict[str, Any], tables: dict[str, pd.DataFrame], n_items: int
) -> tuple[dict[str, Any], list[str]]:
    """The sample row with each history field replaced by its edited table."""
    out = dict(row)
    notes = []
    for f, table in tables.items():
        arrays, field_notes = edited_field(table, int(row["timestamp"]), n_items)
        notes += [f"{f}: {n}" for n in field_notes]
        for key, value in arrays.items():
            out[f"{f}_{key}"] = value
    return out, notes


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, np.generic):
            out[k] = v.item()
        elif isinstance(v, float) and v != v:
            out[k] = None
        else:
            out[k] = v
    return out
