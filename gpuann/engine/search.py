"""The tile loop of exact search, over a database that arrives in chunks of rows.

One loop for every torch-side exact search: the in-memory torch backend passes its database
as a single chunk; out-of-core streaming (:mod:`gpuann.batch.streaming`) passes the chunks
its transfers deliver. Chunks arrive in row order and hold whole tiles (except the last), so
tile shapes, and with them the bits of every score, are those of the in-memory search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from gpuann.budget import TilePlan
from gpuann.engine.cpu_blas import use_numpy_blas
from gpuann.engine.eligibility import RowFilters
from gpuann.engine.heap_select import HeapTopK, heap_select_applies
from gpuann.engine.running import RunningTopK
from gpuann.engine.tiles import DatabaseTile, TileScorer

__all__ = ["Chunk", "TiledSearch"]


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Consecutive database rows on the search's device.

    Attributes
    ----------
    start : int
        Position of the first row in the database.
    rows : torch.Tensor, shape (n, d), floating
    sqnorms, scale : torch.Tensor or None, shape (n,), float32
        Squared norms (L2) or score multipliers (inner product) of the rows, when known;
        otherwise computed per tile (L2 norms; no multiplier for an inner product).
    """

    start: int
    rows: torch.Tensor
    sqnorms: torch.Tensor | None = None
    scale: torch.Tensor | None = None


class TiledSearch:
    """A running exact top-k of ``queries`` against database chunks fed in row order.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), floating, on the database's device
        For cosine, already normalised.
    k : int
        Entries kept per query: ``min(k, N)``.
    l2 : bool
        Squared L2 (else inner product).
    plan : TilePlan
        Tile shapes (:func:`~gpuann.engine.tiles.plan_score_tiles`).
    filters : RowFilters, optional
        Per-query and per-row filters, indexed by query (``0 : Q``) and absolute row.
    memory_budget : int
        Bounds the temporaries of keyed selection.
    query_scale : torch.Tensor, shape (Q,), float32, optional
        int8 queries against int8 codes: each query's power-of-two factor (see
        :class:`~gpuann.engine.tiles.TileScorer`).
    """

    def __init__(
        self,
        queries: torch.Tensor,
        k: int,
        l2: bool,
        plan: TilePlan,
        *,
        filters: RowFilters | None = None,
        memory_budget: int = 256 << 20,
        query_scale: torch.Tensor | None = None,
    ) -> None:
        self.l2, self.plan = l2, plan
        self.filters = filters if filters is not None else RowFilters()
        device = queries.device
        self._blocks = []
        numpy_blas = use_numpy_blas(device, plan.query_block)
        tile_scores = queries.shape[0] * plan.database_block
        heaps = heap_select_applies(device, self.filters.keyed, tile_scores)
        for q0 in range(0, queries.shape[0], plan.query_block):
            block = slice(q0, q0 + plan.query_block)
            scale = None if query_scale is None else query_scale[block]
            scorer = TileScorer(queries[block], l2, numpy_blas, scale)
            if heaps:
                lists = HeapTopK(scorer.rows, k)
            else:
                lists = RunningTopK(scorer.rows, k, q0, self.filters, device, memory_budget)
            self._blocks.append((scorer, lists))
        self._scores = torch.empty(
            min(queries.shape[0], plan.query_block) * plan.database_block, device=device
        )
        self._augmented = None
        if l2 and any(s._augmented is not None for s, _ in self._blocks):
            dim = queries.shape[1]
            self._augmented = torch.empty((plan.database_block, dim + 1), device=device)

    def add(self, chunk: Chunk) -> None:
        """Score ``chunk`` (the rows after every chunk added so far) tile by tile."""
        block = self.plan.database_block
        for r in range(0, chunk.rows.shape[0], block):
            x = chunk.rows[r : r + block]
            if x.stride(-1) != 1:
                # rows of a column-major database: one tile copied, so every row's norm and
                # products sum in one order (found by review: identical rows of a transposed
                # view got two different distances, their ties then broken by rounding)
                x = x.contiguous()
            sqnorms = chunk.sqnorms[r : r + block] if chunk.sqnorms is not None else None
            scale = chunk.scale[r : r + block] if chunk.scale is not None else None
            if self.l2 and sqnorms is None:
                xf = x if x.dtype == torch.float32 else x.float()
                sqnorms = (xf * xf).sum(dim=1)
            tile = DatabaseTile(
                x, chunk.start + r, sqnorms if self.l2 else None, scale, self._augmented
            )
            for scorer, lists in self._blocks:
                scores = self._scores[: scorer.rows * tile.rows].view(scorer.rows, tile.rows)
                scorer(tile, out=scores)
                lists.add(scores, tile.start)

    def add_all(self, chunks: Iterable[Chunk]) -> TiledSearch:
        """:meth:`add` every chunk, in order."""
        for chunk in chunks:
            self.add(chunk)
        return self

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, positions)`` (Q, k): distances (squared L2) or similarities, nearest
        first, and rows, ``-1`` where no eligible row was found."""
        values, positions = [], []
        for scorer, lists in self._blocks:
            top_values, top_positions = lists.result()
            values.append(scorer.finish(top_values))
            positions.append(top_positions)
        return torch.cat(values), torch.cat(positions)
