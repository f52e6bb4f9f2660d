"""The ``gpuann`` command line (also ``python -m gpuann``).

Subcommands: ``search`` (batch search from ``.npy`` files, resumable), ``self-join``,
``build`` (an index file from vectors) and ``demo``. Mistakes in the inputs (a missing file,
a matrix of the wrong shape or dtype, an out folder holding another job) print one line naming
the argument and exit with status 2; nothing is imported beyond what a subcommand needs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

MiB = 1 << 20
_INDEX_TYPES = ("flat", "ivf-flat", "ivf-pq")
_METRICS = ("l2", "ip", "cosine")
_EPILOG_SEARCH = """examples:
  gpuann search --database db.npy --queries q.npy -k 10 --metric cosine --out results/
  gpuann search --index index.gpuann --queries q.npy -k 10 --out results/
  gpuann search --database db.npy --queries q.npy -k 10 --out results/ --resume

Results: results/ids.npy (int64) and results/distances.npy (float32), both (queries, k),
readable with numpy.load(..., mmap_mode="r"), and results/checkpoint.json. A killed job run
again with --resume continues after its last completed chunk; the output is then identical
to an uninterrupted run's."""


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", type=_positive, required=True, help="neighbours per query")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder receiving ids.npy and distances.npy"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the job checkpointed in --out"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start over even if --out holds results"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        metavar="N",
        help="queries per chunk (default: sized from free memory)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--memory-budget-mib",
        type=_positive,
        default=None,
        metavar="MIB",
        help="working memory of a score tile, MiB (default: as gpuann.knn)",
    )


def _add_vectors_options(parser: argparse.ArgumentParser) -> None:
    """``--vectors`` and its ``--metric`` (default l2): the input of self-join and build."""
    parser.add_argument("--vectors", required=True, metavar="V.npy", help="(N, d) float vectors")
    parser.add_argument("--metric", choices=_METRICS, default="l2")


def _positive(text: str) -> int:
    """An argparse type: a positive int (0 or negatives are errors, never "the default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuann",
        description="GPU-accelerated similarity search on torch tensors.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    search = commands.add_parser(
        "search",
        help="k nearest neighbours of many queries (.npy), resumable, out-of-core",
        description="Search every query of a .npy file against a database (.npy: exact search,\n"
        "streamed from disk, so it may exceed device and host memory) or a saved index.",
        epilog=_EPILOG_SEARCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = search.add_mutually_exclusive_group(required=True)
    target.add_argument("--database", metavar="DB.npy", help="(N, d) float vectors: exact search")
    target.add_argument("--index", metavar="FILE", help="an index saved by gpuann build / .save")
    search.add_argument("--queries", required=True, metavar="Q.npy", help="(Q, d) float queries")
    search.add_argument(
        "--metric",
        choices=_METRICS,
        default=None,
        help="with --database (default l2); an index uses its own",
    )
    _add_job_options(search)

    join = commands.add_parser(
        "self-join",
        help="k nearest other vectors of every vector (kNN graph, near-duplicates)",
        description="Exact kNN of every row of a .npy file against all the others (itself "
        "excluded); resumable and out-of-core like search.",
    )
    _add_vectors_options(join)
    _add_job_options(join)

    build = commands.add_parser(
        "build",
        help="build an index from vectors (.npy) and save it",
        description="Build an index over the rows of a .npy file (ids: row numbers) and save "
        "it to one file that gpuann search --index and gpuann.load read.",
    )
    _add_vectors_options(build)
    build.add_argument("--index-type", choices=_INDEX_TYPES, default="flat")
    build.add_argument("--out", required=True, metavar="FILE", help="index file to write")
    build.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="flat: storage dtype",
    )
    build.add_argument(
        "--nlist", type=_positive, default=None, help="ivf: lists (default: suggested)"
    )
    build.add_argument("--m", type=_positive, default=None, help="ivf-pq: sub-quantizers")
    build.add_argument("--nbits", type=_positive, default=None, help="ivf-pq: bits per code")
    build.add_argument("--refine", action="store_true", help="ivf-pq: re-rank exactly")
    build.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")

    from gpuann.demo import cli as demo_cli

    demo = commands.add_parser(
        "demo",
        help="semantic search over Python's documentation, exact and IVF-PQ, with timings",
        description=demo_cli.DESCRIPTION,
    )
    demo_cli.add_arguments(demo)
    return parser


def _job_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "out": args.out,
        "batch_size": args.batch_size if args.batch_size is not None else "auto",
        "progress": not args.no_progress,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "device": args.device,
        "memory_budget": args.memory_budget_mib * MiB
        if args.memory_budget_mib is not None
        else None,
    }


def _report(result: Any, out: str, seconds: float) -> None:
    n, k = result.ids.shape
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"wrote {out}/ids.npy and {out}/distances.npy ({n} x {k}) in {seconds:.1f} s "
          f"({rate:,.0f} queries/s)")  # fmt: skip


def _search(args: argparse.Namespace) -> None:
    from gpuann.batch import batch_search
    from gpuann.batch.inputs import as_matrix_source

    queries = as_matrix_source(args.queries, "--queries")
    if args.database is not None:
        database = as_matrix_source(args.database, "--database")
        if database.shape[1] != queries.shape[1]:
            raise ValueError(
                f"--queries ({args.queries!r}): {queries.shape[1]} columns, but --database "
                f"({args.database!r}) has {database.shape[1]}"
            )
        target: Any = database.data
    else:
        target = _load_index(args.index, args.device)
        if args.metric is not None:
            raise ValueError("--metric: an index searches with its own metric; drop --metric")
        dim = getattr(target, "dim", queries.shape[1])
        if dim != queries.shape[1]:
            raise ValueError(
                f"--queries ({args.queries!r}): {queries.shape[1]} columns, but the index "
                f"({args.index!r}) has dim {dim}"
            )
    start = time.perf_counter()
    result = batch_search(queries.data, target, args.k, metric=args.metric, **_job_kwargs(args))
    _report(result, args.out, time.perf_counter() - start)


def _load_index(path: str, device: str | None) -> Any:
    from pathlib import Path

    from gpuann.serialization import load

    if not Path(path).is_file():
        raise FileNotFoundError(f"--index: no such file {path!r}")
    try:
        return load(path, device)
    except ValueError as err:
        raise ValueError(f"--index ({path!r}): {err}") from None


def _self_join(args: argparse.Namespace) -> None:
    from gpuann.batch import self_join
    from gpuann.batch.inputs import as_matrix_source

    vectors = as_matrix_source(args.vectors, "--vectors")
    start = time.perf_counter()
    result = self_join(vectors.data, args.k, metric=args.metric, **_job_kwargs(args))
    _report(result, args.out, time.perf_counter() - start)


def _build(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from gpuann.batch.inputs import as_matrix_source

    source = as_matrix_source(args.vectors, "--vectors")
    n, dim = source.shape
    if args.index_type == "flat":
        from gpuann.flat import FlatIndex

        index: Any = FlatIndex(
            dim, metric=args.metric, device=args.device, dtype=getattr(torch, args.dtype)
        )
        for r0 in range(0, n, 65536):  # a block at a time: no float32 copy of a whole memmap
            index.add(source.rows(r0, min(n, r0 + 65536)))
    else:
        from gpuann.ivf.factory import index_factory
        from gpuann.ivf.tuning import suggest_ivf_params

        suggested = suggest_ivf_params(n, dim)
        nlist = args.nlist if args.nlist is not None else suggested.nlist
        if args.index_type == "ivf-flat":
            description = f"IVF{nlist},Flat"
        else:
            m = args.m if args.m is not None else suggested.m
            nbits = args.nbits if args.nbits is not None else suggested.nbits
            description = f"IVF{nlist},PQ{m}x{nbits}" + (",RFlat" if args.refine else "")
        index = index_factory(dim, description, metric=args.metric, device=args.device)
        vectors = torch.from_numpy(np.array(source.data, dtype=np.float32))
        index.train(vectors)
        index.add(vectors)
    index.save(args.out)
    print(f"wrote {args.out}: {index!r}")


_COMMANDS = {"search": _search, "self-join": _self_join, "build": _build}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from gpuann.demo.cli import run

        return run(args)
    try:
        _COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError) as err:  # FileNotFoundError, FileExistsError, ...
        print(f"gpuann {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
