"""Exact rescoring of per-query candidate lists with stored full-precision vectors.

Each query has its own candidates, so this is a batched gather + ``bmm`` rather than one call
of :func:`gpuann.exact.exact_search` per query; the arithmetic is that of the exact torch
backend (float32 accumulation; L2 as ``‖x‖² − 2⟨q, x⟩``, plus ``‖q‖²`` for the winners,
clamped at 0), and selection is :func:`gpuann.topk.topk_by_id`: equal distances by lower id.
"""

from __future__ import annotations

import torch

from gpuann.metrics import Metric
from gpuann.topk import topk_by_id

__all__ = ["rescore_candidates"]


def rescore_candidates(
    queries: torch.Tensor,
    vectors: torch.Tensor,
    sqnorms: torch.Tensor | None,
    rows: torch.Tensor,
    k: int,
    metric: Metric,
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each query's candidate rows by exact distance.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), float32 (normalised by the caller for cosine)
    vectors : torch.Tensor, shape (N, d), float32 / float16 / bfloat16, rows sorted by id
    sqnorms : torch.Tensor, shape (N,), float32; required for ``Metric.L2``
    rows : torch.Tensor, shape (Q, R), int64, ``-1`` for no candidate
    k : int
    metric : Metric
        ``L2`` (ascending) or ``IP`` / ``COSINE`` (similarity, descending).
    memory_budget : int
        Bytes for the gathered candidate vectors of a block of queries.

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32; the metric's missing value where absent
    rows : torch.Tensor, shape (Q, k), int64; ``-1`` where absent
    """
    n_queries, n_candidates = rows.shape
    dim = vectors.shape[1]
    block = max(1, memory_budget // max(1, 2 * 4 * n_candidates * dim))
    out_values = torch.empty((n_queries, k), device=queries.device)
    out_rows = torch.empty((n_queries, k), dtype=torch.int64, device=queries.device)
    l2 = metric is Metric.L2
    for q0 in range(0, n_queries, block):
        q = queries[q0 : q0 + block].float()
        r = rows[q0 : q0 + block]
        safe = r.clamp(min=0)
        candidates = vectors[safe].float()  # (b, R, d)
        dots = torch.bmm(candidates, q[:, :, None]).squeeze(2)
        scores = sqnorms[safe] - 2 * dots if l2 else -dots
        values, best = topk_by_id(scores, r, k)
        values = (values + (q * q).sum(dim=1, keepdim=True)).clamp_(min=0.0) if l2 else -values
        width = values.shape[1]
        values = torch.where(best < 0, metric.missing_distance, values)
        out_values[q0 : q0 + block, :width] = values
        out_rows[q0 : q0 + block, :width] = best
        out_values[q0 : q0 + block, width:] = metric.missing_distance
        out_rows[q0 : q0 + block, width:] = -1
    return out_values, out_rows
