"""SRP4CTR-lite's encoder (FG-BERT-lite) and the attention parts the whole row shares: our reading of the paper's
description, not the paper's code (see `ctrsink.idmodels.srp4ctr` for the row and its hook points).

The encoder is a bidirectional pre-norm transformer over the behavior tokens of one history (item + category +
feedback + time-to-previous-behavior embeddings + a learned position counted from the newest behavior), pre-trained
with a cloze objective over several fields (`pretrain_losses`; `ctrsink.pretrain` runs it on the training split).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ctrsink.config import Config
from ctrsink.errors import CtrSinkError
from ctrsink.idmodels.common import BehaviorEmbedding, HookPoint, IDVocab

MAX_POSITIONS = 512  # learned positions, counted from the newest behavior; independent of the vocabulary
FIELDS = ("item", "cat", "feedback", "time")  # the token's embedding parts, in summation order
FIELD_KEYS = {"item": "hist_item", "cat": "hist_cat", "feedback": "hist_feedback", "time": "hist_prev_gap"}
MASKING_MODES = (("item", "cat"), ("feedback", "time"))  # item fields | behavior fields
ENCODER_KEYS = (
    "hist_item",
    "hist_cat",
    "hist_feedback",
    "hist_prev_gap",
    "hist_mask",
)  # what the encoder reads
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_META = "encoder.json"
FFN_MULT = 4


def masked_softmax(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `visible`; rows with no visible key are all zeros (no NaN)."""
    scores = scores.masked_fill(~visible, -math.inf)
    scores = scores.masked_fill(~visible.any(-1, keepdim=True), 0.0)
    return torch.softmax(scores, dim=-1) * visible


def ffn(d: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d, FFN_MULT * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(FFN_MULT * d, d)
    )


class Attention(nn.Module):
    """Multi-head attention with explicit bias-free W_Q, W_K, W_V, W_O.

    Explicit projections so the candidate stream can reuse the encoder's W_K / W_V (and the K/V it computed).
    `own_kv=False` leaves W_K / W_V out: the caller passes keys and values.
    """

    def __init__(self, d: int, heads: int, hook_name: str, own_kv: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_k = nn.Linear(d, d, bias=False) if own_kv else None
        self.w_v = nn.Linear(d, d, bias=False) if own_kv else None
        self.w_o = nn.Linear(d, d, bias=False)
        self.hook_probs = HookPoint(hook_name)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(S, T, d) -> (S, H, T, d / H)."""
        s, t, d = x.shape
        return x.view(s, t, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.w_k(x)), self.split(self.w_v(x))

    def attend(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """Queries from x (S, T, d) over k, v (S, H, L, dh); visible broadcasts to (S, H, T, L)."""
        q = self.split(self.w_q(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        probs = self.hook_probs(masked_softmax(scores, visible))
        out = probs @ v  # (S, H, T, dh)
        return self.w_o(out.transpose(1, 2).reshape(x.shape))


class LayerState(NamedTuple):
    """What layer l of the encoder hands the candidate stream: its normalised input and the K/V it computed."""

    h: torch.Tensor  # (S, L, d) LayerNorm(layer input), the states W_K / W_V read
    k: torch.Tensor  # (S, H, L, dh)
    v: torch.Tensor  # (S, H, L, dh)


class EncoderOutput(NamedTuple):
    out: torch.Tensor  # (S, L, d) final-normalised token states
    states: list[LayerState]
    mask: torch.Tensor  # (S, L) real behaviors


class PreNormBlock(nn.Module):
    """Pre-norm attention block: x += Attn(LN1(x), K, V); x += FFN(LN2(x)). The layers of all three stacks
    (encoder, candidate stream, querying transformer) are one; they differ in where queries, keys and values come
    from."""

    def __init__(self, d: int, heads: int, dropout: float, hook_name: str, own_kv: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, hook_name, own_kv=own_kv)
        self.ffn = ffn(d, dropout)
        self.drop = nn.Dropout(dropout)

    def residual(
        self, x: torch.Tensor, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """x plus the attention of its normalised queries `h` over k, v, then plus the FFN of the result."""
        x = x + self.drop(self.attn.attend(h, k, v, visible))
        return x + self.drop(self.ffn(self.norm2(x)))


class EncoderLayer(PreNormBlock):
    """Bidirectional over real behaviors (padding masked as keys); hands its normalised input and K/V on."""

    def __init__(self, d: int, heads: int, dropout: float, layer: int) -> None:
        super().__init__(d, heads, dropout, f"encoder.layer.{layer}.attn.probs")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, LayerState]:
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        visible = mask[:, None, :, None] & mask[:, None, None, :]  # (S, 1, L, L): real queries x real keys
        return self.residual(x, h, k, v, visible), LayerState(h, k, v)


class ClozeHeads(nn.Module):
    """Pre-training only: a learned [MASK] vector per field and one output head per field.

    Item: in-batch sampled softmax (scores against the embeddings of the items in the batch, tied to the input
    table), because a full softmax over a large catalogue is what the paper avoids; the others: full softmax.
    Kept out of the fine-tuning model, so it holds no parameters that never get a gradient.
    """

    def __init__(self, vocab: IDVocab, d: int) -> None:
        super().__init__()
        self.mask = nn.Parameter(torch.randn(len(FIELDS), d) * 0.02)

        def transform() -> nn.Sequential:
            return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))

        self.item = transform()
        sizes = {"cat": vocab.cats, "feedback": vocab.feedback, "time": vocab.time_buckets}
        self.out = nn.ModuleDict({k: nn.Sequential(transform(), nn.Linear(d, n)) for k, n in sizes.items()})


class SRPEncoder(nn.Module):
    """FG-BERT-lite (our reading of the paper's description): bidirectional transformer over behavior tokens.

    `forward(fields)` -> EncoderOutput: final states (S, L, d) plus every layer's normalised input and K/V, which
    the candidate stream of SRP4CTRLite reads. `pretrain_loss(fields, generator)` is the multi-field cloze loss;
    it needs `pretrain_heads=True` (the fine-tuning model builds the encoder without them).
    """

    def __init__(self, cfg: Config, vocab: IDVocab, pretrain_heads: bool = True) -> None:
        super().__init__()
        m = cfg.id_model
        d = m.dim
        self.mask_ratio = cfg.srp4ctr.mask_ratio
        self.embed = BehaviorEmbedding(vocab, d, time_key="hist_prev_gap")
        self.pos = nn.Embedding(MAX_POSITIONS, d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(m.dropout)
        self.layers = nn.ModuleList(EncoderLayer(d, m.heads, m.dropout, layer) for layer in range(m.layers))
        self.norm = nn.LayerNorm(d)
        self.cloze = ClozeHeads(vocab, d) if pretrain_heads else None

    def tokens(
        self,
        f: dict[str, torch.Tensor],
        masked: torch.Tensor | None = None,
        mask_fields: tuple[str, ...] = (),
    ) -> torch.Tensor:
        """Sum of the field embeddings (S, L, d); at `masked` positions the `mask_fields` take their [MASK] vector."""
        if masked is None or not mask_fields:
            return self.embed.history(f)
        tables = {"item": self.embed.item, "cat": self.embed.cat, "feedback": self.embed.feedback}
        tables["time"] = self.embed.time
        x = 0
        for i, name in enumerate(FIELDS):
            part = tables[name](f[FIELD_KEYS[name]])
            if name in mask_fields:
                part = torch.where(masked.unsqueeze(-1), self.cloze.mask[i], part)
            x = x + part
        return x

    def forward(
        self,
        f: dict[str, torch.Tensor],
        masked: torch.Tensor | None = None,
        mask_fields: tuple[str, ...] = (),
    ) -> EncoderOutput:
        mask = f["hist_mask"]
        length = mask.shape[1]
        if length > MAX_POSITIONS:
            raise CtrSinkError(
                f"config option 'num_behaviors': histories of {length} behaviors exceed SRP4CTR-lite's "
                f"{MAX_POSITIONS} positions"
            )
        # position 0 = the newest behavior: left padding does not shift the real tokens' positions
        pos = torch.arange(length - 1, -1, -1, device=mask.device)
        x = self.drop(self.tokens(f, masked, mask_fields) + self.pos(pos))
        states = []
        for layer in self.layers:
            x, state = layer(x, mask)
            states.append(state)
        return EncoderOutput(self.norm(x), states, mask)

    def body_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights fine-tuning loads: everything but the cloze heads."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("cloze.")}

    def pretrain_losses(
        self, fields: dict[str, torch.Tensor], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Cloze losses of one step, keyed by the masked fields (item + cat, or feedback + time).

        The masking mode is drawn per call; each real behavior is masked with probability `mask_ratio`, and every
        row with a behavior gets at least one masked position (a step without targets teaches nothing).
        """
        if self.cloze is None:
            raise RuntimeError("this SRPEncoder was built without pre-training heads")
        real = fields["hist_mask"]
        mode = MASKING_MODES[int(torch.randint(len(MASKING_MODES), (), generator=generator))]
        u = torch.rand(real.shape, generator=generator).to(real.device).masked_fill(~real, 2.0)
        masked = ((u < self.mask_ratio) | (u == u.min(1, keepdim=True).values)) & real
        h = self(fields, masked, mode).out[masked]  # (N, d)
        losses = {}
        for name in mode:
            target = fields[FIELD_KEYS[name]][masked]
            if name == "item":
                candidates = torch.unique(fields["hist_item"][real])  # sorted; every target is among them
                logits = self.cloze.item(h) @ self.embed.item.weight[candidates].T
                target = torch.searchsorted(candidates, target)
            else:
                logits = self.cloze.out[name](h)
            losses[name] = F.cross_entropy(logits, target)
        return losses

    def pretrain_loss(self, fields: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Sum of the masked fields' cloze losses (equal weights; the paper's weights are unknown)."""
        return sum(self.pretrain_losses(fields, generator).values())
