"""`sinkviz` subcommands. A CtrSinkError becomes one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys


def _capture(args: argparse.Namespace) -> None:
    from sinkviz.capture import capture_run

    out = capture_run(
        args.run,
        args.data,
        args.split,
        args.samples,
        args.out,
        batch_size=args.batch_size,
        full_maps=args.full_maps,
    )
    print(f"wrote analysis to {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sinkviz", description="attention capture and sink analyses for ctrsink runs"
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("capture", help="capture attention over a split and write analysis artifacts")
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
        help="samples whose full token-level maps are kept",
    )
    s.set_defaults(fn=_capture)
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
