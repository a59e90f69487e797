"""The main job on the bundled sample data: prepare -> fine-tune the pretrained MiniLM encoder as a baseline and as
CTR-Sink -> test metrics, each step skipped when already done.

The demo uses the real pretrained language model (all-MiniLM-L6-v2, bundled offline) so that the attention pages show
a pretrained LM's attention, not a scratch toy's. A CPU fine-tune must be short to fit the main job's few minutes:
a few hundred samples, one epoch. Read its AUC as a demonstration, not a result (docs/RESULTS.md has those). The
CTR-Sink run keeps its checkpoint from before the first step (`keep_epoch_checkpoints`), so the dashboard can show
the pretrained encoder with sinks inserted beside the fine-tuned one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ctrsink.config import load_config
from ctrsink.run import FINAL_METRICS_FILE

log = logging.getLogger("ctrsink.pipeline")
REPO = Path(__file__).resolve().parents[1]
SAMPLE_LOG = REPO / "sample_data" / "synthetic"

# The pretrained encoder at a CPU-sized fine-tune: 8 steps of 32 samples, short histories.
DEMO_SETTINGS = [
    "backbone=bundled:minilm",
    "num_behaviors=8",
    "max_user_tokens=96",
    "max_item_tokens=24",
    "lr=1e-4",
    "head_lr=1e-3",
    "epochs=1",
    "train_samples=256",
    "eval_samples=128",
    "eval_batch_size=64",
]
QUICK_SETTINGS = ["train_samples=64", "eval_samples=64"]  # `--quick`: the same steps in seconds (tests)
VARIANTS = {
    "baseline": [],
    "ctrsink": ["use_sink=true", "sink_signal=time_gap", "keep_epoch_checkpoints=true"],
}


def run_demo(
    out: str | Path = "runs/demo", overrides: list[str] | None = None, quick: bool = False
) -> dict[str, Any]:
    from ctrsink.data import prepare
    from ctrsink.train import train

    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "manifest.json").is_file():
        log.info("preparing samples from %s", SAMPLE_LOG)
        prepare("csv", SAMPLE_LOG, data_dir)
    settings = DEMO_SETTINGS + (QUICK_SETTINGS if quick else [])
    results: dict[str, Any] = {}
    for name, extra in VARIANTS.items():
        run = out / name
        if not (run / FINAL_METRICS_FILE).is_file():
            log.info("fine-tuning %s -> %s", name, run)
            train(data_dir, load_config(None, settings + extra + list(overrides or [])), run)
        results[name] = json.loads((run / FINAL_METRICS_FILE).read_text(encoding="utf-8"))["test"]
    print(
        json.dumps(
            {k: {m: v[m] for m in ("auc", "logloss", "gauc", "n")} for k, v in results.items()}, indent=1
        )
    )
    return results
