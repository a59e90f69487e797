"""The reference code's sample files (repository UGUESS-lzx/CTR-SINK) as a ctrsink sample set, split for split.

The reference trains on finished samples, one row per candidate: `positive_movie_titles`, `negative_movie_titles`
(lists, oldest first), `title`, `genres` (`|`-joined), `click_label`, optionally `user_id`, `timestamp`, `rating`,
`movie_id`, `positive_movie_ids`, `negative_movie_ids`. Files are `train.*`, `valid.*` and `test.*` with a suffix
of .csv, .jsonl, .json, .parquet or .pq. The given files become our splits unchanged (no re-splitting, no
re-windowing), so a run here scores the same rows the reference scores.

Items are keyed by the id columns when all three are present, else by title. The files carry no time of each
behavior, so a history entry gets its target's timestamp (a `time_gap` sink signal has nothing to read here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ctrsink.atomic import atomic_dir
from ctrsink.data.manifest import SCHEMA_VERSION, SPLITS, is_sample_set_dir, time_range, write_sample_files
from ctrsink.data.reference_files import (
    bad_cell,
    find_split_files,
    is_missing,
    list_entry,
    parse_list,
    read_reference_table,
)
from ctrsink.data.schema import (
    STRING_DTYPE,
    join_categories,
    require_columns,
    to_feedback,
    to_id_strings,
    to_labels,
    to_unix_seconds,
)
from ctrsink.errors import CtrSinkError

log = logging.getLogger(__name__)

# our name for each column -> the reference's default column name (`columns=` maps them to a file's own names)
DEFAULT_COLUMNS = {
    "pos": "positive_movie_titles",
    "neg": "negative_movie_titles",
    "title": "title",
    "genres": "genres",
    "label": "click_label",
    "user_id": "user_id",
    "timestamp": "timestamp",
    "rating": "rating",
    "item_id": "movie_id",
    "pos_ids": "positive_movie_ids",
    "neg_ids": "negative_movie_ids",
}
REQUIRED = ("pos", "neg", "title", "label")
ID_KEYS = ("item_id", "pos_ids", "neg_ids")
HISTORY = ("pos", "neg")


# ------------------------------------------------------------------------------------------------ items
class ItemTable:
    """Items met while reading the splits, keyed by id (id mode) or title; first genres seen win."""

    def __init__(self, by_id: bool) -> None:
        self.by_id = by_id
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        self.titles: list[str] = []
        self.genres: list[str] = []
        self.genre_conflicts = 0

    def add(self, key: str, title: str, genres: str | None) -> int:
        """The item's index; -1 when an id already names another title (the caller reports where)."""
        idx = self.index.get(key)
        if idx is None:
            idx = self.index[key] = len(self.ids)
            self.ids.append(key)
            self.titles.append(title)
            self.genres.append(genres or "")
            return idx
        if self.by_id and title != self.titles[idx]:
            return -1
        if genres and self.genres[idx] != genres:
            if self.genres[idx]:
                self.genre_conflicts += 1
            else:
                self.genres[idx] = genres
        return idx

    def table(self) -> pa.Table:
        n = len(self.ids)
        return pa.table(
            {
                "item_idx": pa.array(np.arange(n, dtype=np.int32)),
                "item_id": pa.array(self.ids, pa.string()),
                "title": pa.array(self.titles, pa.string()),
                "categories": pa.array(self.genres, pa.string()),
                "text": pa.array([""] * n, pa.string()),
            }
        )


# ------------------------------------------------------------------------------------------------ splits
def column_names(columns: dict[str, str] | None) -> dict[str, str]:
    """Our names -> the files' column names; `columns` keys may be our names or the reference's defaults."""
    names = dict(DEFAULT_COLUMNS)
    by_default = {v: k for k, v in DEFAULT_COLUMNS.items()}
    if columns is not None and not isinstance(columns, dict):
        raise CtrSinkError(f"columns must map column names to the files' column names, got {columns!r}")
    for key, value in (columns or {}).items():
        ours = key if key in names else by_default.get(key)
        if ours is None:
            valid = ", ".join(DEFAULT_COLUMNS.values())
            raise CtrSinkError(f"columns: unknown column {key!r} for --source reference; valid: {valid}")
        if not isinstance(value, str) or not value:
            raise CtrSinkError(f"columns: {key!r} must map to a column name, got {value!r}")
        names[ours] = value
    return names


def _blank_to_nan(series: pd.Series) -> pd.Series:
    return series.map(lambda v: np.nan if is_missing(v) else v)


def _list_array(lists: list[list[int]], values: np.ndarray | None, dtype: Any) -> pa.ListArray:
    """Arrow list column from per-row lists (or from `values`, one value per entry, in the same layout)."""
    lengths = np.fromiter((len(x) for x in lists), np.int64, len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise CtrSinkError("a split has over 2**31 history entries; pass max_history")
    flat = values if values is not None else np.fromiter((v for x in lists for v in x), dtype, offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat.astype(dtype)))


def read_split(
    df: pd.DataFrame, file: str, items: ItemTable, offset: int, names: dict[str, str], max_history: int | None
) -> pa.Table:
    """One split file's rows -> a split table in the sample schema, in file order, sample_id = offset + row."""
    require_columns(df, [names[k] for k in REQUIRED], file)
    if df.empty:
        raise CtrSinkError(f"{file}: the file holds no samples")
    n = len(df)
    label = to_labels(_blank_to_nan(df[names["label"]]), file, names["label"])

    def optional(key: str, convert: Callable[..., Any], default: Any) -> Any:
        column = names[key]
        return convert(_blank_to_nan(df[column]), file, column) if column in df.columns else default

    ts = optional("timestamp", to_unix_seconds, np.zeros(n, dtype=np.int64))
    users = optional("user_id", to_id_strings, pd.Series([""] * n, dtype=STRING_DTYPE))
    feedback = optional("rating", to_feedback, np.full(n, np.nan))
    ids = optional("item_id", to_id_strings, None) if items.by_id else None
    genres = join_categories(df[names["genres"]]) if names["genres"] in df.columns else [""] * n
    titles = df[names["title"]].tolist()
    cells = {f: df[names[f]].tolist() for f in HISTORY}
    id_cells = {f: df[names[f"{f}_ids"]].tolist() for f in HISTORY} if items.by_id else {}

    target = np.empty(n, dtype=np.int32)
    history: dict[str, list[list[int]]] = {f: [] for f in HISTORY}
    for r in range(n):
        title = list_entry(titles[r], file, r, names["title"])
        if not title:
            raise bad_cell(file, r, names["title"], "missing title")
        key = str(ids[r]) if ids is not None else title
        target[r] = _add(items, key, title, str(genres[r]), file, r, names["item_id"])
        for f in HISTORY:
            entries = parse_list(cells[f][r], file, r, names[f])
            keys = entries
            if items.by_id:
                keys = parse_list(id_cells[f][r], file, r, names[f"{f}_ids"])
                if len(keys) != len(entries):
                    problem = f"{len(keys)} ids for the {len(entries)} titles of {names[f]}"
                    raise bad_cell(file, r, names[f"{f}_ids"], problem)
            row = [_add(items, k, t, None, file, r, names[f"{f}_ids"]) for k, t in zip(keys, entries)]
            history[f].append(row[-max_history:] if max_history else row)

    table: dict[str, Any] = {
        "sample_id": pa.array(offset + np.arange(n, dtype=np.int64)),
        "user_id": pa.array(users.to_numpy(object), pa.string()),
        "item_idx": pa.array(target),
        "timestamp": pa.array(ts.astype(np.int64)),
        "label": pa.array(label.astype(np.int8)),
        "feedback": pa.array(np.asarray(feedback, dtype=np.float64)),
    }
    for f in HISTORY:
        lengths = np.fromiter((len(x) for x in history[f]), np.int64, n)
        table[f"{f}_item_idx"] = _list_array(history[f], None, np.int32)
        # no behavior times in these files: each behavior gets its target's time (a gap of 0)
        table[f"{f}_timestamp"] = _list_array(history[f], np.repeat(ts, lengths), np.int64)
        table[f"{f}_label"] = _list_array(history[f], np.full(lengths.sum(), f == "pos"), np.int8)
    return pa.table(table)


def _add(items: ItemTable, key: str, title: str, genres: str | None, file: str, row: int, column: str) -> int:
    idx = items.add(key, title, genres)
    if idx < 0:
        other = items.titles[items.index[key]]
        raise bad_cell(file, row, column, f"id {key!r} names {title!r} here but {other!r} in an earlier row")
    return idx


# ------------------------------------------------------------------------------------------------ prepare
def prepare_reference(
    path: str | Path,
    out: str | Path,
    max_history: int | None = None,
    history_mode: str = "split",
    columns: dict[str, str] | None = None,
    train_file: str | Path | None = None,
    valid_file: str | Path | None = None,
    test_file: str | Path | None = None,
) -> dict[str, Any]:
    """Read the reference's train/valid(/test) files from folder `path`; write our sample set to `out` atomically.

    `max_history` keeps each list's most recent entries (default: all, as written). `columns` renames columns
    (the reference's `user_positive_col` etc.). An existing `out` is replaced only if it is a prepare output.
    """
    if history_mode != "split":
        raise CtrSinkError(
            "--source reference keeps the files' positive/negative lists: history_mode is split"
        )
    bad_cap = isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1
    if max_history is not None and bad_cap:
        raise CtrSinkError(f"max_history must be an integer >= 1, got {max_history!r}")
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not is_sample_set_dir(out):
        raise CtrSinkError(f"--out {out} exists and is not a `ctrsink prepare` output; choose another folder")
    folder = Path(path)
    files = find_split_files(folder, {"train": train_file, "valid": valid_file, "test": test_file})
    names = column_names(columns)
    frames = {s: read_reference_table(p) for s, p in files.items()}
    present = [names[k] in frames["train"].columns for k in ID_KEYS]
    items = ItemTable(by_id=all(present))
    if any(present) and not all(present):
        wanted = ", ".join(names[k] for k in ID_KEYS)
        log.warning("%s: not all of %s present; items are keyed by title", files["train"], wanted)
    given = [names[k] for k in ("user_id", "timestamp", "rating") if names[k] in frames["train"].columns]

    splits: dict[str, pa.Table] = {}
    offset = 0
    for split in SPLITS:
        if split not in files:
            log.warning("%s: no test file; the valid split is reused as the test split", folder)
            splits[split] = splits["valid"]
            continue
        splits[split] = read_split(frames[split], str(files[split]), items, offset, names, max_history)
        offset += splits[split].num_rows
    manifest = _manifest(folder, files, splits, items, names, max_history)
    manifest["loader"]["optional_columns"] = given
    with atomic_dir(out) as tmp:
        manifest = write_sample_files(tmp, splits, items.table(), manifest)
    return manifest


def _manifest(
    folder: Path,
    files: dict[str, Path],
    splits: dict[str, pa.Table],
    items: ItemTable,
    names: dict[str, str],
    max_history: int | None,
) -> dict[str, Any]:
    wanted = ("timestamp", "label", "user_id", "item_idx")
    col = {s: {c: splits[s].column(c).to_numpy() for c in wanted} for s in SPLITS}
    users = set().union(*(set(col[s]["user_id"]) for s in SPLITS))
    ts = np.concatenate([col[s]["timestamp"] for s in SPLITS])
    longest = max(
        (int(pc.max(pc.list_value_length(splits[s][f"{f}_item_idx"])).as_py() or 0))
        for s in SPLITS
        for f in HISTORY
    )
    suffix = files["train"].suffix.lstrip(".").lower()
    return {
        "schema_version": SCHEMA_VERSION,
        "source": "reference",
        "layout": f"reference-{suffix}",
        "path": str(folder),
        "source_files": [str(files[s]) for s in SPLITS if s in files],
        "label_rule": f"label column {names['label']}",
        "split_rule": {
            "text": "the reference's own split files, rows in file order; sample_id = row offset + data row - 1",
            "files": {s: str(files.get(s, files["valid"])) for s in SPLITS},
            "test_is_valid": "test" not in files,
        },
        "history_mode": "split",
        "history_fields": list(HISTORY),
        "history_rule": "as written in the files (behavior times unknown: each set to its target's timestamp)",
        "max_history": int(max_history or longest or 1),
        "min_history": 0,
        "sizes": {s: splits[s].num_rows for s in SPLITS},
        "positive_rate": {s: round(float(col[s]["label"].mean()), 6) for s in SPLITS},
        "num_interactions": int(sum(splits[s].num_rows for s in SPLITS if s in files)),
        "num_users": len(users),
        "num_users_with_samples": len(users),
        "num_items": len(items.ids),
        "num_items_in_log": int(np.unique(np.concatenate([col[s]["item_idx"] for s in SPLITS])).size),
        "dropped": {},
        "loader": {
            "item_key": "id columns" if items.by_id else "title",
            "columns": names,
            "genre_conflicts": items.genre_conflicts,
        },
        "time_range": time_range(ts),
        "files": {},
        "hash": None,
    }
