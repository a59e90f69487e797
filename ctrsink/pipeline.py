"""The main job on the bundled sample data: prepare -> train -> evaluate, each step skipped when already done."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ctrsink.config import load_config

log = logging.getLogger("ctrsink.pipeline")
REPO = Path(__file__).resolve().parents[1]
SAMPLE_LOG = REPO / "sample_data" / "synthetic"


def run_demo(out: str | Path = "runs/demo", overrides: list[str] | None = None) -> dict[str, Any]:
    from ctrsink.data import prepare
    from ctrsink.predict import evaluate
    from ctrsink.train import train

    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "manifest.json").is_file():
        log.info("preparing samples from %s", SAMPLE_LOG)
        prepare("csv", SAMPLE_LOG, data_dir)
    results: dict[str, Any] = {}
    variants = {"baseline": [], "ctrsink": ["use_sink=true", "sink_signal=time_gap"]}
    for name, extra in variants.items():
        run = out / name
        cfg = load_config(None, extra + list(overrides or []))
        if not (run / "final_metrics.json").is_file():
            log.info("training %s -> %s", name, run)
            train(data_dir, cfg, run)
        results[name] = evaluate(run, split="test")
    print(
        json.dumps(
            {k: {m: v[m] for m in ("auc", "logloss", "gauc", "n")} for k, v in results.items()}, indent=1
        )
    )
    return results
