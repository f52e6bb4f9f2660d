"""Score tiles: how a search is cut into tiles, and the float32 scores of one tile.

Scores are "smaller is nearer" values: ``‖x‖² − 2⟨q, x⟩`` for L2 (``‖q‖²`` is added to the k
winners only, by :meth:`TileScorer.finish`) and ``−⟨q, x⟩ · s`` for inner product. The float
result of a matrix product depends on its shape, so every caller that must give the bits of
:func:`gpuann.knn` (the torch backend, out-of-core streaming) plans its tiles with
:func:`plan_score_tiles` and scores them with :class:`TileScorer`.
"""

from __future__ import annotations

import dataclasses

import torch

from gpuann.budget import TilePlan, plan_tiles
from gpuann.engine.cpu_blas import numpy_mm_t
from gpuann.engine.int8_dots import int8_scores

__all__ = ["DatabaseTile", "TileScorer", "plan_score_tiles"]

#: Database rows per tile: cache-sized on CPU, larger on GPU.
_CPU_DATABASE_BLOCK = 4096
_CUDA_DATABASE_BLOCK = 65536
#: Temporary bytes per score: the score, plus the filter mask (CPU) or packed keys (CUDA).
_CPU_BYTES_PER_SCORE = 6
_CUDA_BYTES_PER_SCORE = 28
#: Columns per group in the CPU threshold filter's first pass (database tiles are multiples).
GROUP = 64
#: Scores per CPU tile: small query blocks get taller database tiles (fewer, larger ops).
_CPU_TILE_SCORES = 1 << 22
_CPU_MAX_DATABASE_BLOCK = 1 << 20
#: Large ``k`` on the CPU: every tile after the first merges its threshold survivors into
#: lists of ``k``, so fewer, taller tiles cost less (measured: Q = 4096, N = 10⁵, d = 128,
#: k = 100, 2 threads: 2.82 s with 2048 × 4096 tiles, 2.52 s with 512 × 16 384; no change at
#: k = 10), as long as the budget leaves query blocks of at least ``_LARGE_K_MIN_QUERIES``.
_LARGE_K = 64
_LARGE_K_DATABASE_BLOCK = 16384
_LARGE_K_MIN_QUERIES = 512
#: Query blocks at least this tall fold ‖x‖² into the matrix product as one more column
#: instead of a broadcast bias, which costs a write and a re-read of the whole score tile.
_AUGMENT_MIN_QUERIES = 32


def plan_score_tiles(
    n_queries: int, n_database: int, dim: int, k: int, memory_budget: int, device: torch.device
) -> TilePlan:
    """The tiles of a tiled exact search on ``device`` under ``memory_budget`` bytes.

    >>> plan_score_tiles(100, 10**6, 128, 10, 256 << 20, torch.device("cpu")).database_block
    41920
    """
    if device.type == "cpu":
        shape = (n_queries, n_database, dim, k, memory_budget, _CPU_BYTES_PER_SCORE)
        plan = plan_tiles(*shape, _CPU_DATABASE_BLOCK)
        # Few queries: taller database tiles mean fewer, larger ops — unless the budget would
        # then take queries out of the block.
        rows = _CPU_TILE_SCORES // max(1, plan.query_block)
        taller = min(_CPU_MAX_DATABASE_BLOCK, rows) // GROUP * GROUP
        if taller > plan.database_block:
            tall = plan_tiles(*shape, taller)
            plan = tall if tall.query_block >= plan.query_block else plan
        if k >= _LARGE_K and plan.database_block < min(n_database, _LARGE_K_DATABASE_BLOCK):
            tall = plan_tiles(*shape, _LARGE_K_DATABASE_BLOCK)
            if tall.query_block >= min(plan.query_block, _LARGE_K_MIN_QUERIES):
                plan = tall
        if GROUP < plan.database_block < n_database and plan.database_block % GROUP:
            # Tiles after the first go through the threshold filter, whose cheap first pass
            # needs whole groups (a budget-halved block such as 250 000 has none).
            block = plan.database_block // GROUP * GROUP
            plan = dataclasses.replace(plan, database_block=block)
        return plan
    return plan_tiles(
        n_queries, n_database, dim, k, memory_budget, _CUDA_BYTES_PER_SCORE, _CUDA_DATABASE_BLOCK
    )


class DatabaseTile:
    """One tile of database rows and the forms of it the scorer needs, each made once.

    Parameters
    ----------
    x : torch.Tensor, shape (n, d), floating
    start : int
        Position of the tile's first row in the database.
    sqnorms : torch.Tensor or None, shape (n,), float32
        L2 only: the rows' squared norms.
    scale : torch.Tensor or None, shape (n,), float32
        Inner product only: per-row multiplier of the score.
    augmented_buffer : torch.Tensor or None, shape (>= n, d + 1), float32
        Workspace for the ``[x, ‖x‖²]`` copy used by tall query blocks.
    """

    def __init__(
        self,
        x: torch.Tensor,
        start: int,
        sqnorms: torch.Tensor | None,
        scale: torch.Tensor | None,
        augmented_buffer: torch.Tensor | None = None,
    ) -> None:
        self.x, self.start, self.sqnorms, self.scale = x, start, sqnorms, scale
        self._buffer = augmented_buffer
        self._augmented: torch.Tensor | None = None
        self._float32: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.x.shape[0]

    def float32(self) -> torch.Tensor:
        """The rows as float32 (the tile itself when already float32)."""
        if self._float32 is None:
            self._float32 = self.x if self.x.dtype == torch.float32 else self.x.float()
        return self._float32

    def augmented(self) -> torch.Tensor:
        """``[x, ‖x‖²]``, shape (n, d + 1), float32."""
        if self._augmented is None:
            if self._buffer is None:
                self._buffer = torch.empty((self.rows, self.x.shape[1] + 1), device=self.x.device)
            rows = self._buffer[: self.rows]
            rows[:, :-1].copy_(self.x)
            rows[:, -1].copy_(self.sqnorms)
            self._augmented = rows
        return self._augmented


class TileScorer:
    """Float32 "smaller is nearer" scores of one block of queries against database tiles.

    L2: ``‖x‖² − 2⟨q, x⟩`` (``‖q‖²`` is added to the winners by :meth:`finish`); inner
    product: ``−⟨q, x⟩ · scale``. For L2, a block of at least ``_AUGMENT_MIN_QUERIES`` queries
    computes the scores as one product of ``[−2q, 1]`` with ``[x, ‖x‖²]`` (no broadcast bias
    written into and re-read from the whole tile) when that copy of the tile is cheaper than
    the bias: the tile is converted anyway (16-bit storage), or the block has more queries
    than ``x`` has columns.

    int8 queries (with ``query_scale``) against int8 tiles: ``‖x‖² − 2·s·⟨q, c⟩`` and
    ``−s·⟨q, c⟩`` from exact integer dots (:func:`~gpuann.engine.int8_dots.int8_scores`).

    Parameters
    ----------
    queries : torch.Tensor, shape (B, d), floating, or int8 with ``query_scale``
    l2 : bool
    numpy_blas : bool
        Multiply with numpy's BLAS (CPU, float32; see :mod:`gpuann.engine.cpu_blas`).
    query_scale : torch.Tensor, shape (B,), float32, optional
        int8 queries: each query's power-of-two factor.
    """

    def __init__(
        self,
        queries: torch.Tensor,
        l2: bool,
        numpy_blas: bool = False,
        query_scale: torch.Tensor | None = None,
    ) -> None:
        self._int8 = None
        if queries.dtype == torch.int8:
            self._int8 = (queries.contiguous(), query_scale.float().reshape(-1, 1))
            numpy_blas = False
        q = queries.float()
        self.rows = q.shape[0]
        self.l2 = l2
        self.query_sqnorms = (q * q).sum(dim=1, keepdim=True) if l2 else None
        self.q = q if l2 else -q
        self._augmented = None
        if l2 and q.shape[0] >= _AUGMENT_MIN_QUERIES and self._int8 is None:
            ones = torch.ones((q.shape[0], 1), device=q.device)
            self._augmented = torch.cat([q * -2.0, ones], dim=1)
        self._augment_float32 = q.shape[0] > q.shape[1]
        self._numpy = numpy_blas
        self._q_minus2 = q * -2.0 if self._numpy and l2 else None

    def __call__(self, tile: DatabaseTile, out: torch.Tensor) -> torch.Tensor:
        """Scores (B, n) of ``tile`` into ``out``."""
        if self._int8 is not None:
            q8, scale = self._int8
            int8_scores(q8, tile.x, scale, out)
            if self.l2:  # ‖x‖² − 2·(exact): one rounding, as in the Triton kernel
                return out.mul_(-2.0).add_(tile.sqnorms)
            return out.neg_()
        if self._augmented is not None and (tile.x.dtype != torch.float32 or self._augment_float32):
            return torch.mm(self._augmented, tile.augmented().T, out=out)
        x = tile.float32()
        if self._numpy:
            if self.l2:  # ‖x‖² + (−2q)·x: scaling by −2 is exact
                return numpy_mm_t(self._q_minus2, x, out, tile.sqnorms)
            numpy_mm_t(self.q, x, out)
        elif self.l2:
            return torch.addmm(tile.sqnorms, self.q, x.T, alpha=-2.0, out=out)
        else:
            torch.mm(self.q, x.T, out=out)
        return out if tile.scale is None else out.mul_(tile.scale)

    def finish(self, top_values: torch.Tensor) -> torch.Tensor:
        """Scores of the winners → distances (squared L2, clamped at 0) or similarities."""
        if self.l2:
            return (top_values + self.query_sqnorms).clamp_(min=0.0)
        return -top_values
