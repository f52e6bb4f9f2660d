"""Training an IVF index: the seeded training sample and the values faiss can train on."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch

from gpuann.metrics import Metric

__all__ = [
    "MAX_POINTS_PER_LIST",
    "MIN_POINTS_PER_LIST",
    "TrainingMinimum",
    "check_trainable",
    "require_training_points",
    "training_minimum",
    "training_sample",
    "training_set",
]

#: faiss warns when k-means gets fewer training points than this per list.
MIN_POINTS_PER_LIST = 39
#: faiss's k-means subsamples to this many points per list (``cp.max_points_per_centroid``).
MAX_POINTS_PER_LIST = 256
_F32_MAX = float(np.finfo(np.float32).max)


class TrainingMinimum(NamedTuple):
    """The fewest training vectors faiss accepts (:func:`training_minimum`)."""

    #: Vectors needed.
    count: int
    #: What needs them, for messages ("nlist=64 lists").
    needs: str
    #: How to need fewer ("use a smaller nlist").
    remedy: str


def training_minimum(nlist: int, nbits: int | None = None) -> TrainingMinimum:
    """The fewest vectors faiss can train an IVF index on, and what needs that many.

    faiss's k-means refuses fewer points than centroids (``nx >= k``, a ``RuntimeError``):
    ``nlist`` for the coarse quantizer and, for IVF-PQ, ``2**nbits`` for each sub-quantizer's
    codebook (trained on the same vectors' residuals). A scalar quantizer only learns ranges,
    so IVF-SQ needs ``nlist`` like IVF-Flat.

    Parameters
    ----------
    nlist : int
    nbits : int, optional
        Bits per PQ code (IVF-PQ only).

    >>> training_minimum(4, nbits=8).count, training_minimum(64, nbits=4).needs
    (256, 'nlist=64 lists')
    """
    if nbits is not None and 2**nbits > nlist:
        codewords = 2**nbits
        return TrainingMinimum(
            codewords, f"the PQ codebooks (2**nbits={codewords} codewords)", "use a smaller nbits"
        )
    return TrainingMinimum(nlist, f"nlist={nlist} lists", "use a smaller nlist")


def require_training_points(count: int, minimum: TrainingMinimum, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``count`` vectors are fewer than ``minimum``
    (checked before faiss, whose failure would come mid-training).

    >>> require_training_points(10, training_minimum(64), "max_train_points")
    Traceback (most recent call last):
    ...
    ValueError: max_train_points: training nlist=64 lists needs at least 64 vectors, got 10; ...
    """
    if count < minimum.count:
        more = "pass more vectors or " if name == "x" else "raise it or "
        raise ValueError(
            f"{name}: training {minimum.needs} needs at least {minimum.count} vectors, "
            f"got {count}; {more}{minimum.remedy}"
        )


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
    x: torch.Tensor,
    nlist: int,
    max_points: int,
    seed: int,
    metric: Metric,
    minimum: TrainingMinimum | None = None,
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
    minimum : TrainingMinimum, optional
        The fewest vectors faiss accepts; default ``training_minimum(nlist)``.

    Returns
    -------
    torch.Tensor, shape (min(n, max_points), dim), float32, contiguous, on ``x``'s device

    Raises ``ValueError`` below ``minimum`` vectors or for values faiss cannot train on
    (:func:`check_trainable`); warns below ``39 · nlist`` vectors.
    """
    check_trainable(x, metric)
    n = x.shape[0]
    require_training_points(n, minimum or training_minimum(nlist), "x")
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
