"""gpuann.compat.faiss runs faiss code unchanged and prints the same indices as faiss."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import gpuann
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
    again = gfaiss.read_index(str(tmp_path / "f"), gfaiss.IO_FLAG_MMAP)
    assert type(again) is gfaiss.IndexFlatL2
    np.testing.assert_array_equal(again.search(xq, 3)[1], I)
    for ids, cls in [(np.arange(200), gfaiss.IndexIDMap), (np.arange(200) * 2, gfaiss.IndexIDMap2)]:
        id_map = cls(gfaiss.IndexFlatL2(5))
        id_map.add_with_ids(xb, ids)
        gfaiss.write_index(id_map, tmp_path / "m")
        back = gfaiss.read_index(tmp_path / "m")
        assert type(back) is cls  # ids 0..n-1 included: still an IndexIDMap
        back.remove_ids(np.array([0]))
        np.testing.assert_array_equal(gfaiss.vector_to_array(back.id_map), ids[1:])


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
    for again in (
        gfaiss.read_index(_written(index, tmp_path / "i")),
        gfaiss.deserialize_index(gfaiss.serialize_index(index)),
        pickle.loads(pickle.dumps(index)),
        gfaiss.clone_index(index),
    ):
        assert type(again) is type(index) and again.ntotal == index.ntotal
        np.testing.assert_array_equal(again.search(data[:7], 5)[1], index.search(data[:7], 5)[1])


def _written(index, path):
    gfaiss.write_index(index, path)
    return path


def test_without_faiss_files_are_gpuanns(tmp_path, monkeypatch):
    """With no faiss-cpu, write_index writes gpuann's safe format and read_index reads it."""
    import gpuann.compat.faiss.io as shim_io

    monkeypatch.setattr(shim_io, "_real_faiss", lambda: None)
    data = np.random.default_rng(4).standard_normal((50, 4), dtype=np.float32)
    flat, id_map = gfaiss.IndexFlatIP(4), gfaiss.IndexIDMap(gfaiss.IndexFlatIP(4))
    flat.add(data)
    id_map.add_with_ids(data, np.arange(50) + 100)
    gfaiss.write_index(flat, tmp_path / "flat")
    gfaiss.write_index(id_map, tmp_path / "map")
    assert gpuann.load(tmp_path / "flat").metric.value == "ip"  # a native file
    assert type(gfaiss.read_index(tmp_path / "flat")) is gfaiss.IndexFlatIP
    back = gfaiss.read_index(tmp_path / "map")
    assert isinstance(back, gfaiss.IndexIDMap)
    np.testing.assert_array_equal(back.search(data[:3], 2)[1], id_map.search(data[:3], 2)[1])
    with pytest.raises(RuntimeError, match="faiss"):
        gfaiss.read_index(_real_file(tmp_path / "real", data))


def _real_file(path, data):
    index = real_faiss.IndexFlatL2(4)
    index.add(data)
    real_faiss.write_index(index, str(path))
    return path


def test_native_files_read_by_the_shim(tmp_path):
    """gpuann.save keeps gpuann's format; the shim's read_index reads it too."""
    data = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
    native = gpuann.FlatIndex(6, device="cpu")
    native.add(data, ids=torch.arange(30) * 3)
    native.save(tmp_path / "n")
    shimmed = gfaiss.read_index(tmp_path / "n")
    assert type(shimmed) is gfaiss.IndexIDMap2
    np.testing.assert_array_equal(shimmed.reconstruct(9), data[3].numpy())


def test_errors_are_faiss_and_gpuann_classes(tmp_path):
    index = gfaiss.IndexFlatL2(4)
    index.add(np.eye(4, dtype=np.float32))
    with pytest.raises(AssertionError):
        index.search(np.eye(4, dtype=np.float32), 0)
    with pytest.raises(ValueError):  # the same error, as gpuann's kind
        index.search(np.eye(3, dtype=np.float32), 1)
    with pytest.raises(KeyError):
        index.reconstruct(10)
    with pytest.raises(gpuann.UnknownIdError):
        index.reconstruct(10)
    with pytest.raises(FileNotFoundError):
        gfaiss.read_index(tmp_path / "nothing")
    (tmp_path / "bad").write_bytes(b"GPUANN\x00\x1a" + b"\x00" * 40)
    with pytest.raises(gpuann.IndexFileError):
        gfaiss.read_index(tmp_path / "bad")
    with pytest.raises(RuntimeError):
        gfaiss.read_index(tmp_path / "bad")


def test_torch_tensors_in_and_out():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    id_map = gfaiss.IndexIDMap(gfaiss.IndexFlatL2(8, "cpu"))
    id_map.add_with_ids(x, torch.arange(100) + 7)
    D, I = id_map.search(x[:3], 200)
    assert isinstance(I, torch.Tensor) and I[:, 0].tolist() == [7, 8, 9]
    assert (I[:, 100:] == -1).all() and (D[:, 100:] == gfaiss.FLT_MAX).all()
    lims, _, ids = id_map.range_search(x[:2], 0.5)
    assert isinstance(ids, torch.Tensor) and ids[lims[0]].item() == 7


def test_refine_flat_over_a_flat_index():
    x = np.random.default_rng(5).standard_normal((300, 8), dtype=np.float32)
    refine = gfaiss.IndexRefineFlat(gfaiss.IndexFlatL2(8))
    refine.add(x)
    plain = gfaiss.IndexFlatL2(8)
    plain.add(x)
    refine.k_factor = 2
    for (d1, i1), (d2, i2) in [(refine.search(x[:5], 4), plain.search(x[:5], 4))]:
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(d1, d2, atol=1e-4)
    with pytest.raises(RuntimeError):
        refine.remove_ids(np.array([1]))


def test_binary_range_search_equals_faiss():
    codes = np.random.default_rng(0).integers(0, 256, (300, 2), dtype=np.uint8)
    mine, theirs = gfaiss.IndexBinaryFlat(16), real_faiss.IndexBinaryFlat(16)
    mine.add(codes)
    theirs.add(codes)
    (lims, D, I), (f_lims, f_D, f_I) = (i.range_search(codes[:4], 5) for i in (mine, theirs))
    assert lims.tolist() == f_lims.tolist() and lims[-1] > 4
    for q in range(4):
        a, b = slice(lims[q], lims[q + 1]), slice(f_lims[q], f_lims[q + 1])
        assert sorted(zip(D[a].tolist(), I[a].tolist(), strict=True)) == sorted(
            zip(f_D[b].tolist(), f_I[b].tolist(), strict=True)
        )


def test_omp_threads():
    before, faiss_before = torch.get_num_threads(), real_faiss.omp_get_max_threads()
    try:
        gfaiss.omp_set_num_threads(1)
        assert gfaiss.omp_get_max_threads() == 1 and real_faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(before)
        real_faiss.omp_set_num_threads(faiss_before)


def test_faiss_files_without_a_counterpart_are_refused(tmp_path):
    x = np.random.default_rng(6).standard_normal((300, 8), dtype=np.float32)
    repeated = real_faiss.IndexIVFFlat(real_faiss.IndexFlatL2(8), 8, 2)
    repeated.train(x)
    repeated.add_with_ids(x, np.zeros(300, dtype=np.int64))  # faiss stores repeated ids
    real_faiss.write_index(repeated, str(tmp_path / "repeated"))
    with pytest.raises(gfaiss.IndexFileError, match="unique"):
        gfaiss.read_index(tmp_path / "repeated")
    pq = real_faiss.IndexPQ(8, 2, 4)
    pq.train(x)
    pq.add(x)
    real_faiss.write_index(pq, str(tmp_path / "pq"))
    with pytest.raises(RuntimeError, match="IndexPQ has no gpuann counterpart"):
        gfaiss.read_index(tmp_path / "pq")
    hnsw_sq = real_faiss.IndexHNSWSQ(8, real_faiss.ScalarQuantizer.QT_8bit, 8)
    hnsw_sq.train(x)
    hnsw_sq.add(x)
    real_faiss.write_index(hnsw_sq, str(tmp_path / "hnsw_sq"))
    with pytest.raises(RuntimeError, match="IndexHNSWSQ has no gpuann counterpart"):
        gfaiss.read_index(tmp_path / "hnsw_sq")
    bad = real_faiss.IndexHNSWFlat(8, 8)  # NaN vectors: refused as add refuses them
    bad.add(np.where(np.arange(8) == 3, np.nan, x[:20]).astype(np.float32))
    real_faiss.write_index(bad, str(tmp_path / "bad"))
    with pytest.raises(gfaiss.IndexFileError, match="NaN"):
        gfaiss.read_index(tmp_path / "bad")
