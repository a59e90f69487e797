"""Training and inference throughput (samples/s) and peak memory of each CTR-Sink variant against `baseline`, and
the `sdpa` attention path against `eager`, measured in one process on the same batches.

    python benchmarks/bench_variants.py --data DATA_DIR [--backbone scratch:bert-tiny] [--batches 6] [--out FILE.json]

Ratios are against `baseline` measured in the same run, so machine load cancels to first order. Peak memory is the
process's max resident set size growth while the variant runs (ru_maxrss), a coarse but honest CPU measure.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from ctrsink.ablate import VARIANTS, variant_config
from ctrsink.backbones import load_backbone
from ctrsink.config import load_config
from ctrsink.data import load_sample_set
from ctrsink.run import assemble
from ctrsink.train import tokenizer_corpus

DEFAULT = ["baseline", "sink", "sink+signal", "sink+signal+two_stage", "full", "cls_token", "random_signal"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(cfg, frames, items, fields, n_batches: int, attn: str) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    backbone, tok, _ = load_backbone(cfg, tokenizer_corpus(items, frames, fields, cfg))
    model, batcher, _ = assemble(cfg, backbone, tok, items, fields)
    model.backbone.set_attn_implementation(attn)
    rows = frames.to_dict("records")
    bs = cfg.batch_size
    batches = [batcher(rows[i * bs : (i + 1) * bs]) for i in range(n_batches)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pooling = cfg.stage_of_epoch(0)
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
    n = bs * n_batches
    return {"train_samples_per_s": n / train_s, "infer_samples_per_s": n / infer_s, "peak_rss_mb": _rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", default="scratch:bert-tiny")
    ap.add_argument("--variants", default=",".join(DEFAULT))
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits, items, manifest = load_sample_set(args.data)
    items = items.to_pandas()
    frames = splits["train"].to_pandas()
    fields = manifest["history_fields"]
    base = load_config(None, [f"backbone={args.backbone}", *args.set])
    results = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name}")
        cfg = variant_config(base, name)
        for attn in ("sdpa", "eager") if name in ("baseline", "full") else ("sdpa",):
            r = measure(cfg, frames, items, fields, args.batches, attn)
            results.append({"variant": name, "attn": attn, **r})
            print(json.dumps(results[-1]))
    base_row = next(r for r in results if r["variant"] == "baseline" and r["attn"] == "sdpa")
    print(
        "\n| variant | attention | train samples/s | × baseline | inference samples/s | × baseline | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['attn']} | {r['train_samples_per_s']:.1f} | "
            f"{r['train_samples_per_s'] / base_row['train_samples_per_s']:.2f} | {r['infer_samples_per_s']:.1f} | "
            f"{r['infer_samples_per_s'] / base_row['infer_samples_per_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "backbone": args.backbone,
                    "batches": args.batches,
                    "batch_size": base.batch_size,
                    "results": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
