"""`sinkviz` subcommands. A CtrSinkError becomes one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys


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
    out = capture_run(
        args.run,
        args.data,
        args.split,
        args.samples,
        args.out,
        batch_size=args.batch_size,
        full_maps=args.full_maps,
        seed=args.seed,
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
