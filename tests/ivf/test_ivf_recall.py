"""Recall@10 against exact ground truth on seeded clustered data, and parity with faiss.

Recall is :func:`gpuann.eval.recall_at_k` (ann-benchmarks' rule: a returned neighbour counts
when its true distance is within the 10th true distance + 1e-3).
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws
from ivf_helpers import NLIST, assert_same_results, build, faiss_twin, queries_for

from gpuann.eval import recall_at_k
from gpuann.ivf import _faiss

#: (kind, nprobe, refine_factor, minimum recall@10), stated once for every metric. Measured
#: (l2 / ip / cosine): flat 0.984 / 0.971 / 0.973, pq_refine 0.973 / 0.953 / 0.959,
#: pq 0.760 / 0.679 / 0.638.
RECALL_FLOOR = [
    ("flat", NLIST // 8, None, 0.95),
    ("pq_refine", NLIST // 8, 4, 0.90),
    ("pq", NLIST // 8, None, 0.60),  # 16 x 6-bit codes for 32 dims: a lossy code
]


@pytest.fixture(scope="module")
def indexes(dataset):
    """Trained indexes shared by the read-only tests of this module."""
    xb, _ = dataset
    cache = {}

    def get(kind, metric):
        if (kind, metric) not in cache:
            cache[kind, metric] = build(kind, metric, xb)
        return cache[kind, metric]

    return get


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize(("kind", "nprobe", "refine_factor", "floor"), RECALL_FLOOR)
def test_recall_floor(indexes, dataset, ground_truth, kind, nprobe, refine_factor, floor, metric):
    _, xq = dataset
    extra = {"refine_factor": refine_factor} if refine_factor else {}
    found = indexes(kind, metric).search(xq, 10, nprobe=nprobe, **extra).ids
    recall = recall_at_k(found, ground_truth[metric])
    assert recall >= floor, f"{kind}/{metric}: recall@10 {recall:.3f} < {floor} at nprobe={nprobe}"


def test_refine_lifts_recall(indexes, dataset, ground_truth):
    _, xq = dataset
    index = indexes("pq_refine", "l2")
    plain = faiss_twin(index, dataset[0])
    _, plain_ids = plain.search(xq, 10, params=faiss.SearchParametersIVF(nprobe=8))
    lifted = recall_at_k(index.search(xq, 10, nprobe=8).ids, ground_truth["l2"])
    assert lifted >= recall_at_k(plain_ids, ground_truth["l2"]) + 0.1


def test_recall_grows_with_nprobe(indexes, dataset, ground_truth):
    _, xq = dataset
    index = indexes("flat", "l2")
    found = [index.search(xq, 10, nprobe=p).ids for p in (1, 4, 16)]
    recalls = [recall_at_k(ids, ground_truth["l2"]) for ids in found]
    assert recalls[0] < recalls[1] < recalls[2], recalls


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("kind", ["flat", "pq"])
@pytest.mark.parametrize("nprobe", [1, 8])
def test_identical_to_faiss(indexes, dataset, kind, metric, nprobe):
    """Same parameters, seed and training sample: the same results as faiss's own index."""
    xb, xq = dataset
    index = indexes(kind, metric)
    ref = faiss_twin(index, xb)
    k = 20
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    ref_d, ref_i = ref.search(queries_for(index, xq), k, params=params)
    assert_same_results(index.search(xq, k, nprobe=nprobe), ref_d, ref_i, metric)


def test_pointer_path_identical(indexes, dataset, monkeypatch):
    """The pointer path (the one CUDA tensors take) gives the numpy-view path's results."""
    _, xq = dataset
    index = indexes("pq", "l2")
    expected = index.search(xq, 10, nprobe=4)
    monkeypatch.setattr(_faiss, "POINTER_CALLS_ON_CPU", True)
    got = index.search(xq, 10, nprobe=4)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.distances, expected.distances)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_refine_matches_faiss_refine_flat(indexes, dataset, metric):
    """Re-ranking agrees with faiss's IndexRefineFlat (same candidates, exact distances)."""
    xb, xq = dataset
    index = indexes("pq_refine", metric)
    base = faiss_twin(index, xb, fill=False)
    base.nprobe = 8
    ref = faiss.IndexRefineFlat(base)
    ref.k_factor = 4
    ref.add(queries_for(index, xb))
    ours = index.search(xq, 10, nprobe=8, refine_factor=4)
    ref_d, ref_i = ref.search(xq, 10)
    check_ref_knn_with_draws(ref_d, ref_i, ours.distances, ours.ids, rtol=1e-4)
