"""Exact search with plain torch ops: tiled matrix multiply and a running tie-aware top-k.

Runs on every device torch runs on. Scores are computed in float32 as a "smaller is nearer"
value: ``‖x‖² − 2⟨q, x⟩`` for L2 (``‖q‖²`` is added to the k winners only) and ``−⟨q, x⟩ · s``
for inner product. Tiles are visited in row order, so ties go to the lower row for free.

After the first ``k`` rows, each CPU tile is filtered against every query's current k-th best
score: only the few entries that beat it are gathered and merged, so most scores cost one
comparison rather than a top-k pass. On CUDA the same filter would need a host sync per tile,
so there every tile goes through ``topk_lex`` (this backend is CUDA's fallback; the Triton
backend is its fast path).
"""

from __future__ import annotations

import torch

from gpuann.backends.base import ExactBackend, SearchRequest
from gpuann.budget import plan_tiles
from gpuann.metrics import Metric
from gpuann.topk import merge_topk, topk_lex

__all__ = ["TorchBackend", "torch_exact_search"]

#: Database rows per tile: cache-sized on CPU, larger on GPU.
_CPU_DATABASE_BLOCK = 4096
_CUDA_DATABASE_BLOCK = 65536
#: Temporary bytes per score: the score, plus the filter mask (CPU) or packed keys (CUDA).
_CPU_BYTES_PER_SCORE = 6
_CUDA_BYTES_PER_SCORE = 28
#: Columns per group in the CPU filter's first pass.
_GROUP = 64


class TorchBackend(ExactBackend):
    """Tiled ``mm`` + top-k in torch; supports every input (the fallback of last resort)."""

    name = "torch"

    def not_supported_reasons(self, request: SearchRequest) -> list[str]:
        return []

    def search(self, request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
        return torch_exact_search(request)


def torch_exact_search(request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``request`` (see :class:`~gpuann.backends.base.ExactBackend` for the contract)."""
    queries, database, k = request.queries, request.database, request.k
    n_queries, n_database, dim = queries.shape[0], database.shape[0], database.shape[1]
    device = database.device
    on_cpu = device.type == "cpu"
    plan = plan_tiles(
        n_queries,
        n_database,
        dim,
        k,
        request.memory_budget,
        bytes_per_score=_CPU_BYTES_PER_SCORE if on_cpu else _CUDA_BYTES_PER_SCORE,
        preferred_database_block=_CPU_DATABASE_BLOCK if on_cpu else _CUDA_DATABASE_BLOCK,
    )
    k_found = min(k, n_database)
    distances = torch.full((n_queries, k), request.metric.missing_distance, device=device)
    positions = torch.full((n_queries, k), -1, dtype=torch.int64, device=device)
    if n_database == 0 or n_queries == 0:
        return distances, positions
    l2 = request.metric is Metric.L2
    sqnorms = request.database_sqnorms
    if l2 and sqnorms is None:
        sqnorms = _row_sqnorms(database, plan.database_block)
    scale = request.column_scale
    score_buffer = torch.empty(plan.query_block * plan.database_block, device=device)
    for q0 in range(0, n_queries, plan.query_block):
        q = queries[q0 : q0 + plan.query_block].float()
        if not l2:
            q = -q  # nearest = smallest -<q, x>
        top_values = torch.empty((q.shape[0], 0), device=device)
        top_positions = torch.empty((q.shape[0], 0), dtype=torch.int64, device=device)
        for r0 in range(0, n_database, plan.database_block):
            x = database[r0 : r0 + plan.database_block]
            x = x if x.dtype == torch.float32 else x.float()
            scores = score_buffer[: q.shape[0] * x.shape[0]].view(q.shape[0], x.shape[0])
            if l2:
                torch.addmm(sqnorms[r0 : r0 + x.shape[0]], q, x.T, alpha=-2.0, out=scores)
            else:
                torch.mm(q, x.T, out=scores)
                if scale is not None:
                    scores.mul_(scale[r0 : r0 + x.shape[0]])
            if on_cpu and top_values.shape[1] == k_found:
                top_values, top_positions = _merge_filtered(top_values, top_positions, scores, r0)
            else:
                values, cols = topk_lex(scores, k_found)
                top_values, top_positions = merge_topk(
                    top_values, top_positions, values, cols + r0, k_found
                )
        if l2:
            query_sqnorms = (q * q).sum(dim=1, keepdim=True)
            top_values = (top_values + query_sqnorms).clamp_(min=0.0)
        else:
            top_values = -top_values
        distances[q0 : q0 + q.shape[0], :k_found] = top_values
        positions[q0 : q0 + q.shape[0], :k_found] = top_positions
    return distances, positions


def _row_sqnorms(database: torch.Tensor, block: int) -> torch.Tensor:
    """Squared row norms in float32, computed block by block."""
    out = torch.empty(database.shape[0], device=database.device)
    for r0 in range(0, database.shape[0], block):
        x = database[r0 : r0 + block].float()
        out[r0 : r0 + x.shape[0]] = (x * x).sum(dim=1)
    return out


def _merge_filtered(
    top_values: torch.Tensor, top_positions: torch.Tensor, scores: torch.Tensor, r0: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the entries of ``scores`` that beat each row's current k-th best (CPU path).

    An entry equal to the k-th best loses the tie: every running entry has a lower row.
    """
    threshold = top_values[:, -1:]
    n_rows, width = scores.shape
    if width % _GROUP == 0:
        # A min over groups of columns is one cheap pass; only groups whose min beats the
        # threshold are looked at element by element.
        groups = scores.view(n_rows, width // _GROUP, _GROUP)
        group_rows, group_ids = torch.nonzero(groups.amin(dim=2) < threshold, as_tuple=True)
        hits = groups[group_rows, group_ids] < threshold[group_rows]
        hit_groups, hit_cols = torch.nonzero(hits, as_tuple=True)
        rows = group_rows[hit_groups]
        cols = group_ids[hit_groups] * _GROUP + hit_cols
    else:
        rows, cols = torch.nonzero(scores < threshold, as_tuple=True)
    if rows.numel() == 0:
        return top_values, top_positions
    counts = torch.bincount(rows, minlength=scores.shape[0])
    active = counts.nonzero().flatten()
    rank = torch.cumsum(counts > 0, dim=0) - 1  # row -> index among active rows
    start = torch.cumsum(counts, dim=0) - counts  # first survivor of each row
    slot = torch.arange(rows.numel(), device=rows.device) - start[rows]
    width = int(counts.max())
    cand_values = torch.full((active.numel(), width), float("nan"), device=scores.device)
    cand_positions = torch.full(
        (active.numel(), width), -1, dtype=torch.int64, device=scores.device
    )
    cand_values[rank[rows], slot] = scores[rows, cols]
    cand_positions[rank[rows], slot] = cols + r0
    merged_values, merged_positions = merge_topk(
        top_values[active], top_positions[active], cand_values, cand_positions, top_values.shape[1]
    )
    top_values = top_values.index_copy(0, active, merged_values)
    top_positions = top_positions.index_copy(0, active, merged_positions)
    return top_values, top_positions
