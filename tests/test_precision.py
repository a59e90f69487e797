"""Precision and memory: gradient checkpointing (same gradients, fewer saved activations), gradient accumulation
(k batches of b step as one batch of k*b), bf16 autocast on CPU, and the fp16 gradient scaler across a resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import ctrsink.train as train_mod
from ctrsink.config import Config, load_config
from ctrsink.data import load_sample_set
from ctrsink.family import Built
from ctrsink.run import family_of, load_run, score_rows
from ctrsink.sampling import load_samples
from ctrsink.train import train

SINKS = ["use_sink=true", "sink_signal=index", "inter_sink=true"]
# Qwen2-tiny has no dropout anywhere (attention_dropout 0, inter-sink dropout from it): batches of different
# composition see the same function, so accumulation can be compared to one big batch
QWEN = ["backbone=scratch:qwen2-tiny", "scratch_layers=4"]
TINY = ["train_samples=64", "eval_samples=32", "epochs=1", "num_behaviors=4", "batch_size=16"]


def build(data: Path, settings: list[str], n_rows: int = 8) -> tuple[Built, dict[str, Any], Config]:
    cfg = load_config(None, [*TINY, *settings])
    samples = load_samples(data, cfg)
    built = family_of(cfg).build(cfg, samples.items, samples.history_fields, samples.frames["train"])
    batch = built.batcher(samples.frames["train"].head(n_rows).to_dict("records"))
    return built, batch, cfg


def loss_of(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    logits = model(batch["fields"])
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])


def grads_after_backward(
    model: torch.nn.Module, batch: dict[str, Any], seed: int = 0
) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks in both runs
    loss_of(model, batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def with_checkpointing(model: torch.nn.Module, on: bool) -> None:
    model.cfg.gradient_checkpointing = on


# ---- gradient checkpointing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["scratch:bert-tiny", "scratch:qwen2-tiny"])
def test_checkpointing_gives_the_same_gradients(
    sample_data_dir: Path, backbone: str, one_thread: None
) -> None:
    """BERT-tiny has dropout: the recomputation replays the same masks (the RNG state is restored)."""
    built, batch, _ = build(sample_data_dir, [f"backbone={backbone}", *SINKS])
    model = built.model.train()
    with_checkpointing(model, False)
    plain = grads_after_backward(model, batch)
    with_checkpointing(model, True)
    recomputed = grads_after_backward(model, batch)
    assert plain.keys() == recomputed.keys() and any(n.startswith("inter_sink.") for n in plain)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def saved_activation_bytes(model: torch.nn.Module, batch: dict[str, Any]) -> int:
    """Bytes autograd keeps for backward during one forward pass (distinct storages, parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model, batch)
    loss.backward()
    return sum(seen.values())


def test_checkpointing_keeps_fewer_activations(sample_data_dir: Path, one_thread: None) -> None:
    """Deterministic stand-in for peak memory: what the lower layers would keep is recomputed instead (the
    checkpoint's own saved tensors are invisible to an outer hook; only its inputs stay)."""
    settings = [
        "backbone=scratch:bert-tiny",
        "scratch_layers=6",
        "num_behaviors=10",
        "max_user_tokens=256",
        *SINKS,
    ]
    built, batch, _ = build(sample_data_dir, settings, n_rows=16)
    model = built.model.train()
    with_checkpointing(model, False)
    full = saved_activation_bytes(model, batch)
    with_checkpointing(model, True)
    recomputed = saved_activation_bytes(model, batch)
    assert recomputed < 0.5 * full, (recomputed, full)


def test_checkpointing_is_off_in_eval(sample_data_dir: Path, one_thread: None) -> None:
    built, batch, _ = build(sample_data_dir, ["gradient_checkpointing=true", *SINKS])
    model = built.model.eval()
    calls = []
    original = torch.utils.checkpoint.checkpoint
    try:
        import ctrsink.model as model_mod

        model_mod.checkpoint = lambda *a, **k: calls.append(1) or original(*a, **k)
        with torch.no_grad():
            model(batch["fields"])
        model.train()
        loss_of(model, batch).backward()
    finally:
        model_mod.checkpoint = original
    assert len(calls) == model.split_at * len(
        model.fields
    )  # only the training pass, once per layer and field


# ---- gradient accumulation ----------------------------------------------------------------------------------


class FirstStep(Exception):
    pass


def grads_at_first_step(
    data: Path, out: Path, settings: list[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, torch.Tensor]:
    """Train until the first optimizer step and return the gradients it would apply (before clipping)."""
    seen: dict[str, torch.Tensor] = {}

    def capture(loop: train_mod.Loop, cfg: Config) -> None:
        model = loop.accelerator.unwrap_model(loop.model)
        seen.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        raise FirstStep

    monkeypatch.setattr(train_mod, "optimizer_step", capture)
    with pytest.raises(FirstStep):
        train(data, load_config(None, [*TINY, *QWEN, *SINKS, *settings]), out)
    return seen


@pytest.mark.parametrize(
    "lora", [[], ["finetune=lora", "lora.r=4", "lora.dropout=0.0"]], ids=["full", "lora"]
)
def test_accumulating_k_batches_equals_one_batch_of_k_b(
    sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lora: list[str], one_thread: None
) -> None:
    one = grads_at_first_step(sample_data_dir, tmp_path / "one", ["batch_size=16", *lora], monkeypatch)
    acc = grads_at_first_step(
        sample_data_dir,
        tmp_path / "acc",
        ["batch_size=4", "gradient_accumulation_steps=4", *lora],
        monkeypatch,
    )
    assert one.keys() == acc.keys() and len(one) > 10
    for name in one:
        torch.testing.assert_close(acc[name], one[name], rtol=1e-4, atol=1e-6, msg=name)


def test_schedule_counts_optimizer_steps(sample_data_dir: Path, tmp_path: Path, one_thread: None) -> None:
    """64 samples in batches of 8, one step every 3 batches: 3 steps per epoch (the last window of 2 batches
    steps too), 6 over 2 epochs; the schedule ends exactly at its last step."""
    settings = [
        *TINY,
        *QWEN,
        "batch_size=8",
        "gradient_accumulation_steps=3",
        "epochs=2",
        "early_stop_patience=0",
    ]
    train(sample_data_dir, load_config(None, settings), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint" / "last" / "optimizer.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 6
    assert state["scheduler"]["_last_lr"] == [0.0, 0.0]  # cosine at its end
    assert all(s["step"].item() == 6 for s in state["optimizer"]["state"].values())


# ---- precision ----------------------------------------------------------------------------------------------


def test_bf16_autocast_runs_on_cpu(sample_data_dir: Path, one_thread: None) -> None:
    built, batch, _ = build(sample_data_dir, [*QWEN, *SINKS, "precision=bf16"])
    model = built.model.train()
    dtypes = []
    hook = model.backbone.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype)
    )
    loss = loss_of(model, batch)
    hook.remove()
    assert dtypes == [torch.bfloat16] * len(model.fields)  # the lower layer's matmuls ran in bf16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


@pytest.mark.slow
def test_bf16_lora_run_reloads_in_bf16_and_scores_identically(
    sample_data_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    settings = [*TINY, *QWEN, *SINKS, "finetune=lora", "lora.r=4", "precision=bf16", "weights_dtype=bf16"]
    out = tmp_path / "run"
    train(sample_data_dir, load_config(None, settings), out)
    bundle = load_run(out)
    weights = dict(bundle.model.named_parameters())
    assert weights["backbone.model.layers.0.self_attn.q_proj.base_layer.weight"].dtype == torch.bfloat16
    assert weights["backbone.model.layers.0.self_attn.q_proj.lora_A.default.weight"].dtype == torch.float32
    saved = pd.read_parquet(out / "predictions_test.parquet")
    test = load_sample_set(sample_data_dir).splits["test"].to_pandas().set_index("sample_id")
    logits = score_rows(bundle, test.loc[saved["sample_id"]].reset_index().to_dict("records"))
    np.testing.assert_allclose(logits, saved["logit"].to_numpy(), rtol=0, atol=1e-6)


def test_fp16_scaler_state_is_saved_and_restored(
    sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    cfg = load_config(None, [*TINY, *QWEN, "precision=fp16", "epochs=2", "early_stop_patience=0"])
    calls = {"n": 0}
    real_eval, real_resume = train_mod.evaluate_split, train_mod.resume_state

    def crash_in_second_epoch(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_split", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(sample_data_dir, cfg, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoint" / "last" / "optimizer.pt", weights_only=True)["scaler"]
    assert saved["scale"] > 0 and saved["_growth_tracker"] >= 1  # steps were taken at a finite scale

    restored = {}

    def remember(loop: train_mod.Loop, out_dir: Path) -> dict[str, Any]:
        state = real_resume(loop, out_dir)
        restored.update(loop.scaler.state_dict())
        return state

    monkeypatch.setattr(train_mod, "evaluate_split", real_eval)
    monkeypatch.setattr(train_mod, "resume_state", remember)
    final = train(sample_data_dir, cfg, tmp_path / "run")
    assert restored == saved and np.isfinite(final["test"]["auc"])
    state = json.loads((tmp_path / "run" / "checkpoint" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 2
