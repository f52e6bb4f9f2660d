"""Memory budgets and the tile sizes they allow.

A search never allocates a (queries × database) matrix: it works on tiles of
``query_block × database_block`` scores whose working set fits a memory budget.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import torch

__all__ = [
    "BUDGET_REFRESH_SECONDS",
    "DEFAULT_CPU_BUDGET",
    "TilePlan",
    "check_budget",
    "default_budget",
    "plan_tiles",
]

MiB = 1 << 20
DEFAULT_CPU_BUDGET = 256 * MiB
#: Largest default budget on a GPU; the default is also capped at a quarter of free memory.
MAX_CUDA_BUDGET = 2048 * MiB
#: Smallest budget accepted: enough for one row against one small tile.
MIN_BUDGET = 1 * MiB


#: Seconds a CUDA device's default budget is reused before free memory is read again.
BUDGET_REFRESH_SECONDS = 1.0
_cuda_budgets: dict[int, tuple[float, int]] = {}
_cuda_budgets_lock = threading.Lock()


def default_budget(device: torch.device) -> int:
    """The default working-memory budget of a search on ``device``, in bytes.

    256 MiB on the CPU; on CUDA a quarter of the free memory, at most 2 GiB. The free memory
    (``cudaMemGetInfo``) is read at most once per ``BUDGET_REFRESH_SECONDS`` per device, not
    on every search.
    """
    if device.type != "cuda":
        return DEFAULT_CPU_BUDGET
    index = device.index if device.index is not None else torch.cuda.current_device()
    now = time.monotonic()
    with _cuda_budgets_lock:
        cached = _cuda_budgets.get(index)
        if cached is not None and now - cached[0] < BUDGET_REFRESH_SECONDS:
            return cached[1]
    free, _ = torch.cuda.mem_get_info(index)
    budget = int(max(MIN_BUDGET * 16, min(MAX_CUDA_BUDGET, free // 4)))
    with _cuda_budgets_lock:
        _cuda_budgets[index] = (now, budget)
    return budget


def check_budget(memory_budget: int | None, device: torch.device) -> int:
    """Validate a user budget (bytes) or pick the default."""
    if memory_budget is None:
        return default_budget(device)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)):
        raise TypeError(
            f"memory_budget: expected an int (bytes), got {type(memory_budget).__name__}"
        )
    memory_budget = int(memory_budget)
    if memory_budget < MIN_BUDGET:
        raise ValueError(
            f"memory_budget: expected at least {MIN_BUDGET} bytes (1 MiB), got {memory_budget}"
        )
    return memory_budget


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How a search is cut into tiles.

    Attributes
    ----------
    query_block : int
        Queries processed together.
    database_block : int
        Database rows scored per step.
    bytes_per_step : int
        Estimated peak working memory of one step.
    """

    query_block: int
    database_block: int
    bytes_per_step: int


def plan_tiles(
    n_queries: int,
    n_database: int,
    dim: int,
    k: int,
    memory_budget: int,
    bytes_per_score: int,
    preferred_database_block: int,
) -> TilePlan:
    """Choose tile sizes whose estimated working set fits ``memory_budget``.

    Parameters
    ----------
    n_queries, n_database, dim, k : int
        The problem's size.
    memory_budget : int
        Bytes available for the search's temporary tensors.
    bytes_per_score : int
        Temporary bytes per (query, database row) score in a tile: the score itself and the
        selection's workspace.
    preferred_database_block : int
        The database tile the backend runs best with (a cache-sized tile on CPU, larger on GPU).

    >>> plan = plan_tiles(10_000, 1_000_000, 128, 10, 64 << 20, 8, 4096)
    >>> plan.bytes_per_step <= 64 << 20
    True
    """
    n_queries, n_database = max(n_queries, 1), max(n_database, 1)
    database_block = min(n_database, preferred_database_block)

    def cost(qb: int, db: int) -> int:
        tile = qb * db * bytes_per_score
        chunk = db * dim * 4 + db * 8  # float32 copy of the database tile, its norms or scales
        state = qb * (max(k, 1) + db) * 12 * 2  # running and merged (value, id) lists
        queries = qb * dim * 4
        return tile + chunk + state + queries

    while database_block > 1 and cost(1, database_block) > memory_budget:
        database_block //= 2
    query_block = min(n_queries, 4096)
    while query_block > 1 and cost(query_block, database_block) > memory_budget:
        query_block //= 2
    if cost(query_block, database_block) > memory_budget:
        raise ValueError(
            f"memory_budget: {memory_budget} bytes cannot hold even one query against one "
            f"database row with k={k}, dim={dim}; raise the budget"
        )
    return TilePlan(query_block, database_block, cost(query_block, database_block))
