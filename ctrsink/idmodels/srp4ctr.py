"""SRP4CTR-lite: a compact PyTorch re-implementation from the published description of SRP4CTR (Han et al., CIKM 2024;
../shared/reference/related-models.md §2, §5). This is our reading of the paper's description, not the paper's
code, and its numbers are never the paper's results.

Two parts:

    SRPEncoder (FG-BERT-lite)   a bidirectional pre-norm transformer over the behavior tokens of one history
                                (item + category + feedback + time-to-previous-behavior embeddings + a learned
                                position counted from the newest behavior), pre-trained with a cloze objective over
                                several fields (`pretrain_loss`; `ctrsink.pretrain` runs it on the training split)
    SRP4CTRLite                 the CTR model around the encoder:
        uni cross-attention     the candidate (item + category embedding from the encoder's tables) passes one block
                                per encoder layer with its own W_Q, W_O and FFN; its keys/values are the encoder's
                                layer-l input states through the encoder's layer-l W_K, W_V (`srp4ctr.kv=shared`: the
                                very K/V the encoder computed) or through the stream's own W_K, W_V (`kv=untied`)
        querying transformer    M learned queries cross-attend to the encoder output (`srp4ctr.query_layers`)
        tower                   [stream output | M query tokens | candidate | profile | target attention] -> MLP

The user side (encoder, its K/V, the querying transformer, the profile) never reads the candidate: the history time
embedding is the time to the previous behavior (`hist_prev_gap`), not the time to the target. So with `fold=True` it
runs once per group of rows sharing a history (`fields["group"]`) and is broadcast to the rows; `fold=False` runs it
per row; the logits are the same.

Hook points (S = sequences: groups when folded, rows otherwise; B rows; H heads; L history slots; M queries):

    encoder.layer.{l}.attn.probs    (S, H, L, L)  query x key; each real query's row sums to 1 over real keys,
                                                  padded keys and padded queries get 0
    cross.layer.{l}.attn.probs      (B, H, 1, L)  the candidate over the history (1 over real tokens, 0 at padding)
    query.layer.{l}.attn.probs      (S, H, M, L)  each learned query over the history
    target.attn.probs               (B, L)        DIN-style target-attention pooling weights (softmax over real
                                                  tokens, 0 at padding; DIN itself does not normalise)

A history with no behavior at all gets all-zero probabilities (no NaN) and a zero attention output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ctrsink.config import Config
from ctrsink.errors import CtrSinkError
from ctrsink.idmodels.common import BehaviorEmbedding, HookPoint, IDModel, IDVocab, fold_groups, mlp

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
SIZE_KEYS = ("dim", "layers", "heads")  # id_model sizes a pre-trained encoder must share with the model
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


def linear_macs(module: nn.Module) -> int:
    """Multiply-adds of one input vector through every nn.Linear of `module` (a sequential MLP or FFN)."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


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


class EncoderLayer(nn.Module):
    """Pre-norm: x += Attn(LN(x)); x += FFN(LN(x)); bidirectional over real behaviors (padding masked as keys)."""

    def __init__(self, d: int, heads: int, dropout: float, layer: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, f"encoder.layer.{layer}.attn.probs")
        self.ffn = ffn(d, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, LayerState]:
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        visible = mask[:, None, :, None] & mask[:, None, None, :]  # (S, 1, L, L): real queries x real keys
        x = x + self.drop(self.attn.attend(h, k, v, visible))
        x = x + self.drop(self.ffn(self.norm2(x)))
        return x, LayerState(h, k, v)


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


class CandidateBlock(nn.Module):
    """One uni cross-attention block: the candidate reads layer l's behavior K/V, never the other way round."""

    def __init__(self, d: int, heads: int, dropout: float, layer: int, own_kv: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, f"cross.layer.{layer}.attn.probs", own_kv=own_kv)
        self.ffn = ffn(d, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, c: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """c (B, 1, d); k, v (B, H, L, dh); mask (B, L)."""
        c = c + self.drop(self.attn.attend(self.norm1(c), k, v, mask[:, None, None, :]))
        return c + self.drop(self.ffn(self.norm2(c)))


class QueryLayer(nn.Module):
    """Querying transformer layer: M query tokens cross-attend to the encoder output, then an FFN."""

    def __init__(self, d: int, heads: int, dropout: float, layer: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, f"query.layer.{layer}.attn.probs")
        self.ffn = ffn(d, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k, v = self.attn.keys_values(out)
        q = q + self.drop(self.attn.attend(self.norm1(q), k, v, mask[:, None, None, :]))
        return q + self.drop(self.ffn(self.norm2(q)))


class SRP4CTRLite(IDModel):
    """SRP4CTR-lite (our reading of the paper's description; see the module docstring): logits (B,).

    Switches: `srp4ctr.kv` shared | untied, `srp4ctr.encoder_mode` finetune | frozen (the encoder, its embedding
    tables included, gets requires_grad False and stays in eval mode), `srp4ctr.init` (pre-trained weights come in
    through `load_encoder`). Fine-tuned encoder parameters are `backbone_parameters()` (trained at `lr`, whether or
    not they were pre-trained, so init=random differs only in the initialisation); the rest train at `head_lr`.
    """

    folds = True

    def __init__(self, cfg: Config, vocab: IDVocab) -> None:
        super().__init__(cfg, vocab)
        m, s = cfg.id_model, cfg.srp4ctr
        d = m.dim
        self.fold = True
        self.shared_kv = s.kv == "shared"
        self.frozen = s.encoder_mode == "frozen"
        self.encoder = SRPEncoder(cfg, vocab, pretrain_heads=False)
        self.cross = nn.ModuleList(
            CandidateBlock(d, m.heads, m.dropout, layer, own_kv=not self.shared_kv)
            for layer in range(m.layers)
        )
        self.cross_norm = nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.randn(s.queries, d) * 0.02)
        self.query = nn.ModuleList(
            QueryLayer(d, m.heads, m.dropout, layer) for layer in range(s.query_layers)
        )
        self.query_norm = nn.LayerNorm(d)
        self.activation = mlp([4 * d, 80, 40, 1])  # DIN's activation unit over [e, v, e - v, e * v]
        self.hook_target = HookPoint("target.attn.probs")  # (B, L)
        self.tower = mlp([(4 + s.queries) * d, 128, 64, 1], dropout=m.dropout)
        if self.frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> SRP4CTRLite:
        super().train(mode)
        if self.frozen:  # frozen features: no dropout noise in them either
            self.encoder.eval()
        return self

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def kv_projections(self, layer: int) -> tuple[nn.Linear, nn.Linear]:
        """The W_K, W_V the candidate stream uses at `layer`: the encoder's own when kv=shared."""
        attn = self.encoder.layers[layer].attn if self.shared_kv else self.cross[layer].attn
        return attn.w_k, attn.w_v

    def forward(self, fields: dict[str, torch.Tensor], pooling: str = "all_tokens") -> torch.Tensor:
        b = len(fields["target_item"])
        if self.fold and "group" in fields:
            first, row = fold_groups(fields)  # the user side runs once per group, rows index into it
        else:
            first = row = torch.arange(b, device=fields["target_item"].device)
        enc = self.encoder({k: fields[k][first] for k in ENCODER_KEYS})
        mask = enc.mask
        row_mask = mask[row]
        cand = self.encoder.embed.candidate(fields)  # (B, d), the encoder's item and category tables
        # uni cross-attention stream: behavior K/V per group (shared: the encoder's own), gathered to rows
        c = cand.unsqueeze(1)
        for block, state in zip(self.cross, enc.states):
            k, v = (state.k, state.v) if self.shared_kv else block.attn.keys_values(state.h)
            c = block(c, k[row], v[row], row_mask)
        stream = self.cross_norm(c.squeeze(1))
        # querying transformer: per user
        # repeat, not expand: a no-grad view of a parameter trips FlopCounterMode's module tracker
        q = self.queries.unsqueeze(0).repeat(len(first), 1, 1)
        for layer in self.query:
            q = layer(q, enc.out, mask)
        query_tokens = self.query_norm(q).flatten(1)[row]
        m = mask.unsqueeze(-1).to(enc.out.dtype)
        profile = ((enc.out * m).sum(1) / m.sum(1).clamp(min=1.0))[row]
        # DIN-style target attention over the encoder output
        hist = enc.out[row]  # (B, L, d)
        v = cand.unsqueeze(1).expand_as(hist)
        scores = self.activation(torch.cat([hist, v, hist - v, hist * v], dim=-1)).squeeze(-1)
        weights = self.hook_target(masked_softmax(scores, row_mask))
        interest = (weights.unsqueeze(1) @ hist).squeeze(1)
        features = torch.cat([stream, query_tokens, cand, profile, interest], dim=-1)
        return self.tower(features).squeeze(-1)

    def load_encoder(self, path: str | Path) -> None:
        """Load a pre-trained encoder (a `ctrsink pretrain` folder or its encoder.safetensors), strictly."""
        from safetensors.torch import load_file

        path = Path(path)
        file = path / ENCODER_WEIGHTS if path.is_dir() else path
        if not file.is_file():
            raise CtrSinkError(f"{file}: pre-trained encoder not found (create one with `ctrsink pretrain`)")
        meta = file.with_name(ENCODER_META)
        if meta.is_file():
            try:
                info = json.loads(meta.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise CtrSinkError(f"{meta}: not valid JSON; pre-train the encoder again") from None
            want = {"vocab": self.vocab.to_dict(), **{k: getattr(self.cfg.id_model, k) for k in SIZE_KEYS}}
            got = {"vocab": info.get("vocab"), **{k: info.get("id_model", {}).get(k) for k in SIZE_KEYS}}
            diff = [f"{k} {got[k]} (this model: {want[k]})" for k in want if got[k] != want[k]]
            if diff:
                raise CtrSinkError(
                    f"{file}: the encoder was pre-trained with a different {'; '.join(diff)}; pre-train it on "
                    "the same data with the same id_model sizes"
                )
        try:
            tensors = load_file(str(file))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise CtrSinkError(f"{file}: cannot read the encoder weights: {exc}") from None
        own = self.encoder.state_dict()
        problems = [f"missing {k}" for k in sorted(own.keys() - tensors.keys())]
        problems += [f"unexpected {k}" for k in sorted(tensors.keys() - own.keys())]
        problems += [
            f"{k} has shape {tuple(tensors[k].shape)}, this model needs {tuple(own[k].shape)}"
            for k in sorted(own.keys() & tensors.keys())
            if tensors[k].shape != own[k].shape
        ]
        if problems:
            raise CtrSinkError(
                f"{file}: does not fit this model ({'; '.join(problems[:4])}"
                f"{'; ...' if len(problems) > 4 else ''}); pre-train on the same data with the same id_model sizes"
            )
        self.encoder.load_state_dict(tensors, strict=True)

    def analytic_flops(self, length: int, candidates: int = 1, folded: bool = True) -> float:
        """Multiply-add FLOPs (2 per MAC) of scoring `candidates` candidates of one user with `length` behaviors.

        Counts the matmuls only (projections, attention scores and weighted sums, FFNs, the activation unit, the
        target-attention sum, the tower); embedding look-ups, norms, softmax, masks and element-wise ops are left
        out, as torch's FlopCounterMode does. Folded: the encoder, the untied K/V (kv=untied) and the querying
        transformer run once, the candidate stream, target attention and tower per candidate; unfolded: everything
        per candidate.
        """
        d, n, c = self.cfg.id_model.dim, length, candidates
        m = self.cfg.srp4ctr.queries
        f = FFN_MULT * d
        encoder = len(self.encoder.layers) * (4 * n * d * d + 2 * n * n * d + 2 * n * d * f)
        query = len(self.query) * (2 * m * d * d + 2 * n * d * d + 2 * m * n * d + 2 * m * d * f)
        untied_kv = 0 if self.shared_kv else len(self.cross) * 2 * n * d * d
        user = encoder + query + untied_kv
        stream = len(self.cross) * (2 * d * d + 2 * n * d + 2 * d * f)  # W_Q, W_O, scores, sums, FFN
        target = n * linear_macs(self.activation) + n * d
        per_candidate = stream + target + linear_macs(self.tower)
        macs = user + c * per_candidate if folded else c * (user + per_candidate)
        return float(2 * macs)
