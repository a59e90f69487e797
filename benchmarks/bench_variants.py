"""Training and inference throughput (samples/s) and peak memory of each CTR-Sink variant against `baseline`, and
the `sdpa` attention path against `eager`, measured in one process on the same batches.

    python benchmarks/bench_variants.py --data DATA_DIR [--backbone scratch:bert-tiny] [--batches 6] [--out FILE.json]

Ratios are against `baseline` measured in the same run. Each measurement runs in its own child process (so its peak
resident memory, ru_maxrss, is its own), measurements are interleaved over `--repeats` rounds so drifting machine load
hits every variant alike, and the fastest round of each is kept.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from timing import time_train_and_infer

from ctrsink.ablate import VARIANTS, variant_config
from ctrsink.backbones import load_backbone
from ctrsink.config import load_config
from ctrsink.data import load_sample_set
from ctrsink.run import assemble
from ctrsink.textprep import tokenizer_corpus

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
    return {**time_train_and_infer(model, batches, cfg.stage_of_epoch(0)), "peak_rss_mb": _rss_mb()}


def _child(args: argparse.Namespace) -> None:
    splits, items, manifest = load_sample_set(args.data)
    base = load_config(None, [f"backbone={args.backbone}", *args.set])
    cfg = variant_config(base, args.variant)
    r = measure(
        cfg,
        splits["train"].to_pandas(),
        items.to_pandas(),
        manifest["history_fields"],
        args.batches,
        args.attn,
    )
    print(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", default="scratch:bert-tiny")
    ap.add_argument("--variants", default=",".join(DEFAULT))
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--attn", default="sdpa", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        _child(args)
        return
    jobs = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name}")
        jobs += [(name, attn) for attn in (("sdpa", "eager") if name in ("baseline", "full") else ("sdpa",))]
    runs: dict[tuple[str, str], list[dict]] = {job: [] for job in jobs}
    for _ in range(args.repeats):
        for name, attn in jobs:
            cmd = [
                sys.executable,
                __file__,
                "--data",
                args.data,
                "--backbone",
                args.backbone,
                "--batches",
                str(args.batches),
                "--variant",
                name,
                "--attn",
                attn,
                *sum((["--set", s] for s in args.set), []),
            ]
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            runs[(name, attn)].append(json.loads(out))
    results = []
    for (name, attn), rs in runs.items():
        results.append(
            {
                "variant": name,
                "attn": attn,
                "train_samples_per_s": max(r["train_samples_per_s"] for r in rs),
                "infer_samples_per_s": max(r["infer_samples_per_s"] for r in rs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            }
        )
    base_row = next(r for r in results if r["variant"] == "baseline" and r["attn"] == "sdpa")
    lines = [
        "| variant | attention | train samples/s | × baseline | inference samples/s | × baseline | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['attn']} | {r['train_samples_per_s']:.1f} | "
            f"{r['train_samples_per_s'] / base_row['train_samples_per_s']:.2f} | "
            f"{r['infer_samples_per_s']:.1f} | {r['infer_samples_per_s'] / base_row['infer_samples_per_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "backbone": args.backbone,
                    "batches": args.batches,
                    "repeats": args.repeats,
                    "results": results,
                    "table": lines,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
