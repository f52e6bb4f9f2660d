"""What every shim shares: faiss's constants, its error classes, and its input conversions.

faiss's Python layer converts its inputs with ``np.ascontiguousarray(x, dtype="float32")``
(ids: ``"int64"``, binary codes: ``"uint8"``) after ``n, d = x.shape; assert d == self.d``;
the shim does the same, but keeps floating inputs (numpy or torch, on any device) in their
dtype, since gpuann accepts them as they are.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

import gpuann
from gpuann.metrics import Metric
from gpuann.serialization import IndexFileError as _NativeFileError

#: faiss's own names defined here (constants, error classes): what ``gpuann.compat.faiss``
#: re-exports of this module.
FAISS_NAMES = [
    "IO_FLAG_MMAP",
    "IO_FLAG_ONDISK_SAME_DIR",
    "IO_FLAG_READ_ONLY",
    "IO_FLAG_SKIP_IVF_DATA",
    "METRIC_INNER_PRODUCT",
    "METRIC_L2",
    "ArgumentError",
    "FaissRuntimeError",
    "IndexFileError",
    "MissingFileError",
    "UnknownIdError",
]

__all__ = [
    *FAISS_NAMES,
    "FAISS_NAMES",
    "FLT_MAX",
    "INT32_MAX",
    "as_codes",
    "as_ids",
    "as_vectors",
    "check_k",
    "faiss_errors",
    "fill_missing",
    "metric_name",
    "metric_type_of",
    "raises_as_faiss",
]

#: faiss's metric constants (same values as faiss).
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
#: faiss's ``read_index`` flags (same values); the shim reads every file fully, whatever flags.
IO_FLAG_READ_ONLY = 2
IO_FLAG_ONDISK_SAME_DIR = 4
IO_FLAG_SKIP_IVF_DATA = 8
IO_FLAG_MMAP = IO_FLAG_SKIP_IVF_DATA | 0x646F0000
#: faiss-cpu's distance for missing results (``-1`` ids): ``+FLT_MAX`` (l2), ``-FLT_MAX`` (ip).
FLT_MAX = float(np.finfo(np.float32).max)
#: faiss's Hamming distance for missing results of binary indexes.
INT32_MAX = 2**31 - 1
_METRICS = {METRIC_L2: "l2", METRIC_INNER_PRODUCT: "ip"}


class ArgumentError(AssertionError, ValueError):
    """A bad argument where faiss's Python layer asserts (``k <= 0``, wrong dimension, ids not
    one per vector): an ``AssertionError`` as in faiss, and gpuann's ``ValueError``."""


class FaissRuntimeError(RuntimeError, ValueError):
    """What faiss's C++ layer refuses with a ``RuntimeError`` (and gpuann with ``ValueError``)."""


class UnknownIdError(RuntimeError, gpuann.UnknownIdError):
    """An id the index does not hold: faiss's ``RuntimeError``, and gpuann's
    :class:`~gpuann.UnknownIdError` (a ``ValueError`` and ``KeyError``)."""


class IndexFileError(RuntimeError, _NativeFileError):
    """A file neither faiss nor gpuann can read: faiss's ``RuntimeError``, and gpuann's
    :class:`~gpuann.IndexFileError`."""


class MissingFileError(RuntimeError, FileNotFoundError):
    """A path that does not exist: faiss's ``RuntimeError``, and a ``FileNotFoundError``."""


@contextlib.contextmanager
def faiss_errors() -> Iterator[None]:
    """Re-raise gpuann's errors as the shim's faiss-compatible ones: an unknown id as
    :class:`UnknownIdError`, an unreadable file as :class:`IndexFileError`, any other
    ``ValueError`` (what faiss's C++ layer refuses with ``RuntimeError``) as
    :class:`FaissRuntimeError`; faiss's assertions (:class:`ArgumentError`) stay as they are.
    """
    try:
        yield
    except gpuann.UnknownIdError as err:
        if isinstance(err, UnknownIdError):
            raise
        raise UnknownIdError(str(err)) from err
    except _NativeFileError as err:
        if isinstance(err, RuntimeError):
            raise
        raise IndexFileError(str(err)) from err
    except ValueError as err:
        # found by review: IVF training on fewer than nlist vectors, a PQ whose M does not
        # divide d, IndexLSH/IndexBinaryFlat arguments raised ValueError, not RuntimeError
        if isinstance(err, (RuntimeError, AssertionError)):
            raise
        raise FaissRuntimeError(str(err)) from err


def raises_as_faiss(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` run under :func:`faiss_errors` (the shims' constructors, the factory)."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with faiss_errors():
            return function(*args, **kwargs)

    return wrapped


def metric_name(metric_type: int) -> str:
    """gpuann's metric name for a faiss metric constant."""
    try:
        return _METRICS[metric_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"metric: expected faiss.METRIC_L2 or faiss.METRIC_INNER_PRODUCT, got {metric_type!r}"
        ) from None


def metric_type_of(metric: Metric | str) -> int:
    """faiss's metric constant for a gpuann metric (cosine is an inner product)."""
    return METRIC_L2 if Metric(metric) is Metric.L2 else METRIC_INNER_PRODUCT


def _shape(x: Any, d: int, what: str) -> tuple[int, int]:
    shape = tuple(getattr(x, "shape", np.shape(x)))
    if len(shape) != 2:
        raise ArgumentError(f"{what}: expected a matrix (n, {d}), got shape {shape}")
    if shape[1] != d:
        raise ArgumentError(f"{what}: expected vectors of dimension d={d}, got {shape[1]}")
    return shape  # type: ignore[return-value]


def as_vectors(x: Any, d: int, what: str = "x") -> Any:
    """``x`` as gpuann takes it: floating numpy arrays and tensors as they are, anything else
    (integer arrays, lists) converted to float32 as faiss converts them."""
    _shape(x, d, what)
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x
    return np.ascontiguousarray(x, dtype=np.float32)


def as_codes(x: Any, code_size: int, what: str = "x") -> Any:
    """Binary codes: uint8 only, as faiss (``TypeError`` for any other dtype)."""
    dtype = getattr(x, "dtype", None)
    if dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"Input argument {what} must be ndarray of dtype uint8, but found {dtype}")
    _shape(x, code_size, what)
    return x


def as_ids(ids: Any, n: int | None = None) -> np.ndarray:
    """ids as faiss takes them: ``np.ascontiguousarray(ids, dtype="int64")`` (float ids are
    truncated), one per vector."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if n is not None and ids.shape != (n,):
        raise ArgumentError(f"ids: not same nb of vectors as ids ({ids.shape} for {n} vectors)")
    return ids.reshape(-1)


def check_k(k: Any) -> int:
    """faiss's ``assert k > 0`` (and an int)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if k <= 0:
        raise ArgumentError(f"k: expected k > 0, got {k}")
    return int(k)


def fill_missing(distances: Any, ids: Any, value: float) -> Any:
    """``distances`` with ``value`` where ``ids`` is ``-1`` (faiss-cpu's ``±FLT_MAX``), in
    place; no host sync for tensors."""
    if isinstance(distances, np.ndarray):
        np.putmask(distances, ids < 0, value)
    else:
        distances.masked_fill_(ids < 0, value)
    return distances
