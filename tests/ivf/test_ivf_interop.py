"""``gpuann.ivf.from_faiss``: gpuann indexes over what a faiss IVF index holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuann
from gpuann.ivf import from_faiss

faiss = pytest.importorskip("faiss")


@pytest.mark.parametrize("codes", ["Flat", "PQ4", "SQ8"])
def test_from_faiss_keeps_labels_and_results(codes):
    x = np.random.default_rng(0).standard_normal((3000, 16), dtype=np.float32)
    index = faiss.index_factory(16, f"IVF16,{codes}")
    index.train(x)
    index.add_with_ids(x, np.arange(3000, dtype=np.int64) * 3 + 1)
    index.nprobe = 4
    native = from_faiss(index, device="cpu")
    assert type(native).__name__ == {"Flat": "IVFFlatIndex", "PQ4": "IVFPQIndex",
                                     "SQ8": "IVFSQIndex"}[codes]  # fmt: skip
    assert len(native) == 3000 and native.nprobe == 4
    assert torch.equal(native.ids, torch.arange(3000) * 3 + 1)
    D, I = index.search(x[:20], 5)
    mine = native.search(x[:20], 5)
    np.testing.assert_array_equal(np.sort(mine.ids, axis=1), np.sort(I, axis=1))
    np.testing.assert_allclose(np.sort(mine.distances, axis=1), np.sort(D, axis=1), rtol=1e-5)


def test_from_faiss_refuses_what_gpuann_cannot_hold():
    x = np.random.default_rng(1).standard_normal((500, 8), dtype=np.float32)
    index = faiss.index_factory(8, "IVF4,Flat")
    index.train(x)
    index.add_with_ids(x[:2], np.array([5, 5], dtype=np.int64))
    with pytest.raises(gpuann.IndexFileError, match="not unique"):
        from_faiss(index)
    hnsw = faiss.IndexHNSWFlat(8, 16)
    with pytest.raises(gpuann.IndexFileError, match="expected a faiss IVF index"):
        from_faiss(hnsw)


@pytest.mark.parametrize("trained", [True, False])
def test_an_empty_index_from_faiss_saves_and_loads(tmp_path, trained):
    """faiss's "train once, add later" file: its empty ids array has stride 0, which the
    native writer's byte view refused (found by review through the shim's read_index)."""
    x = np.random.default_rng(2).standard_normal((500, 8), dtype=np.float32)
    index = faiss.index_factory(8, "IVF4,Flat")
    if trained:
        index.train(x)
    native = from_faiss(index, device="cpu")
    native.save(tmp_path / "empty.gpuann")
    back = gpuann.load(tmp_path / "empty.gpuann")
    assert len(back) == 0 and back.is_trained == trained
    if not trained:
        back.train(x)
    back.add(x)
    assert len(back) == 500
