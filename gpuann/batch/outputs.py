"""Where batch search writes its results: ``ids.npy`` and ``distances.npy``, or memory.

With an ``out`` folder, both files are created with ``numpy.lib.format.open_memmap`` at their
final (Q, k) shape, filled chunk by chunk, and flushed (``msync``) before each checkpoint, so
results larger than RAM never need to fit in it. Without one, results go to numpy arrays.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpuann.metrics import Metric

__all__ = ["DISTANCES_NAME", "IDS_NAME", "ResultSink"]

IDS_NAME = "ids.npy"
DISTANCES_NAME = "distances.npy"


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
        if self.out is None:
            self.distances = np.full(shape, metric.missing_distance, dtype=np.float32)
            self.ids = np.full(shape, -1, dtype=np.int64)
            return
        if reopen:
            self.distances = _reopen(self.out / DISTANCES_NAME, shape, np.float32)
            self.ids = _reopen(self.out / IDS_NAME, shape, np.int64)
            return
        self.distances = np.lib.format.open_memmap(
            self.out / DISTANCES_NAME, mode="w+", dtype=np.float32, shape=shape
        )
        self.ids = np.lib.format.open_memmap(
            self.out / IDS_NAME, mode="w+", dtype=np.int64, shape=shape
        )
        self.distances[:] = metric.missing_distance
        self.ids[:] = -1
        self.flush()

    def write(self, start: int, distances: np.ndarray, ids: np.ndarray) -> None:
        """Store rows ``start : start + len(ids)``."""
        stop = start + ids.shape[0]
        self.distances[start:stop] = distances
        self.ids[start:stop] = ids

    def flush(self) -> None:
        """Push written rows to disk (no-op in memory)."""
        for array in (self.distances, self.ids):
            if isinstance(array, np.memmap):
                array.flush()

    def reopen_read_only(self) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)``: read-only memmaps of the files, or the in-memory arrays."""
        if self.out is None:
            return self.distances, self.ids
        self.flush()
        return (
            np.load(self.out / DISTANCES_NAME, mmap_mode="r"),
            np.load(self.out / IDS_NAME, mmap_mode="r"),
        )


def _reopen(path: Path, shape: tuple[int, int], dtype: type) -> np.memmap:
    if not path.is_file():
        raise FileNotFoundError(f"resume: {str(path)!r} is missing; the job cannot be resumed")
    array = np.load(path, mmap_mode="r+")
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ValueError(
            f"resume: {str(path)!r} holds {array.dtype} {array.shape}, expected "
            f"{np.dtype(dtype)} {shape}; the job cannot be resumed"
        )
    return array
