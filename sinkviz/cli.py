"""`sinkviz` subcommands. A CtrSinkError becomes one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _capture(args: argparse.Namespace) -> None:
    from sinkviz.capture import capture_run
    from sinkviz.idrows import capture_id_run, run_model_name

    if run_model_name(args.run) not in (None, "ctrsink"):  # an ID row (DIN, SparseCTR-lite, SRP4CTR-lite)
        out = capture_id_run(
            args.run,
            args.out,
            args.split,
            args.samples,
            args.seed,
            data_dir=args.data,
            batch_size=args.batch_size,
        )
        print(f"wrote ID-row analysis to {out}")
        return
    if args.every_epoch:
        from ctrsink.errors import CtrSinkError
        from ctrsink.run import epoch_checkpoints

        kept = epoch_checkpoints(args.run)
        if not kept:
            raise CtrSinkError(
                f"{args.run} kept no per-epoch checkpoints; train it with --set keep_epoch_checkpoints=true"
            )
        targets = [(name, Path(args.out) / name) for _, name in kept]  # OUT/epoch0, OUT/epoch1, ...
    else:
        targets = [(args.checkpoint, Path(args.out))]
    for checkpoint, out_dir in targets:
        out = capture_run(
            args.run,
            args.data,
            args.split,
            args.samples,
            out_dir,
            batch_size=args.batch_size,
            full_maps=args.full_maps,
            seed=args.seed,
            checkpoint=checkpoint,
        )
        print(f"wrote analysis to {out}")


def _attribute(args: argparse.Namespace) -> None:
    from sinkviz.attribution import attribute_run

    out = attribute_run(
        args.run,
        args.data,
        args.split,
        args.samples,
        args.out,
        layer=args.layer,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        internal_batch_size=args.internal_batch_size,
        occlude=not args.no_occlusion,
        seed=args.seed,
        checkpoint=args.checkpoint,
        baseline_token=args.baseline_token,
    )
    print(f"wrote attributions to {out}")


def _views(args: argparse.Namespace) -> None:
    from sinkviz.artifacts import load_analysis
    from sinkviz.views import write_views

    written = write_views(
        load_analysis(args.analysis),
        args.out,
        samples=args.sample,
        fields=args.field,
        levels=_csv(args.levels),
        kinds=_csv(args.kinds),
        max_tokens=args.max_tokens,
    )
    print(f"wrote {len(written)} views and index.html to {args.out}")


def _figures(args: argparse.Namespace) -> None:
    from sinkviz.figures import make_figures

    written = make_figures(
        args.analysis,
        args.out,
        compare=args.compare,
        ablation=args.ablation,
        attributions=args.attributions,
        sample_id=args.sample,
        field=args.field,
        layer=args.layer,
        formats=_csv(args.formats),
    )
    print(f"wrote {len(written)} files to {args.out}")


def _study_options(args: argparse.Namespace) -> dict:
    """open_study options shared by the inference-time studies; bad values become one-line errors."""
    from ctrsink.errors import CtrSinkError

    if args.batch_size is not None and args.batch_size < 1:
        raise CtrSinkError(f"option '--batch-size': {args.batch_size} is not a positive number")
    return {"data_dir": args.data, "checkpoint": args.checkpoint, "batch_size": args.batch_size}


def _positive(name: str, value: int) -> None:
    from ctrsink.errors import CtrSinkError

    if value < 1:
        raise CtrSinkError(f"option '{name}': {value} is not a positive number")


def _intervene(args: argparse.Namespace) -> None:
    from ctrsink.errors import CtrSinkError
    from sinkviz.interventions import KINDS, intervene

    _positive("--n-boot", args.n_boot)
    kinds = _csv(args.only) if args.only else None
    unknown = sorted(set(kinds or []) - set(KINDS))
    if unknown:
        raise CtrSinkError(
            f"option '--only': unknown intervention(s) {', '.join(unknown)}; known: {', '.join(KINDS)}"
        )
    table = intervene(
        args.run,
        args.split,
        args.samples,
        args.out,
        seed=args.seed,
        heads=not args.no_heads,
        kinds=kinds,
        n_boot=args.n_boot,
        **_study_options(args),
    )
    shown = table[table["kind"] != "head_mean"]
    print(shown[["intervention", "delta_auc", "lo_auc", "hi_auc", "delta_abs_score"]].to_string(index=False))
    print(f"wrote {len(table)} interventions to {args.out}")


def _rollout(args: argparse.Namespace) -> None:
    from sinkviz.rollout import attention_rollout

    table = attention_rollout(
        args.run, args.split, args.samples, args.out, seed=args.seed, **_study_options(args)
    )
    print(f"wrote rollout of {table['sample_id'].nunique()} samples to {args.out}")


def _faithfulness(args: argparse.Namespace) -> None:
    from sinkviz.faithfulness import faithfulness_curves

    for name in ("--max-k", "--n-steps", "--n-boot"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.random_draws < 0:
        _positive("--random-draws", args.random_draws)
    table = faithfulness_curves(
        args.run,
        args.split,
        args.samples,
        args.out,
        max_k=args.max_k,
        random_draws=args.random_draws,
        n_steps=args.n_steps,
        n_boot=args.n_boot,
        seed=args.seed,
        **_study_options(args),
    )
    wide = table.pivot_table(index=["measure", "k"], columns="method", values="mean")
    print(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote deletion curves to {args.out}")


def _heads(args: argparse.Namespace) -> None:
    from sinkviz.heads import head_roles

    table = head_roles(
        args.run,
        args.split,
        args.samples,
        args.out,
        threshold=args.threshold,
        seed=args.seed,
        **_study_options(args),
    )
    grid = table[table["field"] == "history"].pivot(index="layer", columns="head", values="role")
    print(grid.to_string())
    print(f"wrote head roles to {args.out}")


def _study_parser(
    sub: argparse._SubParsersAction, name: str, help_text: str, samples: int
) -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=help_text)
    s.add_argument("--run", required=True)
    s.add_argument("--data", help="sample directory (default: the one the run was trained on)")
    s.add_argument("--split", default="test")
    s.add_argument("--samples", type=int, default=samples, help="how many samples (0 = the whole split)")
    s.add_argument("--out", required=True, help="results folder (an analysis folder works too)")
    s.add_argument("--batch-size", type=int, dest="batch_size")
    s.add_argument("--seed", type=int, default=0, help="sample choice seed (same as capture's)")
    s.add_argument("--checkpoint", default="best")
    return s


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sinkviz", description="attention capture and sink analyses for ctrsink runs"
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "capture",
        help="capture attention over a split and write analysis artifacts (ID-row runs: the ID-row analyses)",
    )
    s.add_argument("--run", required=True)
    s.add_argument("--data", help="sample directory (default: the one the run was trained on)")
    s.add_argument("--split", default="test")
    s.add_argument("--samples", type=int, default=256, help="how many samples (0 = the whole split)")
    s.add_argument("--out", required=True)
    s.add_argument("--batch-size", type=int, dest="batch_size")
    s.add_argument(
        "--full-maps",
        type=int,
        default=4,
        dest="full_maps",
        help="samples whose full token-level maps are kept (CTR-Sink runs)",
    )
    s.add_argument(
        "--seed", type=int, default=0, help="sample choice seed (ID runs: also the other candidate)"
    )
    s.add_argument(
        "--checkpoint", default="best", help="best | last | epoch{k} (keep_epoch_checkpoints runs)"
    )
    s.add_argument(
        "--every-epoch",
        action="store_true",
        dest="every_epoch",
        help="one analysis per kept epoch checkpoint, in OUT/epoch{k} (k = 0: before training)",
    )
    s.set_defaults(fn=_capture)

    a = sub.add_parser(
        "attribute", help="integrated gradients and occlusion per behavior, written as Parquet"
    )
    a.add_argument("--run", required=True)
    a.add_argument("--data", help="sample directory (default: the one the run was trained on)")
    a.add_argument("--split", default="test")
    a.add_argument("--samples", type=int, default=32, help="how many samples (0 = the whole split)")
    a.add_argument("--out", required=True, help="folder (an analysis folder works: figures then find it)")
    a.add_argument("--layer", choices=["inputs_embeds", "word_embeddings"], default="inputs_embeds")
    a.add_argument("--n-steps", type=int, default=32, dest="n_steps")
    a.add_argument("--batch-size", type=int, default=8, dest="batch_size", help="samples attributed together")
    a.add_argument(
        "--internal-batch-size",
        type=int,
        default=32,
        dest="internal_batch_size",
        help="interpolation steps (or occluded copies) per forward pass",
    )
    a.add_argument("--no-occlusion", action="store_true", dest="no_occlusion")
    a.add_argument(
        "--baseline-token", type=int, dest="baseline_token", help="baseline token id (default: pad)"
    )
    a.add_argument("--seed", type=int, default=0, help="sample choice seed (same as capture's)")
    a.add_argument("--checkpoint", default="best")
    a.set_defaults(fn=_attribute)

    v = sub.add_parser("views", help="offline bertviz head/model views of an analysis as standalone HTML")
    v.add_argument("--analysis", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--sample", type=int, action="append", help="sample id with full maps (repeatable)")
    v.add_argument("--field", action="append", help="field (repeatable; default: the history fields)")
    v.add_argument("--levels", default="token,behavior,dataset")
    v.add_argument("--kinds", default="head,model")
    v.add_argument("--max-tokens", type=int, default=128, dest="max_tokens")
    v.set_defaults(fn=_views)

    f = sub.add_parser("figures", help="paper figures (PNG and PDF) from analyses and an ablation")
    f.add_argument("--analysis", required=True)
    f.add_argument("--compare", help="a second analysis folder (baseline against CTR-Sink)")
    f.add_argument("--ablation", help="ablation folder with ablation.parquet (or the file)")
    f.add_argument("--attributions", help="attributions.parquet (default: the analysis folder's, if any)")
    f.add_argument("--out", required=True)
    f.add_argument("--sample", type=int, help="sample of the fragmentation figure")
    f.add_argument("--field", help="history field of the per-sample figures")
    f.add_argument("--layer", type=int, help="layer of the fragmentation figure (default: last token layer)")
    f.add_argument("--formats", default="png,pdf")
    f.set_defaults(fn=_figures)

    i = _study_parser(
        sub,
        "intervene",
        "score samples with one component taken away (sinks, signals, bias, keys, heads)",
        256,
    )
    i.add_argument("--only", help="comma-separated intervention kinds (default: all)")
    i.add_argument(
        "--no-heads", action="store_true", dest="no_heads", help="skip the layer x head mean-ablation grid"
    )
    i.add_argument("--n-boot", type=int, default=1000, dest="n_boot", help="bootstrap replicates over users")
    i.set_defaults(fn=_intervene)

    r = _study_parser(sub, "rollout", "attention rollout and raw attention per layer to each behavior", 256)
    r.set_defaults(fn=_rollout)

    fa = _study_parser(sub, "faithfulness", "deletion curves of attention, rollout, IG and occlusion", 64)
    fa.add_argument("--max-k", type=int, default=5, dest="max_k", help="largest number of behaviors deleted")
    fa.add_argument("--random-draws", type=int, default=3, dest="random_draws")
    fa.add_argument("--n-steps", type=int, default=16, dest="n_steps", help="integrated gradients steps")
    fa.add_argument("--n-boot", type=int, default=1000, dest="n_boot", help="bootstrap replicates over users")
    fa.set_defaults(fn=_faithfulness)

    h = _study_parser(sub, "heads", "classify each head by where its attention mass goes", 256)
    h.add_argument("--threshold", type=float, default=0.5, help="mass share that makes a role (else mixed)")
    h.set_defaults(fn=_heads)
    return p


def main(argv: list[str] | None = None) -> int:
    from ctrsink.errors import CtrSinkError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        args.fn(args)
    except CtrSinkError as exc:
        print(f"sinkviz: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
