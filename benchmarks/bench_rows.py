"""Cost of every comparison row against the CTR-Sink baseline, and how it grows with history length.

    python benchmarks/bench_rows.py --data DATA_DIR [--rows baseline,full,din,sparsectr_lite,srp4ctr_lite]
        [--lengths 10,25,50,100] [--batches 6] [--repeats 2] [--out FILE.json]

Per row and per history length (`num_behaviors` per history field; MovieLens has two fields, so 10,25,50,100 = 20,
50, 100 and 200 behaviors): training samples/s, inference samples/s on ordinary eval batches and on one request
(one user, 100 candidates: where folding rows compute the user side once), peak resident memory, parameters and
FLOPs per sample (`ctrsink.cost`). Ratios are against `baseline` at the same length, measured in the same run.
Text rows stop at the backbone's position limit (`--text-limit`, 512 = BERT/MiniLM): a length whose history field
needs more tokens is reported as such, with the token count it would need, and not measured.
Each measurement runs in its own child process (its own ru_maxrss), rounds are interleaved, the fastest is kept.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timing import time_train_and_infer

from ctrsink.ablate import variant_config
from ctrsink.config import load_config
from ctrsink.cost import model_cost, request_rows
from ctrsink.data import load_sample_set

DEFAULT_ROWS = "baseline,full,din,sparsectr_lite,srp4ctr_lite"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(cfg, items: pd.DataFrame, frame: pd.DataFrame, fields: list[str]):
    from ctrsink.run import assemble, assemble_ids

    if cfg.model != "ctrsink":
        model, batcher, _ = assemble_ids(cfg, items, fields)
        return model, batcher
    from ctrsink.backbones import load_backbone
    from ctrsink.textprep import tokenizer_corpus

    backbone, tok, _ = load_backbone(cfg, tokenizer_corpus(items, frame, fields, cfg))
    model, batcher, _ = assemble(cfg, backbone, tok, items, fields)
    return model, batcher


def longest(frame: pd.DataFrame, fields: list[str], n: int) -> pd.DataFrame:
    """The n samples with the longest histories, so every length is measured at (close to) full histories."""
    total = sum(frame[f"{f}_item_idx"].map(len) for f in fields)
    return frame.iloc[np.argsort(-total.to_numpy(), kind="stable")[:n]].reset_index(drop=True)


def text_tokens(batcher, rows: list[dict]) -> tuple[int, int]:
    """(longest history-field token count, most behaviors one field dropped to fit the position limit)."""
    tokens = dropped = 0
    for r in rows:
        enc = batcher.encode(r)["enc"]
        for f in batcher.renderer.history_fields:
            tokens, dropped = max(tokens, len(enc[f].input_ids)), max(dropped, enc[f].truncated)
    return tokens, dropped


def measure(args: argparse.Namespace) -> dict:
    splits, items, manifest = load_sample_set(args.data)
    items, fields = items.to_pandas(), list(manifest["history_fields"])
    base = load_config(
        None,
        [
            f"num_behaviors={args.length}",
            f"max_user_tokens={args.text_limit}",
            "srp4ctr.init=random",
            *args.set,
        ],
    )
    cfg = variant_config(base, args.row)
    torch.manual_seed(cfg.seed)
    bs = cfg.batch_size
    frame = longest(splits["train"].to_pandas(), fields, bs * args.batches)
    model, batcher = build(cfg, items, frame, fields)
    rows = frame.to_dict("records")
    out: dict = {"row": args.row, "length": args.length, "behaviors": args.length * len(fields)}
    if cfg.model == "ctrsink":
        tokens, dropped = text_tokens(batcher, rows[:bs])
        out.update(tokens_per_field=tokens, behaviors_dropped=dropped, over_limit=dropped > 0)
    batches = [batcher(rows[i * bs : (i + 1) * bs]) for i in range(args.batches)]
    out.update(time_train_and_infer(model, batches, cfg.stage_of_epoch(0)))  # leaves the model in eval mode
    with torch.no_grad():
        request = batcher(request_rows(frame, len(items)))
        model(request["fields"])  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            model(request["fields"])
        out["request_samples_per_s"] = 3 * len(request["labels"]) / (time.perf_counter() - start)
    cost = model_cost(model, batcher, frame)
    out.update(
        parameters=cost["parameters"],
        flops_b1=cost["flops_per_sample_b1"],
        flops_b100=cost["flops_per_sample_b100"],
        peak_rss_mb=_rss_mb(),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", default=DEFAULT_ROWS)
    ap.add_argument("--lengths", default="10,25,50,100")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--text-limit", type=int, default=512, dest="text_limit")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        print(json.dumps(measure(args)))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = args.rows.split(",")
    jobs = [(r, n) for n in lengths for r in rows]
    results: dict[tuple[str, int], list[dict]] = {j: [] for j in jobs}
    skipped: dict[str, int] = {}  # text row -> first length over the position limit
    for _ in range(args.repeats):
        for row, n in jobs:
            if row in skipped and n >= skipped[row]:
                continue
            cmd = [sys.executable, __file__, "--data", args.data, "--row", row, "--length", str(n)]
            cmd += ["--batches", str(args.batches), "--text-limit", str(args.text_limit)]
            cmd += sum((["--set", s] for s in args.set), [])
            r = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            )
            if r.get("over_limit"):  # measured once to show what it reads; longer lengths are not run
                skipped[row] = n + 1
            results[(row, n)].append(r)
    best = []
    for rs in results.values():
        if not rs:
            continue
        b = dict(rs[0])
        for key in ("train_samples_per_s", "infer_samples_per_s", "request_samples_per_s"):
            b[key] = max(r[key] for r in rs)
        b["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
        best.append(b)
    frame = pd.DataFrame(best)
    lines = [
        "| row | behaviors | tokens/field | params | MFLOPs/sample b1 | b100 | train samples/s | × baseline | "
        "infer samples/s | × baseline | request samples/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in frame.iterrows():
        base = frame[(frame["row"] == "baseline") & (frame["length"] == r["length"])]

        def ratio(k: str, r=r, base=base) -> str:
            return f"{r[k] / base.iloc[0][k]:.2f}" if len(base) else "n/a"

        tokens = r.get("tokens_per_field")
        over = r.get("over_limit") is True
        tokens = (
            "—"
            if pd.isna(tokens)
            else f"{int(tokens)}" + (f" (drops {int(r['behaviors_dropped'])})" if over else "")
        )
        lines.append(
            f"| {r['row']} | {r['behaviors']} | {tokens} | {r['parameters']:,.0f} | {r['flops_b1'] / 1e6:,.2f} | "
            f"{r['flops_b100'] / 1e6:,.2f} | {r['train_samples_per_s']:.0f} | {ratio('train_samples_per_s')} | "
            f"{r['infer_samples_per_s']:.0f} | {ratio('infer_samples_per_s')} | {r['request_samples_per_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "results": best, "table": lines}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
