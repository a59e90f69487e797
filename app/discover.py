"""Find runs, ablations, analyses and sample sets under the dashboard's root, and load them with caching.

Confinement: the root is fixed when the app starts; every path the app opens, including paths read from manifests
and run files (`run_dir`, `data_dir`), goes through `confine` (resolved, symlinks followed) and is refused with
`OutsideRoot` unless it lies under the root. Every loader here takes the root as its first argument.

Caching: every loader is keyed on the artifact's path and the (mtime_ns, size) of the files that define it, so a
re-trained run or a re-captured analysis is read again on the next rerun and an unchanged one never is. Reading goes
through the toolkit's public readers only: `sinkviz.load_analysis`, `sinkviz.load_id_analysis`,
`sinkviz.attribution.load_attributions` and `ctrsink.api` (sample sets, ablation tables, runs for scoring).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import yaml

from ctrsink import api
from sinkviz.artifacts import FULL_MAPS, MANIFEST, MATRICES

RUN_FILES = api.RUN_RECORD_FILES
ANALYSIS_FILES = (MANIFEST, MATRICES, FULL_MAPS)
ABLATION_FILE = "ablation.parquet"
GRID_FILE = "grid.json"
BASE_CONFIG_FILE = "base_config.yaml"
SUMMARY_FILE = "summary.md"
ATTRIBUTIONS_FILE = "attributions.parquet"
LAUNCH_FILE = "dashboard_launch.json"  # written by the Ablations page next to the ablation it started
# model weights and vocabularies hold no records: never walked
SKIP_DIRS = set(api.MODEL_DIRS) | {"__pycache__", "node_modules", ".venv", "views"}
MAX_DEPTH = 8

Stamp = tuple[str, int, int]


class OutsideRoot(ValueError):
    """A path that resolves (symlinks followed) outside the dashboard's root: the app refuses to open it."""


def confine(root: str | Path, path: str | Path) -> Path:
    """`path` resolved (symlinks followed); raises OutsideRoot unless it lies under `root` (resolved too)."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != base and not resolved.is_relative_to(base):
        shown = f"{path} (resolves to {resolved})" if str(resolved) != str(path) else str(path)
        raise OutsideRoot(f"refused: {shown} is outside the dashboard root {base}")
    return resolved


def confine_entries(root: str | Path, folder: str | Path, recursive: bool = False) -> Path:
    """`confine` for a folder and every entry in it (symlinked files and folders included); -> the folder."""
    folder = confine(root, folder)
    if not folder.is_dir():
        return folder
    for current, dirs, files in os.walk(folder):
        for name in dirs + files:
            confine(root, Path(current) / name)
        if not recursive:
            break
    return folder


def read_text(root: str | Path, path: str | Path) -> str:
    """A text file under the root (summary.md, logs)."""
    return confine(root, path).read_text(encoding="utf-8")


def read_json(root: str | Path, path: str | Path) -> Any:
    return json.loads(read_text(root, path))


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
    name: str  # path relative to the scanned folder
    group: str | None = None  # the ablation a run belongs to
    error: str | None = None  # set when the folder cannot even be classified properly
    run: Path | None = None  # analyses: the run they were captured from (under the root)
    run_note: str | None = None  # analyses: why `run` is not the manifest's run_dir, or why there is none


@dataclass
class Found:
    root: Path  # the scanned folder
    runs: list[Artifact] = field(default_factory=list)
    ablations: list[Artifact] = field(default_factory=list)
    analyses: list[Artifact] = field(default_factory=list)
    data: list[Artifact] = field(default_factory=list)
    attributions: list[Artifact] = field(default_factory=list)
    id_rows: list[Artifact] = field(default_factory=list)  # ID-row analyses (sinkviz.idrows), not `analyses`
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, message): entries leading outside
    exists: bool = True

    def standalone_runs(self) -> list[Artifact]:
        return [r for r in self.runs if r.group is None]

    def by_path(self, path: str | Path) -> Artifact | None:
        path = Path(path)
        for a in self.runs + self.ablations + self.analyses + self.id_rows + self.data:
            if a.path == path:
                return a
        return None


def _read_manifest(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """-> (record, error) of a folder's manifest.json (the caller has confined the file)."""
    try:
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"manifest.json is not readable JSON ({type(exc).__name__}: {exc})"
    if not isinstance(record, dict):
        return None, "manifest.json does not hold a JSON object"
    return record, None


def _manifest_kind(folder: Path, record: dict[str, Any] | None) -> str | None:
    """analysis, id_rows, data, or None (not ours)."""
    if record is None:
        return "analysis"  # unreadable: reported as a broken analysis
    if str(record.get("kind", "")).startswith("sinkviz"):
        return "analysis"
    if record.get("kind") == "id_rows":
        return "id_rows"
    if "history_fields" in record and (folder / "items.parquet").exists():
        return "data"
    return None


def _run_of(
    base: Path, here: Path, record: dict[str, Any] | None, runs: list[Path]
) -> tuple[Path | None, str | None]:
    """The run an analysis belongs to: the manifest's run_dir when it is a run under the root, else the run folder
    that holds the analysis; -> (run, note on why not the manifest's run_dir / why none)."""
    enclosing = next(
        (r.resolve() for r in sorted(runs, key=lambda p: -len(p.parts)) if r in here.parents), None
    )
    given = (record or {}).get("run_dir")
    if not given:
        return enclosing, None if enclosing else "the manifest names no run_dir"
    try:
        run = confine(base, given)
    except OutsideRoot as exc:
        return enclosing, str(exc) + (f"; using the run that holds it, {enclosing}" if enclosing else "")
    if (run / api.RUN_FILE).is_file():
        return run, None
    note = f"the manifest's run_dir {given} holds no {api.RUN_FILE}"
    return enclosing, note + (f"; using the run that holds it, {enclosing}" if enclosing else "")


def find_artifacts(folder: str | Path, root: str | Path | None = None) -> Found:
    """Walk `folder` (under `root`; default: the folder itself) and classify what it holds.

    Run directories are walked too (analyses live inside them), but not their checkpoints, tokenizers, backbones or
    encoders, nor hidden folders. Symlinked folders are not followed; those leading outside the root are reported.
    """
    base = Path(root if root is not None else folder).resolve()
    folder = Path(folder)
    found = Found(root=folder, exists=folder.is_dir())
    if not found.exists:
        return found
    ablations: list[Path] = []
    runs: list[Path] = []  # top-down walk: a folder's enclosing runs are known when it is reached
    for current, dirs, files in os.walk(folder):
        here = Path(current)
        depth = len(here.relative_to(folder).parts)
        rel = here.relative_to(folder).as_posix() if here != folder else "."
        _note_links(base, folder, here, dirs, found)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and depth < MAX_DEPTH
        )
        names = set(files)
        if ATTRIBUTIONS_FILE in names:
            found.attributions.append(Artifact("attributions", here, rel))
        if api.RUN_FILE in names:
            group = next((a.relative_to(folder).as_posix() for a in ablations if a in here.parents), None)
            found.runs.append(Artifact("run", here, rel, group))
            runs.append(here)
            continue  # a run folder is no ablation or sample set, but may hold analyses below
        if ABLATION_FILE in names or GRID_FILE in names or LAUNCH_FILE in names:
            ablations.append(here)
            found.ablations.append(Artifact("ablation", here, rel))
            continue
        if MANIFEST in names:
            try:
                confine(base, here / MANIFEST)
            except OutsideRoot as exc:
                found.refused.append((f"{rel}/{MANIFEST}", str(exc)))
                continue
            record, error = _read_manifest(here)
            kind = _manifest_kind(here, record)
            if kind in ("analysis", "id_rows"):
                run, note = _run_of(base, here, record, runs)
                getattr(found, "analyses" if kind == "analysis" else "id_rows").append(
                    Artifact(kind, here, rel, error=error, run=run, run_note=note)
                )
            elif kind == "data":
                found.data.append(Artifact("data", here, rel))
            if kind is not None:
                dirs[:] = []
    return found


def _note_links(base: Path, folder: Path, here: Path, dirs: list[str], found: Found) -> None:
    """Symlinked folders are never followed; the ones leading outside the root are reported."""
    for d in dirs:
        if (here / d).is_symlink():
            try:
                confine(base, here / d)
            except OutsideRoot as exc:
                found.refused.append(((here / d).relative_to(folder).as_posix(), str(exc)))


EPOCH_FOLDER = re.compile(r"epoch(\d+)")  # OUT/epoch{k}, as `sinkviz capture --every-epoch` names them


def epoch_series(analyses: list[Artifact]) -> list[dict[int, Artifact]]:
    """Analyses that form a per-epoch series: sibling folders epoch{k} attributed to the same run, {k: analysis}
    per series (two or more members). The folder name alone decides here; the caller checks each manifest's
    `checkpoint`."""
    groups: dict[tuple[Path, Path | None], dict[int, Artifact]] = {}
    for art in analyses:
        match = EPOCH_FOLDER.fullmatch(art.path.name)
        if match and art.error is None:
            groups.setdefault((art.path.parent, art.run), {})[int(match.group(1))] = art
    return [dict(sorted(g.items())) for g in groups.values() if len(g) > 1]


@st.cache_data(ttl=3, show_spinner=False, max_entries=16)
def find(folder: str, root: str) -> Found:
    """`find_artifacts`, cached for a few seconds (new folders appear on the next rerun after that)."""
    return find_artifacts(folder, root)


def subfolders(root: str | Path, depth: int = 2) -> list[str]:
    """ "." and the folders under `root` (relative, at most `depth` deep), for the sidebar's folder choice."""
    root = Path(root)
    out = ["."]
    if not root.is_dir():
        return out
    for current, dirs, _ in os.walk(root):
        here = Path(current)
        level = len(here.relative_to(root).parts)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and d not in SKIP_DIRS and not (here / d).is_symlink() and level < depth
        )
        out += [(here / d).relative_to(root).as_posix() for d in dirs]
    return sorted(out)


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    info: dict[str, Any]
    metrics: pd.DataFrame  # one row per metrics.jsonl line
    final: dict[str, Any] | None  # None while training


def metric_lines(file: Path, strict: bool = True) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (the app's one reader of it); `strict=False` skips a half-written line."""
    if not file.is_file():
        return []
    rows = []
    for i, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if strict:
                raise ValueError(f"{file}: line {i} is not JSON") from None
    return rows


def read_run(path: str | Path) -> RunRecord:
    path = Path(path)
    config = yaml.safe_load((path / api.CONFIG_FILE).read_text(encoding="utf-8")) or {}
    info = json.loads((path / api.RUN_FILE).read_text(encoding="utf-8"))
    lines = metric_lines(path / api.METRICS_FILE)
    final_file = path / api.FINAL_METRICS_FILE
    final = json.loads(final_file.read_text(encoding="utf-8")) if final_file.is_file() else None
    if not isinstance(config, dict) or not isinstance(info, dict):
        raise ValueError(f"{path}: {api.CONFIG_FILE} or {api.RUN_FILE} does not hold a mapping")
    return RunRecord(path, config, info, pd.DataFrame(lines), final)


@st.cache_data(show_spinner=False, max_entries=512)
def _run(path: str, key: tuple[Stamp, ...]) -> RunRecord:
    return read_run(path)


def load_run_record(root: str | Path, path: str | Path) -> RunRecord:
    """A run's config, run record and metrics; the run folder and its record files must lie under the root."""
    path = confine(root, path)
    for name in RUN_FILES:
        confine(root, path / name)
    return _run(str(path), stamps(path, RUN_FILES))


# ------------------------------------------------------------------------------------------------ analyses


@st.cache_resource(show_spinner=False, max_entries=8)
def _analysis(path: str, key: tuple[Stamp, ...]):
    from sinkviz import load_analysis

    return load_analysis(path)


def load_analysis(root: str | Path, path: str | Path):
    """The sinkviz `Analysis` of a folder (shared, read-only: pages must not modify it)."""
    path = confine_entries(root, path)
    return _analysis(str(path), stamps(path, ANALYSIS_FILES))


@st.cache_resource(show_spinner=False, max_entries=16)
def _id_analysis(path: str, key: tuple[Stamp, ...]):
    from sinkviz import load_id_analysis

    return load_id_analysis(path)


def load_id_analysis(root: str | Path, path: str | Path):
    """The sinkviz `IDAnalysis` of an ID-row analysis folder (shared, read-only); keyed on its manifest and tables."""
    from sinkviz.artifacts import ID_TABLE_COLUMNS

    path = confine_entries(root, path)
    return _id_analysis(
        str(path), stamps(path, (MANIFEST,) + tuple(f"{t}.parquet" for t in ID_TABLE_COLUMNS))
    )


@st.cache_data(show_spinner=False, max_entries=32)
def _attributions(path: str, key: Stamp) -> pd.DataFrame:
    from sinkviz.attribution import load_attributions

    return load_attributions(path)


def load_attributions(root: str | Path, folder: str | Path) -> pd.DataFrame | None:
    """The per-behavior attribution table of a folder, or None when it has none."""
    file = confine(root, Path(folder) / ATTRIBUTIONS_FILE)
    if not file.is_file():
        return None
    return _attributions(str(file), stamp(file))


def kept_map(analysis: Any, sample_id: int) -> dict[str, list[int]] | None:
    """Per history field, the stored-history index of each kept behavior k of a sample, as `sinkviz capture`
    recorded it (`FieldEncoding.kept`); None when the analysis predates the `kept` table or lacks the sample."""
    table = analysis.tables.get("kept")
    if table is None:
        return None
    rows = table[table["sample_id"] == sample_id]
    if rows.empty:
        return None
    return {
        str(f): part.sort_values("behavior")["stored_index"].astype(int).tolist()
        for f, part in rows.groupby("field")
    }


# ------------------------------------------------------------------------------------------------ ablations


@st.cache_data(show_spinner=False, max_entries=32)
def _ablation(path: str, key: Stamp) -> pd.DataFrame:
    return api.read_ablation(Path(path) / ABLATION_FILE)


def load_ablation(root: str | Path, path: str | Path) -> pd.DataFrame | None:
    """The tidy table of an ablation folder, or None while the grid has not finished."""
    file = confine(root, Path(path) / ABLATION_FILE)
    if not file.is_file():
        return None
    return _ablation(str(file.parent), stamp(file))


def read_grid(root: str | Path, path: str | Path) -> dict[str, Any]:
    file = confine(root, Path(path) / GRID_FILE)
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


# ------------------------------------------------------------------------------------------------ data, models


def confine_data(root: str | Path, data_dir: str | Path) -> Path:
    """A sample-set folder and the files a reader opens in it, under the root."""
    data_dir = confine(root, data_dir)
    for name in api.SAMPLE_SET_FILES:
        confine(root, data_dir / name)
    return data_dir


@st.cache_resource(show_spinner=False, max_entries=8)
def _split(path: str, split: str, key: Stamp) -> pd.DataFrame:
    return api.load_split(path, split)


@st.cache_resource(show_spinner=False, max_entries=4)
def _items(path: str, key: Stamp) -> pd.DataFrame:
    return api.load_items(path)


def load_split(root: str | Path, data_dir: str | Path, split: str) -> pd.DataFrame:
    """One split of a prepared sample set, indexed by sample_id (shared, read-only)."""
    data_dir = confine_data(root, data_dir)
    return _split(str(data_dir), split, stamp(data_dir / MANIFEST))


def load_items(root: str | Path, data_dir: str | Path) -> pd.DataFrame:
    """The items table of a prepared sample set, indexed by item_idx (shared, read-only)."""
    data_dir = confine_data(root, data_dir)
    return _items(str(data_dir), stamp(data_dir / MANIFEST))


@st.cache_resource(show_spinner="Loading the model for rescoring...", max_entries=2)
def _bundle(path: str, key: tuple[Stamp, ...]):
    import torch

    torch.set_num_threads(1)  # a dashboard rescoring one row needs no more, and must not starve training
    return api.load_run(path)


def load_bundle(root: str | Path, run_dir: str | Path):
    """`ctrsink.api.load_run` of a run, cached on its best checkpoint and config.

    Everything it opens must lie under the root: the whole run folder and the sample set its run.json names.
    """
    run_dir = confine_entries(root, run_dir, recursive=True)
    data_dir = read_json(root, run_dir / api.RUN_FILE).get("data_dir")
    if not data_dir:
        raise ValueError(f"{run_dir / api.RUN_FILE} names no data_dir")
    confine_data(root, data_dir)
    best = run_dir / api.CHECKPOINT_DIR / api.BEST_CHECKPOINT / api.CHECKPOINT
    return _bundle(str(run_dir), stamps(run_dir, (api.CONFIG_FILE, api.RUN_FILE)) + (stamp(best),))
