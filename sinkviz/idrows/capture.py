"""Capture of an ID-row run: score each sample with its true and another candidate under capture, reduce, write."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

import ctrsink
from ctrsink.errors import CtrSinkError
from ctrsink.run import ModelBundle, family_of, load_run
from sinkviz.artifacts import ID_KIND, ID_SCHEMA_VERSION
from sinkviz.capture import _split_frame, choose_samples
from sinkviz.hooks import capture_points
from sinkviz.idrows.analysis import IDRowsAnalysis, _concat
from sinkviz.idrows.folder import write_id_analysis
from sinkviz.idrows.points import parse_point
from sinkviz.idrows.reductions import lambda_table
from sinkviz.idrows.summaries import with_series

log = logging.getLogger("sinkviz.idrows")


def run_model_name(run_dir: str | Path) -> str | None:
    """The `model` of a run's config.yaml ("ctrsink" when unset); None when there is no config.yaml."""
    file = Path(run_dir) / "config.yaml"
    if not file.is_file():
        return None
    config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    return str(config.get("model", "ctrsink")) if isinstance(config, dict) else None


def other_items(targets: Sequence[int], n_items: int, seed: int) -> np.ndarray:
    """A seeded uniform draw of another item (item_idx) per target, never the target itself."""
    if n_items < 2:
        raise CtrSinkError("the ID-row analysis needs at least two items to draw another candidate")
    rng = np.random.default_rng([seed, 1])  # its own stream: the sample choice uses `seed` alone
    draw = rng.integers(0, n_items - 1, size=len(targets))
    return draw + (draw >= np.asarray(targets, dtype=np.int64))


def analyse_id_rows(
    bundle: ModelBundle,
    rows: list[dict[str, Any]],
    others: Sequence[int],
    batch_size: int,
    boundary_gaps: int,
) -> tuple[IDRowsAnalysis, pd.DataFrame]:
    """Score every row with its true and its other candidate under capture; -> (reductions, predictions)."""
    model, batcher = bundle.model, bundle.batcher
    n_buckets = batcher.n_buckets
    analysis = IDRowsAnalysis(batcher.vocab.time_buckets, n_buckets, boundary_gaps)
    pairs = max(1, batch_size // 2)
    predictions = []
    model.eval()  # dropout would make the weights random
    fold = getattr(model, "fold", None)
    if fold is not None:
        model.fold = False  # one sequence per row, so hook tensors map 1:1 onto batch rows
    try:
        with torch.no_grad(), capture_points(model, lambda n: parse_point(n) is not None, analysis):
            for start in range(0, len(rows), pairs):
                chunk = rows[start : start + pairs]
                alt = [dict(r, item_idx=int(o)) for r, o in zip(chunk, others[start : start + pairs])]
                batch = batcher(chunk + alt)
                analysis.set_batch(batch["fields"], batch["sample_id"], len(chunk))
                logits = model(batch["fields"]).float().cpu().numpy()
                analysis.finish_batch()
                predictions.append(
                    pd.DataFrame(
                        {
                            "sample_id": batch["sample_id"].numpy(),
                            "user_id": [str(r.get("user_id", "")) for r in chunk + alt],
                            "candidate": ["true"] * len(chunk) + ["other"] * len(chunk),
                            "item_idx": [int(r["item_idx"]) for r in chunk + alt],
                            "category": batch["fields"]["target_cat"].numpy(),
                            "label": [float(r["label"]) for r in chunk] + [np.nan] * len(chunk),
                            "logit": logits,
                        }
                    )
                )
                log.info("captured %d/%d samples", min(start + pairs, len(rows)), len(rows))
    finally:
        if fold is not None:
            model.fold = fold
    if not analysis.seen:
        raise CtrSinkError(
            f"{type(model).__name__} exposes none of the hook points this analysis reads "
            f"(it has {', '.join(sorted(model.hook_points())) or 'none'})"
        )
    return analysis, _concat(predictions, "predictions")


def capture_id_run(
    run_dir: str | Path,
    out_dir: str | Path,
    split: str = "test",
    samples: int = 256,
    seed: int = 0,
    *,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    checkpoint: str = "best",
) -> Path:
    """Analyse `samples` rows of `split` (the same seeded choice as `capture_run`, 0 = all) of an ID-row run and
    write the analysis folder `out_dir` atomically."""
    bundle = load_run(run_dir, checkpoint=checkpoint)
    if family_of(bundle.cfg).name == "text":
        raise CtrSinkError(f"{run_dir} is a CTR-Sink run; use `sinkviz capture` (capture_run) for it")
    data_dir = data_dir or bundle.info["data_dir"]
    frame = choose_samples(_split_frame(data_dir, split), samples, seed)
    if frame.empty:
        raise CtrSinkError(f"split {split!r} of {data_dir} has no samples to analyse")
    rows = frame.to_dict("records")
    others = other_items([int(r["item_idx"]) for r in rows], len(bundle.batcher.item_cat), seed)
    boundary_gaps = max(bundle.cfg.sparsectr.chunks - 1, 0)
    bs = batch_size or bundle.cfg.eval_batch_size
    analysis, predictions = analyse_id_rows(bundle, rows, others, bs, boundary_gaps)
    tables = analysis.tables()
    tables["predictions"] = predictions
    tables["lambdas"] = lambda_table(bundle.model)
    cfg = bundle.cfg
    manifest = {
        "kind": ID_KIND,
        "schema_version": ID_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.model,
        "run_dir": str(Path(run_dir).absolute()),
        "data_dir": str(Path(data_dir).absolute()),
        "split": split,
        "samples": len(rows),
        "seed": seed,
        "checkpoint": checkpoint,
        "other_candidate": "uniform random other item per sample (seeded), same history",
        "hook_names": sorted(analysis.seen),
        "modules": list(
            with_series(tables["distributions"][["module", "layer"]].drop_duplicates())["series"]
        ),
        "id_model": dict(cfg.id_model.__dict__),  # dim, layers, heads of the row (DIN uses dim only)
        "max_behaviors": int(bundle.batcher.max_len),
        "time_buckets": int(bundle.batcher.n_buckets),
        "boundary_gaps": boundary_gaps,
        "ctrsink_version": ctrsink.__version__,
    }
    return write_id_analysis(out_dir, manifest, tables)
