"""The demo's speed table: gpuann's exact search beside faiss and the torch a user would write.

All three search the same random data in one run, timed round-robin (each round calls every
method once, rotating which goes first, so that load from other processes hits them alike),
best of 3 rounds. faiss (``IndexFlatL2``, CPU tensors only) is shown when it is installed, at
the same thread count as torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gpuann.eval.timing import time_call
from gpuann.exact import knn

__all__ = ["throughput"]

_QUERIES, _DIM, _K = 1000, 128, 10


def _faiss_search(database: torch.Tensor, queries: torch.Tensor) -> Callable[[], object] | None:
    """``IndexFlatL2.search`` on the same data, at torch's thread count (None: no faiss)."""
    if database.device.type != "cpu":
        return None
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(database.numpy())
    q = queries.numpy()
    return lambda: index.search(q, _K)


def throughput(dev: torch.device, n: int, print_fn: Callable[[str], None] = print) -> dict:
    """Time 1000 queries against ``n`` random 128-d vectors (k = 10, squared L2).

    Methods: ``gpuann.knn``; faiss ``IndexFlatL2`` when installed (CPU); and plain torch as
    a user would write it, ``torch.cdist(q, x).square() + topk``.

    Returns
    -------
    dict
        ``gpuann_s``, ``naive_s`` (the plain torch) and ``faiss_s`` (None without faiss): the
        best of 3 rounds, in seconds.
    """
    g = torch.Generator().manual_seed(0)
    database = torch.randn(n, _DIM, generator=g).to(dev)
    queries = torch.randn(_QUERIES, _DIM, generator=g).to(dev)

    def naive():
        scores = torch.cdist(queries, database).square_()
        return torch.topk(scores, _K, dim=1, largest=False)

    methods: dict[str, Callable[[], object]] = {"gpuann.knn": lambda: knn(queries, database, _K)}
    faiss_fn = _faiss_search(database, queries)
    if faiss_fn is not None:
        methods["faiss IndexFlatL2"] = faiss_fn
    methods["torch cdist + topk"] = naive
    names = list(methods)
    best = {name: float("inf") for name in names}
    for round_no in range(3):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            best[name] = min(best[name], time_call(methods[name], dev, repeats=1)[0])
    full_matrix_mb = _QUERIES * n * 4 / 2**20
    threads = f", {torch.get_num_threads()} threads" if dev.type == "cpu" else ""
    print_fn(
        f"\nexact search, {_QUERIES} queries × {n} vectors × {_DIM} dims, k={_K} "
        f"(best of 3, same data{threads}):"
    )
    for name in names:
        seconds = best[name]
        ratio = best[name] / best["gpuann.knn"]
        print_fn(
            f"  {name:<20} {seconds * 1e3:8.1f} ms  {_QUERIES / seconds:10.0f} queries/s"
            f"  {'' if name == 'gpuann.knn' else f'gpuann is ×{ratio:.2f} as fast'}".rstrip()
        )
    if faiss_fn is None and dev.type == "cpu":
        print_fn("  (faiss is not installed: pip install faiss-cpu to compare with it)")
    print_fn(
        f"  (cdist + topk materialises a {full_matrix_mb:.0f} MiB distance matrix; "
        "gpuann works in tiles)"
    )
    return {
        "gpuann_s": best["gpuann.knn"],
        "naive_s": best["torch cdist + topk"],
        "faiss_s": best.get("faiss IndexFlatL2"),
    }
