"""`ctrsink train --dry-run`: check a config on CPU before renting GPUs.

The real checkpoint is not loaded (a 7B model does not fit a laptop). A scratch stand-in of the same family takes
its place: the same `model_type` (read from the checkpoint's config when it is on disk, else from the paper's
known checkpoints or the hub id), a tiny hidden size and two layers, a tokenizer of the same kind (byte-level BPE
without a sink token and an embedding matrix with spare rows for Qwen, like the real ones), in the configured
`weights_dtype`. Everything else is the config's own: sinks, signal, inter-sink, split layer, LoRA, precision,
gradient checkpointing and accumulation. The dry run builds the model through the same family code as a real
run, collates the first batches of the data (the bundled synthetic sample when no `--data` is given) and takes one
optimizer step through the training loop's own `train_batch`, then scores a validation batch. It writes only to a
temporary folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ctrsink.backbones import FAMILIES, Backbone, _train_tokenizer, resolve_backbone, scratch_config
from ctrsink.config import Config, config_from_dict
from ctrsink.errors import CtrSinkError
from ctrsink.family import Built
from ctrsink.finetune import part_of
from ctrsink.run import TextFamily, family_of
from ctrsink.runstart import make_accelerator
from ctrsink.sampling import Samples, load_samples
from ctrsink.textprep import tokenizer_corpus

# the paper's checkpoints, readable offline (uer's RoBERTa-L4 is a BERT-type checkpoint, whatever its name)
KNOWN_MODEL_TYPES = {
    "uer/chinese_roberta_L-4_H-512": "bert",
    "Qwen/Qwen2-0.5B": "qwen2",
    "Qwen/Qwen2-7B": "qwen2",
    "Qwen/Qwen3-8B": "qwen3",
}
STANDIN = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2}
SPARE_ROWS = 48  # Qwen's matrices are taller than their vocabularies: the sink takes a spare row
SAMPLE_LOG = Path(__file__).resolve().parents[1] / "sample_data" / "synthetic"


def dry_run(cfg: Config, data_dir: str | Path | None = None, say: Callable[[str], None] = print) -> None:
    """Run the checks, one line each through `say`; raises CtrSinkError at the first that fails."""
    with tempfile.TemporaryDirectory(prefix="ctrsink-dry-run-") as tmp:
        say(_line("config", _describe(cfg)))
        small = _small_config(cfg)
        samples, where = _samples(small, data_dir, Path(tmp))
        sizes = " / ".join(f"{len(v)} {k}" for k, v in samples.frames.items())
        say(_line("data", f"{where}: {sizes} samples, history fields {', '.join(samples.history_fields)}"))
        built, note = _build(small, samples)
        say(_line("backbone", note))
        say(_line("model", _model_summary(built)))
        accelerator = make_accelerator(small, cpu=True)
        from ctrsink.train import make_loop

        loop = make_loop(accelerator, small, samples, built)
        loop.prepare()
        say(_line("step", _one_step(loop, small)))
        say(_line("eval", _eval_batch(loop, small)))
    say(
        f"dry run passed: {cfg.backbone} ({cfg.model}) builds, trains and scores; the real weights were not loaded"
    )


def _line(check: str, text: str) -> str:
    return f"ok  {check:<9s} {text}"


def _describe(cfg: Config) -> str:
    lora = f" (r {cfg.lora.r}, alpha {cfg.lora.alpha or 'default'})" if cfg.finetune == "lora" else ""
    return (
        f"model={cfg.model} finetune={cfg.finetune}{lora} precision={cfg.precision} "
        f"weights={cfg.weights_dtype} checkpointing={'on' if cfg.gradient_checkpointing else 'off'} "
        f"batch={cfg.batch_size}x{cfg.gradient_accumulation_steps} sink={cfg.use_sink} "
        f"signal={cfg.sink_signal} inter_sink={cfg.inter_sink} two_stage={cfg.two_stage}"
    )


def _small_config(cfg: Config) -> Config:
    """The config on as many samples as one optimizer step and one validation batch take."""
    step = cfg.batch_size * cfg.gradient_accumulation_steps
    return config_from_dict({"train_samples": step, "eval_samples": min(cfg.eval_batch_size, 8)}, base=cfg)


def _samples(cfg: Config, data_dir: str | Path | None, tmp: Path) -> tuple[Samples, str]:
    if data_dir is not None:
        return load_samples(data_dir, cfg), str(data_dir)
    from ctrsink.data import prepare

    if not SAMPLE_LOG.is_dir():
        raise CtrSinkError(
            "the dry run needs --data (the bundled sample log is not installed with this copy)"
        )
    prepare("csv", SAMPLE_LOG, tmp / "data")
    return load_samples(tmp / "data", cfg), "bundled synthetic sample (no --data)"


# ---- the stand-in ---------------------------------------------------------------------------------------------


def _build(cfg: Config, samples: Samples) -> tuple[Built, str]:
    """The config's model over a scratch stand-in backbone (ID rows and scratch backbones build as they are)."""
    if cfg.model != "ctrsink" or resolve_backbone(cfg.backbone)[0].startswith("scratch"):
        built = family_of(cfg).build(cfg, samples.items, samples.history_fields, samples.frames["train"])
        return built, f"{cfg.backbone}: built as configured (no stand-in needed)"
    model_type, source = standin_model_type(cfg)
    texts = tokenizer_corpus(samples.items, samples.frames["train"], samples.history_fields, cfg)
    tokenizer = standin_tokenizer(model_type, texts, cfg.seed)
    backbone = standin_backbone(model_type, tokenizer, cfg)
    info = {
        "backbone": cfg.backbone,
        "kind": "dry-run stand-in",
        "model_type": model_type,
        "pretrained": False,
    }
    built = TextFamily()._assemble(
        cfg, backbone, tokenizer, samples.items, samples.history_fields, {"backbone": info}, None
    )
    rows = backbone.word_embeddings().num_embeddings
    sink = ""
    if cfg.use_sink:
        sink = f", sink {built.record['sink_token']!r} at id {built.record['sink_token_id']} of {rows} rows"
    dims = ", ".join(f"{k} {v}" for k, v in STANDIN.items())
    return built, f"{cfg.backbone}: {model_type} ({source}) -> stand-in {model_type}, {dims}{sink}"


def standin_model_type(cfg: Config) -> tuple[str, str]:
    """The checkpoint's model_type: from its config when it is on disk (never downloaded), else from the name."""
    from transformers import AutoConfig

    location = str(resolve_backbone(cfg.backbone)[1])
    try:
        return AutoConfig.from_pretrained(location, local_files_only=True).model_type, "its config.json"
    except (OSError, ValueError):
        pass
    if cfg.backbone in KNOWN_MODEL_TYPES:
        return KNOWN_MODEL_TYPES[cfg.backbone], "a paper checkpoint"
    name = cfg.backbone.lower()
    for model_type in ("qwen3", "qwen2", "roberta", "bert"):
        if f"/{model_type}" in name or name.startswith(model_type):
            return model_type, "from its name; its config.json is not on disk"
    raise CtrSinkError(
        f"config option 'backbone': cannot tell the family of {cfg.backbone!r} offline; point it at a local folder"
        f" with its config.json (supported model_type: {', '.join(FAMILIES)})"
    )


def standin_tokenizer(model_type: str, texts: list[str], seed: int) -> Any:
    """A tokenizer of the checkpoint's kind trained on the data: WordPiece for BERT, byte-level BPE without a
    sink token for RoBERTa and Qwen (so the sink is registered as it would be on the real vocabulary)."""
    if model_type == "bert":
        return _train_tokenizer(texts, "scratch-bert", 2000, seed)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    roberta = model_type == "roberta"
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if roberta else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if roberta:
        names = dict(bos_token="<s>", cls_token="<s>", eos_token="</s>", sep_token="</s>", pad_token="<pad>")
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", mask_token="<mask>", **names)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def standin_backbone(model_type: str, tokenizer: Any, cfg: Config) -> Backbone:
    """A tiny scratch model of `model_type`, in the configured weights dtype (seeded like a real run)."""
    from transformers import AutoModel

    from ctrsink.backbones import load_dtype

    torch.manual_seed(cfg.seed)
    positions = max(514, cfg.max_user_tokens + 16)  # RoBERTa's positions start after its padding index
    d = STANDIN
    conf = scratch_config(
        model_type, tokenizer, d["hidden"], d["layers"], d["heads"], d["kv_heads"], positions
    )
    if model_type in ("qwen2", "qwen3"):
        conf.vocab_size = len(tokenizer) + SPARE_ROWS
    dtype = load_dtype(cfg)
    model = AutoModel.from_config(conf, dtype=torch.float32 if dtype == "auto" else dtype)
    if hasattr(model, "pooler"):
        model.pooler = None
    model.set_attn_implementation("sdpa")
    return Backbone(model)


# ---- the checks ---------------------------------------------------------------------------------------------


def _model_summary(built: Built) -> str:
    params = dict(built.model.named_parameters())
    trainable = sorted({part_of(n) for n, p in params.items() if p.requires_grad})
    n_train = sum(p.numel() for p in params.values() if p.requires_grad)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params.values()})
    total = sum(p.numel() for p in params.values())
    return (
        f"{total / 1e6:.2f}M parameters ({', '.join(dtypes)}), {n_train / 1e6:.2f}M trainable: "
        + ", ".join(trainable)
    )


def _one_step(loop: Any, cfg: Config) -> str:
    """k batches through the training loop's own step: the optimizer must step exactly once, every trainable part
    must move and no frozen weight may."""
    from ctrsink.train import train_batch

    model = loop.accelerator.unwrap_model(loop.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stage = cfg.stage_of_epoch(0)
    model.train()
    losses, lengths = [], []
    for batch in loop.loaders["train"]:
        lengths.append(max(f["input_ids"].shape[1] for f in batch["fields"].values()))
        losses.append(train_batch(loop, cfg, batch, stage))
    if loop.scheduler.scheduler.last_epoch != 1:
        raise CtrSinkError(f"dry run: expected one optimizer step after {len(losses)} batches")
    if not all(torch.isfinite(torch.tensor(losses))):
        raise CtrSinkError(f"dry run: non-finite training loss {losses}")
    moved, frozen_moved = _moved_parts(model, before)
    if frozen_moved or not all(moved.values()):
        still = [k for k, v in moved.items() if not v]
        raise CtrSinkError(
            f"dry run: trainable parts that did not move: {still}; frozen that moved: {frozen_moved}"
        )
    return (
        f"1 optimizer step after {len(losses)} batches of {cfg.batch_size} ({stage} pooling, longest field "
        f"{max(lengths)} tokens): loss {sum(losses) / len(losses):.4f}; moved: {', '.join(sorted(moved))}; "
        "no frozen weight moved"
    )


def _moved_parts(
    model: torch.nn.Module, before: dict[str, torch.Tensor]
) -> tuple[dict[str, bool], list[str]]:
    moved: dict[str, bool] = {}
    frozen_moved = []
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        if p.requires_grad:
            moved[part_of(name)] = moved.get(part_of(name), False) or changed
        elif changed:
            frozen_moved.append(name)
    return moved, frozen_moved


def _eval_batch(loop: Any, cfg: Config) -> str:
    from ctrsink.train import eval_poolings

    model = loop.model.eval()
    batch = next(iter(loop.loaders["valid"]))
    out = []
    with torch.no_grad():
        for pooling in eval_poolings(cfg):
            logits = model(batch["fields"], pooling=pooling)
            if logits.shape != batch["labels"].shape or not torch.isfinite(logits).all():
                raise CtrSinkError(f"dry run: bad validation logits under {pooling} pooling")
            out.append(pooling)
    return f"a validation batch of {len(batch['labels'])} scored ({', '.join(out)} pooling): finite logits"
