"""Per-epoch checkpoints (`keep_epoch_checkpoints`) and one analysis per epoch (`sinkviz capture --every-epoch`)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from ctrsink.config import load_config
from ctrsink.run import epoch_checkpoints
from ctrsink.train import train
from sinkviz.cli import main as sinkviz_main

TINY = ["train_samples=128", "eval_samples=64", "num_behaviors=4", "batch_size=32", "num_threads=1"]
SINK = ["use_sink=true", "sink_signal=time_gap", "two_stage=true", "stage1_epochs=1", "stage2_epochs=1"]


def test_epoch_checkpoints_keep_every_epoch_and_change_nothing_else(
    sample_data_dir: Path, tmp_path: Path
) -> None:
    plain = train(sample_data_dir, load_config(None, TINY + SINK), tmp_path / "plain")
    kept = train(
        sample_data_dir, load_config(None, TINY + SINK + ["keep_epoch_checkpoints=true"]), tmp_path / "kept"
    )
    assert kept == plain  # saving weights draws no random numbers: the same run, metric for metric
    run = tmp_path / "kept"
    assert epoch_checkpoints(run) == [(0, "epoch0"), (1, "epoch1"), (2, "epoch2")]
    first, last = (load_file(run / "checkpoint" / n / "model.safetensors") for n in ("epoch0", "epoch2"))
    final = load_file(run / "checkpoint" / "last" / "model.safetensors")
    assert all((last[k] == final[k]).all() for k in final)  # epoch{k} = the weights after k epochs
    assert any(not (first[k] == final[k]).all() for k in final)  # epoch0 = before any step
    assert epoch_checkpoints(tmp_path / "plain") == []

    out = tmp_path / "formation"
    code = sinkviz_main(["capture", "--run", str(run), "--samples", "8", "--out", str(out), "--every-epoch"])
    assert code in (0, None)
    for k in range(3):
        manifest = json.loads((out / f"epoch{k}" / "manifest.json").read_text())
        assert manifest["checkpoint"] == f"epoch{k}"
    # a run without them says how to get them, in one line
    assert (
        sinkviz_main(
            ["capture", "--run", str(tmp_path / "plain"), "--out", str(tmp_path / "x"), "--every-epoch"]
        )
        == 2
    )
