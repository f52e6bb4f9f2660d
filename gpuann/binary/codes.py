"""Packed binary codes: 1 bit per dimension, 8 per byte, most significant bit first.

The layout is ``numpy.packbits``'s (and faiss's binary indexes' byte layout for uint8 codes):
bit ``j`` of a vector is bit ``7 - j % 8`` of byte ``j // 8``; a code of ``nbits`` bits takes
``ceil(nbits / 8)`` bytes, the unused low bits of the last byte being zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann._validate import as_float_matrix

__all__ = ["as_codes", "code_bytes", "pack_bits", "quantize_binary", "to_words", "unpack_bits"]

_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def code_bytes(nbits: int) -> int:
    """Bytes of one packed code of ``nbits`` bits."""
    return (nbits + 7) // 8


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a boolean matrix into bytes, MSB first (``numpy.packbits(bits, axis=1)``).

    Parameters
    ----------
    bits : torch.Tensor, shape (n, nbits), bool

    Returns
    -------
    torch.Tensor, shape (n, ceil(nbits / 8)), uint8, on ``bits.device``
    """
    n, nbits = bits.shape
    pad = -nbits % 8
    b = bits.to(torch.uint8)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    weights = torch.tensor(_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return (b.view(n, (nbits + pad) // 8, 8) * weights).sum(dim=2, dtype=torch.uint8)


def unpack_bits(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    Parameters
    ----------
    codes : torch.Tensor, shape (n, ceil(nbits / 8)), uint8
    nbits : int

    Returns
    -------
    torch.Tensor, shape (n, nbits), bool
    """
    shifts = torch.arange(7, -1, -1, device=codes.device, dtype=torch.uint8)
    bits = (codes[:, :, None] >> shifts) & 1
    return bits.reshape(codes.shape[0], -1)[:, :nbits].bool()


def quantize_binary(embeddings: Any) -> Any:
    """1-bit quantisation: the sign bit of every dimension, packed 8 per byte.

    Bit ``j`` is set when ``embeddings[:, j] > 0`` (as ``numpy.packbits(x > 0, axis=1)`` and
    sentence-transformers' ``"ubinary"`` precision). Search the codes with
    :class:`gpuann.BinaryFlatIndex` (Hamming distance) and re-rank the best candidates with
    the full-precision vectors, or let :class:`gpuann.LSHIndex` do both.

    Parameters
    ----------
    embeddings : torch.Tensor or numpy.ndarray, shape (n, d), floating

    Returns
    -------
    codes : shape (n, ceil(d / 8)), uint8
        A numpy array when ``embeddings`` is one, else a tensor on its device.

    Examples
    --------
    >>> quantize_binary(torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, -3.0]]))
    tensor([[175,   0]], dtype=torch.uint8)
    """
    x, was_numpy = as_float_matrix(embeddings, "embeddings")
    codes = pack_bits(x > 0)
    return codes.numpy() if was_numpy else codes


def as_codes(codes: Any, name: str, nbytes: int) -> tuple[torch.Tensor, bool]:
    """Validate packed codes: a 2-D uint8 tensor or array with ``nbytes`` columns.

    Returns
    -------
    codes : torch.Tensor, shape (n, nbytes), uint8
    was_numpy : bool
    """
    was_numpy = isinstance(codes, np.ndarray)
    if was_numpy:
        if codes.dtype != np.uint8:
            raise TypeError(f"{name}: expected packed uint8 codes, got dtype {codes.dtype}")
        codes = torch.from_numpy(np.ascontiguousarray(codes))
    elif not isinstance(codes, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor or numpy.ndarray of uint8 codes, "
            f"got {type(codes).__name__}"
        )
    if codes.dtype != torch.uint8:
        raise TypeError(
            f"{name}: expected packed uint8 codes, got {codes.dtype} "
            "(pack bits with gpuann.quantize_binary or numpy.packbits)"
        )
    if codes.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D (n, nbytes) matrix, got shape {tuple(codes.shape)}"
        )
    if codes.shape[1] != nbytes:
        raise ValueError(
            f"{name}: expected {nbytes} columns (bytes per code: {nbytes * 8} bits, the index's "
            f"nbits), got {codes.shape[1]}"
        )
    return codes, was_numpy


def to_words(codes: torch.Tensor) -> torch.Tensor:
    """Codes as int32 words, zero-padded to a multiple of 4 bytes (a view when already padded).

    Parameters
    ----------
    codes : torch.Tensor, shape (n, nbytes), uint8

    Returns
    -------
    torch.Tensor, shape (n, ceil(nbytes / 4)), int32
    """
    pad = -codes.shape[1] % 4
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    return codes.contiguous().view(torch.int32)
