"""Generic loader: a folder with interactions.csv|parquet and items.csv|parquet, columns mapped by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrsink.data.schema import (
    LogTables,
    check_threshold,
    drop_unknown_items,
    join_categories,
    make_interactions,
    make_items,
    read_csv_checked,
    require_columns,
    to_feedback,
    to_id_strings,
    to_labels,
    to_unix_seconds,
)
from ctrsink.errors import CtrSinkError

# canonical name -> default column name in the files
DEFAULT_COLUMNS = {
    "user_id": "user_id",
    "item_id": "item_id",
    "timestamp": "timestamp",
    "label": "label",
    "rating": "rating",
    "title": "title",
    "categories": "genres",
    "text": "text",
}
COLUMN_ALIASES = {"genres": "categories"}
CATEGORY_FALLBACK = "categories"  # accepted when the default `genres` column is absent


def load_generic(
    path: str | Path,
    columns: dict[str, str] | None = None,
    label_threshold: float | None = None,
    timestamp_format: str | None = None,
) -> LogTables:
    """Load `interactions.{csv,parquet}` + `items.{csv,parquet}` from a folder.

    Labels come from a 0/1 `label` column, or from `rating >= label_threshold` when a threshold is given.
    `columns` maps canonical names (user_id, item_id, timestamp, label, rating, title, categories/genres, text)
    to the files' column names. Timestamps: Unix seconds or ISO-8601 strings (or `timestamp_format`).
    """
    folder = Path(path)
    names = _column_names(columns)
    if not folder.is_dir():
        raise CtrSinkError(
            f"{folder}: not a folder (expected interactions.csv|parquet and items.csv|parquet)"
        )
    inter_path = _find_table(folder, "interactions")
    items_path = _find_table(folder, "items")
    threshold = None if label_threshold is None else check_threshold(label_threshold, "label_threshold")

    file = str(inter_path)
    id_columns = [names["user_id"], names["item_id"]]
    log = _read_table(inter_path, id_columns)
    require_columns(log, [names["user_id"], names["item_id"], names["timestamp"]], file)
    if log.empty:
        raise CtrSinkError(f"{file}: the interaction log is empty")
    has_rating = names["rating"] in log.columns
    feedback = (
        to_feedback(log[names["rating"]], file, names["rating"])
        if has_rating
        else np.full(len(log), np.nan, dtype=np.float64)
    )
    if threshold is not None:
        require_columns(log, [names["rating"]], file)
        labels = (feedback >= threshold).astype(np.int8)
        rule = f"{names['rating']} >= {threshold}"
    elif names["label"] in log.columns:
        labels = to_labels(log[names["label"]], file, names["label"])
        rule = f"label column {names['label']}"
    elif has_rating:
        raise CtrSinkError(
            f"{file}: has a {names['rating']} column but no {names['label']} column; pass label_threshold"
        )
    else:
        found = ", ".join(str(c) for c in log.columns)
        raise CtrSinkError(
            f"{file}: needs a {names['label']} column (0/1) or a {names['rating']} column with label_threshold;"
            f" found columns: {found}"
        )
    interactions = make_interactions(
        to_id_strings(log[names["user_id"]], file, names["user_id"]),
        to_id_strings(log[names["item_id"]], file, names["item_id"]),
        to_unix_seconds(log[names["timestamp"]], file, names["timestamp"], timestamp_format),
        feedback,
        labels,
        file,
    )

    items = _read_items(items_path, names, explicit=set(_column_names_explicit(columns)))
    interactions, unknown = drop_unknown_items(interactions, items)
    meta = {
        "source": "csv",
        "layout": f"generic-{inter_path.suffix.lstrip('.')}",
        "path": str(folder),
        "files": [file, str(items_path)],
        "label_rule": rule,
        "label_threshold": threshold,
        "columns": names,
        "dropped": {"unknown_item": unknown},
    }
    return LogTables(interactions, items, meta)


def _column_names(columns: dict[str, str] | None) -> dict[str, str]:
    names = dict(DEFAULT_COLUMNS)
    if columns is None:
        return names
    if not isinstance(columns, dict):
        raise CtrSinkError(f"columns must map canonical names to column names, got {columns!r}")
    for key, value in columns.items():
        canonical = COLUMN_ALIASES.get(key, key)
        if canonical not in names:
            valid = ", ".join(sorted(set(DEFAULT_COLUMNS) | set(COLUMN_ALIASES)))
            raise CtrSinkError(f"columns: unknown canonical name {key!r}; valid names: {valid}")
        if not isinstance(value, str) or not value:
            raise CtrSinkError(f"columns: {key!r} must map to a column name, got {value!r}")
        names[canonical] = value
    return names


def _column_names_explicit(columns: dict[str, str] | None) -> list[str]:
    return [COLUMN_ALIASES.get(k, k) for k in (columns or {})]


def _find_table(folder: Path, stem: str) -> Path:
    for suffix in (".parquet", ".csv"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise CtrSinkError(f"{folder / (stem + '.csv')}: file not found (also looked for {stem}.parquet)")


def _read_table(path: Path, string_columns: list[str]) -> pd.DataFrame:
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for bad files
            raise CtrSinkError(f"{path}: cannot read as Parquet: {exc}") from None
    # Ids stay text (no "007" -> 7); everything else is inferred, timestamps are checked later.
    return read_csv_checked(path, str(path), dtype={c: str for c in string_columns})


def _read_items(path: Path, names: dict[str, str], explicit: set[str]) -> pd.DataFrame:
    file = str(path)
    table = _read_table(path, [names["item_id"], names["title"]])
    # Optional columns are required only when the user named them explicitly.
    needed = ["item_id", "title"] + [c for c in ("categories", "text") if c in explicit]
    require_columns(table, [names[c] for c in needed], file)
    category_column = names["categories"]
    if category_column not in table.columns and category_column == DEFAULT_COLUMNS["categories"]:
        category_column = CATEGORY_FALLBACK
    categories: Any = join_categories(table[category_column]) if category_column in table.columns else None
    text = table[names["text"]] if names["text"] in table.columns else None
    return make_items(table[names["item_id"]], table[names["title"]], categories, text, file)
