"""What every ID row shares: the vocabulary sizes, the behavior embedding, named hook points, folding, the tower.

Batch contract (built by `ctrsink.idview.IDBatcher`; B samples, L behaviors, left-padded, oldest first):

    hist_item, hist_cat, hist_feedback          (B, L) long, 0 = padding (item = item_idx + 1; feedback 1 low, 2 high)
    hist_gap, hist_prev_gap                     (B, L) long, log-bucketed time to the target / to the previous behavior
    hist_hour, hist_weekday                     (B, L) long, 1-24 / 1-7 (UTC), 0 = padding
    hist_ts                                     (B, L) long seconds (0 at padding)
    hist_mask                                   (B, L) bool
    target_item, target_cat, target_hour, target_weekday, target_ts      (B,) long
    user_code                                   (B,) long
    group                                       (B,) long: rows with the same user and the same history share a group
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctrsink.config import Config

HIST_KEYS = (
    "hist_item",
    "hist_cat",
    "hist_feedback",
    "hist_gap",
    "hist_prev_gap",
    "hist_hour",
    "hist_weekday",
    "hist_ts",
    "hist_mask",
)


@dataclass(frozen=True)
class IDVocab:
    """Embedding table sizes (index 0 is padding everywhere)."""

    items: int  # number of items + 1
    cats: int  # number of categories + 1
    time_buckets: int  # buckets + 1
    feedback: int = 3
    hours: int = 25
    weekdays: int = 8

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class HookPoint(nn.Module):
    """Identity module marking a tensor that sinkviz can capture (TransformerLens style).

    Attention modules call `self.hook_x(probs)`; `IDModel.hook_points()` names every hook point by a stable name
    (`layer.{l}.branch.global.probs`), and `sinkviz.hooks.capture` attaches forward hooks to them.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class BehaviorEmbedding(nn.Module):
    """Behavior token = item + category + feedback + time-to-target bucket embeddings; candidate = item + category.

    Item and category tables are shared by history and candidate (one ID space).
    """

    def __init__(self, vocab: IDVocab, dim: int, time_key: str = "hist_gap") -> None:
        super().__init__()
        self.item = nn.Embedding(vocab.items, dim, padding_idx=0)
        self.cat = nn.Embedding(vocab.cats, dim, padding_idx=0)
        self.feedback = nn.Embedding(vocab.feedback, dim, padding_idx=0)
        self.time = nn.Embedding(vocab.time_buckets, dim, padding_idx=0)
        self.time_key = time_key
        for table in (self.item, self.cat, self.feedback, self.time):
            nn.init.normal_(table.weight, std=0.02)
            with torch.no_grad():
                table.weight[0].zero_()

    def history(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        return (
            self.item(f["hist_item"])
            + self.cat(f["hist_cat"])
            + self.feedback(f["hist_feedback"])
            + self.time(f[self.time_key])
        )

    def candidate(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item(f["target_item"]) + self.cat(f["target_cat"])


def mlp(dims: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with PReLU between them, ending in a linear layer (no activation on the output)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.PReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def fold_groups(f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each group (G,), group index of each row (B,)): rows sharing a user and a history fold."""
    _, inverse = torch.unique(f["group"], return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if len(inverse) else 0,), len(inverse), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(inverse)), reduce="amin")
    return first, inverse


class IDModel(nn.Module):
    """Base of the ID rows: `forward(fields, pooling) -> logits (B,)`, same call as `CTRModel` (pooling ignored)."""

    folds = False  # True when the user side is computed once per group (folded inference)

    def __init__(self, cfg: Config, vocab: IDVocab) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.current_field: str | None = None  # sinkviz reads it; ID rows have one "history" stream

    def hook_points(self) -> dict[str, HookPoint]:
        return {m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Pre-trained parts, trained with `lr` (SRP4CTR-lite's encoder); none by default."""
        return []

    def new_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter, trained with `head_lr` (an ID row learns from scratch)."""
        pretrained = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in pretrained]
