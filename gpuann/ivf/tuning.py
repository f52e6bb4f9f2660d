"""Choosing IVF parameters: ``nlist``/``m`` from the data's size, ``nprobe`` from a target recall.

:func:`tune_nprobe` measures recall on a held-out sample of the user's own data, with ground
truth from gpuann's exact search and recall as :func:`gpuann.eval.recall_at_k` counts it
(ann-benchmarks' distance rule), so the number it returns holds for the data the index will
actually serve and agrees with what :func:`gpuann.eval.sweep` reports.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from gpuann._validate import as_float_matrix, as_ids
from gpuann.eval.recall import DEFAULT_EPSILON, ground_truth, recall_at_k

__all__ = ["IVFParams", "NprobeTuning", "suggest_ivf_params", "tune_nprobe"]

#: Sub-quantizer counts faiss-gpu's IVF-PQ supports (also fine on CPU).
_GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
_MIN_POINTS_PER_CENTROID = 39


@dataclasses.dataclass(frozen=True)
class IVFParams:
    """Suggested IVF parameters (see :func:`suggest_ivf_params`).

    Attributes
    ----------
    nlist : int
        Number of lists.
    m : int
        PQ sub-quantizers (a divisor of ``dim`` that faiss-gpu supports).
    nbits : int
        Bits per PQ code.
    nprobe : int
        A starting ``nprobe``; tune it with :func:`tune_nprobe`.
    """

    nlist: int
    m: int
    nbits: int
    nprobe: int


def suggest_ivf_params(n: int, dim: int) -> IVFParams:
    """IVF parameters for ``n`` vectors of dimension ``dim``.

    ``nlist`` is the power of two nearest ``4·√n``, lowered until every list gets at least 39
    training vectors; ``m`` the faiss-gpu-supported divisor of ``dim`` nearest ``dim / 4``
    (sub-vectors of about 4 dimensions, ``m`` bytes per vector at 8 bits); ``nbits`` 8 unless
    ``n`` is too small to train 256 codewords.

    Parameters
    ----------
    n : int
        Number of vectors the index will hold (and can train on).
    dim : int
        Vector dimension.

    Returns
    -------
    IVFParams

    >>> suggest_ivf_params(1_000_000, 128)
    IVFParams(nlist=4096, m=32, nbits=8, nprobe=256)
    >>> suggest_ivf_params(5_000, 96)
    IVFParams(nlist=128, m=24, nbits=7, nprobe=8)
    """
    for value, name in ((n, "n"), (dim, "dim")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    nlist = 2 ** max(0, round(math.log2(4 * math.sqrt(n))))
    while nlist > 1 and nlist * _MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    divisors = [m for m in _GPU_PQ_M if dim % m == 0]
    m = min(divisors, key=lambda m: (abs(m - dim / 4), -m))
    nbits = max(1, min(8, int(math.log2(max(2, n // _MIN_POINTS_PER_CENTROID)))))
    return IVFParams(nlist=nlist, m=m, nbits=nbits, nprobe=max(1, nlist // 16))


@dataclasses.dataclass(frozen=True)
class NprobeTuning:
    """What :func:`tune_nprobe` found.

    Attributes
    ----------
    nprobe : int
        The smallest ``nprobe`` reaching the target (``nlist`` if none does).
    recall : float
        Recall@k measured at ``nprobe``.
    reached : bool
        Whether ``recall >= target_recall``.
    curve : dict of int to float
        Every ``nprobe`` measured and its recall.
    """

    nprobe: int
    recall: float
    reached: bool
    curve: dict[int, float]


def tune_nprobe(
    index: Any,
    queries: Any,
    database: Any,
    database_ids: Any = None,
    *,
    target_recall: float = 0.95,
    k: int = 10,
    epsilon: float = DEFAULT_EPSILON,
    **search_kwargs: Any,
) -> NprobeTuning:
    """The smallest ``nprobe`` whose recall@k on held-out queries reaches ``target_recall``.

    Recall grows with ``nprobe``, so a binary search over ``1..nlist`` needs about
    ``log2(nlist)`` searches. Set the result as ``index.nprobe`` to keep it.

    Parameters
    ----------
    index : IVFFlatIndex or IVFPQIndex
        Trained, holding ``database``.
    queries : torch.Tensor or numpy.ndarray, shape (Q, dim)
        A held-out sample of your data (vectors *not* in the index), e.g. a few hundred.
    database : torch.Tensor or numpy.ndarray, shape (N, dim)
        The vectors in the index; exact ground truth is computed over them
        (:func:`gpuann.eval.ground_truth`), and the true distances of the returned
        neighbours are recomputed from them.
    database_ids : int64 tensor, array or list, shape (N,), optional
        Their ids in the index; default ``0..N-1`` (the automatic ids of a first ``add``).
    target_recall : float
        In (0, 1]; recall@k as :func:`gpuann.eval.recall_at_k` measures it: a returned
        neighbour counts when its true distance is within the k-th true distance +
        ``epsilon``, so ties at the k-th distance count whichever of them is returned.
    k : int
    epsilon : float
        ε of that rule.
    **search_kwargs
        Passed to ``index.search`` (e.g. ``refine_factor``).

    Returns
    -------
    NprobeTuning

    Examples
    --------
    >>> import torch
    >>> from gpuann.ivf import IVFFlatIndex
    >>> g = torch.Generator().manual_seed(0)
    >>> centers = torch.randn(20, 16, generator=g) * 4
    >>> labels = torch.randint(0, 20, (3000,), generator=g)
    >>> data = centers[labels] + torch.randn(3000, 16, generator=g)
    >>> held_out, database = data[:100], data[100:]
    >>> index = IVFFlatIndex(16, nlist=32, device="cpu")
    >>> index.train(database)
    >>> index.add(database)
    >>> tuned = tune_nprobe(index, held_out, database, target_recall=0.9)
    >>> tuned.reached, tuned.recall >= 0.9, tuned.nprobe <= 32
    (True, True, True)
    """
    if not isinstance(getattr(index, "nlist", None), int):
        # found by review: an HNSWIndex or a TransformedIndex raised AttributeError 'nlist'
        raise TypeError(
            f"index: expected an IVF index (with nlist lists), got {type(index).__name__}; "
            "for HNSWIndex tune ef_search with gpuann.eval.sweep"
        )
    if not 0.0 < float(target_recall) <= 1.0:
        raise ValueError(f"target_recall: expected a value in (0, 1], got {target_recall}")
    queries_t, _ = as_float_matrix(queries, "queries", dim=index.dim)
    database_t, _ = as_float_matrix(database, "database", dim=index.dim)
    ids = (
        None if database_ids is None else as_ids(database_ids, database_t.shape[0], "database_ids")
    )
    truth = ground_truth(queries_t, database_t, k, index.metric, ids=ids)
    curve: dict[int, float] = {}

    def recall(nprobe: int) -> float:
        if nprobe not in curve:
            found = index.search(queries_t, k, nprobe=nprobe, **search_kwargs)
            curve[nprobe] = recall_at_k(found, truth, k, epsilon=epsilon)
        return curve[nprobe]

    lo, hi = 1, index.nlist
    if recall(hi) < target_recall:
        return NprobeTuning(hi, curve[hi], False, dict(sorted(curve.items())))
    while lo < hi:
        mid = (lo + hi) // 2
        if recall(mid) >= target_recall:
            hi = mid
        else:
            lo = mid + 1
    return NprobeTuning(hi, recall(hi), True, dict(sorted(curve.items())))
