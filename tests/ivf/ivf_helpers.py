"""Data, builders and comparisons for the IVF tests (one helper per job)."""

from __future__ import annotations

import faiss
import numpy as np
import torch

import gpuann
from gpuann._tiebreak import topk_by_id
from gpuann.ivf.training import training_sample

#: The test workload: a seeded Gaussian mixture, clustered but with overlapping clusters.
DIM, NB, NQ, NLIST = 32, 20_000, 200, 64
#: IVF-PQ settings of the tests (small codebooks keep training fast on 2 cores).
PQ_M, PQ_NBITS, PQ_MAX_TRAIN = 16, 6, 8192


def mixture(n: int, d: int, n_clusters: int = 256, spread: float = 0.6, seed: int = 0):
    """``n`` float32 vectors from a seeded Gaussian mixture (uneven weights and widths)."""
    rs = np.random.default_rng(seed)
    centers = rs.standard_normal((n_clusters, d)).astype("float32")
    weights = rs.dirichlet(np.ones(n_clusters))
    labels = rs.choice(n_clusters, n, p=weights)
    scale = spread * rs.uniform(0.5, 1.5, n_clusters).astype("float32")
    noise = rs.standard_normal((n, d)).astype("float32")
    return (centers[labels] + scale[labels, None] * noise).astype("float32")


def build(kind: str, metric: str = "l2", data=None, ids=None, nlist: int = NLIST, **kwargs):
    """A trained, filled gpuann index (``kind``: "flat", "pq" or "pq_refine")."""
    if kind == "flat":
        index = gpuann.IVFFlatIndex(data.shape[1], nlist, metric=metric, device="cpu", **kwargs)
    else:
        kwargs.setdefault("max_train_points", PQ_MAX_TRAIN)
        index = gpuann.IVFPQIndex(
            data.shape[1],
            nlist,
            PQ_M,
            nbits=PQ_NBITS,
            metric=metric,
            device="cpu",
            refine=kind == "pq_refine",
            **kwargs,
        )
    index.train(data)
    index.add(data, ids=ids)
    return index


def faiss_twin(index, data, ids=None, fill: bool = True):
    """faiss's own index with the same parameters, seed and training sample as ``index``."""
    metric = faiss.METRIC_L2 if index.metric.value == "l2" else faiss.METRIC_INNER_PRODUCT
    data = np.ascontiguousarray(data, dtype="float32")
    if index.metric.value == "cosine":  # the same normalisation gpuann applies
        data = torch.nn.functional.normalize(torch.from_numpy(data), dim=1).numpy()
    quantizer = faiss.IndexFlat(index.dim, metric)
    if isinstance(index, gpuann.IVFPQIndex):
        ref = faiss.IndexIVFPQ(quantizer, index.dim, index.nlist, index.m, index.nbits, metric)
        ref.pq.cp.seed = index.seed
    else:
        ref = faiss.IndexIVFFlat(quantizer, index.dim, index.nlist, metric)
    ref.cp.seed = index.seed
    rows = training_sample(data.shape[0], index.max_train_points, seed=index.seed).numpy()
    ref.train(data[rows])
    if fill:
        ref.add_with_ids(data, np.arange(data.shape[0]) if ids is None else np.asarray(ids))
    return ref


def queries_for(index, queries):
    """``queries`` as gpuann sees them (normalised for cosine), for faiss references."""
    q = np.ascontiguousarray(queries, dtype="float32")
    if index.metric.value == "cosine":
        q = torch.nn.functional.normalize(torch.from_numpy(q), dim=1).numpy()
    return q


def tie_ordered(distances, ids, metric: str, k: int):
    """faiss results put in gpuann's documented order: by distance, equal ones by lower id."""
    d, i = torch.as_tensor(distances), torch.as_tensor(ids)
    sign = 1.0 if metric == "l2" else -1.0
    values, i = topk_by_id(sign * d, i, k)
    missing = float("inf") if metric == "l2" else float("-inf")
    return (sign * values).masked_fill(i < 0, missing).numpy(), i.numpy()


def assert_same_results(ours, ref_distances, ref_ids, metric: str):
    """gpuann's result equals faiss's exactly (ids) and to float tolerance (distances),
    after faiss's ties are ordered by lower id; prints the first differing rows."""
    k = ref_ids.shape[1]
    ref_d, ref_i = tie_ordered(ref_distances, ref_ids, metric, k)
    d, i = np.asarray(ours.distances), np.asarray(ours.ids)
    bad = np.nonzero((i != ref_i).any(axis=1))[0]
    if bad.size:
        row = bad[0]
        raise AssertionError(f"{bad.size} rows differ, e.g. row {row}: {i[row]} vs {ref_i[row]}")
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-5)
