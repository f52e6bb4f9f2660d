"""Hamming search on CPU tensors through faiss's popcount + heap scan, when faiss is installed.

faiss's ``hammings_knn_hc`` (the loop behind ``IndexBinaryFlat.search``) is the fastest exact
CPU Hamming search measured here (``benchmarks/bench_hamming.py``): SIMD popcounts over 64-bit
words and one bounded max-heap per query. It is called on the database tensor's own memory
(no copy, no index built) at ``torch.get_num_threads()`` OpenMP threads.

Tie order, and why it is gpuann's (ties by lower row). Per query, faiss scans the rows in
increasing order and replaces the heap's top only when a distance is *strictly* smaller than
the top's; the heap compares ``(distance, row)`` pairs (``CMax::cmp2``), so its top is the
worst pair by distance then row, and the final ``reorder`` pops pairs in that same order.
An entry equal to the current k-th distance arrives after every entry already kept (a higher
row), so it correctly loses; the result is the first ``k`` pairs by ``(distance, row)``.
The lists are sorted once more on packed keys here anyway (``k`` entries per query, cheap),
and ``tests/binary/test_hamming.py`` checks tie-heavy codes against a reference.
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import torch

from gpuann._pools import worker_pool
from gpuann.backends.base import Backend

__all__ = ["FaissHamming", "faiss_hamming_topk"]

#: faiss versions whose heap breaks ties by id (``cmp2``, faiss 1.7.3 and later).
_MIN_FAISS = (1, 7, 3)
#: Fewer queries than threads: faiss parallelises over queries only, so the database is cut
#: into one part per thread (at least this many rows each), scanned by parallel calls (faiss
#: releases the GIL) whose lists are merged on packed keys; smaller parts lose more to the
#: hand-off (~50 µs) than they gain.
_MIN_PART_ROWS = 1 << 18


@functools.cache
def _faiss_module():
    """The real faiss module, or None when it cannot be imported (imported on first use only;
    :func:`gpuann.ivf._faiss.optional_faiss`, so also while ``sys.modules["faiss"]`` is the
    shim)."""
    from gpuann.ivf._faiss import optional_faiss

    return optional_faiss()


def _version(module) -> tuple[int, ...]:
    parts = []
    for piece in str(getattr(module, "__version__", "0")).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


@functools.cache
def _install_reasons() -> tuple[str, ...]:
    module = _faiss_module()
    if module is None:
        return ("faiss is not installed (pip install faiss-cpu)",)
    if _version(module) < _MIN_FAISS:
        return (f"faiss {module.__version__}: needs 1.7.3 or later (ties by lower id)",)
    return ()


def _pool(workers: int) -> ThreadPoolExecutor:
    return worker_pool("hamming", workers)


def _scan(faiss, xq: np.ndarray, xb: np.ndarray, k: int, threads: int | None) -> torch.Tensor:
    """faiss's heap scan of ``xq`` against ``xb`` (uint8 codes): packed keys (Q, k), sorted
    by (distance, row) as faiss leaves them. ``threads``: OpenMP threads (None: as set)."""
    distances = np.empty((xq.shape[0], k), dtype=np.int32)
    rows = np.empty((xq.shape[0], k), dtype=np.int64)
    heap = faiss.int_maxheap_array_t()
    heap.k, heap.nh = k, xq.shape[0]
    heap.val, heap.ids = faiss.swig_ptr(distances), faiss.swig_ptr(rows)
    if threads is not None:
        faiss.omp_set_num_threads(threads)  # this thread's OpenMP setting only
    n_bytes = xq.shape[1]
    faiss.hammings_knn_hc(heap, faiss.swig_ptr(xq), faiss.swig_ptr(xb), xb.shape[0], n_bytes, 1)
    return (torch.from_numpy(distances).to(torch.int64) << 32) | torch.from_numpy(rows)


class FaissHamming(Backend):
    """faiss's exact Hamming heap scan on CPU tensors (needs faiss ≥ 1.7.3)."""

    priority: ClassVar[int] = 50
    name: ClassVar[str] = "faiss"
    op: ClassVar[str] = "hamming_search"
    device_types: ClassVar[tuple[str, ...]] = ("cpu",)
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.int32,)

    def extra_reasons(self, request) -> list[str]:
        return list(_install_reasons())

    def search(self, request) -> torch.Tensor:
        return faiss_hamming_topk(request.queries, request.database, request.k)


def faiss_hamming_topk(queries: torch.Tensor, database: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted packed keys ``distance << 32 | row``, shape (Q, min(k, N)).

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, W), int32, CPU
    database : torch.Tensor, shape (N, W), int32, CPU, N ≥ 1
    k : int

    Returns
    -------
    torch.Tensor, shape (Q, min(k, N)), int64, ascending
    """
    faiss = _faiss_module()
    n_queries = queries.shape[0]
    n_database = database.shape[0]
    kk = min(k, n_database)
    # Zero-copy numpy views of the packed words (the layout faiss's uint8 codes expect).
    xq = np.ascontiguousarray(queries.numpy()).view(np.uint8)
    xb = database.contiguous().numpy().view(np.uint8)
    threads = torch.get_num_threads()
    parts = min(threads, n_database // _MIN_PART_ROWS) if n_queries < threads else 1
    if parts > 1:
        bounds = [n_database * i // parts for i in range(parts + 1)]
        futures = [
            _pool(parts).submit(_scan, faiss, xq, xb[a:b], min(kk, b - a), 1)
            for a, b in itertools.pairwise(bounds)
        ]
        keys = torch.cat([f.result() + a for f, a in zip(futures, bounds[:-1], strict=True)], dim=1)
        return torch.topk(keys, kk, dim=1, largest=False, sorted=True).values
    before = faiss.omp_get_max_threads()
    try:
        keys = _scan(faiss, xq, xb, kk, threads if before != threads else None)
    finally:
        if before != threads:
            faiss.omp_set_num_threads(before)
    return torch.sort(keys, dim=1).values
