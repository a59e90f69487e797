"""The CTR model, read top to bottom (spec §5):

per field: token embeddings (sink rows replaced by signal embeddings) -> lower layers (+ inter-sink bias)
           -> pool (all tokens, or sinks only in stage 1)
pooled fields as a short sequence -> upper layers -> per-field projection -> fusion -> logit
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctrsink.backbones import Backbone, additive_mask
from ctrsink.config import Config
from ctrsink.finetune import autocast
from ctrsink.sinks.inter_sink import InterSinkBias, gather_sink_positions
from ctrsink.sinks.signals import SinkSignalEmbedding
from ctrsink.text import ROLE_ID

POOLINGS = ("all_tokens", "sink_only")


def masked_mean(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)


class FieldHead(nn.Module):
    """p_f = Lin(H/2 -> 128)(LeakyReLU(Lin(H -> H/2)(z_f)))."""

    def __init__(self, hidden: int, out: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, hidden // 2), nn.LeakyReLU(0.01), nn.Linear(hidden // 2, out)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class CTRModel(nn.Module):
    def __init__(self, backbone: Backbone, cfg: Config, fields: list[str], history_fields: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.fields = list(fields)
        self.history_fields = list(history_fields)
        h = backbone.hidden_size
        n_layers = backbone.num_layers
        self.split_at = n_layers // 2 if cfg.split_layer and n_layers >= 2 else n_layers
        self.causal = backbone.spec.causal
        # the signal replaces sink rows, or is added to separator rows (signal_carrier=separator: no sink tokens)
        on_separator = cfg.signal_carrier == "separator"
        self.signal = (
            SinkSignalEmbedding(
                cfg.sink_num_embeddings, cfg.sink_embedding_dim, h, mode="add" if on_separator else "replace"
            )
            if (cfg.use_sink or on_separator) and cfg.sink_signal != "off"
            else None
        )
        self.inter_sink = nn.ModuleDict()
        if cfg.inter_sink:
            n_bias = cfg.inter_sink_layers or backbone.spec.inter_sink_layers(n_layers)
            n_bias = min(n_bias, self.split_at)  # the bias acts only in the lower, per-field passes
            lam = cfg.inter_sink_lambda_init or backbone.spec.inter_sink_lambda_init
            dropout = float(
                getattr(backbone.config, "attention_probs_dropout_prob", 0.0)
                or getattr(backbone.config, "attention_dropout", 0.0)
                or 0.0
            )
            for i in range(n_bias):
                self.inter_sink[str(i)] = InterSinkBias(
                    h, backbone.config.num_attention_heads, lam, dropout, causal=self.causal
                )
        self.heads = nn.ModuleDict({f: FieldHead(h) for f in self.fields})
        self.fusion = nn.Sequential(
            nn.Linear(128 * len(self.fields), 128), nn.LayerNorm(128), nn.LeakyReLU(0.01)
        )
        self.ctr = nn.Sequential(nn.Linear(128, 32), nn.LeakyReLU(0.01), nn.Linear(32, 1))
        self.current_field: str | None = None  # read by capture hooks: which field the layers are processing
        # the sink token's input row as its own fp32 parameter: set by `ctrsink.finetune` under LoRA, where the
        # embedding matrix is frozen
        self.sink_row: nn.Parameter | None = None

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The language model's trainable weights (trained with lr): all of them, or its LoRA adapters."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def new_parameters(self) -> list[nn.Parameter]:
        """Everything outside the backbone (trained with head_lr), the LoRA sink row included."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]

    def input_embeds(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-token input rows of one field: word lookup, then the signal on sink rows (or added to separators)."""
        embeds = self.backbone.word_embeddings()(batch["input_ids"])
        if self.sink_row is not None:
            is_sink = (batch["token_roles"] == ROLE_ID["sink"]).unsqueeze(-1)
            embeds = torch.where(is_sink, self.sink_row.to(embeds.dtype), embeds)
        if self.signal is not None and "sink_signal_ids" in batch:
            embeds = self.signal(embeds, batch["sink_signal_ids"])
        return embeds

    def encode_field(
        self, name: str, batch: dict[str, torch.Tensor], pooling: str, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One field through the lower layers, pooled to (B, H). `embeds` overrides the input rows (attribution)."""
        self.current_field = name
        attn, roles = batch["attention_mask"], batch["token_roles"]
        if embeds is None:
            embeds = self.input_embeds(batch)
        hidden = self.backbone.embed(embeds)
        mask = additive_mask(attn, self.causal, hidden.dtype)
        rope = self.backbone.position_embeddings(hidden)
        is_history = name in self.history_fields
        sinks = None
        if len(self.inter_sink) and is_history:
            for module in self.inter_sink.values():  # a field without sinks must not show an earlier field's
                module.last_affinity = None
            sinks = gather_sink_positions(roles, ROLE_ID["sink"])
        # gradient checkpointing: each lower layer's activations are recomputed in backward instead of kept
        recompute = self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i in range(self.split_at):
            if recompute:
                hidden = checkpoint(self.lower_layer, i, hidden, mask, rope, sinks, use_reentrant=False)
            else:
                hidden = self.lower_layer(i, hidden, mask, rope, sinks)
        hidden = self.backbone.final_norm(hidden)
        if pooling == "sink_only" and is_history:
            weights = roles == ROLE_ID["sink"]
            # a history without sinks (0 or 1 behavior) pools its first token, as the reference
            empty = ~weights.any(1)
            weights = weights.clone()
            weights[empty, 0] = True
        else:
            weights = attn.bool()
        return masked_mean(hidden, weights)

    def lower_layer(
        self,
        i: int,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        rope: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
        sinks: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Lower layer i of one field's pass, with the inter-sink bias added to its mask where it has one."""
        layer_mask = mask
        if sinks is not None and str(i) in self.inter_sink and sinks[0].shape[1] > 0:
            attn_in = self.backbone.attention_input(i, hidden)
            layer_mask = mask + self.inter_sink[str(i)](attn_in, *sinks)
        return self.backbone.run_layer(i, hidden, layer_mask, rope)

    def forward(
        self,
        fields: dict[str, dict[str, torch.Tensor]],
        pooling: str = "all_tokens",
        embeds: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits (B,). `embeds` (per field) replaces the input rows, for gradient attributions."""
        device = next(iter(fields.values()))["input_ids"].device
        with autocast(self.cfg.precision, device.type):  # bf16 / fp16 runs score as they train
            return self.logits(fields, pooling, embeds)

    def logits(
        self,
        fields: dict[str, dict[str, torch.Tensor]],
        pooling: str,
        embeds: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        rows = embeds or {}
        pooled = torch.stack(
            [self.encode_field(f, fields[f], pooling, rows.get(f)) for f in self.fields], dim=1
        )
        z = pooled
        if self.split_at < self.backbone.num_layers:
            self.current_field = "fields"
            b, f = pooled.shape[:2]
            ones = torch.ones(b, f, dtype=torch.long, device=pooled.device)
            mask = additive_mask(ones, self.causal, pooled.dtype)
            rope = self.backbone.position_embeddings(pooled)
            for i in range(self.split_at, self.backbone.num_layers):
                z = self.backbone.run_layer(i, z, mask, rope)
            z = self.backbone.final_norm(z)
        self.current_field = None
        proj = torch.cat([self.heads[f](z[:, j]) for j, f in enumerate(self.fields)], dim=-1)
        return self.ctr(self.fusion(proj)).squeeze(-1).float()
