"""The ID-row analysis folder: written atomically (Parquet tables + manifest), read back with errors that name
the broken file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ctrsink.atomic import atomic_dir
from sinkviz.artifacts import (
    ID_KIND,
    ID_MANIFEST_KEYS,
    ID_SCHEMA_VERSION,
    ID_TABLE_COLUMNS,
    MANIFEST,
    AnalysisError,
    _check_columns,
)


def write_id_analysis(
    out_dir: str | Path, manifest: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]
) -> Path:
    """Write the folder atomically: every table of `ID_TABLE_COLUMNS` as Parquet, then the manifest."""
    missing = [k for k in ID_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"ID-row analysis manifest lacks {', '.join(missing)}")
    absent = sorted(set(ID_TABLE_COLUMNS) - set(tables))
    unknown = sorted(set(tables) - set(ID_TABLE_COLUMNS))
    if absent or unknown:
        raise ValueError(f"ID-row analysis tables: missing {absent}, unknown {unknown}")
    for name, frame in tables.items():
        _check_columns(name, frame, schema=ID_TABLE_COLUMNS)
    files = {name: f"{name}.parquet" for name in ID_TABLE_COLUMNS}
    record = dict(manifest, tables=files)
    with atomic_dir(out_dir) as tmp:
        for name, frame in tables.items():
            frame.reset_index(drop=True).to_parquet(tmp / files[name], index=False)
        (tmp / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out_dir)


@dataclass
class IDAnalysis:
    """A loaded ID-row analysis folder (tables as in `sinkviz.artifacts.ID_TABLE_COLUMNS`)."""

    path: Path
    manifest: dict[str, Any]
    predictions: pd.DataFrame
    distributions: pd.DataFrame
    conditioning: pd.DataFrame
    gap_mass: pd.DataFrame
    chunk_mass: pd.DataFrame
    gates: pd.DataFrame
    lambdas: pd.DataFrame

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in ID_TABLE_COLUMNS:
            raise KeyError(name)
        return getattr(self, name)


def read_id_manifest(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    file = folder / MANIFEST
    if not file.is_file():
        raise AnalysisError(
            f"{folder} is not an ID-row analysis folder (no {MANIFEST}); create one with "
            "`sinkviz capture --run ID_RUN --out DIR`"
        )
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("kind") != ID_KIND:
        kind = record.get("kind") if isinstance(record, dict) else None
        raise AnalysisError(f"{file}: not an ID-row analysis manifest (kind {kind!r}, expected {ID_KIND!r})")
    if record.get("schema_version") != ID_SCHEMA_VERSION:
        raise AnalysisError(
            f"{file}: ID-row analysis schema version {record.get('schema_version')!r} is not readable by this "
            f"sinkviz (reads {ID_SCHEMA_VERSION}); re-run `sinkviz capture` on the run"
        )
    return record


def load_id_analysis(path: str | Path) -> IDAnalysis:
    """Read an ID-row analysis folder; errors name the file that is missing or broken."""
    folder = Path(path)
    record = read_id_manifest(folder)
    tables = {}
    for name in ID_TABLE_COLUMNS:
        file = folder / f"{name}.parquet"
        if not file.is_file():
            raise AnalysisError(f"{file}: missing table {name!r} of the ID-row analysis")
        try:
            frame = pd.read_parquet(file)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise AnalysisError(f"{file}: unreadable Parquet ({type(exc).__name__}: {exc})") from None
        _check_columns(name, frame, file, schema=ID_TABLE_COLUMNS)
        tables[name] = frame
    return IDAnalysis(folder, record, **tables)
