"""Bring your own checkpoint: a local folder of a BERT, RoBERTa, Qwen2 or Qwen3 model (saved with save_pretrained,
tokenizer beside it) trains as `backbone: <folder>`; the family comes from config.model_type, never the name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import CATS, TITLES
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedTokenizerFast

from ctrsink.backbones import _train_tokenizer, load_backbone, scratch_config
from ctrsink.config import PROMPT_PRESETS, load_config
from ctrsink.errors import CtrSinkError
from ctrsink.predict import evaluate
from ctrsink.train import train

TINY = ["train_samples=96", "epochs=1", "num_behaviors=4", "batch_size=16"]
SINKS = ["use_sink=true", "sink_signal=index", "inter_sink=true"]
SPARE_ROWS = 48  # like Qwen's checkpoints: an embedding matrix taller than the tokenizer's vocabulary


def corpus() -> list[str]:
    words = " ".join(chr(c) for c in range(33, 127))
    return (TITLES + CATS + list(PROMPT_PRESETS["en"].values()) + [";", " (liked)", " (disliked)", words]) * 2


def bpe_tokenizer(roberta: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE without any sink token: RoBERTa-style (<s> ... </s>) or Qwen-style (<|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if roberta else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if roberta:
        names = dict(bos_token="<s>", cls_token="<s>", eos_token="</s>", sep_token="</s>", pad_token="<pad>")
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", mask_token="<mask>", **names)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def save_checkpoint(folder: Path, model_type: str) -> dict[str, torch.Tensor]:
    """A small scratch model of one family, saved like a downloaded checkpoint; returns tensors to check."""
    if model_type == "bert":
        tok = _train_tokenizer(corpus(), "scratch-bert", 500, seed=0)
    else:
        tok = bpe_tokenizer(roberta=model_type == "roberta")
    conf = scratch_config(model_type, tok, hidden=32, layers=2, heads=4, kv_heads=2, max_positions=514)
    if model_type in ("qwen2", "qwen3"):
        conf.vocab_size = len(tok) + SPARE_ROWS
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(conf)  # saved with an lm_head, as the real checkpoints are
    else:
        torch.manual_seed(0)
        model = AutoModel.from_config(conf)
    base = model.model if hasattr(model, "lm_head") else model
    probe = {}
    if model_type == "qwen3":
        with torch.no_grad():  # q/k norms away from their init, so a skipped load would show
            base.layers[0].self_attn.q_norm.weight.uniform_(0.5, 1.5)
            base.layers[1].self_attn.k_norm.weight.uniform_(0.5, 1.5)
        probe["layers.0.self_attn.q_norm.weight"] = base.layers[0].self_attn.q_norm.weight.detach().clone()
        probe["layers.1.self_attn.k_norm.weight"] = base.layers[1].self_attn.k_norm.weight.detach().clone()
    probe["embed"] = base.get_input_embeddings().weight.detach().clone()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return probe


@pytest.mark.parametrize("model_type", ["bert", "roberta", "qwen2", "qwen3"])
def test_local_checkpoint_loads_its_family_and_weights(tmp_path: Path, model_type: str) -> None:
    folder = tmp_path / "my-model"  # a name that says nothing about the family
    probe = save_checkpoint(folder, model_type)
    cfg = load_config(None, [f"backbone={folder}"])
    backbone, tok, info = load_backbone(cfg)
    assert backbone.model_type == model_type and info["model_type"] == model_type and info["pretrained"]
    assert info["weights_sha256"] and backbone.num_layers == 2
    weights = dict(backbone.model.named_parameters())
    assert torch.equal(backbone.word_embeddings().weight, probe.pop("embed"))
    for name, tensor in probe.items():  # Qwen3's q/k norms come from the checkpoint
        assert torch.equal(weights[name], tensor), name


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bert", "roberta", "qwen2", "qwen3"])
def test_local_checkpoint_trains_with_sinks(
    sample_data_dir: Path, tmp_path: Path, model_type: str, one_thread: None
) -> None:
    folder = tmp_path / "ckpt"
    probe = save_checkpoint(folder, model_type)
    cfg = load_config(None, [f"backbone={folder}", *TINY, *SINKS])
    final = train(sample_data_dir, cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["backbone"]["model_type"] == model_type
    rows = probe["embed"].shape[0]
    saved = json.loads((tmp_path / "run" / "backbone" / "config.json").read_text())
    if model_type in ("qwen2", "qwen3"):
        # the sink took a spare row: one past the vocabulary, inside the matrix, which was not resized
        assert record["sink_token"] == "<|sink|>" and record["sink_token_id"] == rows - SPARE_ROWS
        assert saved["vocab_size"] == rows
    else:
        assert record["sink_token_id"] < saved["vocab_size"]
    again = evaluate(tmp_path / "run", split="test")
    assert again["auc"] == pytest.approx(final["test"]["auc"], abs=1e-6)


def test_unsupported_family_is_named_before_loading_weights(tmp_path: Path) -> None:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(CtrSinkError, match="'gpt2' model; supported model_type: bert, roberta, qwen2, qwen3"):
        load_backbone(load_config(None, [f"backbone={tmp_path}"]))
