"""gpuann.compat.faiss IVF shims behave like faiss (same code, same results)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

import gpuann
import gpuann.compat.faiss as gfaiss


def both(module, d, nlist, kind, metric):
    extra = () if module is faiss else ("cpu",)
    quantizer = module.IndexFlat(d, metric, *extra)
    if kind == "flat":
        return module.IndexIVFFlat(quantizer, d, nlist, metric)
    return module.IndexIVFPQ(quantizer, d, nlist, 4, 6, metric)


@pytest.mark.parametrize("metric", [gfaiss.METRIC_L2, gfaiss.METRIC_INNER_PRODUCT])
@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_same_code_same_results(small, kind, metric):
    xb, xq = small
    results = []
    for module in (faiss, gfaiss):
        index = both(module, 16, 16, kind, metric)
        assert not index.is_trained and index.ntotal == 0 and index.nprobe == 1
        index.train(xb)  # 2000 <= 256 * 16: no sampling, the same training set as faiss
        index.add(xb[:1000])
        index.add_with_ids(xb[1000:], np.arange(1000, 2000) * 7)
        index.nprobe = 4
        assert index.is_trained and index.ntotal == 2000 and index.d == 16
        results.append(index.search(xq, 10))
        results.append(index.search(xq, 10, params=faiss.SearchParametersIVF(nprobe=16)))
        assert index.remove_ids(np.array([0, 1, 7000, 123456])) == 3
        results.append(index.search(xq, 10))
    half = len(results) // 2
    for (d1, i1), (d2, i2) in zip(results[:half], results[half:], strict=True):
        # PQ codes give equal distances: of those tied at the k-th place faiss keeps any,
        # gpuann the lower ids
        check_ref_knn_with_draws(d1, i1, d2, i2, rtol=1e-5, atol=1e-5)


def test_out_arrays_reconstruct_reset(small):
    xb, xq = small
    index = gfaiss.IndexIVFFlat(gfaiss.IndexFlatL2(16, "cpu"), 16, 8)
    index.train(xb)
    index.add(xb)
    D, I = np.empty((20, 3), "float32"), np.empty((20, 3), "int64")
    index.search(xq, 3, D=D, I=I)
    assert (I >= 0).all() and np.isfinite(D).all()
    np.testing.assert_array_equal(index.reconstruct(5), xb[5])
    index.reset()
    assert index.ntotal == 0 and index.is_trained
    assert "IVFFlatIndex" in repr(index)


def test_quantizer_checked_and_filled(small):
    xb, xq = small
    with pytest.raises(ValueError, match="quantizer: has d=8"):
        gfaiss.IndexIVFFlat(gfaiss.IndexFlatL2(8, "cpu"), 16, 4)
    quantizer = gfaiss.IndexFlatL2(16, "cpu")
    index = gfaiss.IndexIVFFlat(quantizer, 16, 8)
    index.train(xb)
    assert quantizer.ntotal == 8 and index.quantizer is quantizer
    _, lists = quantizer.search(xb[:50], 1)  # each vector's list, as in faiss
    assert lists.min() >= 0 and lists.max() < 8
    index.add(xb)
    params = gfaiss.SearchParametersIVF(sel=gfaiss.IDSelectorRange(0, 9), nprobe=8)
    _, selected = index.search(xq, 3, params=params)  # the native allow_ids
    assert ((selected >= 0) & (selected < 9)).all()
    with pytest.raises(RuntimeError, match="add_with_ids"):  # one vector per id in gpuann
        index.add_with_ids(xb[:1], np.array([5]))
    with pytest.raises(NotImplementedError, match="quantizer"):
        gfaiss.IndexIVFFlat(quantizer, 16, 8).train(xb)


@pytest.mark.parametrize(
    ("description", "cls"),
    [
        ("Flat", gfaiss.IndexFlat),
        ("IDMap,Flat", gfaiss.IndexIDMap),
        ("IDMap2,Flat", gfaiss.IndexIDMap2),
        ("IVF8,Flat", gfaiss.IndexIVFFlat),
        ("IVF8,PQ4x6", gfaiss.IndexIVFPQ),
        ("IVF8,PQ4x6,RFlat", gfaiss.IndexRefineFlat),
    ],
)
def test_compat_index_factory(description, cls):
    index = gfaiss.index_factory(16, description, gfaiss.METRIC_INNER_PRODUCT)
    assert type(index) is cls and index.d == 16 and index.metric_type == gfaiss.METRIC_INNER_PRODUCT


def test_compat_refine_k_factor(small):
    xb, _ = small
    index = gfaiss.index_factory(16, "IVF8,PQ4x6,RFlat")
    assert isinstance(index.base_index.index, gpuann.IVFPQIndex) and index.k_factor == 1
    index.train(xb)
    index.add(xb)
    index.base_index.nprobe = 8
    index.k_factor = 8
    D, I = index.search(xb[:5], 1)
    assert I[:, 0].tolist() == [0, 1, 2, 3, 4]  # exact re-ranking finds each vector itself
    np.testing.assert_allclose(D[:, 0], 0, atol=1e-5)
    params = gfaiss.IndexRefineSearchParameters(k_factor=1)
    assert index.search(xb[:5], 3, params=params)[1].shape == (5, 3)
