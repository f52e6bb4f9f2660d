"""How a streamed database travels to the device: one pass over its rows, chunk by chunk.

:class:`DatabaseStream` yields ``(first row, rows on the device)`` for every transfer of
``chunk_rows`` rows (a whole number of tiles), in row order; the search built on it is
:class:`gpuann.batch.streaming.StreamingExactSearch`. Where the rows come from decides how
they travel:

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
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from gpuann.batch.inputs import MatrixSource

if TYPE_CHECKING:  # defined with the search that plans it
    from gpuann.batch.streaming import StreamPlan

__all__ = ["DatabaseStream"]

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


class DatabaseStream:
    """Passes over the rows of ``source``, moved to ``device`` one transfer at a time.

    Parameters
    ----------
    source : MatrixSource
        The database, shape (N, d).
    device : torch.device
        Where the rows are wanted.
    plan : StreamPlan
        Its ``database_tile`` is the unit of a transfer.
    chunk_rows : int
        Database rows per transfer (rounded down to whole tiles).
    """

    def __init__(
        self, source: MatrixSource, device: torch.device, plan: StreamPlan, chunk_rows: int
    ) -> None:
        self.source, self.device, self.plan = source, device, plan
        self._buffers: dict[str, list[torch.Tensor]] = {}
        self._copy_stream = None
        self.set_chunk_rows(chunk_rows)

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

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
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
