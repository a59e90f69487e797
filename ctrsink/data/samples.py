"""Samples: one row per target interaction with its chronological history strictly before it, split by time.

Everything is vectorised: interactions are sorted by a composite key `user_code << 32 | (ts - min_ts)`,
so "behaviors of this user strictly before time t" is one `searchsorted` range per target, and history
lists are gathered with `np.repeat`/`arange` into Arrow list arrays.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ctrsink.atomic import atomic_dir
from ctrsink.data.generic import load_generic
from ctrsink.data.kuairec import load_kuairec
from ctrsink.data.manifest import (
    ITEMS_FILE,
    SCHEMA_VERSION,
    SPLIT_FILES,
    SPLITS,
    is_sample_set_dir,
    read_manifest,
    time_range,
    verify_files,
    write_sample_files,
)
from ctrsink.data.movielens import load_movielens
from ctrsink.data.schema import LogTables, drop_unknown_items, validate_interactions, validate_items
from ctrsink.errors import CtrSinkError

SPLIT_RULES = ("position", "timestamp")
HISTORY_FIELDS = {"split": ("pos", "neg"), "single": ("all",)}
LOADERS: dict[str, Callable[..., LogTables]] = {
    "movielens": load_movielens,
    "kuairec": load_kuairec,
    "csv": load_generic,
}
_MANIFEST_META_KEYS = {"source", "layout", "path", "files", "label_rule", "dropped"}
_USER_SHIFT = 32
_LOW_MASK = np.int64((1 << _USER_SHIFT) - 1)


class SampleSet(NamedTuple):
    """Split tables (train/valid/test), the items table, and the manifest; unpacks as a 3-tuple."""

    splits: dict[str, pa.Table]
    items: pa.Table
    manifest: dict[str, Any]


def build_samples(
    tables: LogTables,
    max_history: int = 50,
    history_mode: str = "split",
    min_history: int = 1,
    split_fractions: Sequence[float] | str = (0.8, 0.1, 0.1),
    split_rule: str = "position",
) -> SampleSet:
    """Turn a log into time-split samples; each target's history holds only behaviors strictly earlier in time.

    history_mode "split": fields `pos` (label 1) and `neg` (label 0); "single": one field `all`. Each field keeps
    the most recent `max_history` behaviors, oldest first. Samples are sorted by (timestamp, sample_id) and cut
    into train/valid/test by `split_fractions`, so no train target is later than a valid or test target.
    split_rule "position" cuts at the rounded sample positions; "timestamp" cuts by time as the reference does:
    a split starts at the timestamp T[floor(f * n)] and takes every sample of that timestamp and later.
    """
    max_history = _check_int(max_history, "max_history", minimum=1)
    min_history = _check_int(min_history, "min_history", minimum=0)
    if history_mode not in HISTORY_FIELDS:
        raise CtrSinkError(f"history_mode must be one of {', '.join(HISTORY_FIELDS)}, got {history_mode!r}")
    fractions = _check_fractions(split_fractions)
    if split_rule not in SPLIT_RULES:
        raise CtrSinkError(f"split_rule must be one of {', '.join(SPLIT_RULES)}, got {split_rule!r}")
    meta = tables.meta or {}
    files = meta.get("files") or [meta.get("path", "the interaction log")]
    file = str(files[0])  # the interaction file, so errors point at what to fix
    log = validate_interactions(tables.interactions, file)
    items = validate_items(tables.items, str(files[1]) if len(files) > 1 else file)
    # Loaders already drop unknown items; a hand-built log may not. sample_id stays the row of `tables.interactions`.
    known = log["item_id"].isin(items["item_id"]).to_numpy()
    source_row = np.flatnonzero(known)
    log, unknown = drop_unknown_items(log, items)
    if log.empty:
        raise CtrSinkError(f"{file}: no interaction refers to an item of the item table")

    item_idx = pd.Index(items["item_id"]).get_indexer(log["item_id"]).astype(np.int32)
    user_code, user_names = pd.factorize(log["user_id"])
    ts = log["timestamp"].to_numpy(np.int64)
    label = log["label"].to_numpy(np.int8)
    key = _composite_key(user_code, ts, file)

    # Row order = sorted by (user, time); a stable sort keeps file order among ties (irrelevant to histories).
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    n_earlier = np.empty(len(key), dtype=np.int64)
    n_earlier[order] = np.searchsorted(sorted_key, sorted_key, side="left") - np.searchsorted(
        sorted_key, _user_floor(sorted_key), side="left"
    )

    # Positions in `log`; written out as sample_id = source_row[...] (stable, traceable to the loaded log).
    sample_id = np.flatnonzero(n_earlier >= min_history)
    if sample_id.size == 0:
        raise CtrSinkError(
            f"no user has an interaction with at least {min_history} earlier behavior(s) in {file}"
            " (users with a single interaction, or only ties in time, give no samples)"
        )
    sample_id = sample_id[np.lexsort((sample_id, ts[sample_id]))]
    cuts = _split_cuts(ts[sample_id], fractions, split_rule)
    parts = dict(zip(SPLITS, np.split(sample_id, cuts)))
    empty = [s for s in SPLITS if parts[s].size == 0]
    if empty:
        raise CtrSinkError(
            f"split_fractions {tuple(fractions)} leave the {', '.join(empty)} split(s) empty"
            f" ({sample_id.size} samples in all)"
        )

    fields = HISTORY_FIELDS[history_mode]
    field_rows = {"pos": order[label[order] == 1], "neg": order[label[order] == 0], "all": order}
    field_rows = {name: field_rows[name] for name in fields}
    field_keys = {name: key[rows] for name, rows in field_rows.items()}
    feedback = log["feedback"].to_numpy(np.float64)
    users = pa.array(np.asarray(user_names, dtype=object), type=pa.string())
    columns = {"item_idx": item_idx, "timestamp": ts, "label": label}
    splits = {}
    for split, rows in parts.items():
        table = {
            "sample_id": pa.array(source_row[rows], pa.int64()),
            "user_id": pc.take(users, pa.array(user_code[rows])),
            "item_idx": pa.array(item_idx[rows], pa.int32()),
            "timestamp": pa.array(ts[rows], pa.int64()),
            "label": pa.array(label[rows], pa.int8()),
            "feedback": pa.array(feedback[rows], pa.float64()),
        }
        for name in fields:
            offsets, picked = _windows(field_keys[name], field_rows[name], key[rows], max_history, split)
            for column, values in columns.items():
                table[f"{name}_{column}"] = pa.ListArray.from_arrays(
                    pa.array(offsets, pa.int32()), pa.array(values[picked])
                )
        splits[split] = pa.table(table)

    items_table = pa.table(
        {
            "item_idx": pa.array(np.arange(len(items), dtype=np.int32)),
            "item_id": pa.array(items["item_id"].to_numpy(object), pa.string()),
            "title": pa.array(items["title"].to_numpy(object), pa.string()),
            "categories": pa.array(items["categories"].to_numpy(object), pa.string()),
            "text": pa.array(items["text"].to_numpy(object), pa.string()),
        }
    )
    counts = np.bincount(user_code)
    dropped = dict(meta.get("dropped", {}))
    dropped["unknown_item"] = int(dropped.get("unknown_item", 0)) + unknown
    dropped["single_interaction_users"] = int((counts == 1).sum())
    dropped["targets_without_history"] = int(len(log) - sample_id.size)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": meta.get("source", "unknown"),
        "layout": meta.get("layout", "unknown"),
        "path": meta.get("path", ""),
        "source_files": [str(f) for f in meta.get("files", [])],
        "label_rule": meta.get("label_rule", "label column"),
        "split_rule": {
            "text": "samples sorted by (timestamp, sample_id); consecutive train/valid/test blocks by fraction",
            "rule": split_rule,
            "fractions": dict(zip(SPLITS, fractions)),
            "boundaries": {s: {"first": int(ts[parts[s][0]]), "last": int(ts[parts[s][-1]])} for s in SPLITS},
        },
        "history_mode": history_mode,
        "history_fields": list(fields),
        "history_rule": "behaviors of the same user with timestamp < target timestamp (ties excluded)",
        "max_history": max_history,
        "min_history": min_history,
        "sizes": {s: int(parts[s].size) for s in SPLITS},
        "positive_rate": {s: round(float(label[parts[s]].mean()), 6) for s in SPLITS},
        "num_interactions": int(len(log)),
        "num_users": int(len(user_names)),
        "num_users_with_samples": int(np.unique(user_code[sample_id]).size),
        "num_items": int(len(items)),
        "num_items_in_log": int(np.unique(item_idx).size),
        "dropped": dropped,
        # Loader details (thresholds, column mapping, repaired rows, ...) kept for provenance.
        "loader": {k: v for k, v in meta.items() if k not in _MANIFEST_META_KEYS},
        "time_range": time_range(ts),
        "files": {},
        "hash": None,
    }
    return SampleSet(splits, items_table, manifest)


def _split_cuts(sorted_ts: np.ndarray, fractions: list[float], rule: str) -> np.ndarray:
    """Where valid and test start in the time-sorted samples."""
    ends = np.cumsum(fractions)[:2] * sorted_ts.size
    if rule == "position":
        return np.round(ends).astype(np.int64)
    starts = sorted_ts[np.minimum(np.floor(ends).astype(np.int64), sorted_ts.size - 1)]
    return np.searchsorted(sorted_ts, starts, side="left").astype(np.int64)


def _composite_key(user_code: np.ndarray, ts: np.ndarray, file: str) -> np.ndarray:
    relative = ts - ts.min()
    if relative.max() > _LOW_MASK:
        raise CtrSinkError(f"{file}: column timestamp spans more than 136 years; are the units seconds?")
    return (user_code.astype(np.int64) << _USER_SHIFT) | relative


def _user_floor(key: np.ndarray) -> np.ndarray:
    return key & ~_LOW_MASK


def _windows(
    field_key: np.ndarray, field_rows: np.ndarray, target_key: np.ndarray, max_history: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """List offsets and the log rows of each target's last `max_history` earlier behaviors in one field.

    `field_key` is sorted (a subsequence of the sorted log); `side="left"` stops before the target's own
    (user, time), so same-time behaviors are never history.
    """
    end = np.searchsorted(field_key, target_key, side="left")
    start = np.maximum(np.searchsorted(field_key, _user_floor(target_key), side="left"), end - max_history)
    lengths = end - start
    offsets = np.zeros(len(target_key) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise CtrSinkError(f"the {split} split has over 2**31 history entries; lower max_history")
    # In place: these arrays hold every history entry of the split, the largest allocations here.
    gather = np.arange(offsets[-1])
    gather += np.repeat(start - offsets[:-1], lengths)
    np.take(field_rows, gather, out=gather)
    return offsets.astype(np.int32), gather


def _check_int(value: Any, option: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise CtrSinkError(f"{option} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fractions(value: Sequence[float] | str) -> list[float]:
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        fractions = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise CtrSinkError(
            f"split_fractions must be three numbers (train, valid, test), got {value!r}"
        ) from None
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise CtrSinkError(
            f"split_fractions must be three non-negative numbers summing to 1 (train, valid, test), got {value!r}"
        )
    return fractions


def prepare(source: str, path: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """Load a log, build samples and write train/valid/test/items Parquet + manifest.json to `out` atomically.

    Options: the loader's (rating_threshold, watch_ratio_threshold, matrix, columns, label_threshold,
    timestamp_format) and build_samples' (max_history, history_mode, min_history, split_fractions, split_rule); None = default.
    An existing `out` is replaced only if it is an earlier prepare output, and only once the new one is complete.
    """
    if source not in LOADERS:
        raise CtrSinkError(f"unknown --source {source!r}; choose one of {', '.join(LOADERS)}")
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not is_sample_set_dir(out):
        raise CtrSinkError(f"--out {out} exists and is not a `ctrsink prepare` output; choose another folder")
    loader = LOADERS[source]
    loader_names = set(inspect.signature(loader).parameters) - {"path"}
    build_names = set(inspect.signature(build_samples).parameters) - {"tables"}
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - loader_names - build_names)
    if unknown:
        valid = ", ".join(sorted(loader_names | build_names))
        raise CtrSinkError(
            f"option(s) {', '.join(unknown)} do not apply to --source {source}; valid: {valid}"
        )

    tables = loader(path, **{k: v for k, v in options.items() if k in loader_names})
    sample_set = build_samples(tables, **{k: v for k, v in options.items() if k in build_names})
    manifest = dict(sample_set.manifest, options=_jsonable(options))
    with atomic_dir(out) as tmp:
        manifest = write_sample_files(tmp, sample_set.splits, sample_set.items, manifest)
    return manifest


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}


def load_sample_set(data_dir: str | Path, verify: bool = True) -> SampleSet:
    """Read a `prepare` output folder: split tables, items table, manifest (hashes checked when `verify`)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise CtrSinkError(f"{folder}: sample-set folder not found (create it with `ctrsink prepare`)")
    manifest = read_manifest(folder)
    if verify:
        verify_files(folder, manifest)
    fields = manifest.get("history_fields", [])
    required = ["sample_id", "user_id", "item_idx", "timestamp", "label", "feedback"] + [
        f"{f}_{c}" for f in fields for c in ("item_idx", "timestamp", "label")
    ]
    splits = {s: _read_parquet(folder / SPLIT_FILES[s], required) for s in SPLITS}
    items = _read_parquet(folder / ITEMS_FILE, ["item_idx", "item_id", "title", "categories", "text"])
    return SampleSet(splits, items, manifest)


def _read_parquet(path: Path, required: list[str]) -> pa.Table:
    if not path.is_file():
        raise CtrSinkError(
            f"{path}: file not found (the sample set is incomplete; run `ctrsink prepare` again)"
        )
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for damaged files
        raise CtrSinkError(f"{path}: cannot read as Parquet: {exc}") from None
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise CtrSinkError(f"{path}: missing column(s) {', '.join(missing)}")
    return table
