"""What the inference-time studies (interventions, rollout, faithfulness, head roles) share: the samples they
score, their intervals over users, and their artifacts.

DIR/interventions.json          manifest: kind "interventions", schema version, the run and samples, one entry
per
                                analysis that wrote into DIR, and `tables` {name: file}
DIR/<table>.parquet             the tables of `TABLE_COLUMNS`

DIR may be a `sinkviz capture` folder: none of these names collide with an analysis' files. The manifest kind
does not start with "sinkviz", so the dashboard's analysis discovery never mistakes DIR's manifest for an
analysis. Reading uses only Parquet and JSON (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import ctrsink
from ctrsink.atomic import atomic_write_bytes, atomic_write_json
from ctrsink.errors import CtrSinkError
from ctrsink.intervals import LEVEL, user_multiplicities
from ctrsink.model import CTRModel
from ctrsink.run import ModelBundle, load_run

MANIFEST_FILE = "interventions.json"
KIND = "interventions"
SCHEMA_VERSION = 1
METRIC_COLUMNS = tuple(
    f"{p}_{m}" for m in ("auc", "gauc", "logloss", "abs_score") for p in ("delta", "lo", "hi")
)
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    # one row per intervention: Δ = metric(intervened) - metric(unchanged), 95% paired user-bootstrap
    # intervals
    "interventions": (
        "intervention", "kind", "layer", "head", "n", "note", *METRIC_COLUMNS,
        "base_auc", "base_gauc", "base_logloss",
    ),
    "intervention_scores": ("intervention", "sample_id", "logit"),
    # head-mean attention (raw, per layer) and rollout (cumulative up to the layer) from the pooled tokens
    "rollout": ("sample_id", "field", "layer", "behavior", "raw", "rollout"),
    "explanations": ("sample_id", "field", "behavior", "method", "score"),
    "deletion": ("sample_id", "user_id", "field", "method", "k", "n_behaviors", "comprehensiveness",
                 "sufficiency"),
    "deletion_curves": ("method", "k", "measure", "mean", "lo", "hi", "n"),
    "head_mass": ("field", "layer", "head", "category", "mass", "count"),
    "head_roles": ("field", "layer", "head", "role", "top_mass", "threshold"),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------ samples


@dataclass
class Study:
    """A CTR-Sink model, its batcher and the chosen sample rows, collated once and scored with the run's
    pooling."""

    model: CTRModel
    batcher: Any
    rows: list[dict[str, Any]]
    batch_size: int = 32
    pooling: str = "all_tokens"
    meta: dict[str, Any] = field(default_factory=dict)
    _batches: list[dict[str, Any]] | None = None

    def batches(self) -> list[dict[str, Any]]:
        if self._batches is None:
            bs = max(1, self.batch_size)
            self._batches = [self.batcher(self.rows[i : i + bs]) for i in range(0, len(self.rows), bs)]
        return self._batches

    def chunks(self) -> Iterator[list[dict[str, Any]]]:
        bs = max(1, self.batch_size)
        for i in range(0, len(self.rows), bs):
            yield self.rows[i : i + bs]

    def predictions(self, logits: np.ndarray) -> pd.DataFrame:
        """sample_id, user_id, label, logit: what `ctrsink.intervals.paired_user_bootstrap` pairs on."""
        return pd.DataFrame(
            {
                "sample_id": [int(r["sample_id"]) for r in self.rows],
                "user_id": [str(r["user_id"]) for r in self.rows],
                "label": [float(r["label"]) for r in self.rows],
                "logit": np.asarray(logits, dtype=np.float64),
            }
        )


def open_study(
    run_or_bundle: str | Path | ModelBundle,
    split: str = "test",
    samples: int = 256,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    checkpoint: str = "best",
    batch_size: int | None = None,
    pooling: str | None = None,
) -> Study:
    """Load a run (or take a loaded bundle) and the seeded choice of `samples` rows of `split` that `sinkviz
    capture` makes, so every study of a run looks at the same samples as its attention analysis."""
    from sinkviz.capture import _split_frame, choose_samples

    if samples < 0:
        raise CtrSinkError(f"option '--samples': {samples} is negative (0 = the whole split)")
    bundle = run_or_bundle if isinstance(run_or_bundle, ModelBundle) else _load(run_or_bundle, checkpoint)
    if not isinstance(bundle.model, CTRModel):
        raise CtrSinkError("these analyses need a language-model run (model: ctrsink); this is an ID-row run")
    data_dir = data_dir or bundle.info.get("data_dir")
    if not data_dir:
        raise CtrSinkError("no sample directory: pass --data (the run record names none)")
    frame = choose_samples(_split_frame(data_dir, split), samples, seed)
    if frame.empty:
        raise CtrSinkError(f"split {split!r} of {data_dir} has no samples")
    run_dir = None if isinstance(run_or_bundle, ModelBundle) else str(Path(run_or_bundle).absolute())
    meta = {
        "run_dir": run_dir,
        "data_dir": str(Path(data_dir).absolute()),
        "split": split,
        "samples": len(frame),
        "sample_seed": seed,
        "checkpoint": checkpoint,
    }
    return study_of(bundle.model, bundle.batcher, frame.to_dict("records"), batch_size, pooling, meta)


def _load(run_dir: str | Path, checkpoint: str) -> ModelBundle:
    from ctrsink.config import load_config

    path = Path(run_dir)
    if (path / "config.yaml").is_file() and load_config(path / "config.yaml").model != "ctrsink":
        raise CtrSinkError(
            f"{path} is an ID-row run; these analyses need a language-model run (model: ctrsink)"
        )
    return load_run(path, checkpoint=checkpoint)


def study_of(
    model: CTRModel,
    batcher: Any,
    rows: Sequence[Mapping[str, Any]],
    batch_size: int | None = None,
    pooling: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Study:
    """A Study over rows already in hand (tests, notebooks); pooling defaults to the run's `eval_pooling`."""
    model.eval()  # dropout would make every score random
    cfg = model.cfg
    pooling = pooling or cfg.eval_pooling
    info = {
        "pooling": pooling,
        "use_sink": bool(cfg.use_sink),
        "model_family": model.backbone.spec.family,
        "layers": model.backbone.num_layers,
        "lower_layers": model.split_at,
        "heads": int(model.backbone.config.num_attention_heads),
        "history_fields": list(model.history_fields),
        **(meta or {}),
    }
    return Study(model, batcher, [dict(r) for r in rows], batch_size or cfg.eval_batch_size, pooling, info)


@torch.no_grad()
def score_batches(model: CTRModel, batches: Sequence[Mapping[str, Any]], pooling: str) -> np.ndarray:
    out = [model(b["fields"], pooling=pooling).float().cpu().numpy() for b in batches]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ intervals


def user_mean_interval(
    values: np.ndarray, users: Sequence[str], n_boot: int = 1000, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """(mean over rows, lo, hi) with the user resampling of `ctrsink.intervals`: each replicate draws users
    with replacement (`user_multiplicities`) and weights a user's rows by how often it was drawn. With the
    same seed the replicates are the ones `paired_user_bootstrap` draws, so a table's intervals share their
    resamples."""
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    if not keep.any():
        return float("nan"), float("nan"), float("nan")
    uniq, inv = np.unique(np.asarray(users).astype(str)[keep], return_inverse=True)
    sums = np.bincount(inv, weights=v[keep], minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    m = user_multiplicities(len(uniq), n_boot, np.random.default_rng(seed))
    boot = (m @ sums) / np.maximum(m @ counts, 1e-300)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return float(v[keep].mean()), float(lo), float(hi)


# ------------------------------------------------------------------------------------------------ artifacts


@dataclass
class Interventions:
    """A loaded results folder: its manifest and whichever tables the analyses run on it wrote."""

    path: Path
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def get(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    file = folder / MANIFEST_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CtrSinkError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise CtrSinkError(f"{file}: not an interventions manifest")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise CtrSinkError(
            f"{file}: schema version {record.get('schema_version')!r} is not {SCHEMA_VERSION}; re-run the "
            "analysis with this sinkviz"
        )
    return record


def write_tables(
    out_dir: str | Path, analysis: str, study: Study, tables: Mapping[str, pd.DataFrame], **params: Any
) -> Path:
    """Write `tables` into `out_dir` and add the analysis to its manifest (other analyses' entries are kept).

    Refuses a folder holding another run's results (another run, data, split, checkpoint or pooling). Analyses
    may use different sample counts (interventions are cheap, faithfulness is not): each entry records its own
    `samples` and `sample_seed`; the top-level ones are the last writer's."""
    out = Path(out_dir)
    for name, frame in tables.items():
        missing = [c for c in TABLE_COLUMNS[name] if c not in frame.columns]
        if missing:
            raise ValueError(f"table {name!r} lacks column(s) {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    record = _read_manifest(out) or {}
    same = ("run_dir", "data_dir", "split", "checkpoint", "pooling")
    clash = [k for k in same if k in record and record[k] != study.meta.get(k)]
    if clash:
        raise CtrSinkError(
            f"{out} holds results for another {', '.join(clash)}; write these into another folder"
        )
    for name, frame in tables.items():
        atomic_write_bytes(out / f"{name}.parquet", frame.reset_index(drop=True).to_parquet(index=False))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    chosen = {k: study.meta.get(k) for k in ("samples", "sample_seed")}
    entry = {"created": created, "tables": sorted(tables), **chosen, **params}
    record = {
        **record,
        **study.meta,
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "ctrsink_version": ctrsink.__version__,
        "analyses": {**record.get("analyses", {}), analysis: entry},
        "tables": {**record.get("tables", {}), **{n: f"{n}.parquet" for n in tables}},
    }
    atomic_write_json(out / MANIFEST_FILE, record)
    return out


def load_interventions(path: str | Path) -> Interventions:
    """Read a folder written by `sinkviz intervene`, `rollout`, `faithfulness` or `heads`."""
    folder = Path(path)
    record = _read_manifest(folder)
    if record is None:
        raise CtrSinkError(f"{folder} holds no {MANIFEST_FILE}; create one with `sinkviz intervene`")
    tables = {}
    for name, file in (record.get("tables") or {}).items():
        if name not in TABLE_COLUMNS or Path(file).name != file:  # names come from the file: stay inside
            raise CtrSinkError(f"{folder / MANIFEST_FILE}: unexpected table entry {name!r}: {file!r}")
        frame = pd.read_parquet(folder / file)
        missing = [c for c in TABLE_COLUMNS[name] if c not in frame.columns]
        if missing:
            raise CtrSinkError(f"{folder / file}: table {name!r} lacks column(s) {', '.join(missing)}")
        tables[name] = frame
    return Interventions(folder, record, tables)


def find_interventions(folder: str | Path, max_depth: int = 8) -> list[Path]:
    """Folders under `folder` holding an interventions manifest (hidden folders and symlinks not followed)."""
    import os

    base = Path(folder)
    skip = {"checkpoint", "backbone", "tokenizer", "encoder", "__pycache__", "node_modules", "views"}
    found = []
    for current, dirs, files in os.walk(base):
        here = Path(current)
        depth = len(here.relative_to(base).parts)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and not (here / d).is_symlink() and depth < max_depth
            and d not in skip
        )  # fmt: skip
        if MANIFEST_FILE in files:
            found.append(here)
    return found
