"""Range search on FlatIndex: equal to faiss's and to a float64 reference, tiled, guarded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuann

faiss = pytest.importorskip("faiss")


def _faiss_flat(metric: str, x: torch.Tensor):
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    index = faiss.IndexFlatL2(x.shape[1]) if metric == "l2" else faiss.IndexFlatIP(x.shape[1])
    index.add(x.numpy())
    return index


@pytest.mark.parametrize(("metric", "radius"), [("l2", 9.0), ("ip", 2.5), ("cosine", 0.5)])
@pytest.mark.parametrize("budget", [None, 1 << 20])
def test_range_search_equals_faiss_and_is_ordered(metric, radius, budget):
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(3000, 12, generator=g), torch.randn(40, 12, generator=g)
    index = gpuann.FlatIndex(12, metric=metric, device="cpu", memory_budget=budget)
    index.add(x)
    lims, D, I = index.range_search(q, radius)
    qn = torch.nn.functional.normalize(q, dim=1) if metric == "cosine" else q
    f_lims, f_D, f_I = _faiss_flat(metric, x).range_search(qn.numpy(), radius)
    assert lims.tolist() == f_lims.tolist() and lims[-1] > 100
    for i in range(q.shape[0]):
        mine, theirs = I[lims[i] : lims[i + 1]], f_I[f_lims[i] : f_lims[i + 1]]
        assert set(mine.tolist()) == set(theirs.tolist())
        d = D[lims[i] : lims[i + 1]]
        ordered = d.diff() >= 0 if metric == "l2" else d.diff() <= 0
        assert bool(ordered.all())
        np.testing.assert_allclose(
            np.sort(d.numpy()), np.sort(f_D[f_lims[i] : f_lims[i + 1]]), rtol=1e-4, atol=1e-4
        )


def test_range_search_numpy_in_numpy_out_and_ties_by_id():
    index = gpuann.FlatIndex(2, device="cpu")
    index.add(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), ids=[9, 4, 7])
    lims, D, I = index.range_search(np.zeros((1, 2), dtype=np.float32), 1.5)
    assert isinstance(I, np.ndarray) and lims.tolist() == [0, 3]
    assert I.tolist() == [7, 4, 9] and D.tolist() == [0.0, 1.0, 1.0]


def test_range_search_guard_names_radius():
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(500, 4))
    with pytest.raises(ValueError, match="radius: more than max_results=100"):
        index.range_search(torch.randn(10, 4), 1e9, max_results=100)
    with pytest.raises(ValueError, match="radius: expected a finite"):
        index.range_search(torch.randn(1, 4), float("nan"))
    with pytest.raises(TypeError, match="radius: expected a number"):
        index.range_search(torch.randn(1, 4), "1")


def test_range_search_on_an_empty_index():
    lims, D, I = gpuann.FlatIndex(3, device="cpu").range_search(torch.randn(2, 3), 1.0)
    assert lims.tolist() == [0, 0, 0] and I.numel() == 0 and D.numel() == 0


@pytest.mark.parametrize("tombstones", [False, True])
@pytest.mark.parametrize(("metric", "radius"), [("l2", 12.0), ("ip", 3.0)])
def test_ivf_range_search_with_every_list_equals_exact_and_skips_removed(
    metric, radius, tombstones
):
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(3000, 16, generator=g), torch.randn(12, 16, generator=g)
    index = gpuann.IVFFlatIndex(16, 16, metric=metric, device="cpu", nprobe=16)
    index._faiss.use_tombstones = tombstones  # the GPU path's removal, simulated on CPU
    index.train(x)
    index.add(x, ids=torch.arange(3000) + 7)
    exact = gpuann.FlatIndex(16, metric=metric, device="cpu")
    exact.add(x, ids=torch.arange(3000) + 7)
    removed = torch.arange(7, 3007, 5)
    index.remove(removed)
    exact.remove(removed)
    lims, D, I = index.range_search(q, radius)
    e_lims, e_D, e_I = exact.range_search(q, radius)
    assert lims.tolist() == e_lims.tolist() and lims[-1] > 20
    assert not torch.isin(I, removed).any()
    for i in range(q.shape[0]):
        assert I[lims[i] : lims[i + 1]].tolist() == e_I[lims[i] : lims[i + 1]].tolist()
    torch.testing.assert_close(D, e_D, rtol=1e-4, atol=1e-4)


def test_binary_range_search_equals_faiss_index_binary_flat():
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 256, (2000, 8), generator=g, dtype=torch.uint8)
    queries = torch.randint(0, 256, (15, 8), generator=g, dtype=torch.uint8)
    index = gpuann.BinaryFlatIndex(64, device="cpu", memory_budget=1 << 20)
    index.add(codes)
    lims, D, I = index.range_search(queries, 25)
    reference = faiss.IndexBinaryFlat(64)
    reference.add(codes.numpy())
    f_lims, f_D, f_I = reference.range_search(queries.numpy(), 25)
    assert lims.tolist() == f_lims.tolist() and lims[-1] > 10
    for i in range(queries.shape[0]):
        got = list(
            zip(D[lims[i] : lims[i + 1]].tolist(), I[lims[i] : lims[i + 1]].tolist(), strict=True)
        )
        want = sorted(
            zip(
                f_D[f_lims[i] : f_lims[i + 1]].tolist(),
                f_I[f_lims[i] : f_lims[i + 1]].tolist(),
                strict=True,
            )
        )
        assert got == want


@pytest.mark.parametrize(("metric", "radius"), [("l2", 30.0), ("ip", 6.0), ("cosine", 0.5)])
def test_hnsw_range_search_equals_faiss_on_the_same_graph_and_skips_removed(
    metric, radius, request
):
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    request.addfinalizer(lambda: faiss.omp_set_num_threads(before))
    faiss.omp_set_num_threads(1)  # (HNSW builds are deterministic on one thread)
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(600, 16, generator=g), torch.randn(5, 16, generator=g)
    index = gpuann.HNSWIndex(16, M=12, metric=metric, device="cpu", ef_search=32)
    index.add(x, ids=torch.arange(600) + 100)
    graph = faiss.clone_index(index.faiss_index)  # the same graph, labels 0..599
    qn = torch.nn.functional.normalize(q, dim=1) if metric == "cosine" else q
    params = faiss.SearchParametersHNSW(efSearch=32)
    f_lims, f_D, f_I = graph.range_search(qn.numpy(), radius, params=params)
    lims, D, I = index.range_search(q, radius)
    assert lims.tolist() == f_lims.tolist() and int(lims[-1]) > 20
    for i in range(5):
        a, b, fa, fb = lims[i], lims[i + 1], f_lims[i], f_lims[i + 1]
        got = dict(zip(I[a:b].tolist(), D[a:b].tolist(), strict=True))
        want = dict(zip((f_I[fa:fb] + 100).tolist(), f_D[fa:fb], strict=True))
        assert got.keys() == want.keys()
        assert np.allclose([got[j] for j in want], list(want.values()), rtol=1e-5, atol=1e-5)
        key = D[lims[i] : lims[i + 1]]
        key = -key if metric != "l2" else key
        assert bool((key[1:] >= key[:-1]).all())  # nearest first
    narrow = index.range_search(q, radius, ef_search=2)  # fewer candidates: fewer found
    f_narrow = graph.range_search(qn.numpy(), radius, params=faiss.SearchParametersHNSW(efSearch=2))
    assert narrow.lims.tolist() == f_narrow[0].tolist() and int(narrow.lims[-1]) < int(lims[-1])
    with pytest.raises(ValueError, match="ef_search"):
        index.range_search(q, radius, ef_search=0)
    removed = I[lims[0] : lims[0] + 3]
    index.remove(removed)
    lims2, _, I2 = index.range_search(q, radius)
    assert int(lims2[1]) == int(lims[1]) - 3 and not np.isin(I2.numpy(), removed.numpy()).any()
    with pytest.raises(ValueError, match="radius"):
        index.range_search(q, radius, max_results=3)
    empty = gpuann.HNSWIndex(16, device="cpu").range_search(q.numpy(), 1.0)
    assert empty.lims.tolist() == [0] * 6 and empty.ids.size == 0
