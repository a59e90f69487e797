"""`ctrsink` subcommands. Only argument parsing lives here; a CtrSinkError becomes one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _prepare(args: argparse.Namespace) -> None:
    from ctrsink.data import prepare
    from ctrsink.errors import CtrSinkError

    options = {
        k: v
        for k, v in {
            "max_history": args.max_history,
            "history_mode": args.history_mode,
            "min_history": args.min_history,
            "split_rule": args.split_rule,
        }.items()
        if v is not None
    }
    if args.label_threshold is not None:  # each source names its threshold after what it thresholds
        key = {"movielens": "rating_threshold", "kuairec": "watch_ratio_threshold"}.get(
            args.source, "label_threshold"
        )
        options[key] = args.label_threshold
    if args.split_fractions:
        try:
            options["split_fractions"] = tuple(float(x) for x in args.split_fractions.split(","))
        except ValueError:
            raise CtrSinkError(
                f"option '--split-fractions': expected three numbers, got {args.split_fractions!r}"
            ) from None
    if args.columns:
        options["columns"] = dict(pair.split("=", 1) for pair in args.columns)
    manifest = prepare(args.source, args.path, args.out, **options)
    print(
        json.dumps(
            {k: manifest[k] for k in ("source", "sizes", "positive_rate", "label_rule", "hash")}, indent=1
        )
    )


def _train(args: argparse.Namespace) -> None:
    from ctrsink.config import load_config
    from ctrsink.errors import CtrSinkError
    from ctrsink.train import train

    cfg = load_config(args.config, args.set)
    if args.dry_run:  # a stand-in model on CPU; --out is never written
        from ctrsink.dryrun import dry_run

        return dry_run(cfg, args.data)
    for option in ("data", "out"):
        if getattr(args, option) is None:
            raise CtrSinkError(f"option '--{option}' is required (except with --dry-run)")
    final = train(args.data, cfg, args.out, overwrite=args.overwrite)
    print(
        json.dumps({"run": str(args.out), "best_epoch": final["best_epoch"], "test": final["test"]}, indent=1)
    )


def _pretrain(args: argparse.Namespace) -> None:
    from ctrsink.config import load_config
    from ctrsink.pretrain import pretrain

    cfg = load_config(args.config, args.set)
    record = pretrain(args.data, cfg, args.out, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "encoder": str(args.out),
                "sequences": record["sequences"],
                "train_samples_used": record["train_samples_used"],
                "last_epoch": record["losses"][-1],
            },
            indent=1,
        )
    )


def _evaluate(args: argparse.Namespace) -> None:
    from ctrsink.predict import evaluate

    print(json.dumps(evaluate(args.run, args.data, args.split, args.pooling), indent=1))


def _predict(args: argparse.Namespace) -> None:
    from ctrsink.atomic import atomic_write_text
    from ctrsink.predict import predict

    scores = predict(args.run, args.data, args.split, args.pooling)
    atomic_write_text(Path(args.out), scores.to_csv(index=False))
    print(f"wrote {len(scores)} scores to {args.out}")


def _ablate(args: argparse.Namespace) -> None:
    from ctrsink.ablate import DEFAULT_VARIANTS, ablate
    from ctrsink.config import load_config
    from ctrsink.errors import CtrSinkError

    base = load_config(args.config, args.set)
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else DEFAULT_VARIANTS
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise CtrSinkError(
            f"option '--seeds': expected integers separated by commas, got {args.seeds!r}"
        ) from None
    ablate(args.data, base, variants, seeds, args.out)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))


def _summarize(args: argparse.Namespace) -> None:
    from ctrsink.ablate import summarize_dir

    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    print(summarize_dir(args.ablation, variants, against=args.against))


def _rank(args: argparse.Namespace) -> None:
    from ctrsink.rank import rank_file

    n = rank_file(args.run, args.requests, args.out, checkpoint=args.checkpoint)
    print(f"wrote {n} rankings to {args.out}")


def _serve(args: argparse.Namespace) -> None:
    from ctrsink.serve import serve

    serve(args.run, args.host, args.port, checkpoint=args.checkpoint)


def _demo(args: argparse.Namespace) -> None:
    from ctrsink.pipeline import run_demo

    run_demo(args.out, args.set, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctrsink", description="CTR prediction with language models and attention sinks"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="behavior log -> train/valid/test samples (Parquet) + manifest")
    s.add_argument(
        "--source",
        required=True,
        choices=["movielens", "kuairec", "csv", "reference"],
        help="reference: the CTR-Sink reference code's train/valid/test sample files, splits kept",
    )
    s.add_argument("--path", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--max-history", type=int, dest="max_history")
    s.add_argument("--min-history", type=int, dest="min_history")
    s.add_argument("--history-mode", choices=["split", "single"], dest="history_mode")
    s.add_argument(
        "--label-threshold",
        type=float,
        dest="label_threshold",
        help="rating (MovieLens, csv) or watch_ratio (KuaiRec) at or above which a label is 1",
    )
    s.add_argument(
        "--split-fractions",
        dest="split_fractions",
        metavar="TRAIN,VALID,TEST",
        help="time-ordered split fractions, default 0.8,0.1,0.1",
    )
    s.add_argument(
        "--split-rule",
        dest="split_rule",
        choices=["position", "timestamp"],
        help="position (default): cut at rounded sample positions; timestamp: cut by time with floor, "
        "samples sharing the boundary time go to the later split (the reference's rule)",
    )
    s.add_argument(
        "--column",
        action="append",
        dest="columns",
        metavar="CANONICAL=FILE_COLUMN",
        help="csv and reference sources: map a canonical column to the file's column name",
    )
    s.set_defaults(fn=_prepare)

    s = sub.add_parser("train", help="train a model; resumes an interrupted run in the same --out")
    s.add_argument("--data", help="sample directory (`ctrsink prepare`); optional with --dry-run")
    s.add_argument("--config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--out")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument(
        "--dry-run",
        action="store_true",
        dest="dry_run",
        help="check the config on CPU with a tiny stand-in of its backbone: build, first batches, one step",
    )
    s.set_defaults(fn=_train)

    s = sub.add_parser(
        "pretrain",
        help="pre-train the SRP4CTR-lite encoder on the training split (use with srp4ctr.encoder=DIR)",
    )
    s.add_argument("--data", required=True)
    s.add_argument("--config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_pretrain)

    s = sub.add_parser("ablate", help="train variants x seeds on the same data; tidy table + summary")
    s.add_argument("--data", required=True)
    s.add_argument("--config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--variants", help="comma-separated, e.g. baseline,sink,full (default: the core grid)")
    s.add_argument("--seeds", default="1,2,3")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_ablate)

    s = sub.add_parser(
        "summarize", help="the Markdown summary of an ablation folder, optionally some variants"
    )
    s.add_argument("--ablation", required=True, help="a folder written by `ctrsink ablate`")
    s.add_argument("--variants", help="comma-separated subset, in this order (default: all)")
    s.add_argument(
        "--against", default="baseline", help="the variant every Δ is taken against, e.g. a control"
    )
    s.set_defaults(fn=_summarize)

    s = sub.add_parser(
        "demo", help="the main job on the bundled sample data: prepare, fine-tune MiniLM, evaluate"
    )
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--quick", action="store_true", help="the same steps on a few dozen samples (tests)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=_demo)

    for name, fn, help_ in (
        ("evaluate", _evaluate, "metrics of a run on a split as JSON"),
        ("predict", _predict, "one score per sample as CSV"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--run", required=True)
        s.add_argument("--data", help="sample directory (default: the one the run was trained on)")
        s.add_argument("--split", default="test")
        pooling_help = "default: the run's eval_pooling"
        s.add_argument("--pooling", default=None, choices=["all_tokens", "sink_only"], help=pooling_help)
        if name == "predict":
            s.add_argument("--out", required=True)
        s.set_defaults(fn=fn)

    s = sub.add_parser("rank", help="rank candidate items per request (JSONL in, JSONL out, best first)")
    s.add_argument("--run", required=True)
    s.add_argument("--requests", required=True, help="JSONL, one request per line (format: ctrsink.rank)")
    s.add_argument("--out", required=True)
    s.add_argument("--checkpoint", default="best")
    s.set_defaults(fn=_rank)

    s = sub.add_parser("serve", help="HTTP scoring service: POST /rank, GET /health")
    s.add_argument("--run", required=True)
    s.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--checkpoint", default="best")
    s.set_defaults(fn=_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    from ctrsink.errors import CtrSinkError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        args.fn(args)
    except CtrSinkError as exc:
        print(f"ctrsink: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
