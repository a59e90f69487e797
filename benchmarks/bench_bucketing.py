"""Length bucketing (`length_bucketing`): training and evaluation samples/s with bucketed batches against plain ones.

    python benchmarks/bench_bucketing.py --data DATA_DIR [--backbone bundled:minilm] [--variant full]
        [--batches 48] [--threads 2] [--out FILE.json]

Settings are the reference's (MiniLM, 20 behaviors per field, title-only text, 128 user / 32 item tokens, batch 32,
fp32). Both arms see the same `--batches` x 32 training samples (a seeded subset) and the same evaluation samples:

    train, plain       the seeded permutation cut every 32 rows (what training does without bucketing)
    train, bucketed    the same permutation through `SampleDataset.bucketed` (sorted chunks of 50 batches)
    eval, plain        the stored order at eval batch 32
    eval, bucketed     longest first (`SampleDataset.sort_by_length`)

Batches are collated before timing (collation is the same work in both arms). Each arm has its own model copy and
AdamW from the same weights; arms alternate batch by batch, so load from other processes falls on both alike. Also
reported: padded tokens per real token in each arm, and the one-off cost of measuring every row's length.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctrsink.ablate import variant_config
from ctrsink.batches import SampleDataset
from ctrsink.config import Config, config_from_dict
from ctrsink.run import family_of
from ctrsink.sampling import load_samples

REFERENCE = dict(
    num_behaviors=20,
    behavior_text="title",
    max_user_tokens=128,
    max_item_tokens=32,
    batch_size=32,
    eval_batch_size=32,
)


def padding_ratio(ds: SampleDataset, order: np.ndarray, batch_size: int) -> float:
    """Tokens the model sees (every field padded to its batch's longest row) per real token."""
    seen = 0
    for start in range(0, len(order), batch_size):
        block = ds.lengths[order[start : start + batch_size]]
        seen += int(block.max(axis=0).sum()) * len(block)
    return seen / int(ds.lengths[order].sum())


def collate(ds: SampleDataset, batcher, order: np.ndarray, batch_size: int) -> list[dict]:
    return [
        batcher([ds.rows[int(i)] for i in order[s : s + batch_size]])
        for s in range(0, len(order), batch_size)
    ]


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict) -> float:
    start = time.perf_counter()
    logits = model(batch["fields"], pooling="all_tokens")
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"]).backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start


@torch.no_grad()
def eval_step(model: torch.nn.Module, batch: dict) -> float:
    start = time.perf_counter()
    model(batch["fields"], pooling="all_tokens")
    return time.perf_counter() - start


def interleaved(arms: dict[str, list[dict]], step) -> dict[str, float]:
    """Samples/s per arm; arms take turns batch by batch (one untimed warm-up step each first)."""
    seconds = dict.fromkeys(arms, 0.0)
    for name, batches in arms.items():
        step(name, batches[0])
    for i in range(max(len(b) for b in arms.values())):
        for name, batches in arms.items():
            if i < len(batches):
                seconds[name] += step(name, batches[i])
    return {name: sum(len(b["labels"]) for b in arms[name]) / seconds[name] for name in arms}


def bench(cfg: Config, data: Path, n_batches: int) -> dict:
    bs = cfg.batch_size
    samples = load_samples(data, config_from_dict({**cfg.to_dict(), "train_samples": n_batches * bs}))
    torch.manual_seed(cfg.seed)
    built = family_of(cfg).build(cfg, samples.items, samples.history_fields, samples.frames["train"])
    train_set = SampleDataset(samples.frames["train"], {})
    started = time.perf_counter()
    train_set.measure(built.batcher)
    measure_s = time.perf_counter() - started
    eval_set = SampleDataset(samples.frames["valid"].iloc[: n_batches * cfg.eval_batch_size], {})
    eval_set.measure(built.batcher)

    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(train_set))
    orders = {"plain": perm, "bucketed": train_set.bucketed(perm, bs, rng)}
    plain_eval = np.arange(len(eval_set))
    eval_set.sort_by_length()
    eval_orders = {"plain": plain_eval, "bucketed": eval_set.order}

    models = {name: copy.deepcopy(built.model) for name in orders}
    opts = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        for name, m in models.items()
    }
    for m in models.values():
        m.train()
    train = interleaved(
        {k: collate(train_set, built.batcher, o, bs) for k, o in orders.items()},
        lambda name, b: train_step(models[name], opts[name], b),
    )
    for m in models.values():
        m.eval()
    evaluation = interleaved(
        {k: collate(eval_set, built.batcher, o, cfg.eval_batch_size) for k, o in eval_orders.items()},
        lambda name, b: eval_step(models[name], b),
    )
    return {
        "train_samples_per_s": train,
        "eval_samples_per_s": evaluation,
        "train_ratio": train["bucketed"] / train["plain"],
        "eval_ratio": evaluation["bucketed"] / evaluation["plain"],
        "padded_per_real_token": {
            "train": {k: padding_ratio(train_set, o, bs) for k, o in orders.items()},
            "eval": {k: padding_ratio(eval_set, o, cfg.eval_batch_size) for k, o in eval_orders.items()},
        },
        "measure_seconds_per_1000_rows": 1000 * measure_s / len(train_set),
        "train_rows": len(train_set),
        "eval_rows": len(eval_set),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="a prepared sample set")
    ap.add_argument("--backbone", default="bundled:minilm")
    ap.add_argument("--variant", default="full", help="an ablation variant (ctrsink.ablate.VARIANTS)")
    ap.add_argument("--batches", type=int, default=48, help="batches per arm, training and evaluation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = variant_config(config_from_dict({**REFERENCE, "backbone": args.backbone}), args.variant)
    result = {
        "settings": {
            **REFERENCE,
            "backbone": args.backbone,
            "variant": args.variant,
            "threads": args.threads,
        },
        **bench(cfg, args.data, args.batches),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
