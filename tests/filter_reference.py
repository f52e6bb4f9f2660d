"""Float64 reference of a filtered exact search with a tie order, shared by the filter tests.

Every eligible (query, row) pair is scored in float64; each row of the result is the ``k``
best by (distance, tie order), padded with ``-1`` / ±inf when fewer are eligible.
"""

from __future__ import annotations

import numpy as np
import torch
from reference import reference_scores

__all__ = ["filtered_reference"]


def filtered_reference(
    queries,
    database,
    k: int,
    metric: str,
    *,
    excluded=None,
    allowed=None,
    row_labels=None,
    query_labels=None,
    tie=None,
):
    """(distances float64 (Q, k), rows int64 (Q, k)) of the filtered search.

    ``excluded`` (Q, m) rows (-1 pads), ``allowed`` (N,) bool, labels (N,) and (Q,) (negative
    row labels never match), ``tie`` (N,) the tie order (default: the row).
    """
    scores = reference_scores(queries, database, metric)
    n_queries, n = scores.shape
    ok = np.ones((n_queries, n), dtype=bool)
    if excluded is not None:
        for row, skip in enumerate(torch.as_tensor(excluded).tolist()):
            ok[row, [s for s in skip if 0 <= s < n]] = False
    if allowed is not None:
        ok &= torch.as_tensor(allowed).cpu().numpy()[None, :]
    if row_labels is not None:
        rl = torch.as_tensor(row_labels).cpu().numpy()
        ql = torch.as_tensor(query_labels).cpu().numpy()
        ok &= (rl[None, :] != ql[:, None]) | (rl[None, :] < 0)
    tie = np.arange(n) if tie is None else torch.as_tensor(tie).cpu().numpy()
    key = scores if metric == "l2" else -scores
    D = np.full((n_queries, k), np.inf if metric == "l2" else -np.inf)
    I = np.full((n_queries, k), -1, dtype=np.int64)
    for row in range(n_queries):
        rows = np.nonzero(ok[row])[0]
        order = rows[np.lexsort((tie[rows], key[row, rows]))][:k]
        D[row, : len(order)] = scores[row, order]
        I[row, : len(order)] = order
    return D, I
