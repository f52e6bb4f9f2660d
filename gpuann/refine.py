"""Exact re-ranking of candidates: the one implementation every re-ranking index uses.

An index built with ``refine=True`` keeps each vector at full precision beside its codes;
``search(..., refine_factor=F)`` then takes ``F · k`` candidates from the approximate search
and re-scores them exactly here (faiss's ``IndexRefineFlat``, on the index device).

Each query has its own candidates, so this is a batched gather + ``bmm`` over a block of
queries at a time, sized to the memory budget, never a (queries × database) matrix. The
arithmetic is that of the exact torch backend (float32 accumulation; L2 as
``‖x‖² − 2⟨q, x⟩``, plus ``‖q‖²`` for the winners, clamped at 0), and selection is tie-aware:
equal distances by lower row, which in an id-sorted store is lower id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gpuann._tiebreak import topk_by_id
from gpuann._validate import positive_int
from gpuann.budget import check_budget
from gpuann.metrics import Metric, squared_norms

__all__ = [
    "DEFAULT_REFINE_FACTOR",
    "KeptVectors",
    "RefineOptions",
    "check_refine_factor",
    "rerank_rows",
]

#: Candidates re-scored per result when ``refine_factor`` is not given.
DEFAULT_REFINE_FACTOR = 4
#: Working bytes per (query, candidate) pair beyond the gathered vector.
_BYTES_PER_PAIR = 32
#: Bytes of gathered candidate vectors per block on the CPU.
_CPU_BLOCK_BYTES = 2 << 20


def check_refine_factor(value: Any, refine: bool, default: int) -> int | None:
    """The refine factor of one search: ``None`` when the index does not re-rank.

    Passing a factor to an index built with ``refine=False`` raises.
    """
    if not refine:
        if value is not None:
            raise ValueError("refine_factor: this index was built with refine=False")
        return None
    return positive_int(default if value is None else value, "refine_factor")


class RefineOptions:
    """The one re-ranking vocabulary, for every index that can re-rank.

    ``refine`` (constructor): keep the full-precision vectors; ``refine_factor``
    (constructor default, overridable per search): re-score ``refine_factor · k`` candidates
    exactly with :func:`rerank_rows`.
    """

    _refine: bool = False
    refine_factor: int = DEFAULT_REFINE_FACTOR

    def _init_refine(self, refine: Any, refine_factor: Any) -> None:
        if not isinstance(refine, bool):
            raise TypeError(f"refine: expected a bool, got {type(refine).__name__}")
        self._refine = refine
        self.refine_factor = positive_int(refine_factor, "refine_factor")

    @property
    def refine(self) -> bool:
        """Whether full-precision vectors are kept for exact re-ranking."""
        return self._refine

    def _refine_factor_for(self, value: Any) -> int | None:
        """This search's factor: ``None`` without ``refine``, else ``value`` or the default."""
        return check_refine_factor(value, self._refine, self.refine_factor)


class KeptVectors(RefineOptions):
    """:class:`RefineOptions` for an index that keeps the full-precision vectors in its id
    store when ``refine`` (a mixin of :class:`gpuann.Index`, listed before it).

    With ``refine`` the store holds a ``vectors`` column in the storage dtype and, for l2, the
    float32 ``sqnorms`` derived from it (not saved); without, neither.
    """

    _derived_columns = ("sqnorms",)
    _dim: int
    _dtype: torch.dtype
    _metric: Metric

    def _kept_columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The kept columns' ``{name: (row shape, dtype)}`` (none without ``refine``)."""
        if not self._refine:
            return {}
        columns = {"vectors": ((self._dim,), self._dtype)}
        if self._metric is Metric.L2:
            columns["sqnorms"] = ((), torch.float32)
        return columns

    def _kept(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The kept columns of prepared vectors ``x`` (none without ``refine``)."""
        if not self._refine:
            return {}
        columns = {"vectors": x.to(self._dtype)}
        return {**columns, **self._derive(columns)}

    def _derive(self, columns: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self._refine or self._metric is not Metric.L2:
            return {}
        return {"sqnorms": squared_norms(columns["vectors"])}


def rerank_rows(
    queries: torch.Tensor,
    vectors: torch.Tensor | None,
    sqnorms: torch.Tensor | None,
    rows: torch.Tensor,
    k: int,
    metric: Metric,
    memory_budget: int | None = None,
    *,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each query's candidate rows by exact distance.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), floating (normalised by the caller for cosine)
    vectors : torch.Tensor, shape (N, d), float32 / float16 / bfloat16, rows sorted by id
    sqnorms : torch.Tensor, shape (N,), float32, optional
        For ``Metric.L2``; computed from the gathered vectors when None.
    rows : torch.Tensor, shape (Q, R), int64, ``-1`` for no candidate
    k : int
    metric : Metric
        ``L2`` (ascending) or ``IP`` / ``COSINE`` (similarity, descending).
    memory_budget : int, optional
        Bytes for the gathered candidate vectors of a block of queries (default as for exact
        search).
    gather : callable, optional
        ``rows (b, R) -> vectors (b, R, d) float32``, for vectors not held as one tensor (on
        the host, or decoded from codes); default: the rows of ``vectors``. Its result is
        moved to the queries' device.

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32; the metric's missing value where absent
    rows : torch.Tensor, shape (Q, k), int64; ``-1`` where absent

    Examples
    --------
    >>> vectors = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> rerank_rows(torch.tensor([[0.0, 0.9]]), vectors, (vectors**2).sum(1),
    ...             torch.tensor([[1, 0, -1]]), 2, Metric.L2)
    (tensor([[0.0100, 1.8100]]), tensor([[0, 1]]))
    """
    n_queries, n_candidates = rows.shape
    dim = queries.shape[1]
    budget = check_budget(memory_budget, queries.device)
    itemsize = vectors.element_size() if vectors is not None else 4
    per_query = n_candidates * (dim * (4 + itemsize) + _BYTES_PER_PAIR)
    block = max(1, budget // max(1, per_query))
    if queries.device.type == "cpu":
        # Cache-sized blocks: a gather of tens of MiB is a fresh mapping on every call (page
        # faults cost more than the arithmetic); a few MiB is reused from the heap.
        block = min(block, max(1, _CPU_BLOCK_BYTES // max(1, n_candidates * dim * 4)))
    out_values = torch.empty((n_queries, k), device=queries.device)
    out_rows = torch.empty((n_queries, k), dtype=torch.int64, device=queries.device)
    l2 = metric is Metric.L2
    for q0 in range(0, n_queries, block):
        q = queries[q0 : q0 + block].float()
        r = rows[q0 : q0 + block]
        safe = r.clamp(min=0)
        if gather is None:  # index_select: several times faster than ``vectors[safe]`` on CPU
            candidates = vectors.index_select(0, safe.reshape(-1)).view(*safe.shape, -1).float()
        else:
            candidates = gather(safe).to(q.device, torch.float32)
        if candidates.device.type == "cpu":  # a multiply-add pass: faster than bmm there
            dots = (candidates * q[:, None, :]).sum(dim=2)
        else:
            dots = torch.bmm(candidates, q[:, :, None]).squeeze(2)
        if l2:
            if sqnorms is not None:
                norms = sqnorms.index_select(0, safe.reshape(-1)).view(safe.shape)
            else:
                norms = (candidates * candidates).sum(2)
            scores = norms.to(dots.device) - 2 * dots
        else:
            scores = -dots
        values, best = topk_by_id(scores, r, k)
        values = (values + (q * q).sum(dim=1, keepdim=True)).clamp_(min=0.0) if l2 else -values
        width = values.shape[1]
        values = torch.where(best < 0, metric.missing_distance, values)
        out_values[q0 : q0 + block, :width] = values
        out_rows[q0 : q0 + block, :width] = best
        out_values[q0 : q0 + block, width:] = metric.missing_distance
        out_rows[q0 : q0 + block, width:] = -1
    return out_values, out_rows
