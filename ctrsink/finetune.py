"""Which weights train, and in what precision: the one place the model builder and the training loop ask.

`finetune: full` trains every weight. `finetune: lora` injects peft LoRA adapters into the backbone (in place, so
the `Backbone` view and the layer loop are unchanged) and freezes its own weights; everything CTR-Sink adds stays
trainable: the sink signal embedding, the inter-sink modules and their lambdas, the pooling heads and fusion, and
the sink token's own input row (a separate fp32 parameter, because the embedding matrix it lives in is frozen).
The reference wraps its backbone after attaching the inter-sink modules inside it, so peft freezes them (spec
weakness #4); ours live outside the backbone.

Precision: the model autocasts its own forward pass to bf16 or fp16 (so training, evaluation and scoring agree),
and the training loop keeps a gradient scaler for fp16. The same code runs on CPU and GPU (Accelerate's own mixed
precision is a no-op for fp16 on CPU, so it is not used).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ctrsink.errors import CtrSinkError

# the reference's targets (method spec §9): attention and MLP projections for Qwen, q/k/v for BERT-type encoders
LORA_TARGETS = {
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"),
}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def lora_settings(cfg: Any, model_type: str) -> Any:
    """The peft LoraConfig of a run: `lora.*` options, family defaults where they are 0 / empty."""
    from peft import LoraConfig

    r = cfg.lora.r
    alpha = cfg.lora.alpha or (2 * r if model_type == "qwen2" else r)  # the reference: 64 for Qwen2, 32 else
    targets = list(cfg.lora.targets) or list(LORA_TARGETS[model_type])
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=cfg.lora.dropout, bias="none", target_modules=targets
    )


def apply_finetune(model: nn.Module, cfg: Any, sink_id: int | None = None) -> dict[str, Any]:
    """Set up `model` (a CTRModel) for `cfg.finetune`; returns what a run records about it.

    Must run identically when a run is built and when it is loaded, so checkpoints match key for key.
    """
    backbone = model.backbone
    if cfg.finetune == "lora":
        settings = lora_settings(cfg, backbone.model_type)
        _inject_lora(backbone.model, settings)
        if sink_id is not None:
            # the sink's input row, trainable apart from the frozen matrix; starts as the matrix's row
            row = backbone.word_embeddings().weight[sink_id].detach().float().clone()
            model.sink_row = nn.Parameter(row)
        info = {"lora": {"r": settings.r, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout}}
        info["lora"]["targets"] = sorted(settings.target_modules)
    else:
        info = {}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"finetune": cfg.finetune, **info, "trainable_parameters": trainable, "parameters": total}


def _inject_lora(base: nn.Module, settings: Any) -> None:
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype

    try:
        inject_adapter_in_model(settings, base)
    except ValueError as exc:  # no module matched the targets
        names = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)})
        raise CtrSinkError(
            f"config option 'lora.targets': {sorted(settings.target_modules)} match no layer of this backbone"
            f" ({str(exc).splitlines()[0][:120]}); its linear layers: {', '.join(names)}"
        ) from None
    cast_adapter_dtype(
        base, "default", autocast_adapter_dtype=True
    )  # adapters in fp32 over bf16/fp16 weights
    for name, param in base.named_parameters():
        param.requires_grad_("lora_" in name)


def trainable_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split by learning rate: the backbone's (lr: all weights, or the LoRA adapters) and
    the rest (head_lr: heads, sink modules, the sink row). Frozen weights are in neither."""
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "new": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["backbone" if name.startswith("backbone.") else "new"].append(param)
    return groups


def part_of(name: str) -> str:
    """Which part of the model a parameter name belongs to (for reports and tests)."""
    if name == "sink_row":
        return "sink_row"
    if name.startswith("backbone."):
        return "lora" if "lora_" in name else "backbone"
    return name.split(".", 1)[0]  # signal, inter_sink, heads, fusion, ctr


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's autocast for `precision` (fp32: none). fp16 training also needs a gradient scaler,
    which the training loop keeps (`torch.amp.GradScaler`, enabled for fp16 only)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
