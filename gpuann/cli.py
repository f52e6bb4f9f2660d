"""The ``gpuann`` command line (also ``python -m gpuann``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuann",
        description="GPU-accelerated similarity search on torch tensors.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="search Python's documentation and time exact search (no download needed)",
        description="Index the docstrings of Python's standard library, answer example queries "
        "(and yours), and time exact search against a plain torch implementation.",
    )
    demo.add_argument("queries", nargs="*", help="extra queries to answer")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("-k", type=int, default=3, help="results per query (default: 3)")
    demo.add_argument(
        "--synthetic-size",
        type=int,
        default=200_000,
        help="rows of the random database used for timing (default: 200000; 0 skips it)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from gpuann.demo import run_demo

        try:
            run_demo(args.queries, device=args.device, k=args.k, synthetic_size=args.synthetic_size)
        except (ValueError, TypeError) as err:
            print(f"gpuann demo: error: {err}", file=sys.stderr)
            return 2
    return 0
