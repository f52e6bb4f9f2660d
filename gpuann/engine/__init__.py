"""The running top-k engine of exact search: tiles, the running lists, the tile loop.

One engine for every torch-side exact search: the torch backend feeds it its database as one
chunk, out-of-core streaming (:mod:`gpuann.batch.streaming`) the chunks it transfers.

Modules
-------
tiles
    Tile plans and the float32 scores of one tile (:class:`~gpuann.engine.tiles.TileScorer`).
running
    The running tie-aware top-k of a query block: plain or packed-key selection, the CPU
    threshold filter, merges (:class:`~gpuann.engine.running.RunningTopK`).
eligibility
    Row filters (excluded rows, allow-lists, labels, tie order) applied inside the search.
search
    The tile loop over database chunks (:class:`~gpuann.engine.search.TiledSearch`).
heap_select
    The CPU running top-k of unfiltered searches in faiss's heaps, rows split across threads
    (:class:`~gpuann.engine.heap_select.HeapTopK`).
cpu_blas
    numpy's OpenBLAS for CPU products where it beats torch's MKL, on one thread per part.
"""

from gpuann.engine.eligibility import RowFilters
from gpuann.engine.running import RunningTopK, merge_keyed
from gpuann.engine.search import Chunk, TiledSearch
from gpuann.engine.tiles import DatabaseTile, TileScorer, plan_score_tiles

__all__ = [
    "Chunk",
    "DatabaseTile",
    "RowFilters",
    "RunningTopK",
    "TileScorer",
    "TiledSearch",
    "merge_keyed",
    "plan_score_tiles",
]
