"""Out-of-core exact search: the database streams through the device one chunk at a time.

For every chunk of queries the database is visited once, in row order, one transfer
(``chunk_rows`` rows, a whole number of tiles) at a time. Each transfer is scored tile by
tile exactly as the in-memory torch backend scores it (same tile shapes, same ``addmm`` /
``mm``, same running tie-aware top-k via :func:`gpuann.topk.merge_topk`), so the results are
those of :func:`gpuann.knn` bit for bit: ties go to the lower row, rows past ``N`` are ``-1``.
The tile shapes come from :func:`plan_stream`, which asks :func:`gpuann.budget.plan_tiles`
exactly what ``knn`` asks it (the float result of a matrix product depends on its shape).

Where the rows come from and how they travel:

* On the device already (a CUDA tensor, or any tensor on the CPU when searching there):
  slices, no copy.
* On CUDA from host memory or disk: a reader thread copies rows into a ring of three pinned
  host buffers; each is copied to one of two device buffers on a side CUDA stream while the
  compute stream scores the other (double buffering). Events order the two streams; nothing
  waits on the host except for a pinned buffer to come free. A pinned host tensor skips the
  reader: its slices are copied straight from where they are.
* On the CPU from a memory-mapped file: the reader thread fills one of two buffers from disk
  while the other is scored, so disk reads overlap compute.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from gpuann._validate import check_finite as _require_finite

# The in-memory torch backend's tiles and scoring: the bits must be the ones ``knn`` gives.
from gpuann.backends.torch_backend import TileScorer, plan_torch_tiles
from gpuann.batch.inputs import MatrixSource
from gpuann.metrics import Metric
from gpuann.topk import merge_topk, topk_lex

__all__ = ["StreamPlan", "StreamingExactSearch", "plan_stream"]


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """Tile shapes of a streamed search (stored in the checkpoint, reused on resume).

    Attributes
    ----------
    query_tile : int
        Queries scored together; query chunks hold whole tiles.
    database_tile : int
        Database rows per score tile; transfers hold whole tiles.
    """

    query_tile: int
    database_tile: int


def plan_stream(
    n_queries: int, n_database: int, dim: int, k: int, device: torch.device, memory_budget: int
) -> StreamPlan:
    """The tiles the in-memory torch backend would use for the same search.

    >>> plan_stream(100, 10_000, 64, 10, torch.device("cpu"), 256 << 20)
    StreamPlan(query_tile=100, database_tile=10000)
    """
    plan = plan_torch_tiles(n_queries, n_database, dim, k, memory_budget, device)
    return StreamPlan(plan.query_block, plan.database_block)


_DONE = object()


class _Reader:
    """A thread reading row ranges of ``source`` into a ring of host buffers, in order."""

    def __init__(
        self, source: MatrixSource, bounds: list[tuple[int, int]], buffers: list[torch.Tensor]
    ) -> None:
        self._free: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        for buffer in buffers:
            self._free.put(buffer)
        self._thread = threading.Thread(
            target=self._run, args=(source, bounds), name="gpuann-reader", daemon=True
        )
        self._thread.start()

    def _run(self, source: MatrixSource, bounds: list[tuple[int, int]]) -> None:
        try:
            for start, stop in bounds:
                buffer = self._free.get()
                if buffer is None:  # closed early
                    return
                self._ready.put((start, source.read_into(buffer, start, stop), buffer))
            self._ready.put(_DONE)
        except BaseException as error:  # surfaced in the consumer's thread
            self._ready.put(error)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        while True:
            item = self._ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, buffer: torch.Tensor) -> None:
        """Give a buffer back for the next read."""
        self._free.put(buffer)

    def close(self) -> None:
        """Stop reading (also mid-pass) and wait for the thread."""
        self._free.put(None)
        self._thread.join()


class StreamingExactSearch:
    """Exact k-NN of query chunks against a database streamed through ``device``.

    Parameters
    ----------
    source : MatrixSource
        The database, shape (N, d).
    k : int
    metric : Metric
    device : torch.device
        Where scores are computed.
    plan : StreamPlan
    chunk_rows : int
        Database rows per transfer, a multiple of ``plan.database_tile``.
    check_finite : bool
        Raise on NaN or infinity in the database (checked during the first pass) and queries.
    """

    def __init__(
        self,
        source: MatrixSource,
        k: int,
        metric: Metric,
        device: torch.device,
        plan: StreamPlan,
        chunk_rows: int,
        *,
        check_finite: bool = True,
    ) -> None:
        self.source, self.k, self.metric, self.device, self.plan = source, k, metric, device, plan
        self.check_finite = check_finite
        self._checked_rows = 0
        self._buffers: dict[str, list[torch.Tensor]] = {}
        self._copy_stream = None
        self.set_chunk_rows(chunk_rows)

    # ------------------------------------------------------------------ transfers
    @property
    def streams(self) -> bool:
        """True when rows are copied (from host memory or disk), not sliced in place."""
        if self.source.device == self.device:
            return self.source.on_disk
        return True

    def set_chunk_rows(self, chunk_rows: int) -> None:
        """Change the transfer size (whole tiles); drops the buffers of the previous size."""
        tile = self.plan.database_tile
        self.chunk_rows = max(tile, chunk_rows // tile * tile)
        self._buffers = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def transfer_buffer_bytes(self) -> int:
        """Device bytes the transfer buffers take (two, on CUDA when streaming)."""
        if self.device.type != "cuda" or not self.streams:
            return 0
        itemsize = self.source.stream_dtype().itemsize
        return 2 * self.chunk_rows * self.source.shape[1] * itemsize

    def _buffer_ring(self, kind: str, count: int, device: torch.device, pin: bool):
        if kind not in self._buffers:
            shape = (self.chunk_rows, self.source.shape[1])
            dtype = self.source.stream_dtype()
            self._buffers[kind] = [
                torch.empty(shape, dtype=dtype, device=device, pin_memory=pin) for _ in range(count)
            ]
        return self._buffers[kind]

    def _bounds(self) -> list[tuple[int, int]]:
        n = self.source.shape[0]
        return [(r, min(r + self.chunk_rows, n)) for r in range(0, n, self.chunk_rows)]

    def _chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, rows on the device)`` for one pass over the database, in order."""
        bounds = self._bounds()
        if not self.streams:
            for start, stop in bounds:
                yield start, self.source.rows(start, stop).to(self.device)
            return
        if self.device.type != "cuda":
            reader = _Reader(self.source, bounds, self._buffer_ring("host", 2, self.device, False))
            try:
                for start, rows, buffer in reader:
                    yield start, rows
                    reader.release(buffer)  # scoring on the CPU has finished with it
            finally:
                reader.close()
            return
        yield from self._cuda_chunks(bounds)

    def _cuda_chunks(self, bounds: list[tuple[int, int]]) -> Iterator[tuple[int, torch.Tensor]]:
        """Double-buffered host-to-device copies on a side stream (see the module docstring)."""
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        copy_stream, compute_stream = self._copy_stream, torch.cuda.current_stream(self.device)
        device_buffers = self._buffer_ring("device", 2, self.device, False)
        compute_done: list[torch.cuda.Event | None] = [None, None]
        reader = None
        if self.source.is_pinned:
            host_chunks = ((a, self.source.rows(a, b), None) for a, b in bounds)
        else:
            pinned = self._buffer_ring("pinned", 3, torch.device("cpu"), True)
            reader = _Reader(self.source, bounds, pinned)
            host_chunks = iter(reader)
        in_flight: collections.deque = collections.deque()  # (copy event, pinned buffer)
        try:
            for i, (start, host_rows, pinned_buffer) in enumerate(host_chunks):
                slot = i % 2
                rows = device_buffers[slot][: host_rows.shape[0]]
                with torch.cuda.stream(copy_stream):
                    if compute_done[slot] is not None:  # the last chunk in this slot is scored
                        copy_stream.wait_event(compute_done[slot])
                    rows.copy_(host_rows, non_blocking=True)
                    copied = torch.cuda.Event()
                    copied.record(copy_stream)
                compute_stream.wait_event(copied)
                if pinned_buffer is not None:
                    in_flight.append((copied, pinned_buffer))
                yield start, rows
                done = torch.cuda.Event()
                done.record(compute_stream)
                compute_done[slot] = done
                while in_flight and (len(in_flight) >= 2 or in_flight[0][0].query()):
                    event, buffer = in_flight.popleft()
                    event.synchronize()
                    reader.release(buffer)
        finally:
            compute_stream.wait_stream(copy_stream)
            if reader is not None:
                reader.close()

    # ------------------------------------------------------------------ search
    def search(
        self, queries: torch.Tensor, first_row: int = 0, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """One pass over the database for a chunk of queries.

        Parameters
        ----------
        queries : torch.Tensor, shape (B, d), floating
            Query rows ``first_row : first_row + B`` of the job; ``first_row`` is a multiple
            of ``plan.query_tile``.
        first_row : int
        exclude_self : bool
            Self-join: query row ``i`` of the job never matches database row ``i``.

        Returns
        -------
        distances : numpy.ndarray, shape (B, k), float32
        ids : numpy.ndarray, shape (B, k), int64
        """
        k, metric, device = self.k, self.metric, self.device
        n_database, tile = self.source.shape[0], self.plan.database_tile
        n_queries = queries.shape[0]
        distances = np.full((n_queries, k), metric.missing_distance, dtype=np.float32)
        ids = np.full((n_queries, k), -1, dtype=np.int64)
        if n_queries == 0 or n_database == 0:
            return distances, ids
        if self.check_finite:
            _require_finite(queries, "queries", row_offset=first_row)
        l2 = metric is Metric.L2
        queries = queries.to(device)
        if metric is Metric.COSINE:
            queries = torch.nn.functional.normalize(queries.float(), dim=1)
        k_found = min(k, n_database)
        on_cpu = device.type == "cpu"
        blocks = []  # per query tile: [first row in chunk, scoring rows, top values, top rows]
        for q0 in range(0, n_queries, self.plan.query_tile):
            scorer = TileScorer(queries[q0 : q0 + self.plan.query_tile], l2, tile)
            empty = torch.empty((scorer.q.shape[0], 0), device=device)
            blocks.append([q0, scorer, empty, empty.long()])
        score_buffer = torch.empty(self.plan.query_tile * tile, device=device)
        for start, rows in self._chunks():
            if self.check_finite and start >= self._checked_rows:
                _require_finite(rows, "database", row_offset=start)
                self._checked_rows = start + rows.shape[0]
            for r in range(0, rows.shape[0], tile):
                x = rows[r : r + tile]
                r0 = start + r
                xf = x if x.dtype == torch.float32 else x.float()
                sqnorms = (xf * xf).sum(dim=1) if l2 else None
                scale = None
                if metric is Metric.COSINE:
                    scale = 1.0 / torch.linalg.vector_norm(xf, dim=1).clamp_min(1e-12)
                for block in blocks:
                    q0, scorer, top_values, top_rows = block
                    n_q = scorer.q.shape[0]
                    scores = score_buffer[: n_q * x.shape[0]].view(n_q, x.shape[0])
                    scorer(x, sqnorms, scale, out=scores)
                    if exclude_self:
                        _mask_self(scores, first_row + q0, r0)
                    if on_cpu and top_values.shape[1] == k_found:
                        block[2], block[3] = _merge_beating(top_values, top_rows, scores, r0)
                    else:
                        values, cols = topk_lex(scores, k_found)
                        block[2], block[3] = merge_topk(
                            top_values, top_rows, values, cols + r0, k_found
                        )
        for q0, scorer, top_values, top_rows in blocks:
            n_q = scorer.q.shape[0]
            top_values = scorer.finish(top_values)
            if exclude_self:
                own = torch.arange(q0, q0 + n_q, device=device)[:, None] + first_row
                mine = top_rows == own
                top_rows = top_rows.masked_fill(mine, -1)
                top_values = top_values.masked_fill(mine, metric.missing_distance)
            stop = q0 + n_q
            distances[q0:stop, :k_found] = top_values.cpu().numpy()
            ids[q0:stop, :k_found] = top_rows.cpu().numpy()
        return distances, ids


def _merge_beating(
    top_values: torch.Tensor, top_rows: torch.Tensor, scores: torch.Tensor, r0: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU merge of a tile into full running lists: only rows with an entry that beats their
    current k-th best are selected and merged (after the first tiles, few rows have one).

    Exact: an entry equal to the k-th best loses the tie (every listed entry has a lower row).
    """
    active = (scores < top_values[:, -1:]).any(dim=1).nonzero().flatten()
    if active.numel() == 0:
        return top_values, top_rows
    k = top_values.shape[1]
    values, cols = topk_lex(scores.index_select(0, active), k)
    merged_values, merged_rows = merge_topk(
        top_values.index_select(0, active), top_rows.index_select(0, active), values, cols + r0, k
    )
    return top_values.index_copy(0, active, merged_values), top_rows.index_copy(
        0, active, merged_rows
    )


def _mask_self(scores: torch.Tensor, query_row: int, database_row: int) -> None:
    """Set the score of each query against its own row (if in this tile) to ``+inf``."""
    n_queries, width = scores.shape
    first = max(query_row, database_row)
    last = min(query_row + n_queries, database_row + width)
    if first >= last:
        return
    rows = torch.arange(first, last, device=scores.device)
    scores[rows - query_row, rows - database_row] = float("inf")
