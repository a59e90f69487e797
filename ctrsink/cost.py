"""What a model costs: parameters and FLOPs per sample, counted from the operators a real forward runs.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, from operator shapes: analytic, not
timed) on one validation row with the longest history: at batch 1, and at batch 100 = one user's request with 100
candidates, where a folding row (SparseCTR-lite, SRP4CTR-lite) computes the user side once. Rows that know their
own sparse cost (`analytic_flops`) report it beside the dense count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

REQUEST_SIZE = 100
COST_VERSION = 2  # 2: attention matmuls counted under eager attention (the CPU sdpa kernel is not counted)


def count_flops(model: torch.nn.Module, batch: dict[str, Any]) -> int:
    """FLOPs of one eval-mode forward of a collated batch.

    A text backbone is switched to eager attention while counting: FlopCounterMode has no formula for the CPU
    sdpa kernel and would leave out QK^T and AV (both paths compute the same logits).
    """
    was_training = model.training
    hf = getattr(getattr(model, "backbone", None), "model", None)
    previous = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    model.eval()
    try:
        if previous not in (None, "eager"):
            hf.set_attn_implementation("eager")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(batch["fields"], pooling="all_tokens")
    finally:
        if previous not in (None, "eager"):
            hf.set_attn_implementation(previous)
        model.train(was_training)
    return int(counter.get_total_flops())


def request_rows(frame: pd.DataFrame, n_items: int, size: int = REQUEST_SIZE) -> list[dict[str, Any]]:
    """`size` candidates for the row with the longest history: same user, same history, different items."""
    hist_cols = [c for c in frame.columns if c.endswith("_item_idx")]
    lengths = sum(frame[c].map(len) for c in hist_cols) if hist_cols else pd.Series(np.zeros(len(frame)))
    row = frame.iloc[int(np.argmax(lengths.to_numpy()))].to_dict()
    return [{**row, "item_idx": i % n_items, "sample_id": i} for i in range(size)]


def model_cost(model: torch.nn.Module, batcher: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """Parameters, FLOPs per sample at batch 1 and at batch 100 (one request), and the history length used."""
    n_items = (
        int(getattr(getattr(batcher, "vocab", None), "items", 0) - 1) or int(frame["item_idx"].max()) + 1
    )
    rows = request_rows(frame, n_items)
    single = batcher(rows[:1])
    b1 = count_flops(model, single)
    folds = bool(getattr(model, "folds", False))
    # a row without folding scores each candidate alone, so its per-sample cost at batch 100 is its batch-1 cost
    b100 = count_flops(model, batcher(rows)) / len(rows) if folds else float(b1)
    fields = single["fields"]
    history = int(fields["hist_mask"].sum()) if "hist_mask" in fields else None
    out: dict[str, Any] = {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "flops_per_sample_b1": b1,
        "flops_per_sample_b100": b100,
        "folded": folds,
        "history_behaviors": history,
        "method": "torch FlopCounterMode (eager attention), 2 FLOPs per multiply-add, longest valid history",
        "version": COST_VERSION,
    }
    # the row's own count, e.g. what a sparse kernel would compute
    if hasattr(model, "analytic_flops") and history:
        out["analytic_flops_per_sample_b1"] = model.analytic_flops(history, 1)
        out["analytic_flops_per_sample_b100"] = _per_sample(model.analytic_flops(history, REQUEST_SIZE))
    return out


def _per_sample(total: float | dict[str, float]) -> float | dict[str, float]:
    if isinstance(total, dict):
        return {k: v / REQUEST_SIZE for k, v in total.items()}
    return total / REQUEST_SIZE
