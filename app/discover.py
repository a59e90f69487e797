"""Find runs, ablations, analyses and sample sets under a root folder, and load them with caching.

Every cached loader is keyed on the artifact's path and the (mtime_ns, size) of the files that define it, so a
re-trained run or a re-captured analysis is read again on the next rerun and an unchanged one never is. Loading
goes through the toolkit's public readers only: `sinkviz.load_analysis`, `sinkviz.attribution.load_attributions`,
`ctrsink.data.load_sample_set` and `ctrsink.run.load_run` (the scoring API).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import yaml

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "final_metrics.json")
ANALYSIS_FILES = ("manifest.json", "matrices.safetensors", "full_maps.safetensors")
ABLATION_FILE = "ablation.parquet"
ATTRIBUTIONS_FILE = "attributions.parquet"
LAUNCH_FILE = "dashboard_launch.json"  # written by the Ablations page next to the ablation it started
SKIP_DIRS = {"checkpoint", "tokenizer", "backbone", "__pycache__", "node_modules", ".venv", "views"}
MAX_DEPTH = 8

Stamp = tuple[str, int, int]


def stamp(path: str | Path) -> Stamp:
    """(path, mtime_ns, size) of a file; (path, 0, -1) when it does not exist."""
    try:
        st_ = os.stat(path)
    except OSError:
        return (str(path), 0, -1)
    return (str(path), st_.st_mtime_ns, st_.st_size)


def stamps(folder: str | Path, names: tuple[str, ...]) -> tuple[Stamp, ...]:
    return tuple(stamp(Path(folder) / n) for n in names)


# ------------------------------------------------------------------------------------------------ discovery


@dataclass(frozen=True)
class Artifact:
    kind: str  # run | ablation | analysis | id_rows | data | attributions
    path: Path
    name: str  # path relative to the root
    group: str | None = None  # the ablation a run belongs to
    error: str | None = None  # set when the folder cannot even be classified properly


@dataclass
class Found:
    root: Path
    runs: list[Artifact] = field(default_factory=list)
    ablations: list[Artifact] = field(default_factory=list)
    analyses: list[Artifact] = field(default_factory=list)
    data: list[Artifact] = field(default_factory=list)
    attributions: list[Artifact] = field(default_factory=list)
    id_rows: list[Artifact] = field(default_factory=list)  # ID-row analyses (sinkviz.idrows), not `analyses`
    exists: bool = True

    def standalone_runs(self) -> list[Artifact]:
        return [r for r in self.runs if r.group is None]

    def by_path(self, path: str | Path) -> Artifact | None:
        path = Path(path)
        for a in self.runs + self.ablations + self.analyses + self.data:
            if a.path == path:
                return a
        return None


def _manifest_kind(folder: Path) -> tuple[str | None, str | None]:
    """-> (kind, error) of a folder with a manifest.json: analysis, id_rows, data, or None (not ours)."""
    try:
        record = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return "analysis", f"manifest.json is not readable JSON ({type(exc).__name__}: {exc})"
    if not isinstance(record, dict):
        return "analysis", "manifest.json does not hold a JSON object"
    if str(record.get("kind", "")).startswith("sinkviz"):
        return "analysis", None
    if record.get("kind") == "id_rows":
        return "id_rows", None
    if "history_fields" in record and (folder / "items.parquet").exists():
        return "data", None
    return None, None


def find_artifacts(root: str | Path) -> Found:
    """Walk `root` (not into checkpoints, tokenizers or hidden folders) and classify what it holds."""
    root = Path(root)
    found = Found(root=root, exists=root.is_dir())
    if not found.exists:
        return found
    ablations: list[Path] = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and depth < MAX_DEPTH
        )
        names = set(files)
        rel = here.relative_to(root).as_posix() if here != root else "."
        if ATTRIBUTIONS_FILE in names:
            found.attributions.append(Artifact("attributions", here, rel))
        if "run.json" in names:
            group = next((a.relative_to(root).as_posix() for a in ablations if a in here.parents), None)
            found.runs.append(Artifact("run", here, rel, group))
            dirs[:] = []
            continue
        if ABLATION_FILE in names or "grid.json" in names or LAUNCH_FILE in names:
            ablations.append(here)
            found.ablations.append(Artifact("ablation", here, rel))
            continue
        if "manifest.json" in names:
            kind, error = _manifest_kind(here)
            if kind == "analysis":
                found.analyses.append(Artifact("analysis", here, rel, error=error))
                dirs[:] = []
            elif kind == "id_rows":
                found.id_rows.append(Artifact("id_rows", here, rel))
                dirs[:] = []
            elif kind == "data":
                found.data.append(Artifact("data", here, rel))
                dirs[:] = []
    return found


@st.cache_data(ttl=3, show_spinner=False, max_entries=16)
def find(root: str) -> Found:
    """`find_artifacts`, cached for a few seconds (new folders appear on the next rerun after that)."""
    return find_artifacts(root)


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    info: dict[str, Any]
    metrics: pd.DataFrame  # one row per metrics.jsonl line
    final: dict[str, Any] | None  # None while training


def read_run(path: str | Path) -> RunRecord:
    path = Path(path)
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    lines = []
    metrics_file = path / "metrics.jsonl"
    if metrics_file.is_file():
        for i, line in enumerate(metrics_file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"{metrics_file}: line {i} is not JSON") from None
    final_file = path / "final_metrics.json"
    final = json.loads(final_file.read_text(encoding="utf-8")) if final_file.is_file() else None
    if not isinstance(config, dict) or not isinstance(info, dict):
        raise ValueError(f"{path}: config.yaml or run.json does not hold a mapping")
    return RunRecord(path, config, info, pd.DataFrame(lines), final)


@st.cache_data(show_spinner=False, max_entries=512)
def _run(path: str, key: tuple[Stamp, ...]) -> RunRecord:
    return read_run(path)


def load_run_record(path: str | Path) -> RunRecord:
    return _run(str(path), stamps(path, RUN_FILES))


# ------------------------------------------------------------------------------------------------ analyses


@st.cache_resource(show_spinner=False, max_entries=8)
def _analysis(path: str, key: tuple[Stamp, ...]):
    from sinkviz import load_analysis

    return load_analysis(path)


def load_analysis(path: str | Path):
    """The sinkviz `Analysis` of a folder (shared, read-only: pages must not modify it)."""
    return _analysis(str(path), stamps(path, ANALYSIS_FILES))


@st.cache_resource(show_spinner=False, max_entries=16)
def _id_analysis(path: str, key: tuple[Stamp, ...]):
    from sinkviz import load_id_analysis

    return load_id_analysis(path)


def load_id_analysis(path: str | Path):
    """The sinkviz `IDAnalysis` of an ID-row analysis folder (shared, read-only); keyed on its manifest and tables."""
    from sinkviz.artifacts import ID_TABLE_COLUMNS

    return _id_analysis(
        str(path), stamps(path, ("manifest.json",) + tuple(f"{t}.parquet" for t in ID_TABLE_COLUMNS))
    )


@st.cache_data(show_spinner=False, max_entries=32)
def _attributions(path: str, key: Stamp) -> pd.DataFrame:
    from sinkviz.attribution import load_attributions

    return load_attributions(path)


def load_attributions(folder: str | Path) -> pd.DataFrame | None:
    """The per-behavior attribution table of a folder, or None when it has none."""
    file = Path(folder) / ATTRIBUTIONS_FILE
    if not file.is_file():
        return None
    return _attributions(str(folder), stamp(file))


# ------------------------------------------------------------------------------------------------ ablations


@st.cache_data(show_spinner=False, max_entries=32)
def _ablation(path: str, key: Stamp) -> pd.DataFrame:
    from ctrsink.ablate import TABLE_COLUMNS

    table = pd.read_parquet(Path(path) / ABLATION_FILE)
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}/{ABLATION_FILE} lacks column(s) {', '.join(missing)}")
    return table


def load_ablation(path: str | Path) -> pd.DataFrame | None:
    """The tidy table of an ablation folder, or None while the grid has not finished."""
    file = Path(path) / ABLATION_FILE
    if not file.is_file():
        return None
    return _ablation(str(path), stamp(file))


def read_grid(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "grid.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


# ------------------------------------------------------------------------------------------------ data, models


@st.cache_resource(show_spinner=False, max_entries=4)
def _sample_set(path: str, key: Stamp):
    from ctrsink.data import load_sample_set

    return load_sample_set(path, verify=False)  # arrow tables; hashes are checked by training, not here


@st.cache_resource(show_spinner=False, max_entries=8)
def _split(path: str, split: str, key: Stamp) -> pd.DataFrame:
    table = _sample_set(path, key).splits[split]
    frame = table.to_pandas() if hasattr(table, "to_pandas") else table
    return frame.set_index("sample_id", drop=False)


@st.cache_resource(show_spinner=False, max_entries=4)
def _items(path: str, key: Stamp) -> pd.DataFrame:
    items = _sample_set(path, key).items
    items = items.to_pandas() if hasattr(items, "to_pandas") else items
    return items.set_index("item_idx", drop=False)


def load_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    """One split of a prepared sample set, indexed by sample_id (shared, read-only)."""
    return _split(str(data_dir), split, stamp(Path(data_dir) / "manifest.json"))


def load_items(data_dir: str | Path) -> pd.DataFrame:
    """The items table of a prepared sample set, indexed by item_idx (shared, read-only)."""
    return _items(str(data_dir), stamp(Path(data_dir) / "manifest.json"))


@st.cache_resource(show_spinner="Loading the model for rescoring...", max_entries=2)
def _bundle(path: str, key: tuple[Stamp, ...]):
    import torch

    from ctrsink.run import load_run

    torch.set_num_threads(1)  # a dashboard rescoring one row needs no more, and must not starve training
    return load_run(path)


def load_bundle(run_dir: str | Path):
    """`ctrsink.run.load_run` of a run, cached on its best checkpoint and config."""
    run_dir = Path(run_dir)
    key = stamps(run_dir, ("config.yaml", "run.json")) + (
        stamp(run_dir / "checkpoint" / "best" / "model.safetensors"),
    )
    return _bundle(str(run_dir), key)
