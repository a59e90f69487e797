"""Canonical interaction and item tables, and the checks that turn bad input into one-line CtrSinkErrors.

interactions: user_id (str), item_id (str), timestamp (int64 Unix seconds), feedback (float64, rating or
watch ratio; NaN when the source gives a label directly), label (int8, 0/1).
items: item_id (str), title (str), categories (str, `|`-joined, "" when none), text (str, "" when none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrsink.errors import CtrSinkError

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "feedback", "label")
ITEM_COLUMNS = ("item_id", "title", "categories", "text")
CATEGORY_SEP = "|"
STRING_DTYPE = "str"  # pandas' default string dtype (NaN as missing value)


@dataclass
class LogTables:
    """What every loader returns: canonical interactions, items, and provenance (source, layout, path, label_rule, ...)."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)


def _show(values: Any, limit: int = 8) -> str:
    values = [str(v) for v in values]
    shown = ", ".join(values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def require_columns(df: pd.DataFrame, required: list[str] | tuple[str, ...], file: str) -> None:
    """Raise naming the file, the missing columns and the columns actually found."""
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return
    found = [str(c) for c in df.columns]
    hint = ""
    if len(found) == 1 and any(sep in found[0] for sep in (";", "\t", "|", ",")):
        hint = " (only one column was read: is the separator right?)"
    raise CtrSinkError(f"{file}: missing column(s) {_show(missing)}; found columns: {_show(found)}{hint}")


def _first_bad(mask: np.ndarray, series: pd.Series) -> str:
    pos = int(np.flatnonzero(mask)[0])
    value = series.iloc[pos]
    value = value.item() if isinstance(value, np.generic) else value  # show 2, not np.int64(2)
    return f"{int(mask.sum())} row(s), first at data row {pos + 1}: {value!r}"


def to_id_strings(series: pd.Series, file: str, column: str) -> pd.Series:
    """Ids as strings; integral floats (from NaN-holding files) lose their `.0`; missing ids are an error."""
    missing = series.isna().to_numpy()
    if pd.api.types.is_string_dtype(series.dtype) or series.dtype == object:
        missing = missing | (series.astype(STRING_DTYPE).str.strip() == "").to_numpy()
    if missing.any():
        raise CtrSinkError(f"{file}: column {column} has missing ids ({_first_bad(missing, series)})")
    if pd.api.types.is_bool_dtype(series.dtype):
        raise CtrSinkError(f"{file}: column {column} holds true/false values, not ids")
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy()
        if np.all(values == np.floor(values)):
            series = pd.Series(values.astype(np.int64), index=series.index)
    return series.astype(STRING_DTYPE).reset_index(drop=True)


def to_unix_seconds(
    series: pd.Series, file: str, column: str, timestamp_format: str | None = None
) -> np.ndarray:
    """Unix seconds (int64, floored) from numbers, datetimes or ISO-8601 / `timestamp_format` strings (naive = UTC)."""
    missing = series.isna().to_numpy()
    if missing.any():
        raise CtrSinkError(f"{file}: column {column} has missing timestamps ({_first_bad(missing, series)})")
    if pd.api.types.is_bool_dtype(series.dtype):
        raise CtrSinkError(f"{file}: column {column} holds true/false values, not timestamps")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        parsed = series if series.dt.tz is not None else series.dt.tz_localize("UTC")
        return _datetimes_to_seconds(parsed)
    if pd.api.types.is_numeric_dtype(series.dtype) and timestamp_format is None:
        return _numbers_to_seconds(series.to_numpy(dtype=np.float64), file, column)
    text = series.astype(STRING_DTYPE).str.strip()
    if timestamp_format is None:
        numeric = pd.to_numeric(text, errors="coerce")
        if not numeric.isna().any():
            return _numbers_to_seconds(numeric.to_numpy(dtype=np.float64), file, column)
    fmt = timestamp_format or "ISO8601"
    try:
        parsed = pd.to_datetime(text, format=fmt, utc=True, errors="coerce")
    except (ValueError, TypeError) as exc:
        raise CtrSinkError(f"timestamp_format {timestamp_format!r} is not usable for {file}: {exc}") from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        expect = f"format {timestamp_format!r}" if timestamp_format else "Unix seconds or ISO-8601"
        raise CtrSinkError(
            f"{file}: column {column} has unparseable timestamps ({_first_bad(bad, series)}); expected {expect}"
        )
    return _datetimes_to_seconds(parsed)


def _datetimes_to_seconds(parsed: pd.Series) -> np.ndarray:
    # Works for every datetime unit pandas may pick (ns, us, s).
    delta = parsed - pd.Timestamp(0, tz="UTC")
    return (delta // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def _numbers_to_seconds(values: np.ndarray, file: str, column: str) -> np.ndarray:
    bad = ~np.isfinite(values) | (np.abs(values) > 2**62)
    if bad.any():
        raise CtrSinkError(
            f"{file}: column {column} has unusable timestamps ({_first_bad(bad, pd.Series(values))})"
        )
    return np.floor(values).astype(np.int64)


def to_labels(series: pd.Series, file: str, column: str) -> np.ndarray:
    """0/1 labels as int8 from bools, numbers or the strings 0/1/true/false; anything else is an error."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=np.int8)
    if not pd.api.types.is_numeric_dtype(series.dtype):
        text = series.astype(STRING_DTYPE).str.strip().str.lower()
        series = pd.to_numeric(text.replace({"true": "1", "false": "0"}), errors="coerce")
    values = series.to_numpy(dtype=np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise CtrSinkError(f"{file}: column {column} must hold labels 0 or 1 ({_first_bad(bad, series)})")
    return values.astype(np.int8)


def check_threshold(value: Any, option: str) -> float:
    """A finite number for a label threshold option, else an error naming the option."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CtrSinkError(f"{option} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CtrSinkError(f"{option} must be a finite number, got {value!r}")
    return number


def to_feedback(series: pd.Series, file: str, column: str) -> np.ndarray:
    """Numeric feedback (rating, watch ratio) as float64; missing or text values are an error."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise CtrSinkError(f"{file}: column {column} must be numeric ({_first_bad(bad, series)})")
    return values


def make_interactions(
    user_id: pd.Series,
    item_id: pd.Series,
    timestamp: np.ndarray,
    feedback: np.ndarray,
    label: np.ndarray,
    file: str,
) -> pd.DataFrame:
    """Assemble the canonical interactions table (inputs already converted); an empty log is an error."""
    df = pd.DataFrame(
        {
            "user_id": pd.Series(user_id, dtype=STRING_DTYPE).reset_index(drop=True),
            "item_id": pd.Series(item_id, dtype=STRING_DTYPE).reset_index(drop=True),
            "timestamp": np.asarray(timestamp, dtype=np.int64),
            "feedback": np.asarray(feedback, dtype=np.float64),
            "label": np.asarray(label, dtype=np.int8),
        }
    )
    if df.empty:
        raise CtrSinkError(f"{file}: the interaction log is empty")
    return df


def make_items(
    item_id: pd.Series, title: pd.Series, categories: pd.Series, text: pd.Series | None, file: str
) -> pd.DataFrame:
    """Assemble the canonical items table; duplicate ids are an error (their titles would be ambiguous)."""
    ids = to_id_strings(pd.Series(item_id), file, "item id")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        raise CtrSinkError(f"{file}: item ids must be unique ({_first_bad(dup, ids)} repeated)")

    def clean(values: pd.Series | None) -> pd.Series:
        if values is None:
            return pd.Series([""] * len(ids), dtype=STRING_DTYPE)
        return pd.Series(values).reset_index(drop=True).fillna("").astype(STRING_DTYPE)

    return pd.DataFrame(
        {"item_id": ids, "title": clean(title), "categories": clean(categories), "text": clean(text)}
    )


def join_categories(values: pd.Series) -> pd.Series:
    """Normalise category cells to `|`-joined strings: lists are joined, blanks dropped."""

    def one(cell: Any) -> str:
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            return ""
        parts = list(cell) if isinstance(cell, (list, tuple, np.ndarray)) else str(cell).split(CATEGORY_SEP)
        return CATEGORY_SEP.join(p for p in (str(x).strip() for x in parts) if p)

    return values.map(one).astype(STRING_DTYPE)


def validate_interactions(df: pd.DataFrame, file: str) -> pd.DataFrame:
    """Check and normalise a canonical interactions table (e.g. one built by hand)."""
    require_columns(df, ("user_id", "item_id", "timestamp", "label"), file)
    if df.empty:
        raise CtrSinkError(f"{file}: the interaction log is empty")
    feedback = (
        df["feedback"].to_numpy(dtype=np.float64)
        if "feedback" in df.columns
        else np.full(len(df), np.nan, dtype=np.float64)
    )
    return make_interactions(
        to_id_strings(df["user_id"], file, "user_id"),
        to_id_strings(df["item_id"], file, "item_id"),
        to_unix_seconds(df["timestamp"], file, "timestamp"),
        feedback,
        to_labels(df["label"], file, "label"),
        file,
    )


def validate_items(df: pd.DataFrame, file: str) -> pd.DataFrame:
    """Check and normalise a canonical items table."""
    require_columns(df, ("item_id", "title"), file)
    categories = join_categories(df["categories"]) if "categories" in df.columns else None
    return make_items(df["item_id"], df["title"], categories, df.get("text"), file)


def drop_unknown_items(interactions: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop interactions whose item is missing from the item table; return the kept rows and the count."""
    known = interactions["item_id"].isin(items["item_id"]).to_numpy()
    dropped = int((~known).sum())
    if dropped:
        interactions = interactions.loc[known].reset_index(drop=True)
    return interactions, dropped


def read_csv_checked(path: Path, file: str, encoding: str = "utf-8", **kwargs: Any) -> pd.DataFrame:
    """pandas.read_csv whose failures (missing file, encoding, parse errors) become one-line CtrSinkErrors."""
    if not path.is_file():
        raise CtrSinkError(f"{file}: file not found")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise CtrSinkError(f"{file}: the file is UTF-16 encoded; save it as UTF-8")
    try:
        return pd.read_csv(path, encoding=encoding, **kwargs)
    except UnicodeDecodeError as exc:
        raise CtrSinkError(f"{file}: not valid {encoding} text ({exc.reason}); save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise CtrSinkError(f"{file}: the file is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise CtrSinkError(f"{file}: cannot parse as CSV: {exc}") from None
