"""A small dashboard root built on the bundled sample data, shared by the AppTest and browser tests.

Laid out like `scripts/main.sh` lays out runs/demo (analyses inside the run folders):
ROOT/data/                     prepared sample set (`ctrsink.data.prepare` on sample_data/synthetic)
ROOT/baseline/, ROOT/ctrsink/  one tiny trained run each (2 epochs) (no sinks; sinks + time-gap signal + inter-sink bias)
ROOT/{baseline,ctrsink}/analysis/  `sinkviz capture` folders; the sink one also holds attributions
ROOT/ablation/                 a tiny grid (baseline and the two-stage sink variant, two seeds)

Built once per test session (a marker file says it is complete), so both test modules share it. `build_epochs`
builds a separate root with per-epoch analyses (a run trained with keep_epoch_checkpoints, ROOT/formation/epochs/
epoch{k}) for the epoch slider's tests (test_app_epochs.py).
Run `python tests/app_fixture.py OUT` to build one by hand and point the dashboard at it.
"""

from __future__ import annotations

import base64
import json
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
ANALYSIS = "analysis"  # inside each run folder, as scripts/main.sh writes it
_lock = threading.Lock()


def build(root: str | Path, with_ablation: bool = True) -> Path:
    """Build the fixture root (idempotent: every step is skipped when its output exists; a complete root is
    returned as is). `with_ablation=False` stops before the grid, for tests that need only the two runs."""
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
        out = root / name / ANALYSIS
        if not (out / "manifest.json").is_file():
            capture_run(
                run, data, "test", CAPTURE_SAMPLES, out, batch_size=CAPTURE_SAMPLES, full_maps=FULL_MAPS
            )
    # the same seeded choice as capture: the full-map samples come first, so they have attributions too
    if not (root / "ctrsink" / ANALYSIS / "attributions.parquet").is_file():
        attribute_run(
            root / "ctrsink",
            data,
            "test",
            CAPTURE_SAMPLES,
            root / "ctrsink" / ANALYSIS,
            n_steps=4,
            batch_size=CAPTURE_SAMPLES,
        )
    if not with_ablation:
        return root
    if not (root / "ablation" / "ablation.parquet").is_file():
        ablate(data, load_config(None, TINY), ABLATION_VARIANTS, ABLATION_SEEDS, root / "ablation")
    (root / DONE).write_text("ok\n", encoding="utf-8")
    return root


EPOCHS_RUN = "formation"  # a CTR-Sink run that kept a checkpoint per epoch
EPOCHS_ANALYSES = "epochs"  # ROOT/formation/epochs/epoch{k}, as `sinkviz capture --every-epoch` lays them out


def build_epochs(root: str | Path) -> Path:
    """A root with one tiny CTR-Sink run trained with `keep_epoch_checkpoints` (epoch0 = before training, epoch1,
    epoch2), one analysis per epoch checkpoint and one of its best checkpoint (ROOT/formation/analysis).
    Idempotent like `build`; kept apart from it so the shared root's pages keep their default choices."""
    import torch

    from ctrsink.config import load_config
    from ctrsink.data import prepare
    from ctrsink.run import epoch_checkpoints
    from ctrsink.train import train
    from sinkviz import capture_run

    root = Path(root)
    if (root / DONE).is_file():
        return root
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = root / "data"
    if not (data / "manifest.json").is_file():
        prepare("csv", SAMPLE_LOG, data)
    run = root / EPOCHS_RUN
    if not (run / "final_metrics.json").is_file():
        train(data, load_config(None, TINY + SINK + ["keep_epoch_checkpoints=true"]), run, overwrite=True)
    targets = [(name, run / EPOCHS_ANALYSES / name) for _, name in epoch_checkpoints(run)]
    for checkpoint, out in [*targets, ("best", run / ANALYSIS)]:
        if not (out / "manifest.json").is_file():
            capture_run(
                run,
                data,
                "test",
                CAPTURE_SAMPLES,
                out,
                batch_size=CAPTURE_SAMPLES,
                full_maps=FULL_MAPS,
                checkpoint=checkpoint,
            )
    (root / DONE).write_text("ok\n", encoding="utf-8")
    return root


def set_manifest(folder: Path, **values: str) -> None:
    """Change keys of an analysis folder's manifest.json."""
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **values}))


def relocate(run: Path, data: Path) -> None:
    """Point a copied run's run.json and its analysis' manifest at the copies (they name the originals)."""
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data_dir": str(data)}))
    set_manifest(run / ANALYSIS, run_dir=str(run), data_dir=str(data))


def session_root(base: Path, with_ablation: bool = True) -> Path:
    """The session's fixture root under pytest's base temp folder (built on first use)."""
    with _lock:
        return build(base / "app_root", with_ablation)


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
