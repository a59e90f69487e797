"""The timed loop both benchmarks share: one untimed warm-up step, then training steps, then inference passes."""

from __future__ import annotations

import time

import torch


def time_train_and_infer(model: torch.nn.Module, batches: list[dict], pooling: str) -> dict[str, float]:
    """Samples/s of AdamW training steps and of no-grad forwards over the same collated batches."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = sum(len(b["labels"]) for b in batches)
    model.train()
    model(batches[0]["fields"], pooling=pooling).sum().backward()  # warm-up step, not timed
    opt.zero_grad()
    start = time.perf_counter()
    for b in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(b["fields"], pooling=pooling), b["labels"]
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        for b in batches:
            model(b["fields"])
        infer_s = time.perf_counter() - start
    return {"train_samples_per_s": n / train_s, "infer_samples_per_s": n / infer_s}
