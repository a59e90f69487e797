"""Analysis artifacts on disk: a versioned manifest, tidy Parquet tables, matrices in safetensors.

ANALYSIS_DIR/manifest.json              what was analysed (run, data, family, layers, heads, roles, fields, anchor)
ANALYSIS_DIR/<table>.parquet            role_mass, entropy, sink_metric, behavior_map, inter_sink, tokens, predictions,
                                        kept (which stored behavior is kept behavior k, per sample and field)
ANALYSIS_DIR/matrices.safetensors       `{inter_sink|behavior_map|affinity}/{field}/{sum|count}`
ANALYSIS_DIR/full_maps.safetensors      `{sample_id}/{field}/{layer}` -> (H, T, T) for the chosen samples
ID-row analyses (kind "id_rows", `sinkviz.idrows`): manifest.json and the Parquet tables of `ID_TABLE_COLUMNS`.

Tables and key names are a public contract: `SCHEMA_VERSION` moves when they change. Reading uses only Parquet,
JSON and safetensors, none of which can run code (no pickle anywhere).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save

from ctrsink.atomic import atomic_dir
from ctrsink.errors import CtrSinkError
from sinkviz.reduce import SINK_METRIC_COLUMNS

SCHEMA_VERSION = 2
# version 1 folders lack the `kept` table and are still read (readers fall back for the mapping it holds)
READABLE_SCHEMA_VERSIONS = (1, 2)
KIND = "sinkviz.analysis"
MANIFEST = "manifest.json"
MATRICES = "matrices.safetensors"
FULL_MAPS = "full_maps.safetensors"

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "role_mass": ("field", "layer", "head", "query_role", "key_role", "mass", "count"),
    "entropy": ("field", "layer", "head", "entropy", "entropy_norm", "count"),
    "sink_metric": SINK_METRIC_COLUMNS,
    "behavior_map": ("field", "layer", "head", "query_behavior", "key_behavior", "mass", "count"),
    "inter_sink": ("field", "layer", "head", "query_anchor", "key_anchor", "mass", "count"),
    "tokens": ("sample_id", "field", "position", "token_id", "token", "role", "behavior_index"),
    "predictions": ("sample_id", "user_id", "label", "logit"),
    # FieldEncoding.kept: kept behavior k (the index of every other table) is stored behavior `stored_index`
    "kept": ("sample_id", "field", "behavior", "stored_index"),
}
MANIFEST_KEYS = (
    "kind",
    "schema_version",
    "created",
    "run_dir",
    "data_dir",
    "model_family",
    "model_type",
    "layers",
    "heads",
    "roles",
    "fields",
    "history_fields",
    "anchor",
)


# ID-row analyses (`sinkviz.idrows`) have their own kind and version: CTR-Sink pages never mistake one for theirs
ID_KIND = "id_rows"
ID_SCHEMA_VERSION = 1
ID_TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "predictions": ("sample_id", "user_id", "candidate", "item_idx", "category", "label", "logit"),
    "distributions": (
        "sample_id",
        "candidate",
        "module",
        "layer",
        "n_keys",
        "cat_status",
        "entropy",
        "entropy_norm",
        "keys90",
        "top3_same_cat",
        "same_cat_share",
        "boundary_mass",
        "boundary_expected",
        "outside_mass",
        "negative_mass",
    ),
    "conditioning": ("sample_id", "module", "layer", "js", "same_category"),
    "gap_mass": ("module", "layer", "candidate", "bucket", "gap_hours", "mass", "uniform", "tokens", "rows"),
    "chunk_mass": ("layer", "candidate", "chunk_distance", "mass", "token_share", "rows"),
    "gates": ("sample_id", "candidate", "layer", "branch", "cat_status", "n_keys", "gate", "share"),
    "lambdas": ("param", "layer", "head", "component", "value"),
}
ID_MANIFEST_KEYS = (
    "kind",
    "schema_version",
    "created",
    "model",
    "run_dir",
    "data_dir",
    "split",
    "samples",
    "seed",
)


class AnalysisError(CtrSinkError):
    """An analysis folder that this version of sinkviz cannot read."""


@dataclass
class Analysis:
    """A loaded analysis folder."""

    path: Path
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    arrays: dict[str, np.ndarray]  # sums, counts, and derived `mean` (L, H, K, K) / `head_mean` (L, K, K)
    full_maps: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def make_manifest(**values: Any) -> dict[str, Any]:
    """A manifest with kind, schema version and creation time filled in; every key of MANIFEST_KEYS required."""
    out = {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **values,
    }
    missing = [k for k in MANIFEST_KEYS if k not in out]
    if missing:
        raise ValueError(f"analysis manifest lacks {', '.join(missing)}")
    return out


def _check_columns(
    name: str,
    frame: pd.DataFrame,
    path: Path | None = None,
    schema: Mapping[str, tuple[str, ...]] = TABLE_COLUMNS,
) -> None:
    missing = [c for c in schema[name] if c not in frame.columns]
    if missing:
        where = f"{path}: " if path else ""
        raise AnalysisError(f"{where}table {name!r} lacks column(s) {', '.join(missing)}")


def write_analysis(
    out_dir: str | Path,
    manifest: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    matrices: Mapping[str, np.ndarray],
    full_maps: Mapping[tuple[int, str, int], np.ndarray] | None = None,
) -> Path:
    """Write an analysis folder atomically: readers see the previous complete folder or the new one."""
    unknown = sorted(set(tables) - set(TABLE_COLUMNS))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; known: {', '.join(TABLE_COLUMNS)}")
    for name, frame in tables.items():
        _check_columns(name, frame)
    files = {name: f"{name}.parquet" for name in tables}
    record = dict(manifest, tables=files, matrices=MATRICES, full_maps=FULL_MAPS if full_maps else None)
    maps = {
        f"{s}/{f}/{layer}": np.ascontiguousarray(a, dtype=np.float32)
        for (s, f, layer), a in (full_maps or {}).items()
    }
    with atomic_dir(out_dir) as tmp:
        for name, frame in tables.items():
            frame.reset_index(drop=True).to_parquet(tmp / files[name], index=False)
        meta = {"schema_version": str(SCHEMA_VERSION)}
        # bytes through write_bytes: safetensors' own file writer makes owner-only files
        arrays = {k: np.ascontiguousarray(v) for k, v in matrices.items()}
        (tmp / MATRICES).write_bytes(save(arrays, metadata=meta))
        if maps:
            (tmp / FULL_MAPS).write_bytes(save(maps, metadata=meta))
        (tmp / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out_dir)


def read_manifest(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    file = folder / MANIFEST
    if not file.is_file():
        raise AnalysisError(
            f"{folder} is not an analysis folder (no {MANIFEST}); create one with `sinkviz capture`"
        )
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise AnalysisError(
            f"{file}: not a sinkviz analysis manifest (kind {record.get('kind')!r})"
            if isinstance(record, dict)
            else f"{file}: not a sinkviz analysis manifest"
        )
    version = record.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        older = ", ".join(str(v) for v in READABLE_SCHEMA_VERSIONS if v != SCHEMA_VERSION)
        raise AnalysisError(
            f"{folder}: analysis schema version {version!r} is not readable by this sinkviz (reads version "
            f"{SCHEMA_VERSION} and the older {older}); re-run `sinkviz capture` with this version, or use the "
            "sinkviz that wrote it"
        )
    return record


def derive_means(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`mean` = sum / count (NaN where nothing was seen); `head_mean` averages heads for (L, H, K, K) sums."""
    out = dict(arrays)
    for key in [k for k in arrays if k.endswith("/sum")]:
        base = key[: -len("/sum")]
        sums, counts = arrays[key], arrays.get(f"{base}/count")
        if counts is None:
            continue
        per_head = sums.ndim == counts.ndim + 1
        c = counts[:, None] if per_head else counts
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, sums / np.where(c > 0, c, 1), np.nan)
        out[f"{base}/mean"] = mean
        if per_head:
            out[f"{base}/head_mean"] = mean.mean(axis=1)
    return out


def load_analysis(path: str | Path, full_maps: bool = True) -> Analysis:
    """Read an analysis folder into DataFrames and arrays; refuses unknown schema versions."""
    folder = Path(path)
    record = read_manifest(folder)
    tables = {}
    for name, file in (record.get("tables") or {}).items():
        if name not in TABLE_COLUMNS or Path(file).name != file:  # names come from the manifest: stay inside
            raise AnalysisError(f"{folder / MANIFEST}: unexpected table entry {name!r}: {file!r}")
        frame = pd.read_parquet(folder / file)
        _check_columns(name, frame, folder / file)
        tables[name] = frame
    arrays = load_file(str(folder / MATRICES)) if (folder / MATRICES).is_file() else {}
    maps: dict[tuple[int, str, int], np.ndarray] = {}
    if full_maps and record.get("full_maps") and (folder / FULL_MAPS).is_file():
        for key, value in load_file(str(folder / FULL_MAPS)).items():
            sid, fld, layer = key.split("/")
            maps[(int(sid), fld, int(layer))] = value
    return Analysis(folder, record, tables, derive_means(arrays), maps)
