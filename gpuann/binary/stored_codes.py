"""Packed binary codes in the id store: what ``BinaryFlatIndex`` and ``LSHIndex`` share.

Codes are uint8 rows of ``ceil(nbits / 8)`` bytes (``numpy.packbits`` layout), stored in a
``codes`` column of the shared id-sorted store (:class:`gpuann._rows.IdRows`) zero-padded to
whole int32 words, so that the Hamming kernel (:func:`gpuann.binary.hamming.hamming_topk`)
reads them in place. Files hold the unpadded codes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann.binary.hamming import hamming_topk

__all__ = ["StoredCodes", "check_nbits", "padded_bytes", "prepare_codes"]


def check_nbits(nbits: Any, name: str = "nbits", multiple_of_8: bool = True) -> int:
    """A positive int (a multiple of 8 when ``multiple_of_8``)."""
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits <= 0:
        raise ValueError(f"{name}: expected a positive int, got {nbits!r}")
    if multiple_of_8 and nbits % 8:
        raise ValueError(f"{name}: expected a multiple of 8 (whole bytes, as faiss), got {nbits}")
    return int(nbits)


def padded_bytes(code_size: int) -> int:
    """Bytes of a stored code: ``code_size`` rounded up to whole int32 words.

    >>> padded_bytes(5)
    8
    """
    return -(-code_size // 4) * 4


def prepare_codes(codes: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Codes on ``device``, contiguous and zero-padded to whole int32 words.

    Parameters
    ----------
    codes : torch.Tensor, shape (n, code_size), uint8, any strides

    Returns
    -------
    torch.Tensor, shape (n, padded_bytes(code_size)), uint8, contiguous
    """
    codes = codes.to(device)
    pad = padded_bytes(codes.shape[1]) - codes.shape[1]
    return torch.nn.functional.pad(codes, (0, pad)) if pad else codes.contiguous()


def _file_codes(arrays: dict, code_size: int, device: torch.device) -> torch.Tensor:
    """A file's ``codes`` array checked against ``code_size`` and padded to whole words."""
    from gpuann.serialization import IndexFileError

    codes = arrays.get("codes")
    if codes is None:
        raise IndexFileError("the file has no array 'codes'")
    if codes.dtype != torch.uint8 or codes.ndim != 2 or codes.shape[1] != code_size:
        raise IndexFileError(
            f"codes have shape {tuple(codes.shape)} and dtype {codes.dtype}; the header implies "
            f"(n, {code_size}) uint8"
        )
    return prepare_codes(codes, device)


class StoredCodes:
    """``nbits``-bit codes in a padded ``codes`` column, searched by Hamming distance (a
    mixin of :class:`gpuann.Index`, listed before it; the subclass sets ``_nbits`` and
    ``_code_size``)."""

    _nbits: int
    _code_size: int
    _rows: Any
    _device: torch.device

    @property
    def nbits(self) -> int:
        """Bits per code."""
        return self._nbits

    @property
    def code_size(self) -> int:
        """Bytes per code, ``ceil(nbits / 8)`` (faiss's ``code_size``)."""
        return self._code_size

    def _code_columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The ``codes`` column: ``padded_bytes(code_size)`` uint8 per row."""
        return {"codes": ((padded_bytes(self._code_size),), torch.uint8)}

    def _hamming_search(
        self, codes: torch.Tensor, k: int, backend: str, memory_budget: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Int32 Hamming distances and rows of the ``k`` stored codes nearest to each of the
        padded query ``codes`` (see :func:`~gpuann.binary.hamming.hamming_topk`)."""
        return hamming_topk(
            codes.view(torch.int32),
            self._rows.view("codes").view(torch.int32),
            k,
            backend=backend,
            memory_budget=memory_budget,
        )

    def _save_arrays(self) -> dict[str, torch.Tensor]:
        arrays = super()._save_arrays()  # type: ignore[misc]  # the Index's
        arrays["codes"] = arrays["codes"][:, : self._code_size]
        return arrays

    def _restore(self, meta: dict, arrays: dict[str, torch.Tensor]) -> None:
        codes = _file_codes(arrays, self._code_size, self._device)
        super()._restore(meta, {**arrays, "codes": codes})  # type: ignore[misc]  # the Index's
