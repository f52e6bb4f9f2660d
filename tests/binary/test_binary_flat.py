"""BinaryFlatIndex against faiss IndexBinaryFlat and the reference; protocol, robustness, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _binary_reference import assert_same_knn_tie_aware, reference_hamming, tie_heavy_codes
from reference import DEVICES

import gpuann
import gpuann.compat.faiss as gfaiss
from gpuann.binary import BinaryFlatIndex
from gpuann.serialization import IndexFileError, write_index_file


def _data(seed=0, n=400, q=25, nbytes=4):
    g = torch.Generator().manual_seed(seed)
    return tie_heavy_codes(g, n, nbytes), tie_heavy_codes(g, q, nbytes)


@pytest.mark.parametrize("k", [1, 10, 500])
def test_equals_faiss(k):
    faiss = pytest.importorskip("faiss")
    database, queries = _data()
    ref = faiss.IndexBinaryFlat(32)
    ref.add(database.numpy())
    D_ref, I_ref = ref.search(queries.numpy(), k)
    index = BinaryFlatIndex(32, device="cpu")
    index.add(database.numpy())
    D, I = index.search(queries.numpy(), k)
    assert D.dtype == np.int32 and I.dtype == np.int64
    assert_same_knn_tie_aware(D, I, D_ref, I_ref)
    shim = gfaiss.IndexBinaryFlat(32, device="cpu")
    shim.add(database.numpy())
    assert_same_knn_tie_aware(*shim.search(queries.numpy(), k), D_ref, I_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ids_ties_remove_update(device, backend):
    database, queries = _data(1, n=120, q=6, nbytes=3)
    ids = torch.randperm(1000, generator=torch.Generator().manual_seed(1))[:120]
    index = BinaryFlatIndex(24, device=device)
    index.add(database[:60], ids=ids[:60])
    index.add(database[60:], ids=ids[60:])  # interleaved ids: merge path
    D, I = index.search(queries.to(device), 20, backend=backend)
    assert I.device.type == torch.device(device).type
    np.testing.assert_array_equal(
        I.cpu().numpy(), reference_hamming(queries, database, 20, ids.numpy())[1]
    )
    gone = I[:, 0].unique().cpu()
    assert index.remove(gone) == gone.numel()
    keep = ~torch.isin(ids, gone)
    D, I = index.search(queries.to(device), 20, backend=backend)
    np.testing.assert_array_equal(
        I.cpu().numpy(), reference_hamming(queries, database[keep], 20, ids[keep].numpy())[1]
    )
    target = ids[keep][:2]
    index.update(target, queries[:2])
    D, I = index.search(queries[:2].to(device), 1, backend=backend)
    assert (D == 0).all()
    assert torch.equal(index.reconstruct(target).cpu(), queries[:2])


def test_save_load_roundtrip(tmp_path):
    database, queries = _data(2)
    index = BinaryFlatIndex(32, device="cpu")
    index.add(database, ids=torch.arange(400) * 3)
    index.remove([0, 3])
    path = tmp_path / "bin.gpuann"
    index.save(path)
    for loaded in (gpuann.load(path, device="cpu"), BinaryFlatIndex.load(path, device="cpu")):
        assert isinstance(loaded, BinaryFlatIndex) and len(loaded) == 398
        assert torch.equal(loaded.ids, index.ids)
        for a, b in zip(loaded.search(queries, 7), index.search(queries, 7), strict=True):
            assert torch.equal(a, b)
    loaded.add(database[:1])
    assert int(loaded.ids.max()) == 399 * 3 + 1


def test_k_beyond_size_and_repr():
    index = BinaryFlatIndex(8, device="cpu")
    index.add(torch.tensor([[1], [3]], dtype=torch.uint8))
    D, I = index.search(torch.tensor([[0]], dtype=torch.uint8), 4)
    assert I.tolist() == [[0, 1, -1, -1]] and D.tolist() == [[1, 2, 2**31 - 1, 2**31 - 1]]
    # capacity grows to 1024 rows: 1 code byte padded to 4, plus an 8-byte id, per row
    assert index.nbytes == 1024 * (4 + 8)
    assert index.dim == index.nbits == 8 and index.code_size == 1
    assert index.metric == "hamming" and index.dtype == torch.uint8
    assert repr(index) == (
        "BinaryFlatIndex(n=2, nbits=8, metric='hamming', device='cpu', memory='12.0 KiB')"
    )
    assert index.to("cpu") is index


def test_bad_inputs_leave_index_unchanged():
    with pytest.raises(ValueError, match="nbits: expected a multiple of 8"):
        BinaryFlatIndex(12)
    index = BinaryFlatIndex(16, device="cpu")
    index.add(torch.zeros((3, 2), dtype=torch.uint8))
    with pytest.raises(TypeError, match="x: expected packed uint8 codes"):
        index.add(torch.zeros((3, 2)))
    with pytest.raises(ValueError, match="x: expected 2 columns"):
        index.add(np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="ids: 1 id"):
        index.add(torch.zeros((2, 2), dtype=torch.uint8), ids=[2, 7])
    with pytest.raises(ValueError, match="ids: 1 id"):
        index.remove([1, 99])
    with pytest.raises(ValueError, match="queries: expected 2 columns"):
        index.search(torch.zeros((1, 4), dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        index.search(torch.zeros((1, 2), dtype=torch.uint8), 0)
    for bad in ([-1, 5], [7, -3]):  # -1 marks a missing result: never a stored id (issue 13)
        with pytest.raises(ValueError, match="ids: expected non-negative ids"):
            index.add(torch.zeros((2, 2), dtype=torch.uint8), ids=bad)
    with pytest.raises(TypeError):
        BinaryFlatIndex(16, "cpu")  # options are keyword-only
    assert len(index) == 3 and index.ids.tolist() == [0, 1, 2]


@pytest.mark.parametrize("nbytes", [3, 4, 8])  # 4 and 8: whole words, no padding copy
def test_strided_codes_add_search_update(nbytes):
    """Non-contiguous codes (column slices, transposes, negative numpy strides) work everywhere
    contiguous ones do, with the same results (issue 13)."""
    database, queries = _data(4, n=90, q=7, nbytes=nbytes)
    wide_db = torch.zeros((90, 2 * nbytes), dtype=torch.uint8)
    wide_db[:, ::2] = database
    wide_q = queries.T.contiguous().T  # column-major
    assert not wide_db[:, ::2].is_contiguous() and not wide_q.is_contiguous()
    index = BinaryFlatIndex(8 * nbytes, device="cpu")
    index.add(wide_db[:, ::2])
    expected = reference_hamming(queries, database, 5)
    for q in (wide_q, queries.numpy()[::-1][::-1], np.asfortranarray(queries.numpy())):
        D, I = index.search(q, 5)
        np.testing.assert_array_equal(np.asarray(D), expected[0])
        np.testing.assert_array_equal(np.asarray(I), expected[1])
    D, I = index.search(queries.numpy()[::-1], 5)  # negative strides
    np.testing.assert_array_equal(I, expected[1][::-1])
    index.update([3, 4], wide_q[:2])
    assert torch.equal(index.reconstruct([3, 4]), queries[:2])


def test_capacity_follows_rows_with_out_of_order_single_adds():
    """40 single-row adds with ids below the largest keep capacity <= max(2 * rows, 1024)
    (each used to double it; issue 13)."""
    index = BinaryFlatIndex(32, device="cpu")
    codes = torch.zeros((1, 4), dtype=torch.uint8)
    index.add(codes, ids=[10**6])
    per_row = 4 + 8  # padded code bytes + the id
    for i in range(40):
        index.add(codes, ids=[i])
        assert index.nbytes <= max(2 * len(index), 1024) * per_row
    assert len(index) == 41 and index.ids[:3].tolist() == [0, 1, 2]


def test_empty_index_and_empty_queries():
    index = BinaryFlatIndex(16, device="cpu")
    D, I = index.search(np.zeros((2, 2), dtype=np.uint8), 3)
    assert I.tolist() == [[-1] * 3] * 2 and (D == 2**31 - 1).all()
    index.add(np.zeros((0, 2), dtype=np.uint8))
    index.add(torch.ones((2, 2), dtype=torch.uint8))
    D, I = index.search(torch.zeros((0, 2), dtype=torch.uint8), 3)
    assert D.shape == I.shape == (0, 3) and D.dtype == torch.int32


def test_loads_files_of_the_first_layout(tmp_path):
    """Files written by gpuann 0.1 (meta: nbits, next_id; unpadded codes) still load."""
    database, queries = _data(5, n=50, q=4, nbytes=3)
    path = tmp_path / "old.gpuann"
    ids = torch.arange(50) * 2
    write_index_file(path, "BinaryFlatIndex", {"nbits": 24, "next_id": 100}, {
        "codes": database, "ids": ids})  # fmt: skip
    loaded = gpuann.load(path, device="cpu")
    assert isinstance(loaded, BinaryFlatIndex) and loaded.ids.tolist() == ids.tolist()
    D, I = loaded.search(queries, 6)
    np.testing.assert_array_equal(I.numpy(), reference_hamming(queries, database, 6, ids)[1])
    write_index_file(path, "BinaryFlatIndex", {"nbits": 32, "next_id": 100}, {
        "codes": database, "ids": ids})  # fmt: skip
    with pytest.raises(IndexFileError, match="codes have shape"):
        gpuann.load(path, device="cpu")
