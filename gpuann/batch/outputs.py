"""Where batch search writes its results: ``ids.npy`` and ``distances.npy``, or memory.

With an ``out`` folder, both files are created at their final (Q, k) shape and filled chunk by
chunk with positioned writes (``pwrite``), then synced (``fdatasync``) before each checkpoint,
so every row a checkpoint counts is on disk and results larger than RAM never need to fit in
it. Without one, results go to numpy arrays.

No memory map is written through: a store through a map into a page the file system has no
room for kills the process with ``SIGBUS``, and written pages would stay in the resident set.
The files are never sparse either: their space is reserved up front (``posix_fallocate``) and
their initial contents (the missing-result sentinels) written with ordinary ``write`` calls,
so a full disk is a clean ``OSError`` (``ENOSPC``) before the job starts, and the files made
so far are removed. Resuming reserves the space of the existing files again (a no-op for files
written this way). The finished results are returned as read-only memory maps.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from gpuann.metrics import Metric

__all__ = ["DISTANCES_NAME", "IDS_NAME", "ResultSink", "reserve_space"]

IDS_NAME = "ids.npy"
DISTANCES_NAME = "distances.npy"
#: Bytes of sentinel values written per ``write`` call when a result file is created.
_FILL_BLOCK = 4 << 20


class _ResultFile:
    """A (Q, k) ``.npy`` file written with ``pwrite``: its descriptor and payload offset."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, dtype
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                np.lib.format.read_array_header_1_0(f)
            else:
                np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        self.fd = os.open(path, os.O_RDWR)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Store ``rows`` (``(n, k)``) as rows ``start : start + n``."""
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
        position = self.offset + start * self.shape[1] * self.dtype.itemsize
        while len(data):
            written = os.pwrite(self.fd, data, position)
            data, position = data[written:], position + written

    def sync(self) -> None:
        """Push written rows to disk."""
        os.fdatasync(self.fd) if hasattr(os, "fdatasync") else os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ResultSink:
    """The (Q, k) ``distances`` (float32) and ``ids`` (int64) being filled.

    Parameters
    ----------
    n_queries, k : int
    metric : Metric
        Unwritten rows hold its missing-result sentinel (``±inf``, id ``-1``).
    out : str or os.PathLike, optional
        Folder for ``ids.npy`` / ``distances.npy``; ``None`` keeps results in memory.
    reopen : bool
        Open the existing files in ``out`` (to resume) instead of creating them.

    Raises
    ------
    OSError
        The files cannot be created, or their space not reserved (a full disk: ``ENOSPC``).
    """

    def __init__(
        self,
        n_queries: int,
        k: int,
        metric: Metric,
        out: str | os.PathLike | None = None,
        *,
        reopen: bool = False,
    ) -> None:
        shape = (n_queries, k)
        self.out = Path(out) if out is not None else None
        self._files: list[_ResultFile] = []
        if self.out is None:
            self.distances = np.full(shape, metric.missing_distance, dtype=np.float32)
            self.ids = np.full(shape, -1, dtype=np.int64)
            return
        specs = (
            (self.out / DISTANCES_NAME, np.dtype(np.float32), metric.missing_distance),
            (self.out / IDS_NAME, np.dtype(np.int64), -1),
        )
        if reopen:
            for path, dtype, _ in specs:
                _check_existing(path, shape, dtype)
        else:
            created = []
            try:
                for path, dtype, fill in specs:
                    created.append(path)
                    _create_filled(path, shape, dtype, fill)
            except BaseException:
                for path in created:  # no half-made results left to be mistaken for a job's
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
        self._files = [_ResultFile(path, shape, dtype) for path, dtype, _ in specs]

    def write(self, start: int, distances: np.ndarray, ids: np.ndarray) -> None:
        """Store rows ``start : start + len(ids)``."""
        if self.out is None:
            stop = start + ids.shape[0]
            self.distances[start:stop] = distances
            self.ids[start:stop] = ids
            return
        self._files[0].write(start, distances)
        self._files[1].write(start, ids)

    def flush(self) -> None:
        """Push written rows to disk (no-op in memory)."""
        for file in self._files:
            file.sync()

    def close(self) -> None:
        """Close the files (idempotent; results written so far stay)."""
        for file in self._files:
            file.close()

    def reopen_read_only(self) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)``: read-only memmaps of the files, or the in-memory arrays."""
        if self.out is None:
            return self.distances, self.ids
        self.flush()
        self.close()
        return (
            np.load(self.out / DISTANCES_NAME, mmap_mode="r"),
            np.load(self.out / IDS_NAME, mmap_mode="r"),
        )


def reserve_space(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the open file ``fd`` on disk, or raise ``OSError``.

    ``posix_fallocate`` where the platform has it (file systems without ``fallocate`` get
    glibc's emulation); elsewhere nothing is reserved here and the callers' ordinary writes are
    what allocates.
    """
    if size > 0 and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)


def _create_filled(path: Path, shape: tuple[int, int], dtype: np.dtype, fill: float) -> None:
    """Write a ``.npy`` file of ``shape`` holding ``fill`` everywhere, with its space reserved.

    Raises
    ------
    OSError
        The disk is full (``ENOSPC``) or the file cannot be written.
    """
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    payload = int(np.prod(shape)) * dtype.itemsize
    try:
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.flush()
            reserve_space(f.fileno(), f.tell() + payload)
            rows = max(1, _FILL_BLOCK // max(1, shape[1] * dtype.itemsize))
            block = np.full((min(rows, shape[0]), shape[1]), fill, dtype=dtype).tobytes()
            written = 0
            while written < payload:
                piece = block[: payload - written]
                f.write(piece)
                written += len(piece)
    except OSError as err:
        raise type(err)(
            err.errno,
            f"out: cannot create {str(path)!r} ({payload} bytes of results): {err.strerror}",
        ) from err


def _check_existing(path: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
    """A resumed job's result file: present, of the job's shape and dtype, its space reserved."""
    if not path.is_file():
        raise FileNotFoundError(f"resume: {str(path)!r} is missing; the job cannot be resumed")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0
            if version != (1, 0):
                read = np.lib.format.read_array_header_2_0
            got_shape, fortran, got_dtype = read(f)
        except ValueError as err:
            raise ValueError(f"resume: {str(path)!r} is not a .npy file ({err})") from None
    if tuple(got_shape) != shape or got_dtype != dtype or fortran:
        raise ValueError(
            f"resume: {str(path)!r} holds {got_dtype} {tuple(got_shape)}, expected "
            f"{dtype} {shape}; the job cannot be resumed"
        )
    fd = os.open(path, os.O_RDWR)
    try:
        reserve_space(fd, os.fstat(fd).st_size)  # rows still to come must find room
    except OSError as err:
        raise type(err)(
            err.errno, f"resume: cannot reserve the space of {str(path)!r}: {err.strerror}"
        ) from err
    finally:
        os.close(fd)
