"""Memory and step time of full fine-tuning against LoRA, with and without gradient checkpointing (MiniLM, CPU).

    python benchmarks/bench_finetune.py [--data DATA_DIR] [--steps 4] [--repeats 2] [--batch 16]
        [--behaviors 20] [--tokens 256] [--out FILE.json]

Four variants of the same CTR-Sink model (`bundled:minilm`, sinks with the time-gap signal and inter-sink on):
finetune full | lora, gradient_checkpointing off | on. Per variant, in its own child process (its own ru_maxrss):

  step s          median seconds of one AdamW training step (forward, backward, step) over `--steps` steps
  peak MB         resident memory high-water mark during the steps, above the resident size after the model is
                  built (measured; includes allocator slack)
  activations MB  bytes autograd keeps for backward in one forward pass (exact; what checkpointing removes)
  optimizer MB    AdamW state (two fp32 moments per trainable parameter; exact)

Rounds are interleaved, the fastest step time and the smallest peak of `--repeats` rounds are kept, one torch
thread. Ratios are against full fine-tuning without checkpointing, from the same run. Without `--data` the
bundled synthetic sample is prepared into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "full": ["finetune=full"],
    "full + checkpointing": ["finetune=full", "gradient_checkpointing=true"],
    "lora": ["finetune=lora"],
    "lora + checkpointing": ["finetune=lora", "gradient_checkpointing=true"],
}


def settings(args: argparse.Namespace, variant: str) -> list[str]:
    return [
        "backbone=bundled:minilm",
        "use_sink=true",
        "sink_signal=time_gap",
        "inter_sink=true",
        f"num_behaviors={args.behaviors}",
        f"max_user_tokens={args.tokens}",
        f"batch_size={args.batch}",
        f"train_samples={args.batch * (args.steps + 1)}",
        "lora.r=8",
        *VARIANTS[variant],
    ]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def activation_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Distinct storages autograd saves for backward in one forward pass, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(batch["fields"])
    logits.sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def child(args: argparse.Namespace) -> dict:
    """One variant: build, one untimed warm-up step, `steps` timed steps; -> measurements as JSON."""
    from ctrsink.config import load_config
    from ctrsink.run import family_of
    from ctrsink.sampling import load_samples

    torch.set_num_threads(1)
    cfg = load_config(None, settings(args, args.child))
    samples = load_samples(args.data, cfg)
    built = family_of(cfg).build(cfg, samples.items, samples.history_fields, samples.frames["train"])
    model = built.model.train()
    rows = samples.frames["train"].to_dict("records")
    batches = [built.batcher(rows[i : i + args.batch]) for i in range(0, len(rows), args.batch)]
    groups = [
        {"params": model.backbone_parameters(), "lr": cfg.lr},
        {"params": model.new_parameters(), "lr": cfg.head_lr},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    before = rss_mb()
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch["fields"]), batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step is the warm-up (and allocates the AdamW state)
            times.append(time.perf_counter() - start)
    peak = rss_mb() - before
    return {
        "step_s": statistics.median(times),
        "peak_mb": peak,
        "activations_mb": activation_bytes(model, batches[0]) / 2**20,
        "optimizer_mb": 2 * 4 * trainable / 2**20,
        "trainable": trainable,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--data", str(args.data)]
    cmd += ["--steps", str(args.steps), "--batch", str(args.batch)]
    cmd += ["--behaviors", str(args.behaviors), "--tokens", str(args.tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    ref = results["full"]
    lines = [
        "| variant | trainable params | step s | × full | peak MB | × full | activations MB | × full"
        " | optimizer MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['trainable'] / 1e6:.2f}M of {r['parameters'] / 1e6:.2f}M | {r['step_s']:.3f} "
            f"| {r['step_s'] / ref['step_s']:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / ref['peak_mb']:.2f} "
            f"| {r['activations_mb']:.1f} | {r['activations_mb'] / ref['activations_mb']:.2f} "
            f"| {r['optimizer_mb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--behaviors", type=int, default=20)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            from ctrsink.data import prepare

            args.data = Path(tmp) / "data"
            prepare("csv", REPO / "sample_data" / "synthetic", args.data)
        rounds = [{v: run_variant(args, v) for v in VARIANTS} for _ in range(args.repeats)]
    best = {
        v: {
            **rounds[0][v],
            "step_s": min(r[v]["step_s"] for r in rounds),
            "peak_mb": min(r[v]["peak_mb"] for r in rounds),
        }
        for v in VARIANTS
    }
    print(
        f"MiniLM (bundled), CPU, 1 thread; batch {args.batch}, {args.behaviors} behaviors per history field,"
        f" up to {args.tokens} tokens; best of {args.repeats} rounds"
    )
    print(table(best))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"settings": vars(args) | {"data": str(args.data)}, "results": best})
        )


if __name__ == "__main__":
    main()
