"""Cost of each inference-time study (interventions, head grid, rollout, head roles, explanations, deletion
curves) relative to plain inference of the same run on the same samples, all timed in one process so the
ratios share the machine's state. Plain inference is `score_rows` (sdpa, the run's pooling), best of
`--repeats`; each study runs once after it (they take many passes, so one run is a long average). A
training-step reference comes from `benchmarks/timing.py` on a copy of the model (the run itself is never
changed).

    python benchmarks/bench_analyses.py --run RUN_DIR [--samples 64] [--batch-size 16] [--threads 1] [--out
    FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py next to this file

from timing import time_train_and_infer  # noqa: E402

from ctrsink.run import load_run, score_rows  # noqa: E402
from sinkviz.faithfulness import deletion_study, explanations  # noqa: E402
from sinkviz.heads import head_mass_study  # noqa: E402
from sinkviz.interventions import intervene_study  # noqa: E402
from sinkviz.rollout import rollout_study  # noqa: E402
from sinkviz.studies import open_study  # noqa: E402


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-steps", type=int, default=16, help="integrated gradients steps")
    ap.add_argument("--max-k", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_run(args.run)
    study = open_study(bundle, "test", args.samples, batch_size=args.batch_size)
    score_rows(bundle, study.rows[: args.batch_size], batch_size=args.batch_size)  # warm-up, not timed
    plain = min(
        timed(lambda: score_rows(bundle, study.rows, batch_size=args.batch_size))[0]
        for _ in range(args.repeats)
    )
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    seconds["interventions_without_heads"], t = timed(
        lambda: intervene_study(study, heads=False, n_boot=1000)
    )
    counts["interventions_without_heads"] = len(t["interventions"])
    seconds["head_grid"], t = timed(lambda: intervene_study(study, kinds=["head_mean"], n_boot=1000))
    counts["head_grid"] = len(t["interventions"])
    seconds["rollout"], roll = timed(lambda: rollout_study(study))
    seconds["head_roles"], _ = timed(lambda: head_mass_study(study))
    seconds["explanations_ig_occlusion"], expl = timed(
        lambda: explanations(study, roll, n_steps=args.n_steps)
    )
    seconds["deletion_curves"], _ = timed(lambda: deletion_study(study, expl, max_k=args.max_k))
    batches = [study.batcher(rows) for rows in study.chunks()]
    train = time_train_and_infer(copy.deepcopy(study.model), batches, study.pooling)
    n = len(study.rows)
    report = {
        "run": args.run,
        "note": "plain inference renders its batches; studies reuse theirs (rendering counts as inference)",
        "backbone": study.model.cfg.backbone,
        "use_sink": bool(study.model.cfg.use_sink),
        "layers": study.meta["layers"],
        "heads": study.meta["heads"],
        "samples": n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "plain_seconds": plain,
        "plain_samples_per_s": n / plain,
        "train_samples_per_s": train["train_samples_per_s"],
        "seconds": seconds,
        "ratio_to_plain_inference": {k: v / plain for k, v in seconds.items()},
        "per_intervention_ratio": {k: seconds[k] / plain / max(c, 1) for k, c in counts.items()},
        "counts": counts,
        "settings": {"n_boot": 1000, "ig_steps": args.n_steps, "max_k": args.max_k, "random_draws": 3},
    }
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
