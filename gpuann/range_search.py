"""Range search: every stored vector within a radius of each query, in faiss's layout.

``range_search(queries, radius)`` returns ``(lims, distances, ids)`` as faiss does: the results
of query ``i`` are ``distances[lims[i]:lims[i+1]]`` and ``ids[lims[i]:lims[i+1]]``. For
``"l2"`` a result has squared distance ``< radius``; for ``"ip"``/``"cosine"`` (and any
similarity) a result has similarity ``> radius`` (faiss's conventions). Unlike faiss, each
query's results are ordered: nearest first, equal distances by lower id.

The search runs over tiles of ``query_block × row_block`` scores sized to the memory budget, on
the CPU or the GPU alike; only the results are kept. Because the number of results can be up
to ``queries × rows``, it is guarded: more than ``max_results`` raises ``ValueError`` naming
``radius`` before the results are gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from gpuann.budget import check_budget

__all__ = [
    "DEFAULT_MAX_RESULTS",
    "RangeResult",
    "finish_ranges",
    "order_ranges",
    "tiled_range_search",
]

#: Results allowed by default in one ``range_search`` call (about 1.5 GB of output).
DEFAULT_MAX_RESULTS = 1 << 27
#: Working bytes per score in a tile: the score, the mask, the kept indices' share.
_BYTES_PER_SCORE = 16


class RangeResult(NamedTuple):
    """``(lims, distances, ids)`` of a range search (faiss's layout, ordered per query)."""

    lims: torch.Tensor
    distances: torch.Tensor
    ids: torch.Tensor


def tiled_range_search(
    n_queries: int,
    n_rows: int,
    score_tile: Callable[[int, int, int, int], torch.Tensor],
    radius: float,
    *,
    descending: bool,
    device: torch.device,
    memory_budget: int | None = None,
    max_results: int | None = None,
    dim: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows within ``radius`` of each query, from scores computed a tile at a time.

    Parameters
    ----------
    n_queries, n_rows : int
    score_tile : callable ``(q0, q1, r0, r1) -> Tensor`` of shape (q1 - q0, r1 - r0)
        Scores of a tile (distances ascending, or similarities when ``descending``).
    radius : float
        Keep scores ``< radius`` (ascending) or ``> radius`` (descending).
    descending : bool
    device : torch.device
    memory_budget : int, optional
        Bytes for one tile's working set (default as for exact search).
    max_results : int, optional
        Raise when more results than this are found (default :data:`DEFAULT_MAX_RESULTS`).
    dim : int
        Vector size, for sizing tiles (the tile's inputs also take memory).

    Returns
    -------
    lims : torch.Tensor, shape (n_queries + 1,), int64
    scores : torch.Tensor, shape (lims[-1],), float32 (or the scores' dtype)
    rows : torch.Tensor, shape (lims[-1],), int64; ordered per query by score, then row
    """
    limit = DEFAULT_MAX_RESULTS if max_results is None else int(max_results)
    budget = check_budget(memory_budget, device)
    query_block = max(1, min(n_queries, 1024))
    row_block = max(64, budget // max(1, query_block * _BYTES_PER_SCORE + 4 * dim))
    found_q, found_r, found_s = [], [], []
    total = 0
    for q0 in range(0, n_queries, query_block):
        q1 = min(n_queries, q0 + query_block)
        for r0 in range(0, n_rows, row_block):
            r1 = min(n_rows, r0 + row_block)
            scores = score_tile(q0, q1, r0, r1)
            keep = scores > radius if descending else scores < radius
            qi, ri = keep.nonzero(as_tuple=True)
            total += qi.numel()  # a host sync per tile: the guard needs the count
            if total > limit:
                raise ValueError(
                    f"radius: more than max_results={limit} results (at least {total} so far); "
                    "pass a tighter radius or a larger max_results"
                )
            found_q.append(qi + q0)
            found_r.append(ri + r0)
            found_s.append(scores[qi, ri])
    if not found_q:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return torch.zeros(n_queries + 1, dtype=torch.int64, device=device), empty.float(), empty
    queries = torch.cat(found_q)
    rows = torch.cat(found_r)
    scores = torch.cat(found_s)
    # Order by (query, score, row): stable sorts from the last key to the first.
    order = torch.argsort(rows, stable=True)
    order = order[torch.argsort(scores[order], stable=True, descending=descending)]
    order = order[torch.argsort(queries[order], stable=True)]
    queries, rows, scores = queries[order], rows[order], scores[order]
    counts = torch.bincount(queries, minlength=n_queries)
    lims = torch.zeros(n_queries + 1, dtype=torch.int64, device=device)
    lims[1:] = torch.cumsum(counts, dim=0)
    return lims, scores, rows


def order_ranges(
    lims: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor, *, descending: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's results (faiss's unordered layout) ordered by score, then id.

    Parameters
    ----------
    lims : torch.Tensor, shape (Q + 1,), int64
    scores, ids : torch.Tensor, shape (lims[-1],)

    Returns
    -------
    scores, ids : torch.Tensor, shape (lims[-1],), reordered within each query's range
    """
    counts = lims[1:] - lims[:-1]
    queries = torch.repeat_interleave(torch.arange(counts.numel(), device=lims.device), counts)
    order = torch.argsort(ids, stable=True)
    order = order[torch.argsort(scores[order], stable=True, descending=descending)]
    order = order[torch.argsort(queries[order], stable=True)]
    return scores[order], ids[order]


def finish_ranges(
    lims: torch.Tensor,
    scores: torch.Tensor,
    ids: torch.Tensor,
    *,
    alive: torch.Tensor | None,
    max_results: int | None,
    descending: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """faiss's range search results made gpuann's: the entries ``alive`` keeps (None: all),
    at most ``max_results`` of them (default :data:`DEFAULT_MAX_RESULTS`; more raise
    ``ValueError`` naming the radius), each query's ordered by score, then id.

    Parameters
    ----------
    lims : torch.Tensor, shape (Q + 1,), int64 (CPU)
    scores, ids : torch.Tensor, shape (lims[-1],)
    alive : torch.Tensor, shape (lims[-1],), bool, or None

    Returns
    -------
    lims, scores, ids : torch.Tensor

    >>> lims, s, i = finish_ranges(torch.tensor([0, 3]), torch.tensor([2.0, 1.0, 1.0]),
    ...     torch.tensor([7, 9, 4]), alive=torch.tensor([True, True, False]),
    ...     max_results=None, descending=False)
    >>> lims.tolist(), s.tolist(), i.tolist()
    ([0, 2], [1.0, 2.0], [9, 7])
    """
    if alive is not None:
        n_queries = lims.numel() - 1
        query = torch.repeat_interleave(torch.arange(n_queries), lims.diff())
        counts = torch.bincount(query[alive], minlength=n_queries)
        lims = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        scores, ids = scores[alive], ids[alive]
    limit = DEFAULT_MAX_RESULTS if max_results is None else max_results
    if ids.numel() > limit:
        raise ValueError(
            f"radius: more than max_results={limit} results ({ids.numel()}); pass a "
            "tighter radius or a larger max_results"
        )
    scores, ids = order_ranges(lims, scores, ids, descending=descending)
    return lims, scores, ids
