"""Training an IVF index: the seeded training sample and the values faiss can train on."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from gpuann.metrics import Metric

__all__ = [
    "MAX_POINTS_PER_LIST",
    "MIN_POINTS_PER_LIST",
    "check_trainable",
    "training_sample",
    "training_set",
]

#: faiss warns when k-means gets fewer training points than this per list.
MIN_POINTS_PER_LIST = 39
#: faiss's k-means subsamples to this many points per list (``cp.max_points_per_centroid``).
MAX_POINTS_PER_LIST = 256
_F32_MAX = float(np.finfo(np.float32).max)


def training_sample(n: int, size: int, seed: int) -> torch.Tensor:
    """The rows an index trains on when given ``n > size`` vectors: a seeded sample.

    Parameters
    ----------
    n : int
        Number of vectors given.
    size : int
        Sample size.
    seed : int

    Returns
    -------
    torch.Tensor, shape (min(n, size),), int64, ascending row numbers (CPU)

    >>> training_sample(10, 3, seed=0).tolist() == training_sample(10, 3, seed=0).tolist()
    True
    """
    if n <= size:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def check_trainable(x: torch.Tensor, metric: Metric) -> None:
    """Raise unless faiss's k-means can train on ``x`` (n, dim) without aborting the process.

    faiss aborts (SIGABRT, uncatchable) when k-means distances are not finite: NaN/inf
    values, or (l2/ip; cosine vectors are normalised) ``‖x − c‖² ≤ 4 · max|x|² · dim`` beyond
    float32's range, which is stricter than the ``max|x|² · dim`` every index checks.
    Always run by ``train`` (one reduction), whatever ``check_finite`` says.

    >>> check_trainable(torch.full((4, 16), 1e19), Metric.L2)
    Traceback (most recent call last):
    ...
    ValueError: x: values up to 1e+19 are too large to train on: faiss's k-means distances ...
    """
    if not x.numel():
        return
    peak = float(x.abs().amax())
    if peak != peak or peak == float("inf"):
        raise ValueError("x: contains NaN or infinite values; faiss cannot train on them")
    if metric is not Metric.COSINE and 4.0 * peak * peak * x.shape[1] > _F32_MAX:
        limit = (_F32_MAX / (4.0 * x.shape[1])) ** 0.5
        raise ValueError(
            f"x: values up to {peak:.3g} are too large to train on: faiss's k-means distances "
            f"(up to 4·max|x|²·dim) would overflow float32; rescale below {limit:.3g}"
        )


def training_set(
    x: torch.Tensor, nlist: int, max_points: int, seed: int, metric: Metric
) -> torch.Tensor:
    """The vectors ``nlist`` lists are trained on: ``x`` checked, or a seeded sample of it.

    Parameters
    ----------
    x : torch.Tensor, shape (n, dim), float32, prepared (normalised for cosine)
    nlist : int
    max_points : int
        Larger ``x`` are sampled down to this many rows (:func:`training_sample`).
    seed : int
    metric : Metric

    Returns
    -------
    torch.Tensor, shape (min(n, max_points), dim), float32, contiguous, on ``x``'s device

    Raises ``ValueError`` below ``nlist`` vectors or for values faiss cannot train on
    (:func:`check_trainable`); warns below ``39 · nlist`` vectors.
    """
    check_trainable(x, metric)
    n = x.shape[0]
    if n < nlist:
        raise ValueError(
            f"x: training nlist={nlist} lists needs at least {nlist} vectors, got {n}; "
            "pass more vectors or use a smaller nlist"
        )
    if n < MIN_POINTS_PER_LIST * nlist:
        warnings.warn(
            f"x: {n} training vectors for nlist={nlist} lists is fewer than "
            f"{MIN_POINTS_PER_LIST} per list; the lists may be poor (use a smaller nlist)",
            stacklevel=3,
        )
    rows = training_sample(n, max_points, seed)
    if rows.shape[0] < n:
        x = x[rows.to(x.device)]
    return x.contiguous()
