"""`ctrsink train --dry-run`: every config in configs/paper/ builds with a stand-in of its backbone's family, takes
one optimizer step on CPU and scores a validation batch, printing one line per check and writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrsink.cli import main as cli_main
from ctrsink.config import load_config
from ctrsink.dryrun import standin_model_type

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))
CHECKS = ["config", "data", "backbone", "model", "step", "eval"]


def dry_run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = cli_main(["train", "--dry-run", *args])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def test_every_paper_config_is_covered() -> None:
    assert len(PAPER) == 9


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_config_dry_run(
    path: Path, sample_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "run"
    code, lines, err = dry_run(
        ["--config", str(path), "--data", str(sample_data_dir), "--out", str(out)], capsys
    )
    assert code == 0, err[-2000:]
    assert [line.split()[:2] for line in lines[:-1]] == [["ok", c] for c in CHECKS], lines
    assert lines[-1].startswith("dry run passed")
    assert not out.exists()  # the real out dir is never touched
    cfg = load_config(path)
    model_type = standin_model_type(cfg)[0]
    backbone, step = lines[2], lines[4]
    assert f"stand-in {model_type}" in backbone
    if model_type in ("qwen2", "qwen3") and cfg.use_sink:  # a spare row of the padded matrix: no resize
        token_id, rows = (int(w) for w in backbone.split("at id ")[1].split(" rows")[0].split(" of "))
        assert "'<|sink|>'" in backbone and token_id < rows
    assert f"after {cfg.gradient_accumulation_steps} batches of {cfg.batch_size}" in step
    assert ("lora" in step) == (cfg.finetune == "lora")
    assert ("inter_sink" in step) == cfg.inter_sink


def test_dry_run_without_data_uses_the_bundled_sample(
    capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    settings = [
        "--set",
        "gradient_accumulation_steps=2",
        "--set",
        "max_user_tokens=128",
    ]  # quicker, same paths
    code, lines, err = dry_run(
        ["--config", str(REPO / "configs/paper/qwen2_7b_ctrsink.yaml"), *settings], capsys
    )
    assert code == 0, err[-2000:]
    assert "bundled synthetic sample" in lines[1] and lines[-1].startswith("dry run passed")


def test_family_comes_from_the_known_checkpoints_or_the_config(tmp_path: Path) -> None:
    from transformers import Qwen3Config

    roberta_l4 = load_config(REPO / "configs/paper/roberta_l4_ctrsink.yaml")
    assert standin_model_type(roberta_l4)[0] == "bert"  # a BERT-type checkpoint whatever its name says
    Qwen3Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    assert standin_model_type(load_config(None, [f"backbone={tmp_path}"])) == ("qwen3", "its config.json")


def test_a_broken_config_fails_in_one_line(
    sample_data_dir: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    path = REPO / "configs/paper/roberta_l4_ctrsink.yaml"
    args = ["--config", str(path), "--data", str(sample_data_dir), "--set", "finetune=lora"]
    code, lines, err = dry_run([*args, "--set", "lora.targets=q_proj"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("ctrsink: error")]  # not progress bars
    assert code == 2 and len(errors) == 1 and "'lora.targets'" in errors[0], err
