"""Exact search with plain torch ops: the tiled engine of :mod:`gpuann.engine` on one chunk.

Runs on every device torch runs on and supports every request (the fallback of last resort).
Tiles of scores come from ``mm``/``addmm`` in float32 and feed a running tie-aware top-k (see
:mod:`gpuann.engine.running` for how each tile is selected); out-of-core streaming runs the
same engine on the chunks it transfers, so both give the same bits. Unfiltered float32
searches on the CPU over at least :data:`~gpuann.engine.verified_cpu.MIN_ROWS` rows run the
verified OpenBLAS passes of :mod:`gpuann.engine.verified_cpu` instead where those apply (the
top-k by pairwise score; streaming runs them too).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from gpuann.backends.base import ExactBackend, SearchRequest
from gpuann.backends.dispatch import register_backend
from gpuann.engine.search import Chunk, TiledSearch
from gpuann.engine.tiles import plan_score_tiles
from gpuann.engine.verified_cpu import verified_applies, verified_search
from gpuann.metrics import Metric

__all__ = ["TorchBackend", "torch_exact_search"]


class TorchBackend(ExactBackend):
    """Tiled ``mm`` + running top-k in torch; supports every input."""

    priority: ClassVar[int] = 100
    name: ClassVar[str] = "torch"
    device_types: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "mps", "xpu")

    def not_supported_reasons(self, request: SearchRequest) -> list[str]:
        return []

    def search(self, request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
        return torch_exact_search(request)


def torch_exact_search(request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``request`` (see :class:`~gpuann.backends.base.ExactBackend` for the contract)."""
    queries, database, k = request.queries, request.database, request.k
    n_queries, n_database, dim = queries.shape[0], database.shape[0], database.shape[1]
    device = database.device
    k_found = min(k, n_database)
    distances = torch.full((n_queries, k), request.metric.missing_distance, device=device)
    positions = torch.full((n_queries, k), -1, dtype=torch.int64, device=device)
    if n_database == 0 or n_queries == 0:
        return distances, positions
    filters = request.row_filters()
    l2 = request.metric is Metric.L2
    if verified_applies(
        device,
        database.dtype,
        filters.keyed,
        n_database,
        n_queries,
        l2,
        request.column_scale,
        request.query_scale,
    ):
        found = verified_search(
            queries,
            k_found,
            l2,
            n_database,
            lambda: _row_chunks(database, request.database_sqnorms, request.memory_budget),
            lambda rows: torch.index_select(database, 0, rows),
            request.memory_budget,
        )
    else:
        plan = plan_score_tiles(n_queries, n_database, dim, k, request.memory_budget, device)
        search = TiledSearch(
            queries,
            k_found,
            l2,
            plan,
            filters=filters,
            memory_budget=request.memory_budget,
            query_scale=request.query_scale,
        )
        search.add(Chunk(0, database, request.database_sqnorms, request.column_scale))
        found = search.result()
    distances[:, :k_found], positions[:, :k_found] = found
    return distances, positions


def _row_chunks(
    database: torch.Tensor, sqnorms: torch.Tensor | None, memory_budget: int
) -> list[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """The database as one chunk, or, when its rows are not contiguous, as views the verified
    passes copy one at a time (a quarter of the budget each)."""
    if database.is_contiguous():
        return [(0, database, sqnorms)]
    step = max(4096, memory_budget // (4 * 4 * max(1, database.shape[1])))
    return [
        (r0, database[r0 : r0 + step], None if sqnorms is None else sqnorms[r0 : r0 + step])
        for r0 in range(0, database.shape[0], step)
    ]


register_backend("exact_search", TorchBackend())
