"""Input checking shared by every public entry point.

Each check names the argument and says what was expected, so a user sees
``queries: expected 128 columns (the index's dim), got 64`` rather than a shape error from
deep inside a matrix multiply.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "FLOAT_DTYPES",
    "STORAGE_DTYPES",
    "as_float_matrix",
    "as_ids",
    "as_new_ids",
    "check_finite",
    "check_k",
    "check_result_size",
    "non_negative_int",
    "positive_int",
    "resolve_device",
    "storage_dtype",
]

#: The float storage dtypes of every index (scores accumulate in float32).
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: The float dtypes accepted as input (float64 is cast to float32 on the device).
FLOAT_DTYPES = (*STORAGE_DTYPES, torch.float64)
_FLOAT_DTYPES = FLOAT_DTYPES
_INT64_MAX = 2**63 - 1


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int, which must be positive (numpy integers accepted, bools refused).

    >>> positive_int(np.int64(3), "nlist")
    3
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def non_negative_int(value: Any, name: str) -> int:
    """``value`` as an int, which must be ``>= 0`` (numpy integers accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"{name}: expected a non-negative int, got {type(value).__name__} {value!r}"
        )
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return int(value)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else CPU. ``"cuda"`` gets an explicit index."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device} was asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type not in ("cpu",):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device}")
    return device


def storage_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Validate a storage dtype (float32, float16 or bfloat16)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in STORAGE_DTYPES:
        names = ", ".join(str(d) for d in STORAGE_DTYPES)
        raise TypeError(f"dtype: expected one of {names}, got {dtype}")
    return dtype


def as_float_matrix(
    x: Any, name: str, dim: int | None = None, dim_source: str = "the index's dim"
) -> tuple[torch.Tensor, bool]:
    """Turn ``x`` into a 2-D floating tensor, without copying when it already is one.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (n, d)
    name : str
        The argument's name, used in error messages.
    dim : int, optional
        The number of columns expected.
    dim_source : str
        Where ``dim`` comes from, as the error for other column counts words it.

    Returns
    -------
    tensor : torch.Tensor, shape (n, d), floating
    was_numpy : bool
        True when ``x`` was a numpy array (results then go back as numpy).
    """
    was_numpy = isinstance(x, np.ndarray)
    if was_numpy:
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating-point tensor (float32, float16, bfloat16 or float64), "
            f"got {x.dtype}"
        )
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (n, d) matrix, got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError(f"{name}: a meta tensor holds no data and cannot be searched")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns ({dim_source}), got {x.shape[1]}")
    return x, was_numpy


def check_finite(x: torch.Tensor, name: str, row_offset: int = 0) -> None:
    """Raise when ``x`` holds NaN or infinity (one reduction, one host sync)."""
    if x.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        bad = ((~torch.isfinite(x)).any(dim=1).nonzero().flatten()[:5] + row_offset).tolist()
        raise ValueError(
            f"{name}: contains NaN or infinite values (rows {bad}{'…' if len(bad) == 5 else ''}); "
            "pass check_finite=False to skip this check"
        )


def _device_memory(device: torch.device) -> int:
    """Total memory of ``device`` in bytes (physical RAM for the CPU)."""
    if device.type == "cuda":
        from gpuann._device import device_properties

        return int(device_properties(device).total_memory)
    return _physical_memory()


@functools.cache
def _physical_memory() -> int:
    """Physical RAM in bytes (read once: it is asked on every search)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def check_result_size(n_queries: int, k: int, device: torch.device, per_result: int = 12) -> None:
    """Raise naming ``k`` when a (n_queries, k) result could not fit in ``device``'s memory.

    A k of 10**12 is the caller's mistake, and should say so, not surface as a failed
    allocation or a memory-budget error deep inside a search.
    """
    need = n_queries * k * per_result
    have = _device_memory(device)
    if need > have:
        raise ValueError(
            f"k: {k} results for each of {n_queries} queries need {need / 2**30:.1f} GiB for the "
            f"results alone, more than the {have / 2**30:.1f} GiB of {device}"
        )


def check_k(k: Any) -> int:
    """``k`` must be a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected a positive int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k: expected a positive int, got {k}")
    return int(k)


#: torch's unsigned integer dtypes wider than uint8 (their ids are checked through numpy).
_TORCH_UNSIGNED = tuple(
    getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)
)


def as_ids(
    ids: Any, n: int, name: str = "ids", device: torch.device | None = None, unique: bool = True
) -> torch.Tensor:
    """Turn user ids into a 1-D int64 tensor of length ``n`` (without duplicates if ``unique``).

    Parameters
    ----------
    ids : torch.Tensor, numpy.ndarray or sequence of int, shape (n,)
    n : int
        Expected length (the number of vectors); ``-1`` accepts any length.
    """
    if isinstance(ids, torch.Tensor) and ids.dtype in _TORCH_UNSIGNED:
        # torch reduces few unsigned dtypes (max of a uint64 tensor raised NotImplementedError,
        # naming no argument: found by review); numpy checks their range
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integer ids, got dtype {ids.dtype}")
        if ids.dtype.kind == "u" and ids.size and ids.max() > _INT64_MAX:
            raise OverflowError(f"{name}: ids above 2**63 - 1 do not fit int64 ({ids.max()})")
        ids = torch.from_numpy(ids.astype(np.int64, copy=False))
    elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        ids = _int_list_tensor(list(ids), name)
    elif isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        ids = _int_list_tensor([ids], name)
    elif not isinstance(ids, torch.Tensor):
        raise TypeError(
            f"{name}: expected a tensor, array or list of ints, got {type(ids).__name__}"
        )
    if ids.dtype.is_floating_point or ids.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"{name}: expected integer ids (int64), got {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D tensor of ids, got shape {tuple(ids.shape)}")
    if n >= 0 and ids.shape[0] != n:
        raise ValueError(f"{name}: expected {n} ids (one per vector), got {ids.shape[0]}")
    ids = ids.to(device=device, dtype=torch.int64)
    if unique and ids.numel() > 1:
        sorted_ids = ids.sort().values
        dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        if dup.numel():
            raise ValueError(f"{name}: duplicate ids {dup.unique()[:5].tolist()}")
    return ids


def _int_list_tensor(values: list, name: str) -> torch.Tensor:
    """A list of Python/numpy ints as int64, naming ``name`` when one does not fit."""
    if not values:
        return torch.empty(0, dtype=torch.int64)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected integer ids, got {type(v).__name__} {v!r}")
        if not -(2**63) <= int(v) <= _INT64_MAX:
            raise OverflowError(f"{name}: id {int(v)} does not fit int64")
    return torch.tensor([int(v) for v in values], dtype=torch.int64)


def as_new_ids(
    ids: Any, n: int, name: str = "ids", device: torch.device | None = None
) -> torch.Tensor:
    """Ids for ``n`` new vectors: :func:`as_ids`, unique, and non-negative.

    ``-1`` marks a missing result everywhere in gpuann (as in faiss), so no stored id may be
    negative.
    """
    ids = as_ids(ids, n, name, device=device, unique=True)
    if ids.numel() and int(ids.min()) < 0:
        bad = ids[ids < 0][:5].tolist()
        raise ValueError(
            f"{name}: expected non-negative ids (-1 marks a missing result), got {bad}"
        )
    return ids
