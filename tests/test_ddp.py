"""Data parallel on CPU: a LoRA run under `accelerate launch` with 2 processes (gloo) ends with identical weights in
both processes, and evaluation over splits that do not divide evenly scores every sample exactly once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_train import two_cpu_processes

from ctrsink.config import load_config
from ctrsink.sampling import load_samples

# 50 training samples in batches of 4 per process, 2 batches per step: a last window of one batch per process;
# 37 valid and 37 test samples over 2 processes in batches of 8: a ragged last batch to gather
SETTINGS = [
    "backbone=scratch:qwen2-tiny",
    "train_samples=50",
    "eval_samples=37",
    "epochs=2",
    "num_behaviors=4",
    "batch_size=4",
    "eval_batch_size=8",
    "gradient_accumulation_steps=2",
    "gradient_checkpointing=true",
    "finetune=lora",
    "lora.r=4",
    "use_sink=true",
    "sink_signal=index",
    "inter_sink=true",
    "early_stop_patience=0",
    "num_threads=1",
]

# Each process hashes its own weights when training ends (before the best checkpoint is loaded back).
RUNNER = """
import hashlib, sys
from pathlib import Path
import ctrsink.train as t
from ctrsink.config import load_config

data, out, hashes, *settings = sys.argv[1:]
real = t.test_at_best

def hashed(loop, *args):
    h = hashlib.sha256()
    for name, value in sorted(loop.accelerator.unwrap_model(loop.model).state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(-1).numpy().tobytes())
    Path(hashes, f"rank{loop.accelerator.process_index}.txt").write_text(h.hexdigest())
    return real(loop, *args)

t.test_at_best = hashed
t.train(data, load_config(None, settings), out)
"""


def launch(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    cmd, env = two_cpu_processes(str(script), *args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_lora_ddp_run_keeps_processes_identical_and_scores_each_sample_once(
    sample_data_dir: Path, tmp_path: Path
) -> None:
    script, hashes, out = tmp_path / "runner.py", tmp_path / "hashes", tmp_path / "run"
    script.write_text(RUNNER)
    hashes.mkdir()
    proc = launch(script, [str(sample_data_dir), str(out), str(hashes), *SETTINGS])
    assert proc.returncode == 0, proc.stderr[-3000:]

    digests = {p.name: p.read_text() for p in hashes.iterdir()}
    assert sorted(digests) == ["rank0.txt", "rank1.txt"]
    assert digests["rank0.txt"] == digests["rank1.txt"]  # LoRA adapters, sink modules and heads all in sync

    record = json.loads((out / "run.json").read_text())
    assert record["processes"] == 2 and record["finetune"]["finetune"] == "lora"
    expected = load_samples(sample_data_dir, load_config(None, SETTINGS)).frames["test"]["sample_id"]
    predictions = pd.read_parquet(out / "predictions_test.parquet")
    assert len(predictions) == 37 and predictions["sample_id"].is_unique  # no padding duplicates, no drops
    assert set(predictions["sample_id"]) == set(expected)
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["valid"]["n"] == 37 and final["test"]["n"] == 37
