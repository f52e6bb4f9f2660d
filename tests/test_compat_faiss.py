"""gpuann.compat.faiss runs faiss code unchanged and prints the same indices as faiss."""

from __future__ import annotations

import numpy as np
import pytest

import gpuann.compat.faiss as gfaiss

real_faiss = pytest.importorskip("faiss")


def _readme_example(faiss):
    # The README's example, verbatim apart from the seed.
    np.random.seed(1234)  # noqa: NPY002
    data = np.random.random((10000, 128)).astype("float32")  # noqa: NPY002
    query = np.random.random((1, 128)).astype("float32")  # noqa: NPY002
    index = faiss.IndexFlatL2(128)
    index.add(data)
    distances, indices = index.search(query, 5)
    return distances, indices


def test_readme_example_prints_the_same_indices_as_faiss():
    D_real, I_real = _readme_example(real_faiss)
    D, I = _readme_example(gfaiss)
    assert isinstance(I, np.ndarray) and I.dtype == np.int64 and D.dtype == np.float32
    np.testing.assert_array_equal(I, I_real)
    np.testing.assert_allclose(D, D_real, rtol=1e-5)


@pytest.mark.parametrize("name", ["IndexFlatL2", "IndexFlatIP"])
def test_flat_indexes_match_faiss(name):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3000, 24), dtype=np.float32)
    queries = rng.standard_normal((20, 24), dtype=np.float32)
    ours, theirs = getattr(gfaiss, name)(24), getattr(real_faiss, name)(24)
    for index in (ours, theirs):
        index.add(data)
    assert (ours.ntotal, ours.d, ours.is_trained, ours.metric_type) == (
        theirs.ntotal,
        theirs.d,
        theirs.is_trained,
        theirs.metric_type,
    )
    (D, I), (D_ref, I_ref) = ours.search(queries, 10), theirs.search(queries, 10)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ours.reconstruct(7), theirs.reconstruct(7))
    np.testing.assert_array_equal(ours.reconstruct_n(3, 4), theirs.reconstruct_n(3, 4))


def test_remove_ids_renumbers_like_faiss():
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    ours, theirs = gfaiss.IndexFlatL2(3), real_faiss.IndexFlatL2(3)
    for index in (ours, theirs):
        index.add(data)
    assert ours.remove_ids(np.array([2, 3, 77])) == theirs.remove_ids(np.array([2, 3, 77])) == 2
    np.testing.assert_array_equal(ours.search(data, 2)[1], theirs.search(data, 2)[1])


def test_id_map_keeps_user_ids():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((500, 8), dtype=np.float32)
    ids = rng.permutation(10**6)[:500].astype(np.int64)
    ours = gfaiss.IndexIDMap(gfaiss.IndexFlatIP(8))
    theirs = real_faiss.IndexIDMap(real_faiss.IndexFlatIP(8))
    for index in (ours, theirs):
        index.add_with_ids(data, ids)
    np.testing.assert_array_equal(ours.search(data[:5], 4)[1], theirs.search(data[:5], 4)[1])
    assert ours.remove_ids(ids[:10]) == theirs.remove_ids(ids[:10]) == 10
    np.testing.assert_array_equal(ours.search(data[:5], 4)[1], theirs.search(data[:5], 4)[1])
    with pytest.raises(RuntimeError, match="add_with_ids"):
        ours.add(data)
    with pytest.raises(RuntimeError, match="IndexIDMap2"):
        ours.reconstruct(int(ids[20]))
    id_map2 = gfaiss.IndexIDMap2(gfaiss.IndexFlatL2(8))
    id_map2.add_with_ids(data, ids)
    np.testing.assert_array_equal(id_map2.reconstruct(int(ids[3])), data[3])


def test_knn_and_normalize_and_files(tmp_path):
    rng = np.random.default_rng(2)
    xb, xq = (
        rng.standard_normal((200, 5), dtype=np.float32),
        rng.standard_normal((4, 5), dtype=np.float32),
    )
    _, I = gfaiss.knn(xq, xb, 3)
    _, I_ref = real_faiss.knn(xq, xb, 3)
    np.testing.assert_array_equal(I, I_ref)
    a, b = xb.copy(), xb.copy()
    gfaiss.normalize_L2(a)
    real_faiss.normalize_L2(b)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    flat = gfaiss.IndexFlatL2(5)
    flat.add(xb)
    gfaiss.write_index(flat, str(tmp_path / "f"))
    again = gfaiss.read_index(str(tmp_path / "f"))
    assert isinstance(again, gfaiss.IndexFlat)
    np.testing.assert_array_equal(again.search(xq, 3)[1], I)
    id_map = gfaiss.IndexIDMap(gfaiss.IndexFlatL2(5))
    id_map.add_with_ids(xb, np.arange(200) * 2)
    gfaiss.write_index(id_map, str(tmp_path / "m"))
    assert isinstance(gfaiss.read_index(str(tmp_path / "m")), gfaiss.IndexIDMap2)


def test_bad_metric_is_named():
    with pytest.raises(ValueError, match=r"metric: expected faiss\.METRIC_L2"):
        gfaiss.IndexFlat(4, 7)


@pytest.mark.parametrize("make", ["IndexIVFFlat", "IVF8,PQ4", "IndexLSH", "IndexBinaryFlat"])
def test_write_then_read_gives_the_same_shim(tmp_path, make):
    rng = np.random.default_rng(3)
    if make == "IndexBinaryFlat":
        index, data = gfaiss.IndexBinaryFlat(64), rng.integers(0, 256, (200, 8), dtype=np.uint8)
    else:
        data = rng.standard_normal((2000, 16), dtype=np.float32)
        index = {
            "IndexIVFFlat": lambda: gfaiss.IndexIVFFlat(None, 16, 8),
            "IVF8,PQ4": lambda: gfaiss.index_factory(16, "IVF8,PQ4x4"),
            "IndexLSH": lambda: gfaiss.IndexLSH(16, 32),
        }[make]()
    index.train(data)
    index.add(data)
    gfaiss.write_index(index, str(tmp_path / "i"))
    again = gfaiss.read_index(str(tmp_path / "i"))
    assert type(again) is type(index) and again.ntotal == index.ntotal
    np.testing.assert_array_equal(again.search(data[:7], 5)[1], index.search(data[:7], 5)[1])
