"""Reading the reference's sample files (see `ctrsink.data.reference`): finding the split files, reading each
format, and parsing behavior-list cells; every problem is a one-line CtrSinkError naming file, row and column."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctrsink.data.manifest import SPLITS
from ctrsink.data.schema import read_csv_checked
from ctrsink.errors import CtrSinkError

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".pq")
SPLIT_STEMS = {"train": ("train",), "valid": ("valid", "validation", "val", "dev"), "test": ("test",)}
PLAIN_SEP = "|SEP|"  # the reference's unambiguous separator for behavior lists written as plain text


def bad_cell(file: str, row: int, column: str, problem: str) -> CtrSinkError:
    return CtrSinkError(f"{file}: data row {row + 1}, column {column}: {problem}")


# ------------------------------------------------------------------------------------------------ files
def find_split_files(folder: Path, given: dict[str, str | Path | None]) -> dict[str, Path]:
    """train/valid/test files: as given, else `<stem><suffix>` in `folder`, else one unique `<stem>*<suffix>`.

    No test file: the valid file is reused as the test split (the reference itself reports valid metrics only).
    """
    if not folder.is_dir():
        raise CtrSinkError(
            f"{folder}: not a folder (expected train.csv and valid.csv, or .jsonl/.json/.parquet)"
        )
    found: dict[str, Path] = {}
    for split in SPLITS:
        if given.get(split):
            path = Path(given[split])  # type: ignore[arg-type]
            path = path if path.is_absolute() or path.exists() else folder / path
            if not path.is_file():
                raise CtrSinkError(f"{path}: file not found ({split}_file)")
            found[split] = path
            continue
        match = _discover(folder, split)
        if match is not None:
            found[split] = match
    missing = [s for s in ("train", "valid") if s not in found]
    if missing:
        listed = ", ".join(sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES)) or "none"
        raise CtrSinkError(
            f"{folder}: no {' or '.join(missing)} file (looked for {missing[0]}.csv|jsonl|json|parquet);"
            f" data files found: {listed}"
        )
    return found


def _discover(folder: Path, split: str) -> Path | None:
    """`<stem><suffix>` (stem: the split's names), else `<stem>*<suffix>`; more than one candidate is an error."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    stems = SPLIT_STEMS[split]
    exact = [p for p in files if p.stem.lower() in stems]
    loose = [p for p in files if p.stem.lower().startswith(stems)]
    for group in (exact, loose):
        if len(group) > 1:
            names = ", ".join(p.name for p in group)
            raise CtrSinkError(f"{folder}: several {split} files ({names}); pass {split}_file to choose one")
        if group:
            return group[0]
    return None


def read_reference_table(path: Path) -> pd.DataFrame:
    """A sample file as a DataFrame; CSV cells stay text (ids keep leading zeros, a title "NA" stays a title)."""
    file, suffix = str(path), path.suffix.lower()
    if suffix == ".csv":
        return read_csv_checked(path, file, dtype=str, keep_default_na=False)
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for damaged files
            raise CtrSinkError(f"{file}: cannot read as Parquet: {exc}") from None
    text = _read_text(path)
    if suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                records.append(_json_record(line, f"{file}: line {n}"))
        return pd.DataFrame.from_records(records)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CtrSinkError(f"{file}: not valid JSON ({exc})") from None
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return pd.DataFrame.from_records(data)
    if isinstance(data, dict) and all(isinstance(v, (list, dict)) for v in data.values()):
        return pd.DataFrame(data)  # pandas' "columns" orientation: {column: [values] or {index: value}}
    raise CtrSinkError(f"{file}: expected a JSON list of row objects or an object of columns")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise CtrSinkError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CtrSinkError(f"{path}: not valid utf-8 text ({exc.reason}); save it as UTF-8") from None


def _json_record(line: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CtrSinkError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise CtrSinkError(f"{where}: expected a JSON object (one sample per line)")
    return record


# ------------------------------------------------------------------------------------------------ cells
def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def parse_list(value: Any, file: str, row: int, column: str) -> list[str]:
    """A behavior list cell -> its entries as stripped strings (empty entries dropped).

    Accepted: real lists (JSON, Parquet), JSON or Python list literals (read with ast.literal_eval, never eval),
    and, as the reference accepts them, plain text split on `|SEP|` or else on commas. Text that opens like a
    list but does not parse as one is an error, not a silently mis-split row.
    """
    if is_missing(value):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        entries = list(value)
    else:
        text = str(value).strip()
        if text[0] in "[({":
            entries = _literal_list(text, file, row, column)
        else:
            sep = PLAIN_SEP if PLAIN_SEP in text else ","
            entries = [x.strip().strip("'\"") for x in text.split(sep)]
    return [s for s in (list_entry(x, file, row, column) for x in entries) if s]


def _literal_list(text: str, file: str, row: int, column: str) -> list[Any]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise bad_cell(file, row, column, f"not a JSON or Python list: {shown!r}") from None
    if not isinstance(parsed, (list, tuple)):
        raise bad_cell(file, row, column, f"expected a list, got a {type(parsed).__name__}")
    return list(parsed)


def list_entry(value: Any, file: str, row: int, column: str) -> str:
    if isinstance(value, (list, tuple, dict, set, np.ndarray)):
        raise bad_cell(file, row, column, f"list entries must be titles or ids, got {value!r}")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # an id written as 7.0
    return "" if is_missing(value) else str(value).strip()
