"""From faiss's labels to gpuann's results: tie order, padding, and exact re-ranking.

faiss returns each query's labels (the user's ids) sorted by distance, in any order among
equal distances, with ``±FLT_MAX`` next to missing ones. gpuann's results put equal distances
in order of lower id and report missing results as id ``-1`` with ``±inf``; with ``refine``
the candidates are re-scored exactly by the one re-ranking implementation,
:func:`gpuann.refine.rerank_rows`, within the memory budget.
"""

from __future__ import annotations

import torch

from gpuann._rows import IdRows
from gpuann._tiebreak import topk_by_id
from gpuann.ivf.gpu_gaps import GapFilledFaiss, LabelFilter
from gpuann.metrics import Metric
from gpuann.refine import rerank_rows

__all__ = [
    "FETCH_BYTES_PER_CANDIDATE",
    "TIE_LOOKAHEAD",
    "faiss_range_search",
    "pad",
    "refined_search",
    "tie_exact_search",
    "tie_order",
]

#: Working bytes per (query, candidate) of a re-ranked search besides the re-ranking itself:
#: faiss's distance and label, the candidate's row and found flag, the masked row.
FETCH_BYTES_PER_CANDIDATE = 4 + 8 + 8 + 1 + 8
#: Candidates fetched beyond ``k`` to see whether the ``k``-th distance is tied past ``k``.
TIE_LOOKAHEAD = 1
#: Each further round for queries still tied fetches this many times the candidates (PQ
#: codes tie often: doubling took 4 full scans at m = 2, nbits = 4, found by review).
TIE_GROWTH = 8


def refined_search(
    lists: GapFilledFaiss,
    rows: IdRows,
    queries: torch.Tensor,
    k: int,
    nprobe: int,
    factor: int,
    metric: Metric,
    budget: int,
    filters: LabelFilter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``factor · k`` faiss candidates per query re-scored exactly against the stored vectors.

    A block of queries at a time, sized so that the block's faiss results, candidate rows
    and gathered vectors together fit ``budget`` bytes (:func:`gpuann.refine.rerank_rows`
    then gathers the whole block in one pass).

    Parameters
    ----------
    lists : GapFilledFaiss
        The faiss index (its labels are ids of ``rows``).
    rows : IdRows
        With columns ``vectors`` (n, dim) float32 and, for l2, ``sqnorms`` (n,) float32.
    queries : torch.Tensor, shape (Q, dim), float32, contiguous (normalised for cosine)
    k, nprobe, factor : int
    metric : Metric
    budget : int
        Bytes of working memory.
    filters : LabelFilter, optional
        The search's id filters: faiss's candidates are filtered already, so the re-ranking
        only sees eligible ids.

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32 (±inf where missing)
    ids : torch.Tensor, shape (Q, k), int64 (``-1`` where missing)
    """
    stored, wanted = rows.n, k * factor
    width, _, _ = lists.plan(wanted, nprobe, stored, filters)  # what the faiss search fetches
    dim = queries.shape[1]
    per_query = width * (FETCH_BYTES_PER_CANDIDATE + dim * 8 + 32)
    block = max(1, budget // per_query)
    vectors = rows.view("vectors")
    sqnorms = rows.view("sqnorms") if metric is Metric.L2 else None
    n_queries = queries.shape[0]
    out_d = torch.empty((n_queries, k), device=queries.device)
    out_i = torch.empty((n_queries, k), dtype=torch.int64, device=queries.device)
    for q0 in range(0, n_queries, block):
        q = queries[q0 : q0 + block]
        block_filters = None if filters is None else filters.for_queries(slice(q0, q0 + block))
        _, labels, _ = lists.search(q, wanted, nprobe, stored, block_filters)
        found_rows, found = rows.positions(labels)
        candidates = torch.where(found, found_rows, -1)  # missing or tombstoned: none
        del labels, found_rows, found
        d, best = rerank_rows(q, vectors, sqnorms, candidates, k, metric, budget)
        out_d[q0 : q0 + block], out_i[q0 : q0 + block] = d, rows.ids_of(best)
    return out_d, out_i


def tie_exact_search(
    lists: GapFilledFaiss,
    queries: torch.Tensor,
    k: int,
    nprobe: int,
    stored: int,
    metric: Metric,
    filters: LabelFilter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest faiss labels of each query, equal distances by lower id even where
    they straddle the ``k``-th place.

    faiss keeps any of the labels tied at the ``k``-th distance. So ``k + 1`` candidates are
    fetched (:data:`TIE_LOOKAHEAD`); where the ``k``-th distance equals the last one fetched,
    the tie may go on beyond it, and those queries alone are searched again with
    :data:`TIE_GROWTH` times as many candidates, until the last one fetched is farther or
    the lists are exhausted. Each
    round's rows are then ordered by (distance, id) and cut to ``k`` (:func:`tie_order`).
    Without such ties that is one extra candidate per query and one check (on CUDA a host
    sync); on a GPU index a fetch past faiss-gpu's limit runs on the host copy, as for a
    larger ``k``.

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32 (±inf where missing)
    ids : torch.Tensor, shape (Q, k), int64 (``-1`` where missing)
    """
    width = k + TIE_LOOKAHEAD
    distances, labels, masked = lists.search(queries, width, nprobe, stored, filters)
    open_rows = _open_ties(distances, labels, k, width)
    distances, labels = pad(*tie_order(distances, labels, k, metric, masked), k, metric)
    while open_rows is not None:
        width *= TIE_GROWTH
        sub = None if filters is None else filters.for_queries(open_rows)
        d, i, masked = lists.search(queries[open_rows], width, nprobe, stored, sub)
        still_open = _open_ties(d, i, k, width)
        distances[open_rows], labels[open_rows] = pad(
            *tie_order(d, i, k, metric, masked), k, metric
        )
        open_rows = None if still_open is None else open_rows[still_open]
    return distances, labels


def _open_ties(
    distances: torch.Tensor, labels: torch.Tensor, k: int, width: int
) -> torch.Tensor | None:
    """The rows whose ``k``-th distance equals their last fetched one, a valid candidate,
    when faiss may hold more of them (``width`` were asked for and came back); None if none.

    faiss's rows are sorted by distance (live candidates first), so the tie then covers every
    candidate from the ``k``-th to the last.
    """
    if labels.shape[1] < width or width <= k:
        return None  # fewer came back: everything the lists hold was fetched
    tied = (labels[:, -1] >= 0) & (distances[:, k - 1] == distances[:, -1])
    rows = tied.nonzero().squeeze(1)
    return rows if rows.numel() else None


def tie_order(
    distances: torch.Tensor, labels: torch.Tensor, k: int, metric: Metric, masked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` of each row: nearest first, equal distances by lower id, missing (-1)
    last with ±inf.

    faiss returns each row sorted by distance with missing entries last, in any order among
    equal distances; the rows may hold more than ``k`` candidates (the look-ahead of
    :func:`tie_exact_search`). On CPU, when no two neighbouring valid entries up to the
    ``k + 1``-th are equal and nothing was masked (``masked``: tombstones), that order is
    already the final one and the sort is skipped (one comparison pass; on CUDA the check
    would cost a host sync, so the rows are always sorted there).
    """
    missing = metric.missing_distance
    if not masked and labels.device.type == "cpu":
        head = min(labels.shape[1], k + 1)  # ties after the k-th place change nothing
        d, i = distances[:, :head].numpy(), labels[:, :head].numpy()  # numpy: less overhead
        if not ((d[:, 1:] == d[:, :-1]) & (i[:, 1:] >= 0)).any():
            distances, labels = distances[:, :k].contiguous(), labels[:, :k].contiguous()
            distances.numpy()[labels.numpy() < 0] = missing  # a fresh buffer by now
            return distances, labels
    descending = metric.descending
    values, labels = topk_by_id(-distances if descending else distances, labels, k)
    values = -values if descending else values
    return values.masked_fill(labels < 0, missing), labels


def pad(
    distances: torch.Tensor, labels: torch.Tensor, k: int, metric: Metric
) -> tuple[torch.Tensor, torch.Tensor]:
    """Results widened to ``k`` columns with missing entries (id ``-1``, ±inf)."""
    short = k - labels.shape[1]
    if short <= 0:
        return distances, labels
    n = labels.shape[0]
    fill_d = torch.full((n, short), metric.missing_distance, device=distances.device)
    fill_i = torch.full((n, short), -1, dtype=torch.int64, device=labels.device)
    return torch.cat([distances, fill_d], dim=1), torch.cat([labels, fill_i], dim=1)


def faiss_range_search(
    lists: GapFilledFaiss,
    queries: torch.Tensor,
    radius: float,
    nprobe: int,
    metric: Metric,
    max_results: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Range search over ``nprobe`` lists on the host copy (faiss-gpu has none), tombstoned
    ids dropped, each query's results ordered by distance then id (CPU tensors)."""
    from gpuann.ivf import _faiss
    from gpuann.range_search import finish_ranges

    found = _faiss.range_search(lists.host_index(), queries, radius, nprobe)
    lims, distances, labels = (torch.from_numpy(a) for a in found)
    alive = None
    if lists.tombstones.numel():
        alive = ~torch.isin(labels, lists.tombstones.cpu())
    return finish_ranges(
        lims.long(),
        distances,
        labels,
        alive=alive,
        max_results=max_results,
        descending=metric is not Metric.L2,
    )
