"""BinaryFlatIndex against faiss IndexBinaryFlat and the reference; protocol and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _binary_reference import assert_same_knn_tie_aware, reference_hamming, tie_heavy_codes
from reference import DEVICES

import gpuann
import gpuann.compat.faiss as gfaiss
from gpuann.binary import BinaryFlatIndex


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
    assert repr(index) == (
        "BinaryFlatIndex(n=2, nbits=8, metric='hamming', device='cpu', memory='12.0 KiB')"
    )
    assert index.to("cpu") is index


def test_bad_inputs_leave_index_unchanged():
    with pytest.raises(ValueError, match="nbits: expected a multiple of 8"):
        BinaryFlatIndex(12)
    index = BinaryFlatIndex(16, device="cpu")
    index.add(torch.zeros((3, 2), dtype=torch.uint8))
    with pytest.raises(TypeError, match="codes: expected packed uint8 codes"):
        index.add(torch.zeros((3, 2)))
    with pytest.raises(ValueError, match="codes: expected 2 bytes per code"):
        index.add(np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="ids: 1 id"):
        index.add(torch.zeros((2, 2), dtype=torch.uint8), ids=[2, 7])
    with pytest.raises(ValueError, match="ids: 1 id"):
        index.remove([1, 99])
    with pytest.raises(ValueError, match="queries: expected 2 bytes"):
        index.search(torch.zeros((1, 4), dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        index.search(torch.zeros((1, 2), dtype=torch.uint8), 0)
    assert len(index) == 3 and index.ids.tolist() == [0, 1, 2]
