"""KuaiRec loader: small/big interaction matrix + caption/category side table; label from watch_ratio."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from ctrsink.data.schema import (
    CATEGORY_SEP,
    LogTables,
    check_threshold,
    drop_unknown_items,
    make_interactions,
    make_items,
    read_csv_checked,
    require_columns,
    to_id_strings,
    to_unix_seconds,
)
from ctrsink.errors import CtrSinkError

MATRIX_FILES = {"small": "small_matrix.csv", "big": "big_matrix.csv"}
MATRIX_COLUMNS = ("user_id", "video_id", "time", "timestamp", "watch_ratio")
CAPTION_FILE = "kuairec_caption_category.csv"
CAPTION_COLUMNS = (
    "video_id", "manual_cover_text", "caption", "topic_tag",
    "first_level_category_id", "first_level_category_name",
    "second_level_category_id", "second_level_category_name",
    "third_level_category_id", "third_level_category_name",
)  # fmt: skip
CATEGORY_NAME_COLUMNS = (
    "first_level_category_name",
    "second_level_category_name",
    "third_level_category_name",
)
PLACEHOLDER = "UNKNOWN"
TITLE_CHARS = 64
# `time` is Beijing wall-clock time: "2020-07-05 00:08:23.438" pairs with timestamp 1593878903.438.
TIME_UTC_OFFSET = pd.Timedelta(hours=8)


def load_kuairec(path: str | Path, watch_ratio_threshold: float = 2.0, matrix: str = "small") -> LogTables:
    """Load a KuaiRec `data/` folder; label = watch_ratio >= `watch_ratio_threshold`."""
    threshold = check_threshold(watch_ratio_threshold, "watch_ratio_threshold")
    if matrix not in MATRIX_FILES:
        raise CtrSinkError(f"matrix must be one of {', '.join(MATRIX_FILES)}, got {matrix!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise CtrSinkError(
            f"{folder}: not a folder (expected a KuaiRec data folder with {MATRIX_FILES[matrix]})"
        )
    if not (folder / MATRIX_FILES[matrix]).exists() and (folder / "data" / MATRIX_FILES[matrix]).exists():
        folder = folder / "data"  # the official archive keeps its tables under data/
    matrix_path, caption_path = folder / MATRIX_FILES[matrix], folder / CAPTION_FILE
    for needed in (matrix_path, caption_path):
        if not needed.is_file():
            raise CtrSinkError(
                f"{needed}: file not found (a KuaiRec folder needs {matrix_path.name} and {CAPTION_FILE})"
            )

    items, repaired = read_caption_table(caption_path)
    file = str(matrix_path)
    log = read_csv_checked(matrix_path, file, usecols=lambda c: c in MATRIX_COLUMNS)
    require_columns(log, MATRIX_COLUMNS, file)
    if log.empty:
        raise CtrSinkError(f"{file}: the interaction log is empty")

    # Rows without a timestamp fall back to `time`; rows with neither (or no watch_ratio) cannot be placed.
    ts = pd.to_numeric(log["timestamp"], errors="coerce")
    no_ts = ts.isna()
    if no_ts.any():
        wall = pd.to_datetime(log.loc[no_ts, "time"], errors="coerce", format="mixed")
        ts.loc[no_ts] = (wall - TIME_UTC_OFFSET - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
    ratio = pd.to_numeric(log["watch_ratio"], errors="coerce")
    keep = (ts.notna() & ratio.notna()).to_numpy()
    dropped = {"no_timestamp": int(ts.isna().sum()), "no_watch_ratio": int((ts.notna() & ratio.isna()).sum())}
    from_time = int((no_ts & ts.notna()).sum())
    log, ts, ratio = log.loc[keep], ts.loc[keep], ratio.loc[keep]
    if log.empty:
        raise CtrSinkError(f"{file}: no row has a usable timestamp and watch_ratio")

    feedback = ratio.to_numpy(dtype=np.float64)
    interactions = make_interactions(
        to_id_strings(log["user_id"], file, "user_id"),
        to_id_strings(log["video_id"], file, "video_id"),
        to_unix_seconds(ts, file, "timestamp"),
        feedback,
        (feedback >= threshold).astype(np.int8),
        file,
    )
    interactions, dropped["unknown_item"] = drop_unknown_items(interactions, items)
    meta = {
        "source": "kuairec",
        "layout": f"kuairec-{matrix}",
        "path": str(folder),
        "files": [file, str(caption_path)],
        "label_rule": f"watch_ratio >= {threshold}",
        "watch_ratio_threshold": threshold,
        "repaired_caption_rows": repaired,
        "timestamp_from_time": from_time,
        "dropped": dropped,
    }
    return LogTables(interactions, items, meta)


def read_caption_rows(path: Path) -> tuple[list[list[str]], list[str]]:
    """Rows of the caption table with records split by an unquoted line break joined again.

    Such a record reads as a 3-field line followed by an 8-field line; the caption is the last field of the
    first part + newline + the first field of the second. Returns (rows without header, repaired video ids).
    """
    file = str(path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            raw = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise CtrSinkError(f"{file}: not valid UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except csv.Error as exc:
        raise CtrSinkError(f"{file}: cannot parse as CSV: {exc}") from None
    if not raw:
        raise CtrSinkError(f"{file}: the file is empty")
    header, n = raw[0], len(CAPTION_COLUMNS)
    if header != list(CAPTION_COLUMNS):
        require_columns(pd.DataFrame(columns=header), CAPTION_COLUMNS, file)
        raise CtrSinkError(f"{file}: expected the columns in the order {', '.join(CAPTION_COLUMNS)}")
    rows: list[list[str]] = []
    repaired: list[str] = []
    i = 1
    while i < len(raw):
        row = raw[i]
        if len(row) < n and i + 1 < len(raw) and len(row) + len(raw[i + 1]) - 1 == n:
            row = row[:-1] + [row[-1] + "\n" + raw[i + 1][0]] + raw[i + 1][1:]
            repaired.append(row[0])
            i += 1
        elif len(row) != n and row:
            raise CtrSinkError(f"{file}: record {i} has {len(row)} fields, expected {n} (could not repair)")
        if row:
            rows.append(row)
        i += 1
    return rows, repaired


def read_caption_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Canonical items from the caption table: title, `|`-joined category names, caption as text."""
    rows, repaired = read_caption_rows(path)
    table = pd.DataFrame(rows, columns=list(CAPTION_COLUMNS), dtype=str)

    def clean(column: str) -> pd.Series:
        values = table[column].str.strip()
        return values.where(values != PLACEHOLDER, "")

    def one_line(values: pd.Series) -> pd.Series:
        # Titles go into one-line prompts: fold line breaks and non-breaking spaces of the repaired rows.
        return values.map(lambda v: " ".join(v.split()))

    cover, caption = one_line(clean("manual_cover_text")), clean("caption")
    title = cover.where(cover != "", one_line(caption))
    # Titles fill a short item field (max_item_tokens): cut long cover texts and captions alike.
    title = title.map(lambda t: t if len(t) <= TITLE_CHARS else t[: TITLE_CHARS - 1].rstrip() + "…")
    title = title.where(title != "", "video " + table["video_id"].str.strip())
    names = pd.concat([clean(c) for c in CATEGORY_NAME_COLUMNS], axis=1).to_numpy()
    categories = pd.Series([CATEGORY_SEP.join(dict.fromkeys(n for n in row if n)) for row in names])
    ids = to_id_strings(table["video_id"].str.strip(), str(path), "video_id")
    return make_items(ids, title, categories, caption, str(path)), repaired
