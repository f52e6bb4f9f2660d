"""Where faiss-gpu falls short, gpuann does not: each GPU-only path, run here on CPU.

The private switches of :class:`gpuann.ivf.gpu_gaps.GapFilledFaiss` (``index._faiss``):
``use_tombstones`` (removal by tombstones, on for CUDA indexes) and ``device_k_limit``
(faiss-gpu's k / nprobe limit, 2048 on CUDA) put a CPU index on the code paths a CUDA index
takes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ivf_helpers import build

from gpuann.ivf import _faiss

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

KINDS = ["flat", "pq", "pq_refine"]


def gpu_like(small, kind, **kwargs):
    index = build(kind, "l2", small[0], nlist=16, **kwargs)
    index._faiss.use_tombstones = True
    return index


@pytest.mark.parametrize("kind", KINDS)
def test_tombstones_give_the_results_of_real_removal(small, kind):
    xb, xq = small
    real = build(kind, "l2", xb, nlist=16)
    tomb = gpu_like(small, kind)
    _, first = real.search(xq, 10, nprobe=4)
    gone = np.unique(first[:, :4])
    assert real.remove(gone) == tomb.remove(gone) == gone.size
    assert tomb._faiss.tombstones.numel() == gone.size and tomb.faiss_index.ntotal == 2000
    for k in (1, 10, 50):
        a, b = real.search(xq, k, nprobe=4), tomb.search(xq, k, nprobe=4)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.distances, b.distances, rtol=1e-6)
        assert not np.isin(b.ids, gone).any()
    assert len(tomb) == len(real)


def test_tombstones_are_compacted_past_the_limit(small):
    index = gpu_like(small, "flat")
    index._faiss.max_tombstones = 10
    index.remove(np.arange(8))
    assert index._faiss.tombstones.numel() == 8 and index.faiss_index.ntotal == 2000
    index.remove(np.arange(8, 12))  # 12 > 10: faiss removes them for good
    assert index._faiss.tombstones.numel() == 0 and index.faiss_index.ntotal == 1988
    _, i = index.search(small[0][:12], 1, nprobe=16)
    assert (i >= 12).all()


def test_readding_a_tombstoned_id_compacts_first(small):
    index = gpu_like(small, "flat")
    index.remove([0])
    index.add(small[0][5:6], ids=[0])  # id 0 now names vector 5
    assert index._faiss.tombstones.numel() == 0
    _, i = index.search(small[0][5:6], 2, nprobe=16)
    assert i.tolist() == [[0, 5]]


def test_tombstones_survive_save_and_move(small, tmp_path):
    index = gpu_like(small, "pq_refine")
    index.remove(np.arange(0, 2000, 3))
    expected = index.search(small[1], 10, nprobe=8)
    index.save(tmp_path / "t.gpuann")
    loaded = type(index).load(tmp_path / "t.gpuann", device="cpu")
    assert loaded.faiss_index.ntotal == len(loaded) == len(index)
    got = loaded.search(small[1], 10, nprobe=8)
    np.testing.assert_array_equal(got.ids, expected.ids)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tombstones", [False, True])
def test_k_above_the_device_limit_searches_a_host_copy(small, kind, tombstones):
    xb, xq = small
    index = build(kind, "l2", xb, nlist=16)
    index._faiss.use_tombstones = tombstones
    index.remove(np.arange(0, 2000, 7))
    expected = index.search(xq, 40, nprobe=8)
    index._faiss.device_k_limit = 16  # as faiss-gpu's 2048, scaled down
    host_calls = []
    original = index._faiss.host_index

    def spy():
        host_calls.append(1)
        return original()

    index._faiss.host_index = spy
    got = index.search(xq, 40, nprobe=8)
    assert host_calls, "k above the limit must take the host path"
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_allclose(got.distances, expected.distances, rtol=1e-6)
    host_calls.clear()
    index.search(xq, 2, nprobe=8)  # k + tombstones within the limit: no host path
    assert bool(host_calls) == (tombstones and 2 + index._faiss.tombstones.numel() > 16)


@pytest.mark.parametrize("kind", KINDS)
def test_ties_across_the_kth_place_on_the_gpu_paths(small, kind):
    """The look-ahead for ties at the k-th place through tombstones, allow_ids without a
    selector, and the host copy once the doubled fetch passes the device's k limit."""
    xb, xq = small
    plain = build(kind, "l2", xb, nlist=16, ids=np.arange(2000) + 1000)
    gpu = gpu_like(small, kind, ids=np.arange(2000) + 1000)
    gpu._faiss.use_selectors = False
    gpu._faiss.device_k_limit = 8  # as faiss-gpu's 2048, scaled down
    for index in (plain, gpu):
        index.add(np.repeat(xb[:1], 12, axis=0), ids=np.arange(120, 0, -10))
        index.remove([30])
    assert gpu._faiss.tombstones.tolist() == [30]
    host_calls = []
    original = gpu._faiss.host_index

    def spy():
        host_calls.append(1)
        return original()

    gpu._faiss.host_index = spy
    tied = [*range(10, 130, 10), 1000]
    tied.remove(30)
    queries = np.concatenate([xb[:1], xq[:2]])
    allow = np.setdiff1d(np.arange(3000), [10, 1500])
    for k in (1, 3, 12):
        for options in ({}, {"allow_ids": allow}):
            expected = [t for t in tied if t in allow] if options else tied
            got = gpu.search(queries, k, nprobe=16, **options)
            assert got.ids[0, : min(k, len(expected))].tolist() == expected[:k]
            np.testing.assert_array_equal(
                got.ids, plain.search(queries, k, nprobe=16, **options).ids
            )
    assert host_calls, "a fetch past the device limit must take the host path"


def test_pointer_path_for_train_add_search(small, monkeypatch):
    """Train, add and search through raw pointers (what CUDA tensors use) match numpy views."""
    expected = build("pq", "l2", small[0], nlist=16).search(small[1], 10, nprobe=8)
    monkeypatch.setattr(_faiss, "POINTER_CALLS_ON_CPU", True)
    got = build("pq", "l2", small[0], nlist=16).search(torch.from_numpy(small[1]), 10, nprobe=8)
    np.testing.assert_array_equal(got.ids.numpy(), expected.ids)
    np.testing.assert_array_equal(got.distances.numpy(), expected.distances)


def test_cuda_without_faiss_gpu_explains(monkeypatch):
    monkeypatch.setattr(_faiss, "faiss_gpu_available", lambda: False)
    with pytest.raises(_faiss.FaissUnavailableError, match="no GPU support"):
        _faiss.gpu_resources(torch.device("cuda", 0))


@pytest.mark.parametrize("device", DEVICES)
def test_on_device(small, device):
    """The whole protocol on each device (the CUDA case needs CUDA and faiss-gpu)."""
    if device == "cuda" and not _faiss.faiss_gpu_available():
        pytest.skip("faiss has no GPU support here")
    xb, xq = (torch.from_numpy(a).to(device) for a in small)
    cpu = build("pq_refine", "l2", small[0], nlist=16)
    index = cpu.to(device)
    got = index.search(xq, 10, nprobe=8)
    assert got.ids.device == xq.device
    np.testing.assert_array_equal(got.ids.cpu().numpy(), cpu.search(small[1], 10, nprobe=8).ids)
    index.remove(torch.arange(0, 2000, 5, device=device))
    index.add(xb[:5] * 1.01, ids=torch.arange(5000, 5005, device=device))
    _, i = index.search(xq, 3000, nprobe=16)  # k > 2048: the host path on CUDA
    assert not torch.isin(i, torch.arange(0, 2000, 5, device=device)).any()
    assert index.search(xq.half(), 5).ids.shape == (20, 5)


def test_update_with_tombstones_pending(small):
    """update on the GPU path: remove + add on a host copy, tombstones kept as they were."""
    index = gpu_like(small, "pq_refine")
    index.remove([0, 1])
    index.update([2], small[0][:1])
    _, i = index.search(small[0][:1], 1, nprobe=16)
    assert i.tolist() == [[2]]
    assert index._faiss.tombstones.tolist() == [0, 1] and index.faiss_index.ntotal == 2000
