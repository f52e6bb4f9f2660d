"""Input preparation shared by every index: validation, conversion, the NaN/inf policy.

Values are checked *after* conversion to the dtype they are computed in, so a float64 value
beyond float32's range is an error, not an ``inf``; for l2/ip, squared norms beyond float32's
range are refused too (distances would be infinite). Cosine normalisation is scale-safe.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from gpuann._validate import as_float_matrix, positive_int
from gpuann.metrics import Metric

__all__ = [
    "MIN_NORM",
    "TINY_NORM",
    "check_memory_budget",
    "check_values",
    "cosine_columns",
    "host_queries",
    "prepare_vectors",
    "row_norms",
    "unit_rows",
]

_F32_MAX = float(torch.finfo(torch.float32).max)
_NUMPY_FLOATS = (torch.float32, torch.float64)


def check_memory_budget(value: Any, name: str = "memory_budget") -> int | None:
    """``None`` (the default budget) or a positive int number of bytes."""
    return None if value is None else positive_int(value, name)


#: CPU arrays up to this many values are scanned by numpy: its per-call cost is a fraction of
#: torch's, which dominates the check of a few queries.
_NUMPY_SCAN_MAX = 1 << 16


def _peak(x: torch.Tensor) -> float:
    """The largest magnitude in ``x`` (NaN when ``x`` holds a NaN)."""
    if x.device.type == "cpu" and x.numel() <= _NUMPY_SCAN_MAX and x.dtype in _NUMPY_FLOATS:
        return float(np.abs(x.detach().numpy()).max())  # NaN propagates
    return float(x.detach().abs().amax())


def check_values(
    x: torch.Tensor,
    name: str,
    metric: Metric,
    dtype: torch.dtype,
    row_peaks: torch.Tensor | None = None,
) -> None:
    """Raise unless ``x`` is finite in ``dtype`` and (for l2/ip) its squared norms fit float32.

    One reduction (over ``row_peaks``, each row's largest magnitude, when the caller has them)
    and one host sync.
    """
    if not x.numel():
        return
    peak = _peak(x) if row_peaks is None else float(row_peaks.detach().amax())
    if peak != peak or peak == float("inf"):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"{name}: contains NaN or infinite values in {str(dtype).removeprefix('torch.')} "
            f"(rows {bad}{'…' if len(bad) == 5 else ''}); values beyond the dtype's range "
            "become infinite. Pass check_finite=False to skip this check"
        )
    if metric is not Metric.COSINE and peak * peak * x.shape[1] > _F32_MAX:
        raise ValueError(
            f"{name}: values up to {peak:.3g} give squared norms or inner products beyond "
            f"float32's range ({_F32_MAX:.3g}); distances would be infinite. Rescale the "
            "vectors (or use metric='cosine')"
        )


def _normalized_common_case(xf: torch.Tensor) -> torch.Tensor | None:
    """``xf`` (CPU, float32, non-empty) normalised row by row, or None: take the careful path.

    The common case in two ops and one sync: every row norm finite and in [1e-12, 0.5e18]
    means every value is finite, no norm is below ``F.normalize``'s eps (which would leave
    the row unnormalised: found by review, norms in [2e-18, 1e-12) were) and no row needs
    rescaling. (The margin of 2 covers the float32 rounding of a float64 input's norms.)
    """
    norms = torch.linalg.vector_norm(xf, dim=1, keepdim=True)
    low, high = (float(v) for v in torch.aminmax(norms.detach()))
    if low >= _UNIT_EPS and high <= 0.5e18:  # NaN: False
        # what F.normalize computes, without its wrappers' overhead (autograd intact)
        return xf / norms.clamp_min(1e-12)
    return None


#: ``F.normalize``'s eps: a row of smaller norm would be divided by it, not by its norm.
_UNIT_EPS = 1e-12
#: The norm a zero row's cosine column scale (``1 / ‖x‖``) is taken at: the smallest normal
#: float32 (its scores are 0 either way).
MIN_NORM = float(torch.finfo(torch.float32).tiny)


def _extreme(peaks: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows (by their largest magnitude ``peaks``) whose norm is not safely measured in
    float32: below ``F.normalize``'s eps, or with squares that could sum past 1e36 (found by
    review: rows of 1000 values near 9e17 summed to inf, so cosine gave 0 everywhere)."""
    return (peaks * math.sqrt(max(dim, 1)) > 1e18) | (peaks < _UNIT_EPS)


def _unit_rows(x: torch.Tensor, peaks: torch.Tensor, compiling: bool = False) -> torch.Tensor:
    """``x`` (n, d) as float32 unit rows, scale-safe: a row whose norm is not safely measured
    (:func:`_extreme`, from ``peaks``, (n, 1)) is divided by its largest magnitude first
    (zero rows stay zero)."""
    extreme = _extreme(peaks, x.shape[1])
    # On the CPU the (rare) rescaling is skipped when no row needs it; on a GPU that test
    # would be a host sync, and under torch.compile a data-dependent branch: it always runs.
    if x.device.type != "cpu" or compiling or bool(extreme.any()):
        x = torch.where(extreme, x / torch.where(peaks > 0, peaks, torch.ones_like(peaks)), x)
    return torch.nn.functional.normalize(x.float(), dim=1)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n, d) as float32 unit rows, normalised as an index normalises cosine vectors
    (the same bits: :func:`prepare_vectors`), scale-safe."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling() and x.numel():
        unit = _normalized_common_case(x.float())
        if unit is not None:
            return unit
    peaks = torch.linalg.vector_norm(x.float(), ord=math.inf, dim=1, keepdim=True)
    return _unit_rows(x, peaks, torch.compiler.is_compiling())


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """Float32 norms (n,) of the rows of ``x``, scale-safe as :func:`unit_rows`: a row whose
    norm is not safely measured in float32 is measured divided by its largest magnitude.

    No temporary of ``x``'s size on the CPU (the norms and peaks are reductions; the few
    extreme rows are measured apart, after one check); on a GPU (no host sync) the divided
    rows are one temporary the size of ``x``.
    """
    xf = x.float()
    norms = torch.linalg.vector_norm(xf, dim=1)
    peaks = torch.linalg.vector_norm(xf, ord=math.inf, dim=1)
    extreme = _extreme(peaks, x.shape[1]) & (peaks > 0)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(extreme.any()):
            rows = extreme.nonzero().squeeze(1)
            factor = peaks[rows]
            norms[rows] = torch.linalg.vector_norm(xf[rows] / factor[:, None], dim=1) * factor
        return norms
    factor = torch.where(extreme, peaks, torch.ones_like(peaks))
    return torch.linalg.vector_norm(xf / factor[:, None], dim=1) * factor


#: Rows of smaller (non-zero) norm have inner products near float32's underflow, which no
#: ``1 / ‖x‖`` factor can repair: a cosine scan normalises a copy of them instead.
TINY_NORM = 1e-20


def cosine_columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(rows, scale)`` for a cosine scan of ``x`` (n, d): ``x`` with each row's
    ``1 / ‖x‖`` (float32, (n,); zero rows score 0), or, when a row's norm is below
    :data:`TINY_NORM` but not zero, unit rows (a float32 copy, :func:`unit_rows`) and None
    (found by review: a row of norm 1e-39 scored 0.085 against a query it points along).
    One host sync."""
    norms = row_norms(x)
    if bool(((norms > 0) & (norms < TINY_NORM)).any()):
        return unit_rows(x), None
    return x, 1.0 / norms.clamp_min(MIN_NORM)


#: :func:`host_queries` takes batches up to this many values (larger ones gain nothing).
_HOST_FAST_MAX = 1 << 20


def host_queries(x: Any, dim: int, metric: Metric, check_finite: bool) -> np.ndarray | None:
    """Float32 CPU queries as the numpy matrix a host search (faiss) reads, when that is quick.

    The fast path of searches of a few queries, where :func:`prepare_vectors`' general
    conversion and checks would cost more than the search: ``x`` already a C-contiguous
    float32 CPU matrix of ``dim`` columns (numpy, or a torch tensor outside ``torch.compile``),
    its values checked by one dot product (finite, squared norms within float32's range), or,
    for cosine, normalised as :func:`prepare_vectors` does (same bits).

    Returns
    -------
    numpy.ndarray, shape (n, dim), float32, or None
        None whenever a check does not pass at once (another dtype, layout or device, a
        value out of range, NaN, an empty batch...): :func:`prepare_vectors` then converts,
        or raises with the full message. A view of ``x`` except for cosine.
    """
    if isinstance(x, np.ndarray):
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            return None
        a = np.asarray(x)  # subclasses (np.matrix) as plain arrays
    elif isinstance(x, torch.Tensor):
        if (
            x.dtype != torch.float32
            or x.device.type != "cpu"
            or x.requires_grad
            or not x.is_contiguous()
            or torch.compiler.is_compiling()
        ):
            return None
        a = x.numpy()
    else:
        return None
    if a.ndim != 2 or a.shape[1] != dim or not 0 < a.size <= _HOST_FAST_MAX:
        return None
    if metric is Metric.COSINE:
        unit = _normalized_common_case(torch.from_numpy(a))
        return None if unit is None else unit.numpy()
    if check_finite:
        flat = a.reshape(-1)
        with np.errstate(over="ignore"):
            total = float(np.dot(flat, flat))  # NaN/inf: not <=; each value² <= total
        # the float32 sum may be below the exact one by (n + 2) roundings: a margin, so that
        # whatever passes here passes the general check (found by review: 1.30438176e19 at
        # d = 2 did not)
        if not total * dim * (1.0 + (flat.size + 2) * 2.0**-23) <= _F32_MAX:
            return None
    return a


def prepare_vectors(
    x: Any,
    name: str,
    *,
    dim: int,
    metric: Metric,
    device: torch.device,
    check_finite: bool,
    dtype: torch.dtype | None = torch.float32,
) -> tuple[torch.Tensor, bool, torch.device]:
    """Validated vectors in ``dtype`` on ``device``, normalised for cosine.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (n, dim), floating
    name : str
        The argument's name, for errors.
    dtype : torch.dtype, optional
        The dtype to return; ``None`` keeps ``x``'s (float64 becomes float32).
    check_finite : bool
        Check the values once converted: NaN/inf, values beyond ``dtype``'s range, squared
        norms beyond float32's (l2/ip).

    Returns
    -------
    vectors : torch.Tensor, shape (n, dim), ``dtype``, on ``device``
    was_numpy : bool
    source_device : torch.device
        Where ``x`` was (results go back there).

    Cosine normalisation is scale-safe: a row whose largest magnitude is outside
    ``[1e-12, 1e18]`` is divided by it before its norm is taken, so tiny or huge norms neither
    underflow nor overflow in float32 (other rows are normalised exactly as
    ``torch.nn.functional.normalize`` does).
    """
    x, was_numpy = as_float_matrix(x, name, dim=dim)
    source = x.device
    x = x.to(device)
    if dtype is None:
        dtype = torch.float32 if x.dtype == torch.float64 else x.dtype
    compiling = torch.compiler.is_compiling()
    checking = check_finite and not compiling
    if metric is Metric.COSINE:
        if x.device.type == "cpu" and not compiling and x.numel():
            unit = _normalized_common_case(x.float())
            if unit is not None:
                return unit.to(dtype), was_numpy, source
        scale = x.abs().amax(dim=1, keepdim=True)
        if checking:
            check_values(x, name, metric, x.dtype, row_peaks=scale)
        x = _unit_rows(x, scale, compiling).to(dtype)
    else:
        x = x.to(dtype)
        if checking:
            check_values(x, name, metric, dtype)
    return x, was_numpy, source
