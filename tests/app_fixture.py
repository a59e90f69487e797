"""A small dashboard root built on the bundled sample data, shared by the AppTest and browser tests.

ROOT/data/                     prepared sample set (`ctrsink.data.prepare` on sample_data/synthetic)
ROOT/baseline/, ROOT/ctrsink/  one tiny trained run each (2 epochs) (no sinks; sinks + time-gap signal + inter-sink bias)
ROOT/ablation/                 a tiny grid (baseline and the two-stage sink variant, two seeds)
ROOT/analysis/{baseline,ctrsink}/  `sinkviz capture` folders; the sink one also holds attributions

Built once per test session (a marker file says it is complete), so both test modules share it.
Run `python tests/app_fixture.py OUT` to build one by hand and point the dashboard at it.
"""

from __future__ import annotations

import base64
import os
import sys
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LOG = REPO / "sample_data" / "synthetic"
DONE = ".fixture-complete"
TINY = [
    "train_samples=96",
    "eval_samples=64",
    "epochs=2",
    "stage1_epochs=1",
    "stage2_epochs=1",
    "num_behaviors=4",
    "scratch_hidden=32",
    "scratch_layers=4",  # two token-level layers below the split, two above
    "scratch_vocab_size=500",
    "num_threads=1",
]
SINK = ["use_sink=true", "sink_signal=time_gap", "inter_sink=true"]
ABLATION_VARIANTS = ["baseline", "sink+signal+two_stage"]
ABLATION_SEEDS = [1, 2]
CAPTURE_SAMPLES = 16
FULL_MAPS = 2
_lock = threading.Lock()


def build(root: str | Path) -> Path:
    """Build the fixture root (idempotent: a complete root is returned as is)."""
    import torch

    from ctrsink.ablate import ablate
    from ctrsink.config import load_config
    from ctrsink.data import prepare
    from ctrsink.train import train
    from sinkviz import capture_run
    from sinkviz.attribution import attribute_run

    root = Path(root)
    if (root / DONE).is_file():
        return root
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if not (data / "manifest.json").is_file():
        prepare("csv", SAMPLE_LOG, data)
    for name, extra in (("baseline", ["use_sink=false"]), ("ctrsink", SINK)):
        run = root / name
        if not (run / "final_metrics.json").is_file():
            train(data, load_config(None, TINY + extra), run, overwrite=True)
        out = root / "analysis" / name
        if not (out / "manifest.json").is_file():
            capture_run(
                run, data, "test", CAPTURE_SAMPLES, out, batch_size=CAPTURE_SAMPLES, full_maps=FULL_MAPS
            )
    # the same seeded choice as capture: the full-map samples come first, so they have attributions too
    if not (root / "analysis" / "ctrsink" / "attributions.parquet").is_file():
        attribute_run(
            root / "ctrsink",
            data,
            "test",
            CAPTURE_SAMPLES,
            root / "analysis" / "ctrsink",
            n_steps=4,
            batch_size=CAPTURE_SAMPLES,
        )
    if not (root / "ablation" / "ablation.parquet").is_file():
        ablate(data, load_config(None, TINY), ABLATION_VARIANTS, ABLATION_SEEDS, root / "ablation")
    (root / DONE).write_text("ok\n", encoding="utf-8")
    return root


def session_root(base: Path) -> Path:
    """The session's fixture root under pytest's base temp folder (built on first use)."""
    with _lock:
        return build(base / "app_root")


def decoded(value):
    """Plotly's typed arrays ({dtype, bdata, shape}) back to lists, recursively."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
        return array.tolist()
    if isinstance(value, dict):
        return {k: decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/app_fixture.py OUT_DIR")
    print(build(sys.argv[1]))
