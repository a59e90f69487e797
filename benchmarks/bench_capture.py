"""Capture cost: attention capture with every sinkviz reduction against plain (sdpa) inference of the same run on
the same batches. Each pass runs in its own child process, so its peak resident memory (ru_maxrss) is its own;
passes alternate (plain, capture, plain, ...) so drifting machine load hits both alike. Reports samples/s, the
ratio, and peak RSS.

    python benchmarks/bench_capture.py --run RUN_DIR [--samples 256] [--batch-size 32] [--out FILE.json]

Target (issue 4): capture with all reductions costs at most twice plain inference.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from ctrsink.predict import _split_frame
from ctrsink.run import load_run, score_rows
from sinkviz.capture import analyse_rows, choose_samples


def _one_pass(run: str, mode: str, samples: int, batch_size: int) -> dict[str, float]:
    bundle = load_run(run)
    rows = choose_samples(_split_frame(bundle.info["data_dir"], "test")[0], samples, 0).to_dict("records")
    score_rows(bundle, rows[:batch_size], batch_size=batch_size)  # warm-up, not timed
    start = time.perf_counter()
    if mode == "plain":
        score_rows(bundle, rows, batch_size=batch_size)
    else:
        analyse_rows(bundle, rows, batch_size, full_maps=[])
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "samples": len(rows),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=["plain", "capture"], help=argparse.SUPPRESS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_one_pass(args.run, args.child, args.samples, args.batch_size)))
        return
    results: dict[str, list[dict[str, float]]] = {"plain": [], "capture": []}
    for _ in range(args.repeats):
        for mode in results:
            cmd = [
                sys.executable,
                __file__,
                "--run",
                args.run,
                "--samples",
                str(args.samples),
                "--batch-size",
                str(args.batch_size),
                "--child",
                mode,
            ]
            out = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            results[mode].append(json.loads(out))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items()}
    n = best["plain"]["samples"]
    bundle_cfg = load_run(args.run).cfg
    report = {
        "run": args.run,
        "backbone": bundle_cfg.backbone,
        "use_sink": bundle_cfg.use_sink,
        "samples": n,
        "batch_size": args.batch_size,
        "plain_samples_per_s": n / best["plain"]["seconds"],
        "capture_samples_per_s": n / best["capture"]["seconds"],
        "capture_cost_ratio": best["capture"]["seconds"] / best["plain"]["seconds"],
        "plain_peak_rss_mb": best["plain"]["peak_rss_mb"],
        "capture_peak_rss_mb": best["capture"]["peak_rss_mb"],
    }
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
