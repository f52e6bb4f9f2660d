"""Where batch search reads its matrices from: tensors, numpy arrays, memory-mapped ``.npy`` files.

A :class:`MatrixSource` wraps any of them behind one interface: its shape and dtype, a block
of rows as a float tensor (:meth:`MatrixSource.rows`), copying rows into a caller's buffer
(:meth:`MatrixSource.read_into`, what the prefetching reader uses), and a fingerprint that
tells a checkpoint whether it still describes the same data (cheap: sampled rows, checked first)
and a running hash of every row read (:meth:`MatrixSource.rows` with ``digest``,
:meth:`MatrixSource.hash_rows`), which a resumed job compares over the rows already done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["MatrixSource", "as_matrix_source", "stored_bytes"]

#: Rows hashed into a fingerprint (evenly spaced, first and last included).
_FINGERPRINT_ROWS = 64
#: :meth:`MatrixSource.take` from a file: rows at most this far apart are read in one
#: ``pread``, at most ``_TAKE_RUN`` wanted rows per read.
_TAKE_GAP = 4
_TAKE_RUN = 128
_NUMPY_TO_TORCH = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


@dataclasses.dataclass(frozen=True)
class MatrixSource:
    """A read-only (n, d) floating matrix in memory, on a device or on disk.

    Attributes
    ----------
    data : torch.Tensor or numpy.ndarray, shape (n, d)
        The rows, as given (a ``numpy.memmap`` for files).
    name : str
        The argument's name, for error messages.
    path : str or None
        The ``.npy`` file the rows come from, if any.
    """

    data: Any
    name: str
    path: str | None = None
    #: Byte offset of row 0 in ``data.filename`` when rows can be read with ``pread``.
    file_offset: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, d)``."""
        return int(self.data.shape[0]), int(self.data.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype as a torch dtype (float64 stays float64)."""
        if isinstance(self.data, torch.Tensor):
            return self.data.dtype
        return _NUMPY_TO_TORCH[self.data.dtype]

    @property
    def device(self) -> torch.device:
        """Where the rows live (``cpu`` for numpy arrays and files)."""
        if isinstance(self.data, torch.Tensor):
            return self.data.device
        return torch.device("cpu")

    @property
    def on_disk(self) -> bool:
        """True for memory-mapped files: rows must be read (and are worth prefetching)."""
        return isinstance(self.data, np.memmap) or self.path is not None

    @property
    def is_pinned(self) -> bool:
        """True for a pinned host tensor (copies to CUDA can start straight from it)."""
        return (
            isinstance(self.data, torch.Tensor)
            and self.data.device.type == "cpu"
            and torch.cuda.is_available()
            and self.data.is_pinned()
        )

    def rows(self, start: int, stop: int, digest: Any = None) -> torch.Tensor:
        """Rows ``start:stop`` as a tensor, without copying when possible.

        Parameters
        ----------
        start, stop : int
        digest : hashlib hash object, optional
            Updated with the rows' stored bytes (before any cast), as they are read: feeding
            it every chunk in order hashes the whole input (see :meth:`hash_rows`).

        Returns
        -------
        torch.Tensor, shape (stop - start, d), the storage dtype (float64 becomes float32),
        on :attr:`device`
        """
        block = self._read(start, stop)
        if digest is not None:
            digest.update(stored_bytes(block))
        return block.float() if block.dtype == torch.float64 else block

    def hash_rows(self, digest: Any, start: int, stop: int, block_bytes: int = 16 << 20) -> None:
        """Feed rows ``start:stop`` to ``digest`` as :meth:`rows` would, a block at a time.

        The bytes hashed do not depend on how the range is cut, so a job hashing its chunks as
        it reads them and a resumed job re-hashing the rows done so far in blocks agree.
        """
        row_bytes = max(1, self.shape[1] * self.data.dtype.itemsize)
        step = max(1, block_bytes // row_bytes)
        for first in range(start, stop, step):
            digest.update(stored_bytes(self._read(first, min(stop, first + step))))

    def _read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` in the storage dtype; files are read with ``pread`` when possible
        (no pages of the file mapped into the process: the resident set stays flat)."""
        if self.file_offset is not None and stop > start:
            block = torch.empty((stop - start, self.shape[1]), dtype=self.dtype)
            self._pread(block, start)
            return block
        block = self.data[start:stop]
        if not isinstance(block, torch.Tensor):
            # Files (and read-only arrays) are read into memory: torch wants writable arrays.
            copy = self.on_disk or not block.flags.writeable
            block = torch.from_numpy(np.array(block) if copy else np.ascontiguousarray(block))
        return block

    def read_into(self, buffer: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Copy rows ``start:stop`` into ``buffer[: stop - start]`` and return that view.

        ``buffer`` is a CPU tensor of :meth:`stream_dtype` (pinned for CUDA transfers).
        """
        view = buffer[: stop - start]
        if self.file_offset is not None and view.dtype == self.dtype:
            self._pread(view, start)  # no pages mapped into this process: RSS stays flat
            return view
        block = self.data[start:stop]
        if isinstance(block, torch.Tensor):
            view.copy_(block)
        else:
            np.copyto(view.numpy(), block, casting="same_kind")
        return view

    def _pread(self, view: torch.Tensor, start: int) -> None:
        target = memoryview(view.numpy()).cast("B")
        row_bytes = self.shape[1] * self.data.dtype.itemsize
        position = self.file_offset + start * row_bytes
        fd = os.open(self.data.filename, os.O_RDONLY)
        try:
            while len(target):
                got = os.preadv(fd, [target], position)
                if got <= 0:
                    raise OSError(f"{self.name}: {self.data.filename!r} ended early")
                target, position = target[got:], position + got
        finally:
            os.close(fd)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (int64, shape (n,), any order, repeats allowed) as a new float32
        CPU tensor, shape (n, d) (for re-scoring candidates of a streamed CPU search).

        Files are read with ``pread`` (as :meth:`rows`: no page of the file stays mapped),
        rows close together in one read each.
        """
        if isinstance(self.data, torch.Tensor):
            return torch.index_select(self.data, 0, index.to(self.data.device)).float().cpu()
        wanted = index.numpy()
        if self.file_offset is None:
            with np.errstate(over="ignore"):  # float64 beyond float32: inf, as torch's .float()
                rows = np.asarray(self.data[wanted], dtype=np.float32)
            return torch.from_numpy(np.ascontiguousarray(rows))
        unique, inverse = np.unique(wanted, return_inverse=True)
        found = np.empty((unique.size, self.shape[1]), dtype=np.float32)
        # runs of rows at most _TAKE_GAP apart (and _TAKE_RUN long) are read whole
        breaks = np.flatnonzero(np.diff(unique) > _TAKE_GAP) + 1
        at = 0
        for run in np.split(unique, breaks):
            for lo in range(0, run.size, _TAKE_RUN):
                part = run[lo : lo + _TAKE_RUN]
                first, last = int(part[0]), int(part[-1]) + 1
                block = torch.empty((last - first, self.shape[1]), dtype=self.dtype)
                self._pread(block, first)
                with np.errstate(over="ignore"):
                    found[at : at + part.size] = block.numpy()[part - first]
                at += part.size
        return torch.from_numpy(found[inverse])

    def stream_dtype(self) -> torch.dtype:
        """The dtype rows travel in: the storage dtype, float64 narrowed to float32."""
        return torch.float32 if self.dtype == torch.float64 else self.dtype

    def fingerprint(self) -> dict[str, Any]:
        """Shape, dtype and a hash of evenly spaced rows: cheap, and enough to tell datasets apart.

        Returns
        -------
        dict
            ``shape``, ``dtype`` and ``sample_sha256`` (JSON values).
        """
        n, d = self.shape
        digest = hashlib.sha256()
        if n:
            picks = np.unique(np.linspace(0, n - 1, num=min(n, _FINGERPRINT_ROWS)).astype(np.int64))
            for row in picks.tolist():  # files: pread, so no page of them is mapped in
                digest.update(stored_bytes(self._read(row, row + 1)))
        return {
            "shape": [n, d],
            "dtype": str(self.dtype).removeprefix("torch."),
            "sample_sha256": digest.hexdigest(),
        }


def stored_bytes(block: Any) -> np.ndarray:
    """The stored bytes of a block of rows (a tensor anywhere, or a numpy array), C order."""
    if isinstance(block, torch.Tensor):
        block = block.detach()
        if block.device.type != "cpu":
            block = block.cpu()
        block = block.contiguous().view(torch.uint8).numpy()
    return np.ascontiguousarray(block).view(np.uint8).reshape(-1)


def _load_npy(path: str | os.PathLike, name: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{name}: {str(path)!r} is not a readable .npy file ({err})") from None


def as_matrix_source(x: Any, name: str, dim: int | None = None) -> MatrixSource:
    """Validate ``x`` and wrap it.

    Parameters
    ----------
    x : torch.Tensor, numpy.ndarray, numpy.memmap, str or os.PathLike
        An (n, d) floating matrix (float16 / bfloat16 / float32 / float64 tensors; float16 /
        float32 / float64 arrays), or the path of a ``.npy`` file holding one, opened
        memory-mapped (never read whole).
    name : str
        The argument's name, used in error messages.
    dim : int, optional
        The number of columns expected.

    Returns
    -------
    MatrixSource
    """
    path = None
    if isinstance(x, (str, os.PathLike)):
        path = str(x)
        x = _load_npy(x, name)
    where = f"{name} ({path!r})" if path else name
    if isinstance(x, np.ndarray):
        if x.dtype not in _NUMPY_TO_TORCH:
            raise TypeError(
                f"{where}: expected float16, float32 or float64 values, got dtype {x.dtype}"
            )
    elif isinstance(x, torch.Tensor):
        if not x.dtype.is_floating_point:
            raise TypeError(f"{where}: expected a floating-point tensor, got {x.dtype}")
        if x.device.type == "meta":
            raise ValueError(f"{where}: a meta tensor holds no data and cannot be searched")
    else:
        raise TypeError(
            f"{where}: expected a torch.Tensor, numpy array or .npy path, got {type(x).__name__}"
        )
    if x.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D (n, d) matrix, got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{where}: expected at least one column, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{where}: expected {dim} columns (the database's), got {x.shape[1]}")
    if isinstance(x, np.ndarray) and not x.flags.c_contiguous and not isinstance(x, np.memmap):
        x = np.ascontiguousarray(x)
    return MatrixSource(x, name, path, _file_offset(x))


def _file_offset(x: Any) -> int | None:
    """Where a whole-file, C-ordered memmap's rows start in its file (``None``: not one)."""
    if not (isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap)):
        return None
    if not x.flags.c_contiguous or not x.filename or not hasattr(os, "preadv"):
        return None
    return int(x.offset)
