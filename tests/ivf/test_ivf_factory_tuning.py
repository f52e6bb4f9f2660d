"""index_factory strings, parameter suggestions and nprobe tuning on held-out data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ivf_helpers import NLIST, build

import gpuann
from gpuann.eval import ground_truth, recall_at_k
from gpuann.ivf import parse_description


@pytest.mark.parametrize(
    ("description", "cls", "attrs"),
    [
        ("Flat", gpuann.FlatIndex, {}),
        ("IVF64,Flat", gpuann.IVFFlatIndex, {"nlist": 64}),
        ("IVF1024,PQ32", gpuann.IVFPQIndex, {"nlist": 1024, "m": 32, "nbits": 8, "refine": False}),
        ("IVF16,PQ8x4", gpuann.IVFPQIndex, {"nlist": 16, "m": 8, "nbits": 4, "refine": False}),
        ("IVF16, PQ16x6, RFlat", gpuann.IVFPQIndex, {"m": 16, "nbits": 6, "refine": True}),
        ("IVF16,PQ4,Refine(Flat)", gpuann.IVFPQIndex, {"m": 4, "refine": True}),
    ],
)
def test_index_factory(description, cls, attrs):
    index = gpuann.index_factory(64, description, metric="ip", device="cpu")
    assert type(index) is cls and index.dim == 64 and index.metric is gpuann.Metric.IP
    for name, value in attrs.items():
        assert getattr(index, name) == value, name


@pytest.mark.parametrize(
    "description",
    ["HNSW32,RFlat", "IVF64", "IVF64,Flat,RFlat", "IVFx,Flat", "IVF64,SQ7", "Flat,RFlat", ""],
)
def test_index_factory_unsupported(description):
    with pytest.raises(ValueError, match="description: unsupported"):
        parse_description(description)
    with pytest.raises(TypeError, match="description: expected a str"):
        parse_description(64)


def test_index_factory_passes_options():
    index = gpuann.index_factory(32, "IVF16,PQ8,RFlat", device="cpu", nprobe=3, refine_factor=2)
    assert index.nprobe == 3 and index.refine_factor == 2


@pytest.mark.parametrize(
    ("n", "dim", "expected"),
    [
        (1_000_000, 128, gpuann.ivf.IVFParams(4096, 32, 8, 256)),
        (100, 7, gpuann.ivf.IVFParams(2, 1, 1, 1)),
        (20_000, 32, gpuann.ivf.IVFParams(512, 8, 8, 32)),
    ],
)
def test_suggest_ivf_params(n, dim, expected):
    params = gpuann.suggest_ivf_params(n, dim)
    assert params == expected
    assert n >= 39 * params.nlist and dim % params.m == 0


def test_suggest_ivf_params_errors():
    with pytest.raises(ValueError, match="n: expected a positive int"):
        gpuann.suggest_ivf_params(0, 8)


def test_one_recall_at_k():
    """recall@k has one definition, gpuann.eval's; the IVF package exports none of its own."""
    assert not hasattr(gpuann.ivf, "recall_at_k") and "recall_at_k" not in gpuann.ivf.__all__
    assert "recall_at_k" not in gpuann.__all__
    with pytest.raises(AttributeError):
        gpuann.recall_at_k  # noqa: B018
    assert gpuann.eval.recall_at_k is recall_at_k


@pytest.mark.parametrize(("kind", "target"), [("flat", 0.95), ("pq_refine", 0.9)])
def test_tune_nprobe_reaches_the_target_on_held_out_data(dataset, kind, target):
    """Tune on one held-out sample, check on another: the target holds on unseen queries."""
    xb, xq = dataset
    index = build(kind, "l2", xb)
    tuned = gpuann.tune_nprobe(index, xq[:100], xb, target_recall=target)
    assert tuned.reached and tuned.recall >= target
    assert 1 <= tuned.nprobe < NLIST
    truth = ground_truth(xq[:100], xb, 10)
    for nprobe, value in tuned.curve.items():  # the curve is gpuann.eval's recall@k
        assert value == recall_at_k(index.search(xq[:100], 10, nprobe=nprobe), truth), nprobe
    if tuned.nprobe > 1:  # the smallest: one fewer probe misses the target
        below = tuned.curve.get(tuned.nprobe - 1)
        if below is None:
            below = recall_at_k(index.search(xq[:100], 10, nprobe=tuned.nprobe - 1), truth)
        assert below < target
    check = ground_truth(xq[100:], xb, 10)
    held_out = recall_at_k(index.search(xq[100:], 10, nprobe=tuned.nprobe), check)
    assert held_out >= target - 0.03, f"held-out recall {held_out:.3f}"


class _TieIndex:
    """Stands in for an IVF index whose every probe returns, for each query, the other one of
    two equidistant points than exact search lists first (a tie at the k-th distance)."""

    dim, metric, nlist = 1, gpuann.Metric.L2, 4

    def search(self, queries, k, nprobe):
        assert k == 2
        ids = torch.tensor([[0, 2]]).repeat(queries.shape[0], 1)
        return gpuann.SearchResult(torch.zeros(ids.shape), ids)


def test_tune_nprobe_counts_ties_by_distance():
    """Exact search lists ids 0 and 1 (1 and 2 are tied at distance 1); an index returning 0
    and 2 has recall 1 by gpuann.eval's rule (id overlap would say 0.5)."""
    database = torch.tensor([[0.0], [1.0], [-1.0], [5.0]])
    tuned = gpuann.tune_nprobe(_TieIndex(), torch.zeros(3, 1), database, target_recall=1.0, k=2)
    assert tuned.reached and tuned.nprobe == 1 and tuned.recall == 1.0


def test_tune_nprobe_with_ids_and_unreachable_target(small):
    xb, xq = small
    ids = np.arange(2000) * 5
    index = build("pq", "l2", xb, ids=ids, nlist=16)
    tuned = gpuann.tune_nprobe(index, torch.from_numpy(xq), xb, ids, target_recall=1.0, k=5)
    assert not tuned.reached and tuned.nprobe == 16 and tuned.recall < 1.0
    with pytest.raises(ValueError, match="target_recall"):
        gpuann.tune_nprobe(index, xq, xb, ids, target_recall=1.5)


@pytest.mark.parametrize(
    ("description", "kind", "inner"),
    [
        ("IVF16,SQ8", "IVFSQIndex", None),
        ("IVF16,SQ8,RFlat", "IVFSQIndex", None),
        ("HNSW16", "HNSWIndex", None),
        ("HNSW16,SQ8", "HNSWIndex", None),
        ("PCA8,IVF16,PQ4", "TransformedIndex", "IVFPQIndex"),
        ("OPQ4_8,IVF16,PQ4", "TransformedIndex", "IVFPQIndex"),
        ("PCA8,Flat", "TransformedIndex", "FlatIndex"),
    ],
)
def test_factory_prefixes_and_codes_build_searchable_indexes(description, kind, inner):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    index = gpuann.index_factory(16, description, device="cpu")
    assert type(index).__name__ == kind
    if inner is not None:
        assert type(index.index).__name__ == inner and index.index.dim == 8
    if not getattr(index, "is_trained", True):
        index.train(x)
    index.add(x)
    found = index.search(x[:20], 5).ids
    recall = (found == torch.arange(20)[:, None]).any(dim=1).float().mean()
    assert recall >= 0.9, f"{description}: self-recall {recall:.2f}"


@pytest.mark.parametrize(
    "bad", ["PCA8", "IVF16,SQ3", "HNSW16,PQ4", "PCA8,OPQ4,Flat", "IVF16,SQ8,RFlat,RFlat"]
)
def test_factory_refuses_what_it_does_not_support(bad):
    with pytest.raises(ValueError, match="description: unsupported"):
        gpuann.index_factory(16, bad, device="cpu")


def test_tune_nprobe_names_an_index_without_lists():
    """An HNSWIndex or a TransformedIndex raised AttributeError 'nlist' (found by review)."""
    hnsw = gpuann.HNSWIndex(8, M=8, device="cpu")
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    hnsw.add(x)
    with pytest.raises(TypeError, match=r"index: expected an IVF index.*HNSWIndex"):
        gpuann.tune_nprobe(hnsw, x[:5], x)
