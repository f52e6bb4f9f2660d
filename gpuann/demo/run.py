"""The demo program: build an index of Python's documentation, answer queries, time it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from gpuann._validate import resolve_device
from gpuann.demo.corpus import stdlib_docstrings
from gpuann.demo.embed import HashingEmbedder
from gpuann.exact import knn
from gpuann.flat import FlatIndex

__all__ = ["EXAMPLE_QUERIES", "run_demo"]

EXAMPLE_QUERIES = (
    "sort a list in place",
    "parse a JSON document from a string",
    "run a command in a subprocess and capture its output",
    "create a temporary directory",
    "compute the SHA-256 hash of bytes",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> float:
    _sync(device)
    return time.perf_counter()


def run_demo(
    queries: Sequence[str] = (),
    device: str | None = None,
    k: int = 3,
    synthetic_size: int = 200_000,
    print_fn=print,
) -> dict:
    """Run the demo and return its measurements.

    Parameters
    ----------
    queries : sequence of str
        Extra queries, answered after the built-in examples.
    device : str, optional
        Default: CUDA when available, else CPU.
    k : int
        Results shown per query.
    synthetic_size : int
        Rows of the random 128-d database timed against ``torch.mm + topk`` (0 skips it).
    """
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    print_fn(f"gpuann demo on {dev} ({name}), torch {torch.__version__}, {threads} threads")

    t0 = time.perf_counter()
    corpus = stdlib_docstrings()
    texts = [f"{qualname.replace('.', ' ').replace('_', ' ')} {doc}" for qualname, doc in corpus]
    embedder = HashingEmbedder().fit(texts)
    vectors = embedder(texts, dev)
    t_embed = time.perf_counter() - t0
    t0 = _clock(dev)
    index = FlatIndex(embedder.dim, "cosine", device=dev)
    index.add(vectors)
    t_add = _clock(dev) - t0
    print_fn(
        f"indexed {len(index)} docstrings from {len({q.split('.')[0] for q, _ in corpus})} modules "
        f"(embed {t_embed:.2f} s, add {t_add * 1e3:.1f} ms): {index}"
    )

    asked = [*EXAMPLE_QUERIES, *queries]
    t0 = _clock(dev)
    D, I = index.search(embedder(asked, dev), k)
    t_search = _clock(dev) - t0
    for row, query in enumerate(asked):
        print_fn(f"\n> {query}")
        for score, i in zip(D[row].tolist(), I[row].tolist(), strict=True):
            if i >= 0:
                qualname, doc = corpus[i]
                print_fn(f"  {score:.3f}  {qualname}: {doc[:70]}{'…' if len(doc) > 70 else ''}")
    print_fn(f"\n{len(asked)} queries answered in {t_search * 1e3:.1f} ms")
    stats = {"device": str(dev), "documents": len(index), "search_s": t_search}
    if synthetic_size:
        stats.update(_throughput(dev, synthetic_size, print_fn))
    return stats


def _throughput(dev: torch.device, n: int, print_fn) -> dict:
    """Time 1000 queries against n random 128-d vectors: gpuann vs a plain mm + topk."""
    g = torch.Generator().manual_seed(0)
    database = torch.randn(n, 128, generator=g).to(dev)
    queries = torch.randn(1000, 128, generator=g).to(dev)
    knn(queries[:10], database, 10)  # warm-up

    def naive():
        scores = torch.cdist(queries, database).square_()
        return torch.topk(scores, 10, dim=1, largest=False)

    timings = {}
    for label, fn in (
        ("gpuann.knn", lambda: knn(queries, database, 10)),
        ("torch cdist + topk", naive),
    ):
        best = float("inf")
        for _ in range(3):
            t0 = _clock(dev)
            fn()
            best = min(best, _clock(dev) - t0)
        timings[label] = best
    full_matrix_mb = 1000 * n * 4 / 2**20
    print_fn(f"\nexact search, 1000 queries × {n} vectors × 128 dims, k=10 (best of 3):")
    for label, seconds in timings.items():
        print_fn(f"  {label:<20} {seconds * 1e3:8.1f} ms  {1000 / seconds:10.0f} queries/s")
    print_fn(
        f"  (the naive version materialises a {full_matrix_mb:.0f} MiB distance matrix; "
        "gpuann works in tiles)"
    )
    return {"gpuann_s": timings["gpuann.knn"], "naive_s": timings["torch cdist + topk"]}
