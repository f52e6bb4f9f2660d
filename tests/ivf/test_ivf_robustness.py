"""IVF on the shared Index base: the vocabulary, all-or-nothing mutations, extreme values,
empty indexes and the re-ranking budget (issues 11 and 13)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ivf_helpers import build

import gpuann
import gpuann.ivf._results as ivf_results
from gpuann.ivf import _faiss
from gpuann.ivf.training import check_trainable
from gpuann.metrics import Metric

KINDS = ["flat", "pq", "pq_refine"]


def small_index(small, kind="flat", metric="l2", **kwargs):
    return build(kind, metric, small[0], nlist=16, **kwargs)


def state(index, queries):
    d, i = index.search(queries, 5, nprobe=16)
    return len(index), index.ids.clone(), index.faiss_index.ntotal, d.copy(), i.copy()


def assert_same_state(a, b):
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2]
    np.testing.assert_array_equal(a[3], b[3])
    np.testing.assert_array_equal(a[4], b[4])


# ---------------------------------------------------------------- vocabulary (issue 11)
def test_options_are_keyword_only_and_seed_defaults_to_0():
    with pytest.raises(TypeError):
        gpuann.IVFFlatIndex(8, 4, "l2")
    with pytest.raises(TypeError):
        gpuann.IVFPQIndex(8, 4, 2, 8)
    with pytest.raises(ValueError, match="refine: IVFFlatIndex stores exact vectors"):
        gpuann.IVFFlatIndex(8, 4, refine=True)  # exact within lists: nothing to re-rank
    flat = gpuann.IVFFlatIndex(8, 4, device="cpu")
    pq = gpuann.IVFPQIndex(8, 4, 2, nbits=4, device="cpu", refine=True, refine_factor=3)
    assert flat.seed == pq.seed == gpuann.index.DEFAULT_SEED == 0
    assert isinstance(flat, gpuann.index.Index) and isinstance(pq, gpuann.index.Index)
    assert pq.refine and pq.refine_factor == 3 and pq.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype: IVF indexes keep float32"):
        gpuann.IVFFlatIndex(8, 4, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="seed"):
        gpuann.IVFFlatIndex(8, 4, device="cpu", seed=-1)


def test_search_options_are_keyword_only(small):
    index = small_index(small, "pq_refine")
    with pytest.raises(TypeError):
        index.search(small[1], 3, 4)
    assert index.search(small[1], 3, nprobe=4, refine_factor=2).ids.shape == (20, 3)


# ---------------------------------------------------------------- all-or-nothing mutations
@pytest.mark.parametrize("kind", KINDS)
def test_update_replaces_vectors(small, kind):
    xb, xq = small
    index = small_index(small, kind)
    index.update([7, 3], xb[[100, 200]])
    _, i = index.search(xb[[100, 200]], 3, nprobe=16)
    assert {7, 100} <= set(i[0].tolist()) and {3, 200} <= set(i[1].tolist())
    assert len(index) == index.faiss_index.ntotal == 2000
    tolerance = 1.0 if kind == "pq" else 1e-6
    np.testing.assert_allclose(index.reconstruct(np.array([7])), xb[100:101], atol=tolerance)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("call", ["add", "update", "remove"])
def test_a_failing_faiss_call_changes_nothing(small, kind, call, monkeypatch):
    xb, xq = small
    index = small_index(small, kind)
    before = state(index, xq)

    def fail(*args, **kwargs):
        raise RuntimeError("faiss failed")

    monkeypatch.setattr(_faiss, "add_with_ids", fail)
    monkeypatch.setattr(_faiss, "remove_ids", fail)
    if call == "remove":  # a failed compaction keeps tombstones, which stay correct
        assert index.remove([1, 2]) == 2
        assert len(index) == 1998 and index._faiss.tombstones.tolist() == [1, 2]
        _, i = index.search(xb[1:3], 3, nprobe=16)
        assert not np.isin(i, [1, 2]).any()
        monkeypatch.undo()
        index.remove([3])  # the next change compacts
        assert index._faiss.tombstones.numel() == 0 and index.faiss_index.ntotal == 1997
        return
    with pytest.raises(RuntimeError, match="faiss failed"):
        if call == "add":
            index.add(xb[:4])
        else:
            index.update([1, 2], xb[:2])
    monkeypatch.undo()
    assert_same_state(state(index, xq), before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("call", ["add", "remove"])
def test_a_failing_store_after_faiss_is_undone(small, kind, call, monkeypatch):
    xb, xq = small
    index = small_index(small, kind)
    before = state(index, xq)

    def fail(*args, **kwargs):
        raise MemoryError("no memory")

    monkeypatch.setattr(index._rows, "insert" if call == "add" else "remove_rows", fail)
    with pytest.raises(MemoryError):
        if call == "add":
            index.add(xb[:4], ids=[5000, 5001, 5002, 5003])
        else:
            index.remove([1, 2])
    monkeypatch.undo()
    assert_same_state(state(index, xq), before)
    assert index._faiss.tombstones.numel() == 0
    if call == "add":
        index.add(xb[:4], ids=[5000, 5001, 5002, 5003])  # the ids are free
        assert len(index) == index.faiss_index.ntotal == 2004


def test_reset_keeps_training_and_renumber_is_refused(small):
    index = small_index(small, "pq_refine")
    index.reset()
    assert len(index) == 0 and index.faiss_index.ntotal == 0 and index.is_trained
    d, i = index.search(small[1], 3)
    assert (i == -1).all() and (d == np.inf).all()
    index.add(small[0][:10])
    assert index.ids.tolist() == list(range(10))
    with pytest.raises(NotImplementedError, match="renumber"):
        index.renumber()


# ---------------------------------------------------------------- extreme values (issue 13)
_ABORT_CASES = """
import numpy as np, gpuann
rs = np.random.default_rng(0)
limit = float(np.finfo(np.float32).max)
huge = (rs.standard_normal((2000, 16)) * 1e19).astype("float32")
edge = (np.sign(rs.standard_normal((2000, 16))) * np.sqrt(0.9 * limit / 16)).astype("float32")
for x in (huge, edge):
    for make in (lambda: gpuann.IVFFlatIndex(16, 16, device="cpu"),
                 lambda: gpuann.IVFPQIndex(16, 16, 4, nbits=6, device="cpu"),
                 lambda: gpuann.IVFFlatIndex(16, 16, metric="ip", device="cpu")):
        index = make()
        for check_finite in (True, False):
            try:
                index.train(x, check_finite=check_finite)
            except ValueError as err:
                assert str(err).startswith("x: "), err
            else:
                raise AssertionError("trained on values faiss cannot handle")
        assert not index.is_trained
print("ok")
"""


def test_training_on_huge_values_raises_instead_of_aborting():
    """faiss's k-means aborts the process (SIGABRT) on values near 1e19, and on values whose
    squared norms fit float32 but whose k-means distances do not; run in a subprocess so a
    regression fails this test rather than killing pytest."""
    done = subprocess.run(
        [sys.executable, "-c", _ABORT_CASES], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_check_trainable_bounds():
    d = 16
    ok = float(np.sqrt(np.finfo(np.float32).max / (4 * d))) * 0.99
    check_trainable(torch.full((3, d), ok), Metric.L2)
    check_trainable(torch.full((3, d), 1e30), Metric.COSINE)  # normalised before faiss
    with pytest.raises(ValueError, match="too large to train on"):
        check_trainable(torch.full((3, d), ok * 1.1), Metric.IP)
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_trainable(torch.tensor([[float("nan")] * d]), Metric.L2)


# ---------------------------------------------------------------- empty and re-ranked searches
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_trained_but_empty_gives_all_missing(small, kind, metric):
    index = small_index(small, kind, metric)
    index.remove(index.ids)
    extra = {"refine_factor": 3} if kind == "pq_refine" else {}
    for searched in (index, index.to("cpu")):
        d, i = searched.search(small[1], 4, nprobe=16, **extra)
        missing = np.inf if metric == "l2" else -np.inf
        assert i.shape == (20, 4) and (i == -1).all() and (d == missing).all()


def test_refine_gathers_within_the_budget(small, monkeypatch):
    """With a 1 MiB budget, faiss is asked for one block of queries at a time, and each
    block's candidate labels, rows and gathered vectors fit the budget."""
    xb, _ = small
    queries = xb  # 2000 queries
    index = small_index(small, "pq_refine")
    expected = index.search(queries, 50, nprobe=8, refine_factor=8)
    index.memory_budget = budget = 2**20
    blocks = []
    original = ivf_results.rerank_rows

    def spy(q, vectors, sqnorms, rows, k, metric, memory_budget=None):
        blocks.append(tuple(rows.shape))
        return original(q, vectors, sqnorms, rows, k, metric, memory_budget)

    monkeypatch.setattr(ivf_results, "rerank_rows", spy)
    got = index.search(queries, 50, nprobe=8, refine_factor=8)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.distances, expected.distances)
    assert len(blocks) > 1 and sum(b[0] for b in blocks) == 2000
    per_query = 400 * (ivf_results.FETCH_BYTES_PER_CANDIDATE + 16 * 8 + 32)
    assert all(width == 400 and rows * per_query <= budget for rows, width in blocks)
