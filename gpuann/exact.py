"""Exact k-nearest-neighbour search: ``gpuann.knn`` and the custom op every exact search runs.

The whole search (backend choice, tiles, kernels) is one ``torch.library`` custom op,
``gpuann::exact_search``, so ``torch.compile(fullgraph=True)`` sees a single opaque node and
never breaks the graph or unrolls the tile loop. Filters (excluded rows, allowed rows, labels)
and a tie order are optional tensor arguments of the op.

The op selects without autograd. ``differentiable_distances`` recomputes the distances of the
selected pairs only (a gather, never a (Q, N) matrix) with autograd to the queries and, when
they require grad, to the database vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gpuann._validate import as_float_matrix, check_k, check_result_size
from gpuann.backends.base import SearchRequest
from gpuann.backends.dispatch import register_request, select_backend
from gpuann.budget import check_budget
from gpuann.differentiable import differentiable_distances
from gpuann.engine.eligibility import FILTER_FIELDS
from gpuann.filters import as_allow_ids, as_exclude_ids, row_mask
from gpuann.inputs import MIN_NORM, TINY_NORM, check_values, row_norms, unit_rows
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult

_F32_MAX = float(torch.finfo(torch.float32).max)

__all__ = ["exact_search", "knn"]


def _exact_search_impl(
    queries: torch.Tensor,
    database: torch.Tensor,
    database_sqnorms: torch.Tensor | None,
    column_scale: torch.Tensor | None,
    query_scale: torch.Tensor | None,
    k: int,
    metric: str,
    backend: str,
    memory_budget: int,
    *filters: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's body: ``filters`` are the tensors of :data:`FILTER_FIELDS`, in that order."""
    request = SearchRequest(
        queries,
        database,
        k,
        Metric(metric),
        database_sqnorms,
        column_scale,
        check_budget(memory_budget or None, database.device),
        query_scale,
        **dict(zip(FILTER_FIELDS, filters, strict=False)),
    )
    return select_backend(request, backend).search(request)


#: The op's schema: the arguments of ``_exact_search_impl``, the filters named after
#: :class:`~gpuann.engine.eligibility.RowFilters`' fields (each optional, default None).
_EXACT_SEARCH_SCHEMA = (
    "(Tensor queries, Tensor database, Tensor? database_sqnorms, Tensor? column_scale, "
    "Tensor? query_scale, "
    "SymInt k, str metric, str backend, SymInt memory_budget, "
    + ", ".join(f"Tensor? {name}=None" for name in FILTER_FIELDS)
    + ") -> (Tensor, Tensor)"
)

_exact_search_op = torch.library.custom_op(
    "gpuann::exact_search",
    _exact_search_impl,
    mutates_args=(),
    schema=_EXACT_SEARCH_SCHEMA,
)


@_exact_search_op.register_fake
def _exact_search_fake(queries, database, database_sqnorms, column_scale, query_scale, k, *rest):
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
    query_scale: torch.Tensor | None = None,
    backend: str = "auto",
    memory_budget: int | None = None,
    excluded_rows: torch.Tensor | None = None,
    allowed_rows: torch.Tensor | None = None,
    row_labels: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    row_rank: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search on validated tensors (the layer under ``knn`` and the indexes).

    Runs without autograd (inputs are detached); see :func:`gpuann.differentiable_distances`.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), floating (or int8 with ``query_scale``), on
        ``database.device``
    database : torch.Tensor, shape (N, d), float32 / float16 / bfloat16, or int8 codes
    k : int
    metric : Metric
        ``L2`` or ``IP`` (cosine callers normalise, or pass ``column_scale``).
    database_sqnorms, column_scale : torch.Tensor, optional, shape (N,), float32
    query_scale : torch.Tensor, optional, shape (Q,), float32
        With int8 ``database`` codes and int8 ``queries``: each query's power-of-two factor
        (see :class:`~gpuann.backends.base.SearchRequest`); dots are exact integers, and the
        returned distances are the engine's scores plus ``‖queries‖²`` in code units (l2,
        clamped at 0), meaningful for their order only (callers re-score).
    excluded_rows : torch.Tensor, optional, shape (Q, m), int64
        Rows never returned for each query; ``-1`` pads.
    allowed_rows : torch.Tensor, optional, shape (N,), bool
        Only these rows may be returned.
    row_labels, query_labels : torch.Tensor, optional, shapes (N,) and (Q,), int64
        A row is never returned for a query with the same (non-negative) label.
    row_rank : torch.Tensor, optional, shape (N,), int64
        Tie order, a permutation of ``range(N)``: among equal distances the lower rank wins
        (default: the lower row).

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32
    positions : torch.Tensor, shape (Q, k), int64, ``-1`` for missing results
    """
    if metric is Metric.COSINE:
        raise ValueError("exact_search takes L2 or IP; normalise for cosine first")
    if (queries.dtype == torch.int8) != (query_scale is not None) or (
        query_scale is not None
        and (
            database.dtype != torch.int8
            or query_scale.shape != (queries.shape[0],)
            or (metric is Metric.L2 and database_sqnorms is None)
            or column_scale is not None
        )
    ):
        raise ValueError(
            "query_scale: int8 queries take int8 database codes and a (Q,) query_scale (and, "
            "for L2, database_sqnorms; no column_scale); float queries take none"
        )
    if memory_budget is not None:
        check_budget(memory_budget, database.device)
    args = (
        queries.detach(),
        database.detach(),
        database_sqnorms,
        column_scale,
        query_scale,
        k,
        metric.value,
        backend,
        memory_budget or 0,
        excluded_rows,
        allowed_rows,
        row_labels,
        query_labels,
        row_rank,
    )
    if torch.compiler.is_compiling():
        return _exact_search_op(*args)
    # Eager calls skip the op's dispatcher: its first call imports torch._dynamo (~1 s).
    with torch.no_grad():
        return _exact_search_impl(*args)


def knn(
    queries: Any,
    database: Any,
    k: int,
    metric: str | Metric = "l2",
    backend: str = "auto",
    *,
    memory_budget: int | None = None,
    check_finite: bool = True,
    exclude_ids: Any = None,
    allow_ids: Any = None,
    differentiable: bool = False,
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
        (descending). Cosine here scales each row's inner product by ``1 / ‖x‖`` (the
        database is not copied), so rows pointing the same way but of different lengths can
        score one rounding apart, and backends may round them differently; a
        ``FlatIndex(metric="cosine")`` stores unit rows, whose copies tie exactly (then by
        lower id) on every backend.
    backend : {"auto", "triton", "torch"}
        ``"auto"`` picks the fastest backend that supports the input.
    memory_budget : int, optional
        Bytes of working memory; default 256 MiB on CPU, a quarter of free memory (≤ 2 GiB)
        on CUDA. No (Q × N) matrix is ever allocated.
    check_finite : bool
        Raise on NaN or infinity in the inputs (costs one reduction and host sync).
    exclude_ids : int64 tensor, shape (Q, m) or (Q,), optional
        Rows never returned for each query (e.g. the query itself); ``-1`` pads.
    allow_ids : int64 tensor, shape (n,), optional
        The only rows that may be returned. Filters apply inside the search: a query with
        fewer than ``k`` eligible rows gets ``-1`` / ±inf in the remaining places.
    differentiable : bool
        Return distances recomputed for the selected pairs with autograd to ``queries`` and
        ``database`` (see :func:`gpuann.differentiable_distances`); tensor inputs only.

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
    prepared = _prepare(
        queries, database, k, metric, memory_budget, check_finite, exclude_ids, allow_ids
    )
    request = prepared.request
    distances, ids = exact_search(
        request.queries,
        request.database,
        request.k,
        request.metric,
        column_scale=request.column_scale,
        backend=backend,
        memory_budget=memory_budget,
        excluded_rows=request.excluded_rows,
        allowed_rows=request.allowed_rows,
    )
    metric, device = prepared.metric, request.device
    was_numpy = prepared.was_numpy
    if differentiable:
        if was_numpy:
            raise TypeError("differentiable=True: queries must be a torch.Tensor")
        distances = differentiable_distances(
            prepared.original_queries.to(device), prepared.original_database, ids, metric
        )
    return _format_result(distances, ids, prepared.out_device, was_numpy)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What ``knn`` makes of its arguments: the backend request and how to answer."""

    request: SearchRequest
    metric: Metric
    original_queries: torch.Tensor
    original_database: torch.Tensor
    out_device: torch.device
    was_numpy: bool


def _prepare(
    queries: Any,
    database: Any,
    k: int,
    metric: str | Metric,
    memory_budget: int | None,
    check_finite: bool,
    exclude_ids: Any,
    allow_ids: Any,
) -> _Prepared:
    """Validate ``knn``'s arguments into the request its backends run."""
    metric = as_metric(metric)
    k = check_k(k)
    database, _ = as_float_matrix(database, "database")
    queries, was_numpy = as_float_matrix(
        queries, "queries", dim=database.shape[1], dim_source="the database's columns"
    )
    if not torch.compiler.is_compiling():
        check_result_size(queries.shape[0], k, database.device)
    if check_finite and not torch.compiler.is_compiling():
        with torch.no_grad():
            _check_rows(database, "database", metric)
            _check_rows(queries, "queries", metric)
    out_device = queries.device
    device = database.device
    original_queries, original_database = queries, database
    if database.dtype == torch.float64:
        database = database.float()
    queries = queries.to(device)
    column_scale = None
    if metric is Metric.COSINE:
        # scale-safe, as an index normalises (found by review: F.normalize left rows of norm
        # below 1e-12 unnormalised, and norms beyond float32 made every similarity 0)
        queries = unit_rows(queries)
        norms = _row_norms(database)
        tiny = (norms > 0) & (norms < TINY_NORM)
        # under torch.compile the check would be a data-dependent branch: the factor stays
        if not torch.compiler.is_compiling() and bool(tiny.any()):
            database = _unit_copy(database)  # rare: rows whose products would underflow
        else:
            column_scale = 1.0 / norms.clamp_min(MIN_NORM)
    excluded_rows = allowed_rows = None
    if exclude_ids is not None:
        excluded_rows = as_exclude_ids(exclude_ids, queries.shape[0], device)
    if allow_ids is not None:
        allowed = as_allow_ids(allow_ids, device)
        inside = (allowed >= 0) & (allowed < database.shape[0])
        allowed_rows = row_mask(torch.where(inside, allowed, -1), database.shape[0])
    request = SearchRequest(
        queries=queries,
        database=database,
        k=k,
        metric=Metric.L2 if metric is Metric.L2 else Metric.IP,
        database_sqnorms=None,
        column_scale=column_scale,
        memory_budget=memory_budget or 0,  # 0: the default, resolved by the search
        excluded_rows=excluded_rows,
        allowed_rows=allowed_rows,
    )
    return _Prepared(request, metric, original_queries, original_database, out_device, was_numpy)


def _explain_request(
    queries: Any,
    database: Any,
    k: int,
    metric: str | Metric = "l2",
    *,
    memory_budget: int | None = None,
    exclude_ids: Any = None,
    allow_ids: Any = None,
) -> SearchRequest:
    """The request ``knn`` would send its backend (for ``gpuann.backends.explain``)."""
    request = _prepare(
        queries, database, k, metric, memory_budget, False, exclude_ids, allow_ids
    ).request
    return dataclasses.replace(request, memory_budget=check_budget(memory_budget, request.device))


register_request("exact_search", _explain_request)


def _format_result(
    distances: torch.Tensor, ids: torch.Tensor, device: torch.device, as_numpy: bool
) -> SearchResult:
    if as_numpy:
        return SearchResult(distances.cpu().numpy(), ids.cpu().numpy())
    return SearchResult(distances.to(device), ids.to(device))


#: Bytes of float32 temporaries per block of :func:`_row_norms` and :func:`_unit_copy`.
_BLOCK_BYTES = 32 << 20


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """Float32 row norms of ``x``, scale-safe (:func:`~gpuann.inputs.row_norms`), a block
    at a time (no float32 copy of all of ``x``)."""
    out = torch.empty(x.shape[0], device=x.device)
    block = max(1, _BLOCK_BYTES // (4 * max(1, x.shape[1])))
    for r0 in range(0, x.shape[0], block):
        out[r0 : r0 + block] = row_norms(x[r0 : r0 + block])
    return out


def _unit_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 unit rows (:func:`~gpuann.inputs.unit_rows`), a new tensor filled a
    block at a time: cosine over rows whose norms are too small for a ``1 / ‖x‖`` factor."""
    out = torch.empty(x.shape, device=x.device)
    block = max(1, _BLOCK_BYTES // (4 * max(1, x.shape[1])))
    for r0 in range(0, x.shape[0], block):
        out[r0 : r0 + block] = unit_rows(x[r0 : r0 + block])
    return out


def _check_rows(x: torch.Tensor, name: str, metric: Metric, block: int = 65536) -> None:
    """Raise as an index's ``add`` does (:func:`~gpuann.inputs.check_values`): NaN, infinity
    or a value beyond float32's range (a float64 1e300), and for l2/ip squared norms beyond
    float32's (found by review: ``knn`` checked the float64 values before narrowing them and
    never the norms, so 1e300 gave NaN distances). One host sync whatever the size.

    Blocks keep the temporaries small; their minima and maxima (NaN propagates through both)
    are folded on the device and read once. Only a failing check looks for the rows.
    """
    if x.numel() == 0:
        return
    low = high = None
    for r0 in range(0, x.shape[0], block):
        lo, hi = torch.aminmax(x[r0 : r0 + block])
        low = lo if low is None else torch.minimum(low, lo)
        high = hi if high is None else torch.maximum(high, hi)
    peak = float(torch.maximum(-low, high).double())  # NaN propagates
    if not peak <= _F32_MAX:  # NaN, inf, or beyond float32
        for r0 in range(0, x.shape[0], block):
            part = ~torch.isfinite(x[r0 : r0 + block].float()).all(dim=1)
            bad = (part.nonzero().flatten()[:5] + r0).tolist()
            if bad:
                raise ValueError(
                    f"{name}: contains NaN or infinite values in float32 (rows {bad}"
                    f"{'…' if len(bad) == 5 else ''}); values beyond float32's range become "
                    "infinite. Pass check_finite=False to skip this check"
                )
    check_values(x[:1], name, metric, torch.float32, row_peaks=torch.tensor([peak]))
