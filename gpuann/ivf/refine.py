"""Exact re-ranking of IVF candidates (faiss's ``IndexRefineFlat``, on the index device).

Each query's candidates are scored exactly against the full-precision vectors the index keeps,
a tile of queries at a time: a tile gathers ``(queries, candidates, dim)`` vectors sized to the
memory budget, so nothing like a (queries × database) matrix is ever built. Distances use the
same expansion as gpuann's exact search (``‖x‖² − 2⟨q, x⟩ + ‖q‖²`` for L2, ``⟨q, x⟩`` for
inner product, float32 accumulation); the final order is tie-aware (equal distances by lower
id, missing results last).
"""

from __future__ import annotations

import torch

from gpuann.budget import check_budget
from gpuann.ivf._store import IdStore
from gpuann.metrics import Metric
from gpuann.topk import topk_by_id

__all__ = ["rerank"]

#: Working bytes per (query, candidate) pair beyond the gathered vector: positions, found mask,
#: distances, ids and the sort's workspace.
_BYTES_PER_PAIR = 64


def rerank(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    store: IdStore,
    k: int,
    metric: Metric,
    memory_budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest of each query's candidates, by exact distance.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, dim), float32, on the store's device
        Normalised already for cosine.
    candidates : torch.Tensor, shape (Q, R), int64
        Candidate ids; ``-1`` marks no candidate. Every other id must be in ``store``.
    store : IdStore
        Holds the full-precision vectors (``store.vectors`` is not None).
    k : int
    metric : Metric
        ``L2``, or ``IP`` (used for cosine too).
    memory_budget : int, optional
        Bytes of working memory per tile; default as for exact search.

    Returns
    -------
    distances : torch.Tensor, shape (Q, min(k, R)), float32, nearest first (±inf if missing)
    ids : torch.Tensor, shape (Q, min(k, R)), int64, ``-1`` if missing

    Examples
    --------
    >>> store = IdStore.empty(2, torch.device("cpu"), keep_vectors=True)
    >>> store = store.with_added(torch.tensor([7, 3]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    >>> rerank(torch.tensor([[0.0, 0.9]]), torch.tensor([[7, 3, -1]]), store, 2, Metric.L2)
    (tensor([[0.0100, 1.8100]]), tensor([[3, 7]]))
    """
    if store.vectors is None:
        raise ValueError("store: re-ranking needs the full-precision vectors")
    n_queries, width = candidates.shape
    dim = store.vectors.shape[1]
    kk = min(k, width)
    budget = check_budget(memory_budget, queries.device)
    block = max(1, budget // max(1, width * (dim * 4 + _BYTES_PER_PAIR)))
    out_d = torch.empty((n_queries, kk), device=queries.device)
    out_i = torch.empty((n_queries, kk), dtype=torch.int64, device=queries.device)
    l2 = metric is Metric.L2
    for q0 in range(0, n_queries, block):
        q = queries[q0 : q0 + block]
        ids = candidates[q0 : q0 + block]
        pos, found = store.positions(ids)
        valid = found & (ids >= 0)
        vectors = store.vectors.index_select(0, pos.reshape(-1)).view(*pos.shape, dim)
        dots = torch.bmm(vectors, q.unsqueeze(2)).squeeze(2)
        if l2:
            qn = (q * q).sum(dim=1, keepdim=True)
            key = (store.sqnorms[pos] - 2.0 * dots + qn).clamp_(min=0.0)
        else:
            key = -dots
        values, top = topk_by_id(key, torch.where(valid, ids, -1), kk)
        missing = top < 0
        values = values if l2 else -values
        out_d[q0 : q0 + q.shape[0]] = values.masked_fill(missing, metric.missing_distance)
        out_i[q0 : q0 + q.shape[0]] = top
    return out_d, out_i
