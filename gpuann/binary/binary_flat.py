"""``BinaryFlatIndex``: exact Hamming search over packed binary codes, with user ids.

The GPU counterpart of faiss's ``IndexBinaryFlat``: codes are uint8 rows of ``nbits / 8``
bytes (``numpy.packbits`` / :func:`gpuann.quantize_binary` layout), distances are int32 Hamming
distances as in faiss, equal distances are ordered by lower id.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from gpuann._rwlock import ReadWriteLock
from gpuann._validate import as_ids, check_k, resolve_device
from gpuann.binary._store import IdSortedRows
from gpuann.binary.codes import as_codes, code_bytes
from gpuann.binary.hamming import hamming_topk
from gpuann.display import Bytes, html_repr, text_repr
from gpuann.result import SearchResult
from gpuann.serialization import (
    IndexFileError,
    load,
    register_index_kind,
    write_index_file,
)

__all__ = ["BinaryFlatIndex"]


def check_nbits(nbits: Any, name: str = "nbits", multiple_of_8: bool = True) -> int:
    """A positive int (a multiple of 8 when ``multiple_of_8``)."""
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits <= 0:
        raise ValueError(f"{name}: expected a positive int, got {nbits!r}")
    if multiple_of_8 and nbits % 8:
        raise ValueError(f"{name}: expected a multiple of 8 (whole bytes, as faiss), got {nbits}")
    return int(nbits)


class BinaryFlatIndex:
    """Exact Hamming-distance index over packed binary codes stored on one device.

    Parameters
    ----------
    nbits : int
        Bits per code, a multiple of 8 (faiss's ``d``); codes have ``nbits // 8`` bytes.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    memory_budget : int, optional
        Bytes of working memory per search (torch backend).

    Notes
    -----
    ``search`` returns **int32** Hamming distances (as faiss's binary indexes do, exact and
    comparable with faiss), not float32; missing results (fewer than ``k`` codes) have id
    ``-1`` and distance ``2**31 - 1``.

    Examples
    --------
    >>> index = BinaryFlatIndex(16, device="cpu")
    >>> index.add(torch.tensor([[0, 0], [255, 0], [1, 1]], dtype=torch.uint8), ids=[7, 8, 9])
    >>> D, I = index.search(torch.tensor([[1, 0]], dtype=torch.uint8), k=2)
    >>> D, I
    (tensor([[1, 1]], dtype=torch.int32), tensor([[7, 9]]))
    """

    def __init__(
        self,
        nbits: int,
        device: str | torch.device | None = None,
        *,
        memory_budget: int | None = None,
    ) -> None:
        self._nbits = check_nbits(nbits)
        self._nbytes = code_bytes(self._nbits)
        self._device = resolve_device(device)
        self.memory_budget = memory_budget
        self._lock = ReadWriteLock()
        self._rows = IdSortedRows(self._device, {"codes": ((self._padded_bytes,), torch.uint8)})

    # ---------------------------------------------------------------- properties
    @property
    def _padded_bytes(self) -> int:
        return -(-self._nbytes // 4) * 4

    @property
    def nbits(self) -> int:
        """Bits per code."""
        return self._nbits

    @property
    def device(self) -> torch.device:
        """Where the codes live and searches run."""
        return self._device

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy)."""
        with self._lock.read():
            return self._rows.stored_ids.clone()

    @property
    def nbytes(self) -> int:
        """Bytes of device memory held, spare capacity included."""
        return self._rows.nbytes

    def __len__(self) -> int:
        return self._rows.n

    def _display_fields(self) -> dict[str, Any]:
        """What ``repr`` and Jupyter show: Python ints and tensor metadata only (no sync)."""
        return {
            "n": len(self),
            "nbits": self._nbits,
            "metric": "hamming",
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- mutations
    def _prepare(self, codes: Any, name: str) -> torch.Tensor:
        codes, _ = as_codes(codes, name, self._nbytes)
        codes = codes.to(self._device)
        pad = self._padded_bytes - self._nbytes
        return torch.nn.functional.pad(codes, (0, pad)) if pad else codes

    def add(self, codes: Any, ids: Any = None) -> None:
        """Add codes.

        Parameters
        ----------
        codes : torch.Tensor or numpy.ndarray, shape (n, nbits // 8), uint8
        ids : int64 tensor, array or list, shape (n,), optional
            Unique ids not already in the index; default: consecutive after the largest used.

        On any error the index is left unchanged.
        """
        codes = self._prepare(codes, "codes")
        with self._lock.write():
            new_ids, order = self._rows.new_ids(ids, codes.shape[0])
            self._rows.insert(new_ids, {"codes": codes if order is None else codes[order]})

    def remove(self, ids: Any, *, strict: bool = True) -> int:
        """Remove codes by id; return how many were removed.

        Parameters
        ----------
        ids : int64 tensor, array or list
        strict : bool
            True: an unknown id raises and nothing is removed; False: unknown ids are ignored.
        """
        ids = as_ids(ids, -1, device=self._device)
        with self._lock.write():
            return self._rows.remove(ids, strict)

    def update(self, ids: Any, codes: Any) -> None:
        """Replace the codes of existing ids (shape (n,) and (n, nbits // 8))."""
        codes = self._prepare(codes, "codes")
        ids = as_ids(ids, codes.shape[0], device=self._device)
        with self._lock.write():
            self._rows.data["codes"][self._rows.require(ids)] = codes

    def reset(self) -> None:
        """Remove every code (ids restart at 0)."""
        with self._lock.write():
            self._rows.reset()

    def _renumber(self) -> None:
        with self._lock.write():
            self._rows.renumber()

    # ---------------------------------------------------------------- queries
    def reconstruct(self, ids: Any) -> Any:
        """The stored codes of ``ids``: shape (n, nbits // 8), uint8 (numpy for numpy ids)."""
        as_numpy = isinstance(ids, np.ndarray)
        ids = as_ids(ids, -1, device=self._device, unique=False)
        with self._lock.read():
            codes = self._rows.data["codes"][self._rows.require(ids), : self._nbytes]
        return codes.cpu().numpy() if as_numpy else codes

    def search(
        self, queries: Any, k: int, *, backend: str = "auto", memory_budget: int | None = None
    ) -> SearchResult:
        """The ``k`` stored codes nearest to each query code in Hamming distance.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, nbits // 8), uint8
        k : int
        backend : {"auto", "triton", "torch"}
        memory_budget : int, optional

        Returns
        -------
        SearchResult
            ``(distances, ids)`` of shape (Q, k): int32 Hamming distances (ascending, ties by
            lower id) and int64 ids; ``-1`` / ``2**31 - 1`` beyond the index's size. numpy
            when ``queries`` is numpy, else tensors on the queries' device.
        """
        k = check_k(k)
        codes, was_numpy = as_codes(queries, "queries", self._nbytes)
        out_device = codes.device
        words = self._prepare(codes, "queries").view(torch.int32)
        with self._lock.read():
            rows = self._rows
            database = rows.view("codes").view(torch.int32)
            budget = memory_budget if memory_budget is not None else self.memory_budget
            distances, pos = hamming_topk(words, database, k, backend=backend, memory_budget=budget)
            ids = torch.where(pos >= 0, rows.stored_ids[pos.clamp(min=0)], pos) if rows.n else pos
        if was_numpy:
            return SearchResult(distances.cpu().numpy(), ids.cpu().numpy())
        return SearchResult(distances.to(out_device), ids.to(out_device))

    # ---------------------------------------------------------------- moving and saving
    def to(self, device: str | torch.device) -> BinaryFlatIndex:
        """This index on ``device``: ``self`` if already there, else a copy."""
        device = resolve_device(device)
        if device == self._device:
            return self
        other = BinaryFlatIndex(self._nbits, device, memory_budget=self.memory_budget)
        with self._lock.read():
            other._rows = self._rows.copy_to(device)
        return other

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically; reload with :func:`gpuann.load`."""
        with self._lock.read():
            meta = {"nbits": self._nbits, "next_id": self._rows.next_id}
            arrays = {
                "codes": self._rows.view("codes")[:, : self._nbytes],
                "ids": self._rows.stored_ids,
            }
            write_index_file(path, "BinaryFlatIndex", meta, arrays)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> BinaryFlatIndex:
        """Load a ``BinaryFlatIndex`` saved with :meth:`save`."""
        return load(path, device, kind="BinaryFlatIndex")


def check_sorted_ids(ids: torch.Tensor, n: int) -> None:
    """Raise :class:`IndexFileError` unless ``ids`` is one strictly ascending id per row."""
    if (
        ids.dtype != torch.int64
        or ids.shape != (n,)
        or (n > 1 and not bool((ids[1:] > ids[:-1]).all()))
    ):
        raise IndexFileError("ids are not one strictly ascending id per stored row")


def _load_binary_flat(meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> BinaryFlatIndex:
    index = BinaryFlatIndex(meta["nbits"], device)
    codes, ids = arrays["codes"], arrays["ids"]
    if codes.dtype != torch.uint8 or codes.ndim != 2 or codes.shape[1] != index._nbytes:
        raise IndexFileError("codes do not match the header's nbits")
    check_sorted_ids(ids, codes.shape[0])
    index._rows.load(ids, {"codes": index._prepare(codes, "codes")}, meta["next_id"])
    return index


register_index_kind("BinaryFlatIndex", _load_binary_flat)
