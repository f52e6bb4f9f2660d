"""Exact ground truth and recall@k with ann-benchmarks' distance rule.

Distances are recomputed directly (``Σ (q - x)²``, or the dot product, in float32) for both
the true neighbours and the returned ones, so a returned vector tied with the k-th true
neighbour gets exactly the same number and counts, whatever order the index put ties in, and
the approximate distances an index reports (PQ codes) play no part.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gpuann._validate import as_float_matrix
from gpuann.exact import knn
from gpuann.metrics import Metric, as_metric

__all__ = [
    "DEFAULT_EPSILON",
    "GroundTruth",
    "ground_truth",
    "neighbour_distances",
    "recall_at_k",
    "recall_by_distance",
]

#: ann-benchmarks' default ε (``knn_threshold`` in ``ann_benchmarks/plotting/metrics.py``).
DEFAULT_EPSILON = 1e-3
#: Elements of the (chunk, k, d) gathered block per step of :func:`neighbour_distances`.
_CHUNK_ELEMENTS = 1 << 24


def neighbour_distances(
    queries: torch.Tensor, database: torch.Tensor, rows: torch.Tensor, metric: str | Metric
) -> torch.Tensor:
    """Distances from each query to the given database rows, computed directly.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), floating
    database : torch.Tensor, shape (N, d), floating, on the queries' device
    rows : torch.Tensor, shape (Q, k), int64
        Row numbers of ``database``; ``-1`` for none.
    metric : {"l2", "ip", "cosine"}

    Returns
    -------
    torch.Tensor, shape (Q, k), float32
        Squared L2 distance, inner product or cosine similarity; the metric's missing
        distance (``+inf`` for l2, ``-inf`` otherwise) where ``rows`` is ``-1``.

    >>> db = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> neighbour_distances(torch.tensor([[0.0, 0.0]]), db, torch.tensor([[1, -1]]), "l2")
    tensor([[25., inf]])
    """
    metric = as_metric(metric)
    q, x = queries.float(), database.float()
    if metric is Metric.COSINE:
        q, x = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(x, dim=1)
    nq, k = rows.shape
    out = torch.empty((nq, k), dtype=torch.float32, device=rows.device)
    if nq == 0 or k == 0:
        return out
    step = max(1, _CHUNK_ELEMENTS // max(1, k * x.shape[1]))
    for start in range(0, nq, step):
        r = rows[start : start + step]
        vectors = x[r.clamp(min=0)]  # (chunk, k, d)
        qc = q[start : start + step].unsqueeze(1)
        if metric is Metric.L2:
            values = (vectors - qc).square().sum(dim=2)
        else:
            values = (vectors * qc).sum(dim=2)
        out[start : start + step] = values.masked_fill(r < 0, metric.missing_distance)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruth:
    """The exact ``k`` nearest neighbours of a query set (see :func:`ground_truth`).

    Attributes
    ----------
    ids : torch.Tensor, shape (Q, k), int64
        Ids of the true neighbours, nearest first; ``-1`` when the database holds fewer
        than ``k`` vectors.
    distances : torch.Tensor, shape (Q, k), float32
        Their distances, recomputed directly (see :func:`neighbour_distances`).
    metric : Metric
    queries : torch.Tensor, shape (Q, d)
    database : torch.Tensor, shape (N, d)
        Kept (a reference, not a copy) to recompute the distances of returned neighbours.
    database_ids : torch.Tensor, shape (N,), int64, or None
        The id of each database row in the index; None for ``0..N-1``.
    """

    ids: torch.Tensor
    distances: torch.Tensor
    metric: Metric
    queries: torch.Tensor
    database: torch.Tensor
    database_ids: torch.Tensor | None = None

    @property
    def k(self) -> int:
        """Neighbours per query."""
        return self.ids.shape[1]

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Database rows of index ``ids`` (same shape); ``-1`` for ``-1`` and unknown ids."""
        ids = ids.to(self.database.device)
        n = self.database.shape[0]
        if self.database_ids is None:
            return torch.where((ids >= 0) & (ids < n), ids, torch.full_like(ids, -1))
        if n == 0:
            return torch.full_like(ids, -1)
        sorted_ids, order = torch.sort(self.database_ids)
        pos = torch.searchsorted(sorted_ids, ids).clamp(max=n - 1)
        found = (sorted_ids[pos] == ids) & (ids >= 0)
        return torch.where(found, order[pos], torch.full_like(ids, -1))

    def __repr__(self) -> str:
        q, k = self.ids.shape
        return (
            f"GroundTruth(queries={q}, k={k}, database={self.database.shape[0]}, "
            f"metric={self.metric.value!r}, device={str(self.ids.device)!r})"
        )


def ground_truth(
    queries: Any,
    database: Any,
    k: int,
    metric: str | Metric = "l2",
    *,
    ids: Any = None,
    memory_budget: int | None = None,
) -> GroundTruth:
    """Exact neighbours of ``queries`` in ``database``, found with :func:`gpuann.knn`.

    Parameters
    ----------
    queries : torch.Tensor or numpy.ndarray, shape (Q, d), floating
        Moved to the database's device.
    database : torch.Tensor or numpy.ndarray, shape (N, d), floating
        The vectors the evaluated index holds, in any order.
    k : int
    metric : {"l2", "ip", "cosine"}
        The evaluated index's metric.
    ids : int64 tensor, array or list, shape (N,), optional
        The ids the index gave the database rows; default ``0..N-1`` (a first ``add``
        without ids).
    memory_budget : int, optional
        Passed to :func:`gpuann.knn`.

    Returns
    -------
    GroundTruth

    >>> db = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    >>> gt = ground_truth(torch.tensor([[1.2]]), db, k=2)
    >>> gt.ids, gt.distances
    (tensor([[1, 2]]), tensor([[0.0400, 0.6400]]))
    """
    metric = as_metric(metric)
    database, _ = as_float_matrix(database, "database")
    queries, _ = as_float_matrix(queries, "queries", dim=database.shape[1])
    queries = queries.to(database.device)
    rows = knn(queries, database, k, metric, memory_budget=memory_budget).ids
    distances = neighbour_distances(queries, database, rows, metric)
    database_ids = None
    true_ids = rows
    if ids is not None:
        database_ids = torch.as_tensor(ids, dtype=torch.int64).to(database.device)
        if database_ids.shape != (database.shape[0],):
            raise ValueError(f"ids: expected shape ({database.shape[0]},)")
        true_ids = torch.where(rows >= 0, database_ids[rows.clamp(min=0)], rows)
    return GroundTruth(true_ids, distances, metric, queries, database, database_ids)


def _first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """(Q, k) bool: True where the id does not appear earlier in its row."""
    k = ids.shape[1]
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # (Q, k, k): [q, i, j] = ids[i] == ids[j]
    earlier = torch.ones(k, k, dtype=torch.bool, device=ids.device).tril(diagonal=-1)
    return ~(same & earlier).any(dim=2)


def recall_by_distance(
    found_distances: Any,
    found_ids: Any,
    true_distances: Any,
    true_ids: Any,
    k: int | None = None,
    *,
    metric: str | Metric = "l2",
    epsilon: float = DEFAULT_EPSILON,
) -> float:
    """Recall@k with ann-benchmarks' rule, from true distances of the returned neighbours.

    A returned neighbour (one of the first ``k`` of its row) counts when its true distance is
    within the k-th true distance + ``epsilon`` (for ip / cosine: its similarity at least the
    k-th similarity − ``epsilon``), so any of several vectors tied at the k-th distance counts.
    Returned ids of ``-1`` and repeats of an id already counted in the row do not count. When
    the database holds fewer than ``k`` vectors (``-1`` in ``true_ids``), a row needs only its
    valid true neighbours, and its threshold is its last valid true distance.

    Parameters
    ----------
    found_distances : tensor or array, shape (Q, k'), float
        *True* distances of the returned neighbours (e.g. from :func:`neighbour_distances`).
    found_ids : tensor or array, shape (Q, k'), int64
    true_distances : tensor or array, shape (Q, K), float, each row sorted nearest first
    true_ids : tensor or array, shape (Q, K), int64, ``-1`` for none
    k : int, optional
        Default ``K``. The first ``k`` returned and true columns are used.
    metric : {"l2", "ip", "cosine"}
    epsilon : float

    Returns
    -------
    float
        Neighbours counted / valid true neighbours, over all queries (1.0 when none is valid).

    >>> recall_by_distance([[1.0, 2.0, 9.0]], [[4, 5, 6]], [[1.0, 2.0, 3.0]], [[4, 5, 7]])
    0.6666666666666666
    """
    metric = as_metric(metric)
    true_ids = torch.as_tensor(true_ids)
    device = true_ids.device
    found_d = torch.as_tensor(found_distances, dtype=torch.float32).to(device)
    found_i = torch.as_tensor(found_ids).to(device)
    true_d = torch.as_tensor(true_distances, dtype=torch.float32).to(device)
    k = true_ids.shape[1] if k is None else int(k)
    if not (found_d.ndim == found_i.ndim == true_d.ndim == true_ids.ndim == 2):
        raise ValueError("expected (Q, k) matrices")
    if found_d.shape != found_i.shape or true_d.shape != true_ids.shape:
        raise ValueError("distances and ids must have the same shape")
    if found_i.shape[0] != true_ids.shape[0]:
        raise ValueError(f"found has {found_i.shape[0]} rows, truth {true_ids.shape[0]}")
    if not 0 < k <= true_ids.shape[1]:
        raise ValueError(f"k: expected 1 to {true_ids.shape[1]}, got {k}")
    found_d, found_i = found_d[:, :k], found_i[:, :k]
    valid = (true_ids[:, :k] >= 0).sum(dim=1)  # (Q,)
    last = (valid - 1).clamp(min=0).unsqueeze(1)
    threshold = true_d[:, :k].gather(1, last)  # (Q, 1)
    # ip / cosine: larger is nearer, so the bound is the k-th similarity - epsilon.
    sign = -1.0 if metric.descending else 1.0
    within = sign * found_d <= sign * threshold + epsilon
    counted = within & (found_i >= 0) & torch.isfinite(found_d) & _first_occurrence(found_i)
    hits = torch.minimum(counted.sum(dim=1), valid)
    total = int(valid.sum())
    return float(hits.sum()) / total if total else 1.0


def recall_at_k(
    found: Any,
    truth: GroundTruth,
    k: int | None = None,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> float:
    """Recall@k of a search result against exact ground truth (ann-benchmarks' rule).

    The true distances of the returned ids are recomputed from ``truth.database``; the
    distances the index reported are not used, and a tie with the k-th neighbour counts.

    Parameters
    ----------
    found : SearchResult, (distances, ids) tuple, or ids tensor / array of shape (Q, k')
    truth : GroundTruth
        From :func:`ground_truth` over the same queries.
    k : int, optional
        Default ``truth.k``.
    epsilon : float

    Returns
    -------
    float

    >>> db = torch.tensor([[0.0], [1.0], [1.0], [5.0]])
    >>> truth = ground_truth(torch.tensor([[0.9]]), db, k=2)
    >>> recall_at_k(torch.tensor([[2, 1]]), truth), recall_at_k(torch.tensor([[2, 0]]), truth)
    (1.0, 0.5)
    """
    ids = found[1] if isinstance(found, tuple) else found
    ids = torch.as_tensor(ids).to(truth.database.device)
    if ids.ndim != 2 or ids.shape[0] != truth.ids.shape[0]:
        raise ValueError(f"found: expected ({truth.ids.shape[0]}, k) ids, got {tuple(ids.shape)}")
    rows = truth.rows_of(ids)
    distances = neighbour_distances(truth.queries, truth.database, rows, truth.metric)
    ids = torch.where(rows >= 0, ids, rows)
    return recall_by_distance(
        distances, ids, truth.distances, truth.ids, k, metric=truth.metric, epsilon=epsilon
    )
