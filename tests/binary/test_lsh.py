"""LSHIndex: recall vs nbits, full rescoring = exact search, faiss IndexLSH, protocol, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _binary_reference import clustered, recall
from reference import DEVICES, assert_knn_matches

import gpuann
import gpuann.compat.faiss as gfaiss
from gpuann import FlatIndex, LSHIndex, quantize_binary

#: recall@10 on clustered(seed=0, 4000 × 32, 100 queries); measured (cosine / l2):
#: 64 bits 0.29 / 0.26 without rescoring, 0.94 / 0.93 with rescore=100;
#: 256 bits 0.49 / 0.45, and 0.999 / 0.998.
RECALL_FLOOR = {(64, 0): 0.22, (64, 100): 0.88, (256, 0): 0.40, (256, 100): 0.97}


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_recall_grows_with_nbits_and_rescoring(metric):
    x, q = clustered(0, 4000, 100, 32)
    exact = FlatIndex(32, metric, device="cpu")
    exact.add(x)
    _, truth = exact.search(q, 10)
    found = {}
    for nbits in (64, 256):
        index = LSHIndex(32, nbits, metric, device="cpu", rescore=100)
        index.add(x)
        for rescore in (0, 100):
            found[nbits, rescore] = recall(index.search(q, 10, rescore=rescore).ids, truth)
    for key, floor in RECALL_FLOOR.items():
        assert found[key] >= floor, (
            f"recall@10 {found[key]:.3f} < {floor} at (nbits, rescore)={key}"
        )
    assert found[256, 0] > found[64, 0] + 0.1 and found[64, 100] > found[64, 0] + 0.4


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_full_rescoring_is_exact_search(metric):
    x, q = clustered(1, 300, 12, 8)
    ids = torch.arange(300) * 7 + 5
    index = LSHIndex(8, 16, metric, device="cpu", rescore=300)
    index.add(x, ids=ids)
    D, I = index.search(q, 10)
    assert_knn_matches(D, I, q, x, 10, metric, ids=ids.numpy())
    D, I = index.search(q, 400)  # k > N: padded as exact search pads
    assert_knn_matches(D, I, q, x, 400, metric, ids=ids.numpy())


@pytest.mark.parametrize("train_thresholds", [False, True])
def test_identity_projection_equals_faiss_index_lsh(train_thresholds):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 32)).astype("float32")
    q = rng.standard_normal((20, 32)).astype("float32")
    ref = faiss.IndexLSH(32, 16, False, train_thresholds)
    ours = gfaiss.IndexLSH(
        32, 16, rotate_data=False, train_thresholds=train_thresholds, device="cpu"
    )
    assert ours.is_trained == ref.is_trained
    for index in (ref, ours):
        index.train(x)
        index.add(x)
    D_ref, I_ref = ref.search(q, 10)
    D, I = ours.search(q, 10)
    np.testing.assert_array_equal(D, D_ref)
    for row in range(20):  # ids tie-aware: equal inside the k-th distance
        inside = D_ref[row] < D_ref[row, -1]
        assert set(I[row][inside]) == set(I_ref[row][inside])
    assert ours.remove_ids(np.array([0, 1])) == 2 and ours.ntotal == 498


def test_quantize_binary_matches_packbits():
    x = torch.randn(7, 13)
    x[0, 3] = 0.0  # zero is not positive
    expected = np.packbits(x.numpy() > 0, axis=1)
    np.testing.assert_array_equal(quantize_binary(x).numpy(), expected)
    np.testing.assert_array_equal(quantize_binary(x.numpy()), expected)
    with pytest.raises(TypeError, match="embeddings: expected a floating-point"):
        quantize_binary(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("device", DEVICES)
def test_triton_and_torch_backends_agree(device):
    x, q = clustered(2, 200, 5, 16)
    index = LSHIndex(16, 40, "l2", device=device, rescore=20)
    index.add(x)
    for rescore in (0, 20):
        a = index.search(q, 6, rescore=rescore, backend="triton")
        b = index.search(q, 6, rescore=rescore, backend="torch")
        assert torch.equal(a.ids, b.ids) and torch.equal(a.distances, b.distances)


@pytest.mark.parametrize("projection", ["gaussian", "orthogonal", "itq"])
def test_save_load_to_roundtrip(tmp_path, projection):
    x, q = clustered(3, 500, 10, 16)
    index = LSHIndex(
        16, 16, "cosine", device="cpu", rescore=30, projection=projection, train_thresholds=True
    )
    index.train(x)
    index.add(x, ids=torch.arange(500) + 100)
    index.remove([100, 101])
    path = tmp_path / "lsh.gpuann"
    index.save(path)
    expected = index.search(q, 5)
    for other in (gpuann.load(path, device="cpu"), LSHIndex.load(path), index.to("cpu")):
        assert isinstance(other, LSHIndex) and len(other) == 498
        result = other.search(q, 5)
        assert torch.equal(result.ids, expected.ids) and torch.equal(
            result.distances, expected.distances
        )
        assert torch.equal(other.encode(x[:5]), index.encode(x[:5]))


def test_seed_and_repr():
    x, _ = clustered(4, 50, 1, 8)
    a, b, c = (LSHIndex(8, 24, device="cpu", seed=s) for s in (1, 1, 2))
    assert torch.equal(a.encode(x), b.encode(x)) and not torch.equal(a.encode(x), c.encode(x))
    assert "LSHIndex(n=0, dim=8, nbits=24, metric='cosine'" in repr(a)
    # nothing stored yet: only the float32 (dim x nbits) projection matrix
    assert a.nbytes == 8 * 24 * 4 and repr(a).endswith("device='cpu', memory='768 B')")


def test_hamming_only_results_and_removal():
    x, q = clustered(5, 300, 8, 16)
    index = LSHIndex(16, 32, "l2", device="cpu")  # no vectors kept
    index.add(x)
    D, I = index.search(q, 5)
    assert D.dtype == torch.float32 and bool((D.diff(dim=1) >= 0).all())
    codes = index.encode(q)
    expected = gpuann.BinaryFlatIndex(32, device="cpu")
    expected.add(index.encode(x))
    D_bin, I_bin = expected.search(codes, 5)
    assert torch.equal(I, I_bin) and torch.equal(D, D_bin.float())
    index.remove(I[:, 0].unique())
    assert not torch.isin(index.search(q, 5).ids, I[:, 0]).any()


def test_bad_inputs():
    with pytest.raises(ValueError, match="projection: expected one of"):
        LSHIndex(8, 8, projection="pca")
    with pytest.raises(ValueError, match="nbits: projection='identity' needs nbits <= dim"):
        LSHIndex(8, 16, projection="identity")
    with pytest.raises(ValueError, match="rescore: expected a non-negative int"):
        LSHIndex(8, 8, rescore=-1)
    index = LSHIndex(8, 8, device="cpu", projection="itq")
    with pytest.raises(RuntimeError, match="not trained"):
        index.add(torch.randn(4, 8))
    index = LSHIndex(8, 8, device="cpu")
    index.add(torch.randn(4, 8))
    with pytest.raises(ValueError, match="rescore: this index keeps only codes"):
        index.search(torch.randn(1, 8), 1, rescore=10)
    with pytest.raises(ValueError, match="queries: expected 8 columns"):
        index.search(torch.randn(1, 9), 1)
    with pytest.raises(ValueError, match="queries: contains NaN"):
        index.search(torch.full((1, 8), float("nan")), 1)
    with pytest.raises(RuntimeError, match="train: the index already holds vectors"):
        index.train(torch.randn(4, 8))
    with pytest.raises(ValueError, match="ids: 1 id"):
        index.add(torch.randn(2, 8), ids=[3, 9])
    assert len(index) == 4
