"""Out-of-core exact search: the database streams through the device one chunk at a time.

This module does the I/O only; the search itself is the dispatcher's. For every chunk of
queries the database is visited once, in row order, one transfer (``chunk_rows`` rows, a whole
number of tiles) at a time, and each transfer is handed on:

* to the tiled engine of :mod:`gpuann.engine` when the dispatcher picks the torch backend —
  the very loop that backend runs in memory, on the same tiles (:func:`plan_stream` asks for
  the tiles ``knn`` uses), so the results are those of :func:`gpuann.knn` bit for bit;
* otherwise (the Triton kernel on CUDA) to the chosen backend, chunk by chunk, and the
  chunk's lists are merged into the running ones (ties to the lower row). The ids and
  distances are those ``knn`` gives on that backend for the same chunk of queries (the
  kernel's tile shapes, hence its float sums, depend on the number of queries), except that
  L2 distances which round or clamp to the same value in different chunks tie by lower row.

A self-join excludes each query's own row through the same row filter as ``exclude_ids``.

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
import hashlib
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from gpuann._validate import check_finite as _require_finite
from gpuann.backends.base import SearchRequest
from gpuann.backends.dispatch import select_backend
from gpuann.backends.torch_backend import TorchBackend
from gpuann.batch.inputs import MatrixSource, stored_bytes
from gpuann.budget import DEFAULT_CPU_BUDGET, TilePlan
from gpuann.engine.eligibility import RowFilters
from gpuann.engine.running import merge_keyed
from gpuann.engine.search import Chunk, TiledSearch
from gpuann.engine.tiles import plan_score_tiles
from gpuann.metrics import Metric

__all__ = ["StreamPlan", "StreamingExactSearch", "plan_stream", "stream_step_bytes"]


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
    """The tiles the in-memory torch backend (``knn``) would use for the same search.

    >>> plan_stream(100, 10_000, 64, 10, torch.device("cpu"), 256 << 20)
    StreamPlan(query_tile=100, database_tile=10000)
    """
    plan = plan_score_tiles(n_queries, n_database, dim, k, memory_budget, device)
    return StreamPlan(plan.query_block, plan.database_block)


def stream_step_bytes(
    n_queries: int, n_database: int, dim: int, k: int, device: torch.device, memory_budget: int
) -> int:
    """Working bytes of one score step of :func:`plan_stream`'s tiles (at most the budget)."""
    plan = plan_score_tiles(n_queries, n_database, dim, k, memory_budget, device)
    return int(plan.bytes_per_step)


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
    backend : str
        ``"auto"`` or the name of an exact-search backend (see ``gpuann.backends``).
    memory_budget : int
        Bytes of working memory of the search (as in ``knn``).
    query_name : str
        The queries' argument name in error messages (``x`` for a self-join); the database's is
        ``source.name``.
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
        backend: str = "auto",
        memory_budget: int = DEFAULT_CPU_BUDGET,
        query_name: str = "queries",
    ) -> None:
        self.source, self.k, self.metric, self.device, self.plan = source, k, metric, device, plan
        self.query_name = query_name
        #: Hash the database during the first complete pass (for the checkpoint of a job).
        self.hash_database = False
        #: SHA-256 of the rows as they streamed in that pass, once it completed.
        self.database_sha256: str | None = None
        self._database_digest = None
        self.check_finite, self.backend, self.memory_budget = check_finite, backend, memory_budget
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

    def host_buffer_bytes(self) -> int:
        """Host bytes the transfer buffers take: two when a CPU search reads from disk, three
        pinned ones for a CUDA search from unpinned host memory or disk, else none."""
        row = self.chunk_rows * self.source.shape[1] * self.source.stream_dtype().itemsize
        if not self.streams:
            return 0
        if self.device.type != "cuda":
            return 2 * row
        return 0 if self.source.is_pinned else 3 * row

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
        n_database, n_queries = self.source.shape[0], queries.shape[0]
        distances = np.full((n_queries, k), metric.missing_distance, dtype=np.float32)
        ids = np.full((n_queries, k), -1, dtype=np.int64)
        if n_queries == 0 or n_database == 0:
            return distances, ids
        if self.check_finite:
            _require_finite(queries, self.query_name, row_offset=first_row)
        queries = queries.to(device)
        if metric is Metric.COSINE:
            queries = torch.nn.functional.normalize(queries.float(), dim=1)
        excluded = None
        if exclude_self:
            own = torch.arange(first_row, first_row + n_queries, device=device)
            excluded = own[:, None]
        backend = self._choose_backend(queries, excluded)
        k_found = min(k, n_database)
        if isinstance(backend, TorchBackend):
            top_values, top_rows = self._engine_pass(queries, k_found, excluded)
        else:
            top_values, top_rows = self._backend_pass(backend, queries, k_found, excluded)
        distances[:, :k_found] = top_values.cpu().numpy()
        ids[:, :k_found] = top_rows.cpu().numpy()
        return distances, ids

    def _checked(self) -> Iterator[tuple[int, torch.Tensor]]:
        """:meth:`_chunks`, with the finiteness check of each chunk's first pass, and the
        database's hash (``hash_database``) over the first pass that completes."""
        n = self.source.shape[0]
        for start, rows in self._chunks():
            if self.check_finite and start >= self._checked_rows:
                _require_finite(rows, self.source.name, row_offset=start)
                self._checked_rows = start + rows.shape[0]
            if self.hash_database and self.database_sha256 is None:
                if start == 0:  # a pass cut short (out of memory) starts the hash over
                    self._database_digest = hashlib.sha256()
                self._database_digest.update(stored_bytes(rows))
                if start + rows.shape[0] == n:
                    self.database_sha256 = self._database_digest.hexdigest()
            yield start, rows

    def _choose_backend(self, queries: torch.Tensor, excluded: torch.Tensor | None):
        """The backend the dispatcher picks for a search like this one."""
        dim = self.source.shape[1]
        probe = SearchRequest(
            queries=queries,
            database=torch.empty((0, dim), dtype=self.source.stream_dtype(), device=self.device),
            k=self.k,
            metric=Metric.L2 if self.metric is Metric.L2 else Metric.IP,
            database_sqnorms=None,
            column_scale=None,
            memory_budget=self.memory_budget,
            excluded_rows=excluded,
        )
        return select_backend(probe, self.backend)

    def _engine_pass(
        self, queries: torch.Tensor, k: int, excluded: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch backend's tile loop over the streamed chunks."""
        plan = TilePlan(self.plan.query_tile, self.plan.database_tile, 0)
        search = TiledSearch(
            queries,
            k,
            self.metric is Metric.L2,
            plan,
            filters=RowFilters(excluded_rows=excluded),
            normalize_rows=self.metric is Metric.COSINE,
            memory_budget=self.memory_budget,
        )
        for start, rows in self._checked():
            search.add(Chunk(start, rows))
        return search.result()

    def _backend_pass(
        self, backend, queries: torch.Tensor, k: int, excluded: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Another backend searches each chunk; the chunks' lists merge into running ones."""
        l2, device = self.metric is Metric.L2, self.device
        top_values = torch.empty((queries.shape[0], 0), device=device)
        top_rows = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=device)
        for start, rows in self._checked():
            scale = None
            if self.metric is Metric.COSINE:
                norms = torch.linalg.vector_norm(rows.float(), dim=1)
                scale = 1.0 / norms.clamp_min(1e-12)
            local = None
            if excluded is not None:
                shifted = excluded - start
                local = torch.where((shifted >= 0) & (shifted < rows.shape[0]), shifted, -1)
            request = SearchRequest(
                queries=queries,
                database=rows,
                k=k,
                metric=Metric.L2 if l2 else Metric.IP,
                database_sqnorms=None,
                column_scale=scale,
                memory_budget=self.memory_budget,
                excluded_rows=local,
            )
            values, positions = backend.search(request)
            values = values if l2 else -values  # smaller is nearer
            positions = torch.where(positions >= 0, positions + start, -1)
            top_values, top_rows = merge_keyed(top_values, top_rows, values, positions, k)
        top_values = top_values.masked_fill(top_rows < 0, float("inf"))
        return (top_values if l2 else -top_values), top_rows
