"""One typed config with every toggle: YAML in, `--set key=value` overrides, validation with errors that name the key.

Defaults train a small scratch encoder on the bundled sample data in a couple of minutes on 2 CPU cores.
Longer than ~400 lines on purpose: every option, its default and its check stand in one file a reader can search.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctrsink.errors import CtrSinkError

SINK_SIGNALS = ("off", "none", "index", "time_gap", "similarity", "random")
SIGNAL_CARRIERS = ("sink", "separator")  # which token row the signal embedding lands on
SIGNAL_TEXTS = ("off", "time_gap", "index")  # signals that read as words ("3.5 days before", "position 7")
BEHAVIOR_SELECTIONS = ("recent", "similarity")
MODELS = (
    "ctrsink",
    "sparsectr_lite",
    "srp4ctr_lite",
    "din",
)  # ctrsink = a language model over text; others: IDs


@dataclass
class IDModelConfig:
    """Shared sizes of the ID-based comparison rows (`model` = sparsectr_lite | srp4ctr_lite | din)."""

    dim: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    time_buckets: int = 32  # log-bucketed time gaps (to the target, to the previous behavior)

    def validate(self, prefix: str) -> None:
        for key in ("dim", "layers", "heads", "time_buckets"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        if self.dim % self.heads:
            raise CtrSinkError(
                f"config option '{prefix}.dim': {self.dim} is not divisible by heads={self.heads}"
            )
        if not 0 <= self.dropout < 1:
            raise CtrSinkError(f"config option '{prefix}.dropout': must be in [0, 1), got {self.dropout}")


@dataclass
class SparseCTRConfig:
    """SparseCTR-lite (docs: ../shared/reference/related-models.md §4); our reading, not the paper's code."""

    chunking: str = "personalized"  # personalized: cut at each user's largest time gaps | fixed: equal sizes
    chunks: int = 8
    top_k: int = 2  # chunks the transition branch attends into
    window: int = 8  # local branch: this many previous behaviors
    temporal_bias: str = "per_head"  # none | shared | per_head (learnable coefficients per head)
    gates: str = "sigmoid"  # sigmoid (independent per branch) | softmax (branch weights sum to 1)

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.chunking", self.chunking, ("personalized", "fixed"))
        _choice(f"{prefix}.temporal_bias", self.temporal_bias, ("none", "shared", "per_head"))
        _choice(f"{prefix}.gates", self.gates, ("sigmoid", "softmax"))
        for key in ("chunks", "top_k", "window"):
            _positive(f"{prefix}.{key}", getattr(self, key))


@dataclass
class SRP4CTRConfig:
    """SRP4CTR-lite (related-models.md §5): a pre-trained ID encoder, candidate cross-attention, querying transformer."""

    encoder: str = ""  # a `ctrsink pretrain` output dir; "" = pre-train one on the training split first
    init: str = "pretrained"  # pretrained | random (no pre-training)
    encoder_mode: str = "finetune"  # finetune | frozen
    kv: str = "shared"  # shared: the candidate stream uses the encoder's K/V projections | untied
    queries: int = 4  # M learned queries of the querying transformer
    query_layers: int = 1
    mask_ratio: float = 0.15
    pretrain_epochs: int = 4
    pretrain_lr: float = 1e-3

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.init", self.init, ("pretrained", "random"))
        _choice(f"{prefix}.encoder_mode", self.encoder_mode, ("finetune", "frozen"))
        _choice(f"{prefix}.kv", self.kv, ("shared", "untied"))
        for key in ("queries", "query_layers", "pretrain_epochs"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        if not 0 < self.mask_ratio < 1:
            raise CtrSinkError(
                f"config option '{prefix}.mask_ratio': must be in (0, 1), got {self.mask_ratio}"
            )
        if not self.pretrain_lr > 0:
            raise CtrSinkError(f"config option '{prefix}.pretrain_lr': must be > 0, got {self.pretrain_lr}")
        if self.encoder and self.init == "random":
            raise CtrSinkError(
                f"config option '{prefix}.encoder': given, but {prefix}.init=random ignores it"
            )


FINETUNE_MODES = ("full", "lora")
PRECISIONS = ("fp32", "bf16", "fp16")  # autocast dtype of the forward pass (fp16 adds a gradient scaler)
WEIGHT_DTYPES = (
    "fp32",
    "bf16",
    "fp16",
    "auto",
)  # dtype the backbone's weights are loaded in (auto: the checkpoint's)
# the old `mixed_precision` key (Accelerate's names) -> `precision`; still accepted with the same meaning
LEGACY_MIXED_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class LoRAConfig:
    """LoRA adapters through peft (`finetune: lora`); the reference's r 32, dropout 0.1 and per-family defaults."""

    r: int = 32
    alpha: float = 0.0  # 0 = family default: 2r for Qwen2, r otherwise (the reference's 64 / 32 at r = 32)
    dropout: float = 0.1
    targets: list[str] = field(
        default_factory=list
    )  # [] = family default (attention + MLP for Qwen, q/k/v for BERT)

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.r", self.r)
        if self.alpha < 0:
            raise CtrSinkError(
                f"config option '{prefix}.alpha': must be >= 0 (0 = family default), got {self.alpha}"
            )
        if not 0 <= self.dropout < 1:
            raise CtrSinkError(f"config option '{prefix}.dropout': must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if not t or not t.replace("_", "").replace(".", "").isalnum()]
        if bad:
            raise CtrSinkError(f"config option '{prefix}.targets': not module names: {bad}")


def _positive(key: str, value: Any) -> None:
    if value <= 0:
        raise CtrSinkError(f"config option '{key}': must be > 0, got {value}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise CtrSinkError(f"config option '{key}': {value!r} is not one of {', '.join(allowed)}")


@dataclass
class Config:
    # --- backbone -------------------------------------------------------------------------------
    model: str = "ctrsink"
    backbone: str = (
        "scratch:bert-tiny"  # bundled:minilm | scratch:bert-tiny | scratch:qwen2-tiny | local path | hub id
    )
    local_files_only: bool = True  # never reach the hub unless the user asks for it
    scratch_hidden: int = 64
    scratch_layers: int = 2
    scratch_heads: int = 4
    scratch_kv_heads: int = 2  # Qwen2 only (grouped-query attention)
    scratch_vocab_size: int = 4000
    # --- text -----------------------------------------------------------------------------------
    prompt_preset: str = "en"  # en | zh | reference (the reference code's English MovieLens prompts)
    prompts: dict[str, str] = field(default_factory=dict)  # overrides per field name
    separator: str = ";"  # between behaviors; titles contain commas, so ';' keeps boundaries readable
    behavior_text: str = (
        "title_categories"  # title (the reference) | title_categories: genre words made explicit
    )
    num_behaviors: int = 10  # per history field, most recent kept (or top by similarity)
    behavior_selection: str = "recent"
    max_user_tokens: int = 256
    max_item_tokens: int = 32
    # over max_user_tokens: drop_oldest drops whole behaviors from the oldest end (the newest stay);
    # cut_right cuts the field like one string on the right, as the reference does (the oldest stay)
    history_truncation: str = "drop_oldest"
    # --- CTR-Sink mechanisms ---------------------------------------------------------------------
    use_sink: bool = False
    sink_token: str = "auto"  # auto: [unused1] when the vocabulary has it, else <|sink|>
    use_cls_token: bool = False
    sink_signal: str = "off"  # off = the sink token's own embedding
    sink_num_embeddings: int = 100
    sink_embedding_dim: int = 128
    time_gap_ref: str = "target"  # target | previous
    time_gap_tau_hours: float = 1.0
    time_gap_horizon_days: float = 365.0
    index_origin: str = "oldest"  # oldest | newest
    # controls: the sink's signal without the sink token, and the same information as text (no sink at all)
    signal_carrier: str = "sink"  # sink | separator: the signal added to the separator after each behavior
    behavior_signal_text: str = "off"  # off | time_gap | index: the signal written into each behavior's text
    two_stage: bool = False
    stage1_epochs: int = 3
    stage2_epochs: int = 3
    inter_sink: bool = False
    inter_sink_layers: int = 0  # 0 = family default
    inter_sink_lambda_init: float = 0.0  # 0 = family default (BERT 10.0, Qwen2 1.0)
    split_layer: bool = True
    # --- training -------------------------------------------------------------------------------
    epochs: int = 6
    batch_size: int = 32
    eval_batch_size: int = 128
    # batches of samples of similar token length (less padding); the training order stays seeded per epoch
    length_bucketing: bool = False
    lr: float = 1e-3  # backbone
    head_lr: float = 2e-3  # head, pooling projections, sink modules (new parameters)
    weight_decay: float = 5e-5
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    early_stop_patience: int = 3
    # keep checkpoint/epoch{k} for k = 0 (before the first step) .. last: how attention forms over training
    keep_epoch_checkpoints: bool = False
    eval_pooling: str = (
        "all_tokens"  # all_tokens | sink_only: pooling of validation (model selection) and test
    )
    seed: int = 42
    train_samples: int = 0  # 0 = all; otherwise a seeded subset of the training split
    eval_samples: int = 0  # 0 = all; otherwise a seeded subset of valid and of test
    # seeded: rows drawn with the run's seed; reference: numpy RandomState(0) as the reference code draws them
    # (the same rows whatever the seed). Train keeps the first train_samples of a sorted draw of train_subsample_pool
    subsample_rule: str = "seeded"
    train_subsample_pool: int = 0  # 0 = train_samples; the reference draws 8,000 and keeps the first 6,000
    num_threads: int = 0  # 0 = torch default
    # --- scale: LoRA, precision, memory (the paper's 7-8B settings); `mixed_precision` is read as `precision` ------
    finetune: str = "full"  # full | lora (backbone frozen; adapters, sink modules and heads train)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (bf16 is slower on CPUs without bf16 units)
    weights_dtype: str = "fp32"  # fp32 | bf16 | fp16 | auto: backbone weights as loaded (half needs lora)
    gradient_checkpointing: bool = False  # recompute the lower-layer per-field passes in backward
    gradient_accumulation_steps: int = 1  # optimizer step every k batches (effective batch k * batch_size)
    # --- ID-based comparison rows (model != ctrsink); `--set sparsectr.chunking=fixed` -------------
    id_model: IDModelConfig = field(default_factory=IDModelConfig)
    sparsectr: SparseCTRConfig = field(default_factory=SparseCTRConfig)
    srp4ctr: SRP4CTRConfig = field(default_factory=SRP4CTRConfig)

    def validate(self) -> Config:
        def bad(key: str, msg: str) -> CtrSinkError:
            return CtrSinkError(f"config option '{key}': {msg}")

        choices = {
            "model": MODELS,
            "prompt_preset": tuple(PROMPT_PRESETS),
            "history_truncation": ("drop_oldest", "cut_right"),
            "subsample_rule": ("seeded", "reference"),
            "behavior_text": ("title", "title_categories"),
            "behavior_selection": BEHAVIOR_SELECTIONS,
            "sink_signal": SINK_SIGNALS,
            "time_gap_ref": ("target", "previous"),
            "index_origin": ("oldest", "newest"),
            "signal_carrier": SIGNAL_CARRIERS,
            "behavior_signal_text": SIGNAL_TEXTS,
            "finetune": FINETUNE_MODES,
            "precision": PRECISIONS,
            "weights_dtype": WEIGHT_DTYPES,
            "eval_pooling": ("all_tokens", "sink_only"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"{getattr(self, key)!r} is not one of {', '.join(allowed)}")
        positive = [
            "num_behaviors",
            "max_user_tokens",
            "max_item_tokens",
            "epochs",
            "batch_size",
            "eval_batch_size",
            "sink_num_embeddings",
            "sink_embedding_dim",
            "scratch_hidden",
            "scratch_layers",
            "scratch_heads",
            "scratch_vocab_size",
            "gradient_accumulation_steps",
        ]
        for key in positive:
            if getattr(self, key) <= 0:
                raise bad(key, f"must be > 0, got {getattr(self, key)}")
        for key in ["lr", "head_lr", "time_gap_tau_hours", "time_gap_horizon_days"]:
            if not getattr(self, key) > 0:
                raise bad(key, f"must be > 0, got {getattr(self, key)}")
        for key in [
            "train_samples",
            "eval_samples",
            "train_subsample_pool",
            "stage1_epochs",
            "stage2_epochs",
            "inter_sink_layers",
            "early_stop_patience",
            "num_threads",
            "weight_decay",
            "max_grad_norm",
            "inter_sink_lambda_init",
        ]:
            if getattr(self, key) < 0:
                raise bad(key, f"must be >= 0, got {getattr(self, key)}")
        for key in ("id_model", "sparsectr", "srp4ctr", "lora"):
            getattr(self, key).validate(key)
        if self.weights_dtype in ("bf16", "fp16") and self.finetune != "lora":
            raise bad(
                "weights_dtype",
                f"{self.weights_dtype} weights train only their fp32 LoRA adapters; set finetune=lora (or fp32)",
            )
        if self.weights_dtype in ("bf16", "fp16") and self.precision != self.weights_dtype:
            raise bad(
                "precision", f"{self.weights_dtype} weights need precision={self.weights_dtype} (autocast)"
            )
        if self.model != "ctrsink" and (self.finetune != "full" or self.weights_dtype != "fp32"):
            raise bad(
                "finetune", f"{self.model!r} has no language model; lora and weights_dtype need model=ctrsink"
            )
        text_controls = self.signal_carrier != "sink" or self.behavior_signal_text != "off"
        if self.model != "ctrsink" and (self.use_sink or self.two_stage or self.inter_sink or text_controls):
            raise bad("model", f"{self.model!r} reads ID sequences; sink options need model=ctrsink")
        if self.model != "ctrsink" and self.behavior_selection != "recent":
            raise bad("behavior_selection", f"{self.model!r} reads the most recent behaviors; use 'recent'")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        # combinations (method spec §10)
        sinkless = not self.use_sink
        on_separator = self.signal_carrier == "separator"
        if on_separator and self.use_sink:
            raise bad("signal_carrier", "'separator' carries the signal without sinks; set use_sink=false")
        if on_separator and self.sink_signal == "off":
            raise bad("signal_carrier", "'separator' needs a sink_signal other than 'off'")
        if on_separator and not self.separator.strip():
            raise bad("signal_carrier", "'separator' needs a visible separator between behaviors")
        if sinkless and not on_separator and self.sink_signal != "off":
            raise bad("sink_signal", f"{self.sink_signal!r} needs use_sink=true or signal_carrier=separator")
        if sinkless and self.two_stage:
            raise bad("two_stage", "needs use_sink=true (stage 1 reads the history only through sinks)")
        if sinkless and self.inter_sink:
            raise bad("inter_sink", "needs use_sink=true")
        if sinkless and self.use_cls_token:
            raise bad("use_cls_token", "replaces the sink token, so it needs use_sink=true")
        if sinkless and self.eval_pooling == "sink_only":
            raise bad(
                "eval_pooling", "'sink_only' pools the history's sink tokens, so it needs use_sink=true"
            )
        if self.inter_sink and not self.split_layer:
            raise bad(
                "inter_sink", "needs split_layer=true (the bias acts in the lower-layer per-field passes)"
            )
        if self.inter_sink and self.use_cls_token:
            raise bad("inter_sink", "cannot be combined with use_cls_token")
        if self.two_stage and self.stage1_epochs + self.stage2_epochs == 0:
            raise bad("stage1_epochs", "two_stage needs stage1_epochs + stage2_epochs > 0")
        unknown_prompts = set(self.prompts) - set(PROMPT_FIELDS)
        if unknown_prompts:
            raise bad(
                "prompts", f"unknown field(s) {sorted(unknown_prompts)}; known: {', '.join(PROMPT_FIELDS)}"
            )
        return self

    @property
    def mixed_precision(self) -> str:
        """`precision` in Accelerate's words (no | bf16 | fp16), for `Accelerator(mixed_precision=...)`."""
        return {"fp32": "no"}.get(self.precision, self.precision)

    @property
    def total_epochs(self) -> int:
        return self.stage1_epochs + self.stage2_epochs if self.two_stage else self.epochs

    def stage_of_epoch(self, epoch: int) -> str:
        """'sink_only' for the first stage of two-stage training, else 'all_tokens' (method spec §6)."""
        return "sink_only" if self.two_stage and epoch < self.stage1_epochs else "all_tokens"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROMPT_FIELDS = ("pos", "neg", "all", "title", "categories")
PROMPT_PRESETS = {
    "en": {
        "pos": "Items the user liked: ",
        "neg": "Items the user disliked: ",
        "all": "Items the user interacted with: ",
        "title": "Target item title: ",
        "categories": "Target item categories: ",
    },
    # the reference implementation's Chinese prompts (MovieLens wording)
    "zh": {
        "pos": "用户评分高的电影：",
        "neg": "用户评分低的电影：",
        "all": "用户看过的电影：",
        "title": "电影标题是：",
        "categories": "电影类型是：",
    },
    # the reference implementation's English prompts, written directly before the text as it does
    "reference": {
        "pos": "The user rated these movies highly:",
        "neg": "The user rated these movies low:",
        "all": "The user rated these movies:",
        "title": "Movie title:",
        "categories": "Movie genres:",
    },
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _coerce(key: str, value: Any, typ: Any, current: Any = None) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):  # a section: merge the given keys into the current values
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if not isinstance(value, dict):
            raise CtrSinkError(f"config option '{key}': expected a mapping of options, got {value!r}")
        section = dataclasses.replace(current) if current is not None else typ()
        hints = typing.get_type_hints(typ)
        for sub, v in value.items():
            if sub not in hints:
                raise _unknown_key(f"{key}.{sub}", [f"{key}.{n}" for n in hints])
            setattr(section, sub, _coerce(f"{key}.{sub}", v, hints[sub]))
        return section
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise CtrSinkError(f"config option '{key}': expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise CtrSinkError(f"config option '{key}': expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CtrSinkError(f"config option '{key}': expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise CtrSinkError(f"config option '{key}': expected a string, got {value!r}")
        return value
    if origin is list:  # a YAML list, or comma-separated text from `--set lora.targets=q_proj,v_proj`
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CtrSinkError(f"config option '{key}': expected a list of names, got {value!r}")
        return list(value)
    if origin is dict or (isinstance(typ, types.GenericAlias) and typ.__origin__ is dict):
        if not isinstance(value, dict):
            raise CtrSinkError(f"config option '{key}': expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    return value


def _unknown_key(key: str, names: list[str] | None = None) -> CtrSinkError:
    names = names or [f.name for f in dataclasses.fields(Config)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return CtrSinkError(f"unknown config option '{key}'{hint}")


def _migrate(values: dict[str, Any]) -> dict[str, Any]:
    """Old keys with their old meaning: `mixed_precision` (no | bf16 | fp16) becomes `precision`."""
    if "mixed_precision" not in values:
        return values
    values = dict(values)
    old = values.pop("mixed_precision")
    if old not in LEGACY_MIXED_PRECISION:
        allowed = ", ".join(LEGACY_MIXED_PRECISION)
        raise CtrSinkError(
            f"config option 'mixed_precision': {old!r} is not one of {allowed} (or use 'precision')"
        )
    new = LEGACY_MIXED_PRECISION[old]
    if values.setdefault("precision", new) != new:
        raise CtrSinkError(
            f"config options 'mixed_precision' ({old}) and 'precision' ({values['precision']}) disagree; keep 'precision'"
        )
    return values


def config_from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    cfg = dataclasses.replace(base) if base is not None else Config()
    values = _migrate(values)
    hints = _field_types()
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(key)
        setattr(cfg, key, _coerce(key, value, hints[key], getattr(cfg, key)))
    return cfg.validate()


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings; values are read as YAML scalars (true, 3, 1e-4, text)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CtrSinkError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if "." in key:  # prompts.pos=..., sparsectr.chunking=...
            head, sub = key.split(".", 1)
            section = _field_types().get(head)
            out.setdefault(head, {})[sub] = _yaml_scalar(raw) if dataclasses.is_dataclass(section) else raw
            continue
        out[key] = _yaml_scalar(raw)
    return out


def _yaml_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CtrSinkError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise CtrSinkError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise CtrSinkError(f"config file {path} must hold a mapping of options")
        values.update(loaded)
    for key, value in parse_overrides(overrides or []).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return config_from_dict(values)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
