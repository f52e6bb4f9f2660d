"""Exact k-nearest-neighbour search: ``gpuann.knn`` and the custom op every exact search runs.

The whole search (backend choice, tiles, kernels) is one ``torch.library`` custom op,
``gpuann::exact_search``, so ``torch.compile(fullgraph=True)`` sees a single opaque node and
never breaks the graph or unrolls the tile loop.
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann._validate import as_float_matrix, check_k
from gpuann._validate import check_finite as _require_finite
from gpuann.backends.base import SearchRequest
from gpuann.backends.dispatch import select_backend
from gpuann.budget import check_budget
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult

__all__ = ["exact_search", "knn"]


def _exact_search_impl(
    queries: torch.Tensor,
    database: torch.Tensor,
    database_sqnorms: torch.Tensor | None,
    column_scale: torch.Tensor | None,
    k: int,
    metric: str,
    backend: str,
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    request = SearchRequest(
        queries=queries,
        database=database,
        k=k,
        metric=Metric(metric),
        database_sqnorms=database_sqnorms,
        column_scale=column_scale,
        memory_budget=check_budget(memory_budget or None, database.device),
    )
    return select_backend(request, backend).search(request)


_exact_search_op = torch.library.custom_op(
    "gpuann::exact_search", _exact_search_impl, mutates_args=()
)


@_exact_search_op.register_fake
def _exact_search_fake(
    queries, database, database_sqnorms, column_scale, k, metric, backend, memory_budget
):
    shape = (queries.shape[0], k)
    return (
        queries.new_empty(shape, dtype=torch.float32),
        queries.new_empty(shape, dtype=torch.int64),
    )


def exact_search(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    metric: Metric,
    *,
    database_sqnorms: torch.Tensor | None = None,
    column_scale: torch.Tensor | None = None,
    backend: str = "auto",
    memory_budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search on validated tensors (the layer under ``knn`` and the indexes).

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), floating, on ``database.device``
    database : torch.Tensor, shape (N, d), float32 / float16 / bfloat16
    k : int
    metric : Metric
        ``L2`` or ``IP`` (cosine callers normalise, or pass ``column_scale``).
    database_sqnorms, column_scale : torch.Tensor, optional, shape (N,), float32

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32
    positions : torch.Tensor, shape (Q, k), int64, ``-1`` for missing results
    """
    if metric is Metric.COSINE:
        raise ValueError("exact_search takes L2 or IP; normalise for cosine first")
    if memory_budget is not None:
        check_budget(memory_budget, database.device)
    args = (queries, database, database_sqnorms, column_scale, k, metric.value, backend)
    if torch.compiler.is_compiling():
        return _exact_search_op(*args, memory_budget or 0)
    # Eager calls skip the op's dispatcher: its first call imports torch._dynamo (~1 s).
    return _exact_search_impl(*args, memory_budget or 0)


def knn(
    queries: Any,
    database: Any,
    k: int,
    metric: str | Metric = "l2",
    backend: str = "auto",
    *,
    memory_budget: int | None = None,
    check_finite: bool = True,
) -> SearchResult:
    """The ``k`` nearest rows of ``database`` for each query, exactly.

    Parameters
    ----------
    queries : torch.Tensor or numpy.ndarray, shape (Q, d), floating
    database : torch.Tensor or numpy.ndarray, shape (N, d), floating
        Searched where it lives (its device); float16 and bfloat16 are read as they are,
        with float32 accumulation.
    k : int
        Neighbours per query. Beyond ``N`` the results are padded with id ``-1``.
    metric : {"l2", "ip", "cosine"}
        Squared Euclidean distance (ascending), inner product or cosine similarity
        (descending).
    backend : {"auto", "triton", "torch"}
        ``"auto"`` picks the fastest backend that supports the input.
    memory_budget : int, optional
        Bytes of working memory; default 256 MiB on CPU, a quarter of free memory (≤ 2 GiB)
        on CUDA. No (Q × N) matrix is ever allocated.
    check_finite : bool
        Raise on NaN or infinity in the inputs (costs one reduction and host sync).

    Returns
    -------
    SearchResult
        ``(distances, ids)``, each (Q, k): float32 and int64, ids being row numbers of
        ``database``, ties broken by lower row. numpy when ``queries`` is numpy, else tensors
        on the queries' device.

    Examples
    --------
    >>> db = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> D, I = knn(torch.tensor([[0.9, 0.1]]), db, k=2)
    >>> I
    tensor([[1, 0]])
    >>> D
    tensor([[0.0200, 0.8200]])
    """
    metric = as_metric(metric)
    k = check_k(k)
    database, _ = as_float_matrix(database, "database")
    queries, was_numpy = as_float_matrix(
        queries, "queries", dim=database.shape[1], dim_source="the database's columns"
    )
    if check_finite and not torch.compiler.is_compiling():
        _check_finite_blocks(database, "database")
        _require_finite(queries, "queries")
    out_device = queries.device
    device = database.device
    if database.dtype == torch.float64:
        database = database.float()
    queries = queries.to(device)
    column_scale = None
    if metric is Metric.COSINE:
        queries = torch.nn.functional.normalize(queries.float(), dim=1)
        column_scale = 1.0 / _row_norms(database).clamp_min(1e-12)
    distances, ids = exact_search(
        queries,
        database,
        k,
        Metric.L2 if metric is Metric.L2 else Metric.IP,
        column_scale=column_scale,
        backend=backend,
        memory_budget=memory_budget,
    )
    return _format_result(distances, ids, out_device, was_numpy)


def _format_result(
    distances: torch.Tensor, ids: torch.Tensor, device: torch.device, as_numpy: bool
) -> SearchResult:
    if as_numpy:
        return SearchResult(distances.cpu().numpy(), ids.cpu().numpy())
    return SearchResult(distances.to(device), ids.to(device))


def _row_norms(x: torch.Tensor, block: int = 65536) -> torch.Tensor:
    """Float32 row norms of ``x``, a block at a time (no float32 copy of all of ``x``)."""
    out = torch.empty(x.shape[0], device=x.device)
    for r0 in range(0, x.shape[0], block):
        out[r0 : r0 + block] = torch.linalg.vector_norm(x[r0 : r0 + block].float(), dim=1)
    return out


def _check_finite_blocks(x: torch.Tensor, name: str, block: int = 65536) -> None:
    for r0 in range(0, x.shape[0], block):
        _require_finite(x[r0 : r0 + block], name, row_offset=r0)
