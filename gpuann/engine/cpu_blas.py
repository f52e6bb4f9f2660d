"""Float32 score products on the CPU: torch's BLAS, or numpy's OpenBLAS where that is faster.

torch's CPU wheels multiply with MKL. On an AMD EPYC its matrix–vector products (one query
against a database tile) were measured 2.7× slower than the OpenBLAS of numpy's wheels
running on *one* thread (torch 2.13.0 on 2 threads, numpy 2.4.6: 4.5 ms vs 1.7 ms for one
query against 10⁵ × 128). Searches planned one query at a time therefore multiply with numpy
when ``GPUANN_CPU_BLAS`` asks for it:

- ``auto`` (the default): numpy on AMD x86 CPUs when numpy's BLAS is OpenBLAS and threadpoolctl
  is installed; torch elsewhere (MKL on Intel CPUs was not measured against OpenBLAS);
- ``numpy``: numpy wherever its OpenBLAS can be thread-limited (torch otherwise);
- ``torch``: always torch.

OpenBLAS runs on one thread for these products (its thread count is set for the call and put
back after it, through its own C API: threadpoolctl's setter ignores every thread but the
first that used it): with two, its idle worker spins after every product and the torch op
that follows (the running top-k's threshold filter) took ~7 ms instead of 0.1 ms. Larger query
blocks of the tiled engine stay on torch's MKL. OpenBLAS's matrix products give a row different
bits depending on how many rows share the product, and, worse for exact search, give *identical
database rows* different scores depending on their column (2032 of 2048 copies of one row
differed from the first in a 500 × 2048 × 129 product here; MKL's and the matrix–vector
products' agree), which would break ties between duplicates by rounding noise instead of by
lower id. :mod:`gpuann.engine.verified_cpu` therefore uses OpenBLAS's matrix products only to
propose candidates, which it re-scores pair by pair and proves (the same ``auto``/``numpy``
choice turns it on).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from gpuann._env import cpu_blas_mode
from gpuann._pools import worker_pool

__all__ = [
    "NUMPY_MAX_QUERIES",
    "numpy_blas_active",
    "numpy_mm_t",
    "one_openblas_thread",
    "use_numpy_blas",
]

#: Plans of query blocks up to this height multiply with numpy's BLAS when it is chosen: the
#: matrix–vector products, where torch's MKL loses most and the product dominates the search.
NUMPY_MAX_QUERIES = 1
#: Fewest database rows per thread of a product; parts start at multiples of ``_ALIGN`` rows.
_MIN_PART_ROWS = 32768
_ALIGN = 64
#: Rows OpenBLAS's matrix-vector kernels score in whole groups (a multiple of its unrolling:
#: 4 measured, with numpy 2.4.6's OpenBLAS 0.3.31 Haswell kernels).
_TAIL = 16


@functools.cache
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def _numpy_openblas() -> Any | None:
    """threadpoolctl's controller of numpy's OpenBLAS, or None (not OpenBLAS, no threadpoolctl)."""
    try:
        import numpy as np
        import threadpoolctl
    except ImportError:
        return None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except (KeyError, TypeError, AttributeError):
        return None
    if "openblas" not in str(blas).lower():
        return None
    libs = [c for c in threadpoolctl.ThreadpoolController().lib_controllers]
    openblas = [c for c in libs if c.internal_api == "openblas"]
    own = [c for c in openblas if "numpy" in str(c.filepath)]
    return (own or openblas or [None])[0]


def numpy_blas_active() -> bool:
    """True when blocks of few queries are multiplied by numpy's OpenBLAS (see the module).

    >>> isinstance(numpy_blas_active(), bool)
    True
    """
    mode = cpu_blas_mode()
    if mode == "torch" or _numpy_openblas() is None or _openblas_threads() is None:
        return False
    return mode == "numpy" or _cpu_vendor() == "AuthenticAMD"


def use_numpy_blas(device: torch.device, query_block: int) -> bool:
    """True when a search planned with blocks of ``query_block`` queries on ``device`` is to
    multiply with numpy's BLAS.

    The choice belongs to the plan, not to a block: every block of a search (and every
    out-of-core pass of the same job, which plans the same blocks) multiplies with the same
    library, so their scores carry the same bits.

    >>> use_numpy_blas(torch.device("meta"), 1)
    False
    """
    return device.type == "cpu" and query_block <= NUMPY_MAX_QUERIES and numpy_blas_active()


def _pool(workers: int) -> ThreadPoolExecutor:
    return worker_pool("blas", workers)


def numpy_mm_t(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``out = a @ b.T (+ bias)`` by numpy's BLAS, OpenBLAS on one thread per part (see the
    module).

    Parameters
    ----------
    a : torch.Tensor, shape (m, d), float32, CPU
    b : torch.Tensor, shape (n, d), float32, CPU
    out : torch.Tensor, shape (m, n), float32, CPU, contiguous
    bias : torch.Tensor, shape (n,), float32, CPU, optional
        Added to every row of the product (one float32 rounding, as ``out.add_(bias)``).

    The arrays share the tensors' memory (no copy). With ``torch.get_num_threads()`` above 1
    and at least :data:`_MIN_PART_ROWS` rows per part, the rows of ``b`` are cut into that
    many parts, each multiplied on its own thread (each output is the same dot product, in
    the same order, whatever the cut).

    >>> out = torch.empty(2, 3)
    >>> numpy_mm_t(torch.ones(2, 4), torch.ones(3, 4), out).tolist()
    [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]
    """
    import numpy as np

    an, bn, on = a.detach().numpy(), b.detach().numpy(), out.detach().numpy()
    cn = None if bias is None else bias.detach().numpy()

    def part(lo: int, hi: int) -> None:
        # Non-finite values (check_finite=False) give NaN/inf scores, silently, as torch does.
        with np.errstate(all="ignore"):
            # OpenBLAS's matrix-vector kernel scores the last n mod 4 rows in a tail loop,
            # other bits than the same row in the main loop (found by review: identical rows
            # got two distances, ties broken by rounding): the rows past the last whole
            # group of _TAIL go through a zero-padded block of _TAIL rows instead.
            main = lo + (hi - lo) // _TAIL * _TAIL
            if main > lo:
                np.matmul(an, bn[lo:main].T, out=on[:, lo:main])
            if hi > main:
                block = np.zeros((_TAIL, bn.shape[1]), dtype=bn.dtype)
                block[: hi - main] = bn[main:hi]
                on[:, main:hi] = np.matmul(an, block.T)[:, : hi - main]
            if cn is not None:
                np.add(on[:, lo:hi], cn[lo:hi], out=on[:, lo:hi])

    n = bn.shape[0]
    parts = max(1, min(torch.get_num_threads(), n // _MIN_PART_ROWS))
    with _one_openblas_thread():
        if parts == 1:
            part(0, n)
            return out
        bounds = [n * i // parts // _ALIGN * _ALIGN for i in range(parts)] + [n]
        futures = [
            _pool(parts - 1).submit(part, lo, hi) for lo, hi in itertools.pairwise(bounds[1:])
        ]
        part(0, bounds[1])
        for f in futures:
            f.result()
    return out


class _OneOpenBLASThread:
    """OpenBLAS on one thread while any product of this module runs (its thread count is
    process-wide: the first of concurrent callers sets it, the last puts the old one back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._before = 1

    def __call__(self) -> _OneOpenBLASThread:
        return self

    def __enter__(self) -> None:
        api = _openblas_threads()
        if api is None:
            return
        get, set_ = api
        with self._lock:
            if self._active == 0:
                self._before = get()
                if self._before != 1:
                    set_(1)
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        api = _openblas_threads()
        if api is None:
            return
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._before != 1:
                api[1](self._before)


@functools.cache
def _openblas_threads() -> tuple[Any, Any] | None:
    """``(get, set)`` of numpy's OpenBLAS thread count, called directly through ctypes.

    Not threadpoolctl's ``set_num_threads``: it does nothing when called from any thread but
    the first that used it (its "controlling thread"), so a search run from another thread
    multiplied on two OpenBLAS threads (found by a concurrency test).
    """
    blas = _numpy_openblas()
    if blas is None:
        return None
    try:
        lib = ctypes.CDLL(blas.filepath)
    except OSError:
        return None
    if getattr(blas, "threading_layer", "pthreads") != "pthreads":
        return None  # an OpenMP build's count is per thread (and broken before 0.3.34)
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                return get, set_
    return None


_one_openblas_thread = _OneOpenBLASThread()
#: Context manager: numpy's OpenBLAS on one thread inside it (process-wide; see the class).
one_openblas_thread = _one_openblas_thread
