"""Exact search with plain torch ops: the tiled engine of :mod:`gpuann.engine` on one chunk.

Runs on every device torch runs on and supports every request (the fallback of last resort).
Tiles of scores come from ``mm``/``addmm`` in float32 and feed a running tie-aware top-k (see
:mod:`gpuann.engine.running` for how each tile is selected); out-of-core streaming runs the
same engine on the chunks it transfers, so both give the same bits.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from gpuann.backends.base import ExactBackend, SearchRequest
from gpuann.backends.dispatch import register_backend
from gpuann.engine.search import Chunk, TiledSearch
from gpuann.engine.tiles import plan_score_tiles
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
    plan = plan_score_tiles(n_queries, n_database, dim, k, request.memory_budget, device)
    search = TiledSearch(
        queries,
        k_found,
        request.metric is Metric.L2,
        plan,
        filters=request.row_filters(),
        memory_budget=request.memory_budget,
        query_scale=request.query_scale,
    )
    search.add(Chunk(0, database, request.database_sqnorms, request.column_scale))
    distances[:, :k_found], positions[:, :k_found] = search.result()
    return distances, positions


register_backend("exact_search", TorchBackend())
