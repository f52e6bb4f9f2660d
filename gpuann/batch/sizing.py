"""How many queries a chunk holds and how many database rows travel at once, and what to do
when the device runs out of memory anyway.

Query chunks are the unit of work and of checkpointing: each one streams the whole database
through the device once, so larger chunks mean fewer passes (on a GPU a pass costs
``N · d · itemsize`` bytes over the host link; a chunk of ``B`` queries does ``2 · B · N · d``
flops against it). :func:`auto_batch_rows` takes the largest chunk the free device memory and
the memory budget allow, up to a cap past which passes are no longer the bottleneck.

On the CPU the memory budget bounds the whole working set of an exact job, not only its score
tiles: the tiles ``knn`` would use with that budget (so the results stay those of ``knn``) take
their share first, then the host transfer buffers of a database read from disk get at most half
of what is left (:func:`fit_transfer_rows`), and the chunk of queries with its running lists
and result rows the rest (:func:`auto_batch_rows`, :func:`chunk_row_bytes`). Explicit
``batch_size`` / ``database_chunk_rows`` are taken as given.

On a CUDA out-of-memory error the driver calls :meth:`BatchSizer.shrink` and retries the same
rows: first with half the queries, then with half the database rows per transfer, and only
when both are at their minimum does the error reach the caller. Neither changes the results:
chunks hold whole query tiles and transfers whole database tiles.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "BatchSizer",
    "auto_batch_rows",
    "auto_chunk_rows",
    "chunk_row_bytes",
    "fit_transfer_rows",
    "is_out_of_memory",
]

MiB = 1 << 20
#: Query rows per chunk beyond which the database pass is amortised (see the module docstring).
MAX_AUTO_ROWS = {"cpu": 8192, "cuda": 65536}
#: Target bytes of one database transfer.
CHUNK_BYTES = {"cpu": 64 * MiB, "cuda": 256 * MiB}


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device out-of-memory error (torch's, or a backend's RuntimeError saying so)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _free_device_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def auto_chunk_rows(n_rows: int, row_bytes: int, tile_rows: int, device: torch.device) -> int:
    """Database rows per transfer: about ``CHUNK_BYTES`` (≤ 1/16 of free CUDA memory), whole tiles.

    Parameters
    ----------
    n_rows : int
        Database rows.
    row_bytes : int
        Bytes of one row as it travels.
    tile_rows : int
        Database rows per compute tile: a chunk holds a whole number of tiles.
    device : torch.device
    """
    target = CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"]
    free = _free_device_bytes(device)
    if free is not None:
        target = min(target, free // 16)
    tiles = max(1, target // max(1, row_bytes * tile_rows))
    return int(min(tiles, max(1, math.ceil(n_rows / tile_rows))) * tile_rows)


def chunk_row_bytes(dim: int, k: int) -> int:
    """Working bytes per query row of a chunk: the row read and its float32 or normalised copy,
    the running, merged and result ``(value, id)`` lists and the result rows on the host."""
    return dim * 4 * 2 + k * 12 * 4 + 64


def fit_transfer_rows(
    chunk_rows: int,
    memory_budget: int,
    step_bytes: int,
    row_bytes: int,
    tile_rows: int,
    buffers: int = 2,
) -> int:
    """Database rows per transfer such that ``buffers`` buffers fit the budget's spare half.

    Parameters
    ----------
    chunk_rows : int
        The transfer wanted (whole tiles).
    memory_budget : int
        Bytes for the whole search.
    step_bytes : int
        What the score tiles take (the tile plan's ``bytes_per_step``).
    row_bytes : int
        Bytes of one database row as it travels.
    tile_rows : int
        Database rows per tile: transfers hold at least one whole tile.
    buffers : int
        Transfer buffers held at once.

    >>> fit_transfer_rows(65536, 32 << 20, 16 << 20, 256, 4096)  # 2 x 4 MiB in 8 MiB
    16384
    """
    room = max(0, memory_budget - step_bytes) // 2
    most = room // max(1, buffers * row_bytes) // tile_rows * tile_rows
    return int(max(tile_rows, min(chunk_rows, most)))


def auto_batch_rows(
    n_queries: int,
    dim: int,
    k: int,
    unit: int,
    device: torch.device,
    memory_budget: int,
    reserved_bytes: int | None = 0,
) -> int:
    """Query rows per chunk, a multiple of ``unit`` (the query tile).

    Parameters
    ----------
    n_queries, dim, k : int
    unit : int
        Chunks hold whole query tiles.
    device : torch.device
    memory_budget : int
        Bytes the tile workspace may use (its own, counted as taken).
    reserved_bytes : int
        Other bytes the search holds: on CUDA its device transfer buffers (the tile workspace
        is counted from ``memory_budget``); on the CPU everything but the chunk — score tiles
        and host transfer buffers — which the chunk must fit beside within ``memory_budget``.
        ``None`` on the CPU: half the budget (a search whose tiles the budget does not cover,
        an index's).

    Returns
    -------
    int
        At least ``unit``; at most ``n_queries`` rounded up to a whole tile.
    """
    per_row = chunk_row_bytes(dim, k)
    free = _free_device_bytes(device)
    if free is None and reserved_bytes is None:
        room = memory_budget // 2
    elif free is None:  # CPU: the chunk fits beside the tiles and buffers, within the budget
        room = max(0, memory_budget - reserved_bytes)
    else:
        room = max(0, free - memory_budget - (reserved_bytes or 0)) // 2
    rows = min(room // per_row, MAX_AUTO_ROWS["cuda" if device.type == "cuda" else "cpu"])
    rows = min(rows, math.ceil(max(n_queries, 1) / unit) * unit)
    return int(max(unit, rows // unit * unit))


class BatchSizer:
    """Chunk sizes that halve on out-of-memory errors.

    Parameters
    ----------
    batch_rows : int
        Query rows per chunk, a multiple of ``unit``.
    unit : int
        The smallest chunk (one query tile).
    chunk_rows : int
        Database rows per transfer, a multiple of ``chunk_unit``.
    chunk_unit : int
        The smallest transfer (one database tile).

    >>> s = BatchSizer(64, 16, 8192, 4096)
    >>> [s.shrink() for _ in range(4)], s.batch_rows, s.chunk_rows
    ([True, True, True, False], 16, 4096)
    """

    def __init__(self, batch_rows: int, unit: int, chunk_rows: int = 1, chunk_unit: int = 1):
        self.batch_rows, self.unit = batch_rows, unit
        self.chunk_rows, self.chunk_unit = chunk_rows, chunk_unit
        self.retries = 0

    def shrink(self) -> bool:
        """Halve the query chunk, else the transfer; False when both are at their minimum."""
        if self.batch_rows > self.unit:
            self.batch_rows = max(self.unit, self.batch_rows // 2 // self.unit * self.unit)
        elif self.chunk_rows > self.chunk_unit:
            self.chunk_rows = max(
                self.chunk_unit, self.chunk_rows // 2 // self.chunk_unit * self.chunk_unit
            )
        else:
            return False
        self.retries += 1
        return True
