"""DIN (Zhou et al., KDD 2018): attention of the candidate over the ID history, the CTR practitioner's reference point.

Behavior = item + category + feedback + time-to-target embeddings; candidate = item + category. The activation unit
scores each behavior from [e, v, e - v, e * v]; as in the paper the weights are not softmax-normalised (they keep
the intensity of interest); PReLU stands in for Dice.
"""

from __future__ import annotations

import torch

from ctrsink.config import Config
from ctrsink.idmodels.common import BehaviorEmbedding, HookPoint, IDModel, IDVocab, mlp


class DIN(IDModel):
    def __init__(self, cfg: Config, vocab: IDVocab) -> None:
        super().__init__(cfg, vocab)
        d = cfg.id_model.dim
        self.embed = BehaviorEmbedding(vocab, d, time_key="hist_gap")
        self.activation = mlp([4 * d, 80, 40, 1])
        self.tower = mlp([3 * d, 200, 80, 1], dropout=cfg.id_model.dropout)
        self.hook_weights = HookPoint("din.attn.weights")  # (B, L), 0 at padding

    def forward(self, fields: dict[str, torch.Tensor], pooling: str = "all_tokens") -> torch.Tensor:
        hist = self.embed.history(fields)  # (B, L, d)
        cand = self.embed.candidate(fields)  # (B, d)
        mask = fields["hist_mask"]
        v = cand.unsqueeze(1).expand_as(hist)
        scores = self.activation(torch.cat([hist, v, hist - v, hist * v], dim=-1)).squeeze(-1)
        weights = self.hook_weights(scores.masked_fill(~mask, 0.0))
        interest = (weights.unsqueeze(-1) * hist).sum(1)
        m = mask.unsqueeze(-1).to(hist.dtype)
        profile = (hist * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.tower(torch.cat([interest, cand, profile], dim=-1)).squeeze(-1)
