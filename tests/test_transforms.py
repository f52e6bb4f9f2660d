"""PCA (against a float64 SVD), OPQ (through faiss) and TransformedIndex (the shared API)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import reference_knn

from gpuann.errors import NotTrainedError
from gpuann.hnsw import HNSWIndex
from gpuann.serialization import load
from gpuann.transformed import TransformedIndex
from gpuann.transforms import OPQ, PCA, Transform

faiss = pytest.importorskip("faiss")

#: recall@10 of PCA 64 → 16 in front of an (almost exact) index, on data of rank 12 plus noise.
PCA_RECALL_THRESHOLD = 0.9


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _low_rank(n: int = 3000, d: int = 64, rank: int = 12, noise: float = 0.05, seed: int = 0):
    """Seeded data near a ``rank``-dimensional subspace, with decaying variances and an offset."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))[0]
    scales = torch.linspace(3.0, 1.0, rank, dtype=torch.float64)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64) * scales
    x = z @ basis.T + noise * torch.randn(n, d, generator=g, dtype=torch.float64) + 5.0
    return x.float()


def _exact_index(dim: int, metric: str = "l2") -> HNSWIndex:
    """A graph index searched with a large ef: exact on these sizes (checked below)."""
    return HNSWIndex(dim, M=32, ef_construction=200, ef_search=400, metric=metric, device="cpu")


def _recall(found, truth) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


# ---------------------------------------------------------------- PCA
@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_a_float64_svd_up_to_sign(whiten):
    x = _low_rank(800, 24, rank=6, noise=0.2)
    pca = PCA(24, 5, whiten=whiten, device="cpu").train(x)
    xd = x.double()
    centred = xd - xd.mean(dim=0)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    variance = s**2 / (x.shape[0] - 1)
    torch.testing.assert_close(pca.explained_variance.double(), variance[:5], rtol=1e-4, atol=1e-6)
    ratio = variance[:5] / variance.sum()
    torch.testing.assert_close(pca.explained_variance_ratio.double(), ratio, rtol=1e-4, atol=1e-6)
    y = pca(x).double()
    ref = centred @ vt[:5].T
    if whiten:
        ref = ref / variance[:5].sqrt()
    signs = torch.sign((y * ref).sum(dim=0))  # one sign per component
    torch.testing.assert_close(y, ref * signs, rtol=1e-3, atol=1e-3)
    if whiten:
        torch.testing.assert_close(
            y.var(dim=0), torch.ones(5, dtype=torch.float64), rtol=1e-3, atol=0
        )


def test_pca_reverse_and_explained_variance_of_low_rank_data():
    x = _low_rank(2000, 64, rank=12, noise=0.01)
    pca = PCA(64, 12, device="cpu").train(x)
    assert float(pca.explained_variance_ratio.sum()) > 0.999
    assert (pca.explained_variance[1:] <= pca.explained_variance[:-1]).all()
    back = pca.reverse(pca(x))
    assert float((back - x).abs().max()) < 0.1  # the noise is all that is lost
    full = PCA(8, 8, device="cpu").train(x[:, :8])
    torch.testing.assert_close(full.reverse(full(x[:, :8])), x[:, :8], rtol=1e-4, atol=1e-4)


def test_pca_numpy_in_numpy_out_and_deterministic_signs():
    x = _low_rank(500, 16, rank=4)
    a, b = PCA(16, 4, device="cpu").train(x), PCA(16, 4, device="cpu").train(x.numpy())
    y = a(x.numpy())
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (500, 4)
    assert np.array_equal(y, b(x.numpy()))
    assert isinstance(a.reverse(y), np.ndarray)


def _inner(kind: str, dim: int) -> object:
    from gpuann.flat import FlatIndex

    return FlatIndex(dim, device="cpu") if kind == "flat" else _exact_index(dim)


@pytest.mark.parametrize("inner", ["flat", "hnsw"])
def test_pca_plus_index_recall_against_exact(inner, tmp_path):
    x = _low_rank(3000, 64, rank=12)
    q = x[torch.randperm(3000, generator=torch.Generator().manual_seed(2))[:50]] + 0.05
    _, truth = reference_knn(q, x, 10, "l2")
    index = TransformedIndex(PCA(64, 16, device="cpu"), _inner(inner, 16))
    index.train(x)
    index.add(x)
    assert len(index) == 3000 and index.dim == 64 and index.is_trained
    D, I = index.search(q, 10)
    recall = _recall(I.numpy(), truth)
    assert recall >= PCA_RECALL_THRESHOLD, f"recall@10 {recall:.3f} < {PCA_RECALL_THRESHOLD}"
    # distances are those of the transformed vectors
    y, qy = index.transform(x), index.transform(q)
    _, truth_y = reference_knn(qy, y, 10, "l2")
    assert _recall(I.numpy(), truth_y) >= 0.99, "the inner index should be exact here"
    index.save(tmp_path / "t.gpuann")
    loaded = TransformedIndex.load(tmp_path / "t.gpuann", "cpu")
    assert type(loaded.index) is type(index.index)
    assert torch.equal(loaded.search(q, 10).ids, I)


def test_pca_save_load_round_trip(tmp_path):
    x = _low_rank(600, 32, rank=5)
    pca = PCA(32, 6, whiten=True, device="cpu").train(x)
    pca.save(tmp_path / "pca.gpuann")
    loaded = PCA.load(tmp_path / "pca.gpuann", "cpu")
    assert isinstance(loaded, PCA) and loaded.whiten and loaded.d_out == 6
    assert torch.equal(loaded(x), pca(x)) and torch.equal(
        loaded.reverse(pca(x)), pca.reverse(pca(x))
    )
    assert torch.equal(loaded.explained_variance, pca.explained_variance)
    assert isinstance(Transform.load(tmp_path / "pca.gpuann"), PCA)
    with pytest.raises(ValueError, match="not OPQ"):
        OPQ.load(tmp_path / "pca.gpuann")


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: PCA(8, 9), ValueError, "d_out"),
        (lambda: PCA(0, 1), ValueError, "d_in"),
        (lambda: PCA(8, 4, whiten=1), TypeError, "whiten"),
        (lambda: PCA(8, 4, device="cpu").train(torch.randn(10, 7)), ValueError, "x"),
        (lambda: PCA(8, 4, device="cpu").train(torch.randn(1, 8)), ValueError, "x"),
        (lambda: PCA(8, 4, device="cpu").train([[1.0] * 8] * 3), TypeError, "x"),
        (lambda: PCA(8, 4, device="cpu").apply(torch.randn(3, 8)), NotTrainedError, "train"),
        (lambda: PCA(8, 4, device="cpu").save("unused"), NotTrainedError, "train"),
        (lambda: OPQ(8, 3), ValueError, "m"),
        (lambda: OPQ(8, 2, d_out=16), ValueError, "d_out"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_apply_checks_columns_against_d_in():
    pca = PCA(8, 4, device="cpu").train(torch.randn(50, 8))
    with pytest.raises(ValueError, match="d_in"):
        pca(torch.randn(3, 4))
    with pytest.raises(ValueError, match="y"):
        pca.reverse(torch.randn(3, 8))


# ---------------------------------------------------------------- OPQ
def test_opq_is_faiss_opq_applied_in_torch(tmp_path):
    x = _low_rank(4000, 16, rank=8, noise=0.3)
    opq = OPQ(16, 4, niter=4, device="cpu").train(x)
    ref = faiss.OPQMatrix(16, 4)
    ref.niter, ref.niter_pq, ref.verbose = 4, 4, False
    pq = faiss.ProductQuantizer(16, 4, 8)
    pq.cp.seed = 0
    ref.pq = pq
    ref.train(x.numpy())
    np.testing.assert_allclose(opq(x).numpy(), ref.apply(x.numpy()), rtol=1e-5, atol=1e-4)
    rotation = opq._forward
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(16), rtol=0, atol=1e-4)
    torch.testing.assert_close(opq.reverse(opq(x)), x, rtol=1e-4, atol=1e-3)
    opq.save(tmp_path / "opq.gpuann")
    loaded = OPQ.load(tmp_path / "opq.gpuann", "cpu")
    assert loaded.m == 4 and loaded.niter == 4 and torch.equal(loaded(x), opq(x))


# ---------------------------------------------------------------- TransformedIndex
def test_transformed_index_shared_api_and_round_trip(tmp_path):
    x = _low_rank(1500, 32, rank=8)
    index = TransformedIndex(PCA(32, 8, device="cpu"), HNSWIndex(8, device="cpu", seed=3))
    with pytest.raises(NotTrainedError, match="train"):
        index.add(x)
    index.train(x[:1000])
    index.add(x, ids=torch.arange(1500) + 10)
    assert torch.equal(index.ids, torch.arange(1500) + 10)
    assert index.remove([10, 11]) == 2 and len(index) == 1498
    index.update([12], x[:1])
    r = index.reconstruct([12])
    torch.testing.assert_close(r, index.transform(x[:1]))
    back = index.reconstruct([12], original_space=True)
    assert back.shape == (1, 32) and float((back - x[:1]).abs().max()) < 0.5
    before = index.search(x[:20].numpy(), 5)
    assert isinstance(before.ids, np.ndarray) and not np.isin(before.ids, [10, 11]).any()
    index.save(tmp_path / "t.gpuann")
    for loaded in (
        load(tmp_path / "t.gpuann", "cpu"),
        TransformedIndex.load(tmp_path / "t.gpuann", "cpu"),
    ):
        assert isinstance(loaded, TransformedIndex) and isinstance(loaded.index, HNSWIndex)
        after = loaded.search(x[:20].numpy(), 5)
        assert np.array_equal(after.ids, before.ids) and np.array_equal(
            after.distances, before.distances
        )
        assert torch.equal(loaded.ids, index.ids) and loaded.index.tombstones == 3
    assert repr(index).startswith("TransformedIndex(PCA(32 → 8") and "HNSWIndex(n=1498" in repr(
        index
    )
    assert index.to("cpu") is index and index.nbytes > index.index.nbytes
    index.reset()
    assert len(index) == 0 and index.transform.is_trained


def test_opq_in_front_of_an_index_keeps_recall():
    x = _low_rank(3000, 16, rank=16, noise=0.0)
    q = x[:40] + 0.01
    index = TransformedIndex(OPQ(16, 4, niter=3, device="cpu"), _exact_index(16))
    index.train(x)
    index.add(x)
    _, truth = reference_knn(q, x, 10, "l2")
    assert _recall(index.search(q, 10).ids.numpy(), truth) >= 0.99  # a rotation keeps distances


def test_transformed_index_argument_errors():
    with pytest.raises(ValueError, match="index"):
        TransformedIndex(PCA(16, 8, device="cpu"), HNSWIndex(4, device="cpu"))
    with pytest.raises(TypeError, match="transform"):
        TransformedIndex("pca", HNSWIndex(4, device="cpu"))
    with pytest.raises(TypeError, match="index"):
        TransformedIndex(PCA(16, 8, device="cpu"), object())
    index = TransformedIndex(PCA(16, 8, device="cpu"), HNSWIndex(8, device="cpu"))
    index.train(torch.randn(100, 16))
    with pytest.raises(ValueError, match="queries"):
        index.search(torch.randn(2, 8), 3)


def test_failed_train_leaves_the_transform_untrained_and_a_retry_trains_on_its_data():
    """Review: a train whose inner index refused the sample (too few vectors for nlist) left
    the PCA trained on that sample, and the retry kept it (it only trains an untrained one)."""
    from gpuann import IVFFlatIndex

    x = _low_rank(1000, 32, rank=8)
    odd = torch.randn(10, 32, generator=torch.Generator().manual_seed(1)) * 9
    pca = PCA(32, 8, device="cpu")
    index = TransformedIndex(pca, IVFFlatIndex(8, 16, device="cpu"))
    with pytest.raises(ValueError, match="x: training nlist=16 lists needs at least 16"):
        index.train(odd)
    assert not pca.is_trained and not index.index.is_trained and not index.is_trained
    assert pca.explained_variance is None
    index.train(x)
    fresh = PCA(32, 8, device="cpu").train(x)
    assert index.transform is pca and pca.is_trained and index.is_trained
    assert torch.equal(pca(x), fresh(x))
    assert torch.equal(pca.explained_variance_ratio, fresh.explained_variance_ratio)


def test_transformed_index_range_search_merge_from_and_html_repr():
    """Review: the README's shared API (range_search, merge_from, the HTML repr) raised a
    plain AttributeError on a TransformedIndex."""
    from gpuann import FlatIndex

    x, other_data = _low_rank(800, 16, rank=16), _low_rank(800, 16, rank=16, seed=5)
    q = x[:10] + 0.05

    def make(train_on):
        index = TransformedIndex(PCA(16, 16, device="cpu"), FlatIndex(16, device="cpu"))
        index.train(train_on)
        return index

    index = make(x)
    index.add(x)
    # radii apply to transformed distances: here (PCA keeping every dimension) the original's
    lims, D, I = index.range_search(q, 0.5)
    inner = index.index.range_search(index.transform(q), 0.5)
    assert torch.equal(lims, inner.lims) and torch.equal(I, inner.ids) and len(I) >= 10
    exact = FlatIndex(16, device="cpu")
    exact.add(x)
    assert torch.equal(lims, exact.range_search(q, 0.5).lims)
    # merge_from: the same trained map (trained on the same data) merges, another refuses
    twin = make(x)
    twin.add(other_data, ids=torch.arange(800) + 5000)
    stranger = make(other_data)
    stranger.add(other_data, ids=torch.arange(800) + 9000)
    with pytest.raises(ValueError, match="other: its transform differs"):
        index.merge_from(stranger)
    with pytest.raises(TypeError, match="other: expected a TransformedIndex"):
        index.merge_from(stranger.index)
    assert len(index) == 800 and len(stranger) == 800
    index.merge_from(twin)
    assert len(index) == 1600 and len(twin) == 0
    assert index.search(other_data[:5], 1).ids.flatten().tolist() == list(range(5000, 5005))
    html = index._repr_html_()
    assert "<strong>TransformedIndex</strong>" in html and "PCA(16 → 16" in html
    assert "FlatIndex(n=1600" in html


def test_gpuann_load_reads_a_saved_transform(tmp_path):
    """Review: gpuann.load of a saved PCA said it held "an index of unknown kind 'PCA'"."""
    x = _low_rank(500, 16, rank=8)
    pca = PCA(16, 4, whiten=True, device="cpu").train(x)
    pca.save(tmp_path / "pca.gpuann")
    loaded = load(tmp_path / "pca.gpuann", "cpu")
    assert isinstance(loaded, PCA) and loaded.whiten and torch.equal(loaded(x), pca(x))
    with pytest.raises(ValueError, match="holds a PCA, not a HNSWIndex"):
        HNSWIndex.load(tmp_path / "pca.gpuann")
