"""Attention rollout (Abnar & Zuidema, 2020) to each behavior, next to each layer's raw attention.

Per layer, A is the attention averaged over heads; the residual connection enters as A' = 0.5 A + 0.5 I, rows
normalised to sum to one, and the rollout up to layer l is R_l = A'_l A'_(l-1) ... A'_0. In the CTR model only
the lower, per-field layers see tokens (the upper ones see pooled field vectors), so the rollout runs through
the lower layers of each history field.

What the score reads of a field is its pooled vector: the mean over the pooled tokens (every real token, or
the sinks under `sink_only` pooling, as `CTRModel.encode_field`). So the attention "to behavior k" at layer l
is w^T M_l summed over behavior k's tokens, with w the pooling weights (summing to one) and M_l = A_l (raw) or
R_l (rollout). Behavior k's tokens are its content plus the sink and separator after it (`token_groups`, the
grouping the attributions use), so every explanation scores a behavior over the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctrsink.model import CTRModel
from ctrsink.run import ModelBundle
from ctrsink.text import ROLE_ID
from sinkviz.attribution import token_groups
from sinkviz.hooks import AttentionEvent, capture
from sinkviz.studies import Study, open_study, write_tables

COLUMNS = ("sample_id", "field", "layer", "behavior", "raw", "rollout")


def rollout(patterns: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the rollout up to it: (B, T, T) from (B, H, T, T) attention patterns in layer order."""
    out: list[torch.Tensor] = []
    current = None
    for pattern in patterns:
        a = pattern.double().mean(1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True)
        current = a if current is None else a @ current
        out.append(current)
    return out


def pool_weights(field: Mapping[str, torch.Tensor], pooling: str, is_history: bool) -> torch.Tensor:
    """(B, T) weights of the tokens the model pools, each row summing to one (as `CTRModel.encode_field`)."""
    valid = field["attention_mask"].bool()
    weights = valid
    if pooling == "sink_only" and is_history:
        weights = field["token_roles"] == ROLE_ID["sink"]
        empty = ~weights.any(1)  # no sinks (0 or 1 behavior): the model pools the first token
        weights = weights.clone()
        weights[empty, 0] = True
    w = weights.double()
    return w / w.sum(1, keepdim=True).clamp(min=1.0)


def behavior_groups(field: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) behavior of each token (content, the sink and separator after it), -1 elsewhere."""
    groups = token_groups(field["token_roles"], field["behavior_index"])
    return torch.where(field["attention_mask"].bool(), groups, torch.full_like(groups, -1))


def behavior_mass(matrix: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B, K): w^T M summed over each behavior's tokens; M (B, T, T) rows are queries. K = largest group +
    1."""
    k = int(groups.max()) + 1 if groups.numel() and int(groups.max()) >= 0 else 0
    if k == 0:
        return torch.zeros(matrix.shape[0], 0, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(groups.clamp(min=0), k).double() * (groups >= 0)[..., None].double()
    per_key = (weights.double()[:, None, :] @ matrix.double()).squeeze(1)  # (B, T): mass each key receives
    return (per_key[:, :, None] * onehot).sum(1)


def _present(groups: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K) behaviors that exist in each row."""
    if k == 0:
        return torch.zeros(groups.shape[0], 0, dtype=torch.bool)
    return torch.stack([(groups == j).any(1) for j in range(k)], dim=1)


def field_rows(
    field: str,
    tensors: Mapping[str, torch.Tensor],
    patterns: Sequence[torch.Tensor],
    sample_ids: Sequence[int],
    pooling: str,
) -> list[tuple]:
    """Table rows of one history field of one batch, from its lower layers' patterns (in layer order)."""
    weights = pool_weights(tensors, pooling, True)
    groups = behavior_groups(tensors)
    rolled = rollout(patterns)
    rows = []
    for layer, (pattern, r) in enumerate(zip(patterns, rolled)):
        raw = behavior_mass(pattern.double().mean(1), weights, groups)
        flow = behavior_mass(r, weights, groups)
        present = _present(groups, raw.shape[1])
        for b, k in present.nonzero().tolist():
            rows.append((int(sample_ids[b]), field, layer, k, float(raw[b, k]), float(flow[b, k])))
    return rows


def rollout_study(study: Study) -> pd.DataFrame:
    """Raw attention and rollout per (sample, history field, lower layer, behavior), from one captured
    pass."""
    model: CTRModel = study.model
    history = list(model.history_fields)
    seen: dict[tuple[str, int], torch.Tensor] = {}

    def keep(event: AttentionEvent) -> None:
        if event.field in history and event.layer < model.split_at:
            seen[(event.field, event.layer)] = event.pattern.float().cpu()

    rows: list[tuple] = []
    with torch.no_grad(), capture(model, callback=keep):
        for batch in study.batches():
            seen.clear()
            model(batch["fields"], pooling=study.pooling)
            sids = batch["sample_id"].tolist()
            for f in history:
                patterns = [seen[(f, i)] for i in range(model.split_at)]
                rows += field_rows(f, batch["fields"][f], patterns, sids, study.pooling)
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype({"sample_id": "int64", "layer": "int64"})


def attention_rollout(
    run_or_bundle: str | Path | ModelBundle,
    split: str = "test",
    samples: int = 256,
    out: str | Path | None = None,
    **options: Any,
) -> pd.DataFrame:
    """`rollout_study` on the seeded choice of `samples` rows of `split`; written to `out` when given.
    `options`: data_dir, seed, checkpoint, batch_size (as `open_study`)."""
    study = open_study(run_or_bundle, split, samples, **options)
    table = rollout_study(study)
    if out is not None:
        write_tables(out, "rollout", study, {"rollout": table})
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean raw attention and rollout per (field, layer, behavior) over samples."""
    return table.groupby(["field", "layer", "behavior"], as_index=False)[["raw", "rollout"]].agg(np.mean)
