"""Ranking mode and the scoring service: one user's candidates ranked with the user encoded once, against scoring
every candidate as its own sample; and the service's requests/s and latency under concurrent clients.

    python benchmarks/bench_rank.py [--data DATA_DIR] [--backbone bundled:minilm] [--variant full]
        [--candidates 100] [--repeats 5] [--requests 48] [--clients 1,4,16] [--threads 2] [--out FILE.json]

Settings are the reference's (MiniLM, 20 behaviors per field, title-only text, 128 user / 32 item tokens, batch 32,
fp32). The run has fresh weights (`untrained_run`): speed does not depend on training. Without --data the bundled
sample log is prepared into a temporary folder. Request = the test sample with the longest history and
`--candidates` items. Measured:

    one by one      `score_rows` on the request's sample rows (one row per candidate, batches of 32: today's path)
    one at a time   the same at batch 1 (20 candidates timed, scaled to the request: it is slow)
    rank, cold      `Ranker.rank` with an empty item cache (history once per request, every item encoded)
    rank, warm      the same with every candidate's item fields cached (a catalogue in steady use)
    service         uvicorn on a free loopback port; each client thread sends requests of distinct users (100
                    candidates from a 500-item pool, cache warmed first) one after another; latency per request
                    measured at the client; requests/s = requests / wall time.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ctrsink.ablate import variant_config
from ctrsink.config import config_from_dict, config_to_yaml
from ctrsink.rank import Ranker, RankRequest
from ctrsink.run import family_of, score_rows

REFERENCE = dict(
    num_behaviors=20,
    behavior_text="title",
    max_user_tokens=128,
    max_item_tokens=32,
    batch_size=32,
    eval_batch_size=32,
)


def untrained_run(data_dir: Path, out: Path, cfg) -> Path:
    """A run directory as `ctrsink train` writes it (config, run.json, backbone, tokenizer, checkpoint), with the
    model as the family builds it: pre-trained backbone, fresh head."""
    from safetensors.torch import save_model

    from ctrsink.data import load_sample_set

    splits, items, manifest = load_sample_set(data_dir)
    fields = list(manifest["history_fields"])
    family = family_of(cfg)
    torch.manual_seed(cfg.seed)
    built = family.build(cfg, items.to_pandas(), fields, splits["train"].to_pandas())
    out.mkdir(parents=True, exist_ok=True)
    family.save(built, out)
    (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    record = {"data_dir": str(data_dir), "history_fields": fields, **built.record, "seed": cfg.seed}
    (out / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (out / "checkpoint" / "best").mkdir(parents=True, exist_ok=True)
    save_model(built.model, str(out / "checkpoint" / "best" / "model.safetensors"))
    return out


def stored_requests(ranker: Ranker, n: int, candidates: list[str]) -> list[RankRequest]:
    """Requests rebuilt from the n test samples with the longest histories (distinct users first)."""
    from ctrsink.data import load_sample_set

    frame = load_sample_set(ranker.bundle.info["data_dir"]).splits["test"].to_pandas()
    fields = ranker.history_fields
    frame["n"] = sum(frame[f"{f}_item_idx"].map(len) for f in fields)
    frame = frame.sort_values("n", ascending=False, kind="stable").drop_duplicates("user_id")
    out = []
    for row in frame.head(n).to_dict("records"):
        history = [
            {"item_id": ranker.item_ids[int(i)], "timestamp": int(t), "label": int(lab)}
            for f in fields
            for i, t, lab in zip(row[f"{f}_item_idx"], row[f"{f}_timestamp"], row[f"{f}_label"])
        ]
        out.append(
            RankRequest(
                user_id=str(row["user_id"]), at=int(row["timestamp"]), history=history, candidates=candidates
            )
        )
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one untimed warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_ranking(ranker: Ranker, req: RankRequest, repeats: int) -> dict[str, float]:
    rows = ranker.rows(req)
    bundle = ranker.bundle
    t_batched, want = timed(lambda: score_rows(bundle, rows), repeats)
    # batch 1 is slow: 20 candidates once, scaled to the request
    t_single, _ = timed(lambda: score_rows(bundle, rows[:20], batch_size=1), 1)
    t_single *= len(rows) / min(20, len(rows))

    def cold():
        ranker._cache.clear()
        return ranker.rank_many([req])[0]

    t_cold, got = timed(cold, repeats)
    t_warm, got_warm = timed(lambda: ranker.rank_many([req])[0], repeats)
    for g in (got, got_warm):  # the speed is only worth reporting if the scores are the same
        np.testing.assert_allclose(g.logits, want, rtol=1e-4, atol=1e-4)
    return {
        "one_by_one_s": t_batched,
        "one_at_a_time_s": t_single,
        "rank_cold_s": t_cold,
        "rank_warm_s": t_warm,
    }


def bench_service(ranker: Ranker, reqs: list[RankRequest], clients: list[int], total: int) -> list[dict]:
    import httpx
    import uvicorn

    from ctrsink.serve import create_app

    bodies = [r.model_dump() for r in reqs]
    ranker.rank_many(reqs[:1])  # warm the item cache: the catalogue is in steady use
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(ranker), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    out = []
    try:
        for c in clients:
            per_client = max(1, total // c)

            def client(worker: int, per_client: int = per_client) -> list[float]:
                lat = []
                with httpx.Client(base_url=url, timeout=120) as http:
                    http.get("/health")  # connect outside the timed requests
                    for k in range(per_client):
                        start = time.perf_counter()
                        answer = http.post("/rank", json=bodies[(worker * per_client + k) % len(bodies)])
                        lat.append(time.perf_counter() - start)
                        answer.raise_for_status()
                return lat

            start = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                lat = [x for part in pool.map(client, range(c)) for x in part]
            wall = time.perf_counter() - start
            out.append(
                {
                    "clients": c,
                    "requests": len(lat),
                    "requests_per_s": len(lat) / wall,
                    "p50_ms": 1000 * float(np.percentile(lat, 50)),
                    "p99_ms": 1000 * float(np.percentile(lat, 99)),
                }
            )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return out


def table(rank: dict[str, float], service: list[dict], n: int) -> str:
    lines = [
        f"| ranking {n} candidates, one user | seconds | vs one by one |",
        "| --- | ---: | ---: |",
    ]
    base = rank["one_by_one_s"]
    names = {
        "one_by_one_s": "one by one (each candidate a sample, batch 32)",
        "one_at_a_time_s": "one at a time (batch 1; 20 candidates timed, scaled)",
        "rank_cold_s": "Ranker, item cache empty",
        "rank_warm_s": "Ranker, items cached",
    }
    lines += [f"| {names[k]} | {v:.4f} | {base / v:.1f}x |" for k, v in rank.items()]
    lines += [
        "",
        "| service clients | requests | requests/s | p50 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {s['clients']} | {s['requests']} | {s['requests_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} |"
        for s in service
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, help="a prepared sample set (default: the bundled sample log)")
    ap.add_argument("--backbone", default="bundled:minilm")
    ap.add_argument("--variant", default="full", help="an ablation variant (ctrsink.ablate.VARIANTS)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--requests", type=int, default=48, help="service requests per concurrency level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from ctrsink.data import prepare
            from ctrsink.pipeline import SAMPLE_LOG

            data = Path(tmp) / "data"
            prepare("csv", SAMPLE_LOG, data)
        cfg = variant_config(config_from_dict({**REFERENCE, "backbone": args.backbone}), args.variant)
        ranker = Ranker.from_run(untrained_run(data, Path(tmp) / "run", cfg))
        rng = np.random.default_rng(0)
        pool = [ranker.item_ids[int(i)] for i in rng.choice(len(ranker.item_ids), size=500, replace=False)]
        req = stored_requests(ranker, 1, pool[: args.candidates])[0]
        rank = bench_ranking(ranker, req, args.repeats)
        service = []
        if not args.skip_service:
            reqs = stored_requests(ranker, 64, pool[: args.candidates])
            service = bench_service(ranker, reqs, [int(c) for c in args.clients.split(",")], args.requests)
    print(
        f"{args.backbone}, variant {args.variant}, {args.threads} threads, history {len(req.history)} behaviors,"
        f" reuse: {ranker.reuse_note or 'yes'}\n"
    )
    print(table(rank, service, args.candidates))
    if args.out:
        args.out.write_text(
            json.dumps({"ranking": rank, "service": service, "args": vars(args)}, default=str)
        )


if __name__ == "__main__":
    sys.exit(main())
