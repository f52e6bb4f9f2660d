"""CPU running top-k by faiss's k-selection heaps, rows split across threads.

On the CPU the threshold filter of :class:`~gpuann.engine.running.RunningTopK` (a grouped min,
``nonzero`` of the survivors, gathers and a merge, all torch ops) took ~40% of a 1000-query
search here (1000 × 10⁵ × 128, k = 10). faiss's ``float_maxheap_array_t.addn`` does one compare
per score against the row's current k-th and replaces the heap top only for winners: the
selection the threshold filter approximates, in compiled code. Each thread of a small pool
owns a contiguous range of the block's rows and feeds its part of every tile to those rows'
heaps; the tile itself (its products, its bits) is the torch backend's, unchanged.

- **Same answers as the torch selection**: a heap takes a score only when it is strictly
  below the row's k-th, and tiles arrive in row order, so a tie goes to the lower row; the
  lists are sorted by (score, row) at the end, ``-0.0`` equal to ``+0.0``.
- **Non-finite scores** (NaN or ``+inf``, possible with ``check_finite=False`` or products
  that overflow) never enter a faiss heap, and nor does an exact ``FLT_MAX``. One ``max`` per
  part finds them; a row whose heap does not already hold k better entries (a dropped score
  could still be among its k best) leaves the heaps for torch's exact merge
  (:func:`~gpuann.engine.running.merge_keyed`, one call per tile for all of them; NaN after
  ``+inf``, as everywhere else) for the rest of the search.
- Used for unfiltered CPU searches of the tiled engine (:func:`heap_select_applies`) when
  faiss imports; ``GPUANN_CPU_SELECT=torch`` keeps the threshold filter. (Where numpy's
  OpenBLAS is chosen, large float32 searches take :mod:`gpuann.engine.verified_cpu`, which
  feeds these heaps from OpenBLAS products instead.)
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch

from gpuann._env import cpu_select_mode
from gpuann._pools import worker_pool
from gpuann.engine.running import merge_keyed

__all__ = ["MIN_SCORES", "HeapTopK", "heap_select_applies"]

#: Fewest scores per tile (queries × rows) of a search kept in heaps (measured: one query against
#: 10⁵ rows, one tile, costs the same either way; against 10⁶, 29 vs 37 ms): the threshold filter's
#: per-tile cost is small below, and faiss need not be imported for small searches.
MIN_SCORES = 1 << 17
_FLT_MAX = float(np.finfo(np.float32).max)
#: Fewest scores per thread of a tile: below this one thread feeds every row.
_MIN_PART_SCORES = 1 << 16


@functools.cache
def _faiss() -> Any | None:
    """The real faiss (also while ``sys.modules["faiss"]`` is gpuann's shim), if it imports
    and has its heap arrays; imported on first use only."""
    from gpuann.ivf._faiss import optional_faiss

    faiss = optional_faiss()
    return faiss if hasattr(faiss, "float_maxheap_array_t") else None


def heap_select_applies(device: torch.device, keyed: bool, n_scores: int) -> bool:
    """True when a running top-k on ``device`` is kept in faiss heaps.

    ``keyed``: the search has row filters or a tie order (those keep the torch selection).
    ``n_scores``: scores per tile of the whole search (queries × database rows per tile); below
    :data:`MIN_SCORES` the torch selection runs (and a small search never imports faiss).

    >>> heap_select_applies(torch.device("meta"), False, 1 << 30)
    False
    """
    mode = cpu_select_mode()  # validated for every search
    if device.type != "cpu" or keyed or n_scores < MIN_SCORES or mode == "torch":
        return False
    return _faiss() is not None


def _pool(workers: int) -> ThreadPoolExecutor:
    return worker_pool("heap", workers, _one_omp_thread)


def _one_omp_thread() -> None:
    # faiss's OpenMP thread count is the calling thread's own: each worker's heaps stay on it
    # (the caller's faiss setting is untouched).
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(1)


class _Part:
    """The heaps of rows ``lo : hi`` of a block (views of the block's arrays)."""

    def __init__(self, values: np.ndarray, rows: np.ndarray, lo: int, hi: int, k: int) -> None:
        faiss = _faiss()
        self.lo, self.hi = lo, hi
        self.values, self.rows = values, rows
        self.heaps = faiss.float_maxheap_array_t()
        self.heaps.nh, self.heaps.k = hi - lo, k
        self.heaps.val = faiss.swig_ptr(values[lo:hi])
        self.heaps.ids = faiss.swig_ptr(rows[lo:hi])
        self._ptr = faiss.swig_ptr

    def add(self, scores: np.ndarray, r0: int, outside: frozenset[int]) -> dict[int, Any]:
        """Feed rows ``lo : hi`` of a tile's ``scores`` (B, n), database rows ``r0 :``.

        Returns the rows (not yet in ``outside``) that dropped a score which may still belong
        to their k best, each with its heap's entries before this tile (to be selected by torch
        from now on). A dropped score (NaN, ``+inf`` or ``FLT_MAX``) cannot, once the heap
        holds k entries below ``FLT_MAX``: every later k-th is lower still.
        """
        part = scores[self.lo : self.hi]
        dropped = {}
        if not part.max() < _FLT_MAX:  # NaN, +inf or FLT_MAX: a heap would drop them
            for r in np.flatnonzero(~(part.max(axis=1) < _FLT_MAX)):
                row = self.lo + int(r)
                if row not in outside:
                    dropped[row] = (self.values[row].copy(), self.rows[row].copy())
        self.heaps.addn(part.shape[1], self._ptr(part), r0, 0, self.hi - self.lo)
        # The heap's root is its k-th entry (FLT_MAX while a place is empty).
        return {row: lists for row, lists in dropped.items() if not self.values[row, 0] < _FLT_MAX}


class HeapTopK:
    """The best ``k`` (score, row) pairs so far of a block of ``n_rows`` queries, CPU.

    The interface of :class:`~gpuann.engine.running.RunningTopK` for unfiltered searches:
    :meth:`add` a tile of float32 "smaller is nearer" scores at a time, in row order.

    Parameters
    ----------
    n_rows : int
        Queries in the block.
    k : int
        Entries kept per query (``min(k, N)``).
    """

    def __init__(self, n_rows: int, k: int) -> None:
        self.k = k
        # Every entry (FLT_MAX, -1): a valid heap, as faiss's heapify() makes it.
        self._values = np.full((n_rows, k), _FLT_MAX, dtype=np.float32)
        self._rows = np.full((n_rows, k), -1, dtype=np.int64)
        self._threads = max(1, torch.get_num_threads())
        parts = min(self._threads, n_rows)
        bounds = [n_rows * i // parts for i in range(parts + 1)]
        self._parts = [
            _Part(self._values, self._rows, lo, hi, k) for lo, hi in itertools.pairwise(bounds)
        ]
        self._whole = [_Part(self._values, self._rows, 0, n_rows, k)]
        # Rows that left the heaps (a score no heap takes): their lists, selected by torch.
        self._outside = torch.empty(0, dtype=torch.int64)
        self._outside_values = torch.empty((0, k))
        self._outside_rows = torch.empty((0, k), dtype=torch.int64)

    def add(self, scores: torch.Tensor, r0: int) -> None:
        """Merge a tile of scores (B, n), float32, of rows ``r0 : r0 + n`` (after every
        earlier row)."""
        array = scores.detach().contiguous().numpy()
        parts = self._parts
        if len(parts) == 1 or array.size < _MIN_PART_SCORES * len(parts):
            parts = self._whole
        outside = frozenset(self._outside.tolist())
        # Workers even for one part: faiss's addn would start an OpenMP team in the caller.
        futures = [_pool(self._threads).submit(p.add, array, r0, outside) for p in parts]
        wait(futures)
        leaving = {}
        for f in futures:
            leaving.update(f.result())  # raises a worker's exception, once all are done
        if leaving:
            rows = sorted(leaving)
            self._outside = torch.cat([self._outside, torch.tensor(rows, dtype=torch.int64)])
            new_values = torch.from_numpy(np.stack([leaving[r][0] for r in rows]))
            new_rows = torch.from_numpy(np.stack([leaving[r][1] for r in rows]))
            self._outside_values = torch.cat([self._outside_values, new_values])
            self._outside_rows = torch.cat([self._outside_rows, new_rows])
        if self._outside.numel():
            # One exact merge for every row outside the heaps, by (score, row), NaN after
            # +inf, row -1 (an empty place) last.
            n = array.shape[1]
            tile = torch.from_numpy(array[self._outside.numpy()])
            cols = torch.arange(r0, r0 + n).expand(self._outside.numel(), n)
            self._outside_values, self._outside_rows = merge_keyed(
                self._outside_values, self._outside_rows, tile, cols, self.k
            )

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, positions)``, (B, k): sorted scores and rows."""
        values = torch.from_numpy(self._values.copy())
        rows = torch.from_numpy(self._rows.copy())
        if self._outside.numel():
            values[self._outside] = self._outside_values
            rows[self._outside] = self._outside_rows
        # Sorted by (score, row); a row -1 (fewer than k seen: not with k = min(k, N)) last.
        return merge_keyed(values[:, :0], rows[:, :0], values, rows, self.k)
