"""SRP4CTR-lite: a compact PyTorch re-implementation from the published description of SRP4CTR (Han et al., CIKM 2024;
../shared/reference/related-models.md §2, §5). This is our reading of the paper's description, not the paper's
code, and its numbers are never the paper's results.

Two parts (the encoder and the attention block all three stacks share live in `ctrsink.idmodels.srp4ctr_encoder`):

    SRPEncoder (FG-BERT-lite)   a bidirectional pre-norm transformer over the behavior tokens of one history
                                (item + category + feedback + time-to-previous-behavior embeddings + a learned
                                position counted from the newest behavior), pre-trained with a cloze objective over
                                several fields (`pretrain_losses`; `ctrsink.pretrain` runs it on the training split)
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
from pathlib import Path

import torch
from torch import nn

from ctrsink.config import Config
from ctrsink.errors import CtrSinkError
from ctrsink.idmodels.common import HookPoint, IDModel, IDVocab, fold_groups, mlp
from ctrsink.idmodels.srp4ctr_encoder import (  # the encoder's names stay importable from the row's module
    ENCODER_KEYS,
    ENCODER_META,
    ENCODER_WEIGHTS,
    FFN_MULT,
    FIELDS,
    MAX_POSITIONS,
    PreNormBlock,
    SRPEncoder,
    masked_softmax,
)

__all__ = [
    "ENCODER_KEYS",
    "ENCODER_META",
    "ENCODER_WEIGHTS",
    "FIELDS",
    "MAX_POSITIONS",
    "CandidateBlock",
    "QueryLayer",
    "SRP4CTRLite",
    "SRPEncoder",
    "linear_macs",
]

SIZE_KEYS = ("dim", "layers", "heads")  # id_model sizes a pre-trained encoder must share with the model


def linear_macs(module: nn.Module) -> int:
    """Multiply-adds of one input vector through every nn.Linear of `module` (a sequential MLP or FFN)."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


class CandidateBlock(PreNormBlock):
    """One uni cross-attention block: the candidate reads layer l's behavior K/V, never the other way round."""

    def __init__(self, d: int, heads: int, dropout: float, layer: int, own_kv: bool) -> None:
        super().__init__(d, heads, dropout, f"cross.layer.{layer}.attn.probs", own_kv=own_kv)

    def forward(self, c: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """c (B, 1, d); k, v (B, H, L, dh); mask (B, L)."""
        return self.residual(c, self.norm1(c), k, v, mask[:, None, None, :])


class QueryLayer(PreNormBlock):
    """Querying transformer layer: M query tokens cross-attend to the encoder output, then an FFN."""

    def __init__(self, d: int, heads: int, dropout: float, layer: int) -> None:
        super().__init__(d, heads, dropout, f"query.layer.{layer}.attn.probs")

    def forward(self, q: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k, v = self.attn.keys_values(out)
        return self.residual(q, self.norm1(q), k, v, mask[:, None, None, :])


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
