"""Id filters of the IVF indexes: ``search(..., allow_ids=, exclude_ids=)``.

They mean what they mean on :class:`gpuann.FlatIndex` (validation, messages, unknown ids
ignored). On CPU faiss applies ``allow_ids`` as an id selector; the CUDA paths (over-fetch and
filter, or the host copy past faiss-gpu's k limit) run here on CPU through the private
switches of :class:`gpuann.ivf.gpu_gaps.GapFilledFaiss` (``use_selectors``,
``device_k_limit``). With ``nprobe = nlist`` an IVF-Flat search is exact, so a filtered one
must equal the exact search over the eligible ids.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ivf_helpers import build

import gpuann
from gpuann.ivf import _faiss

NLIST = 16
#: How the filters reach faiss: a selector (CPU faiss), over-fetch and filter (faiss-gpu),
#: or the host copy with a selector (faiss-gpu past its k limit).
PATHS = ["selector", "overfetch", "host"]


def ids_of(kind: str, n: int) -> np.ndarray:
    """Dense ids (a bitmap selector) or sparse ones (a hash-set selector)."""
    return np.arange(n, dtype=np.int64) + 3 if kind == "dense" else np.arange(n) * 1_000_003 + 7


def on_path(index, path: str):
    if path != "selector":
        index._faiss.use_selectors = False
    if path == "host":
        index._faiss.device_k_limit = 8  # as faiss-gpu's 2048, scaled down
    return index


def assert_same(got, expected):
    """Equal results, tie-aware: distances to float round-off, ids wherever a row's distance
    is not tied with a neighbour's."""
    d, i = np.asarray(got.distances), np.asarray(got.ids)
    ed, ei = np.asarray(expected.distances), np.asarray(expected.ids)
    np.testing.assert_allclose(d, ed, rtol=1e-5, atol=1e-4)
    tied = np.zeros(ed.shape, dtype=bool)
    close = np.isclose(ed[:, 1:], ed[:, :-1], rtol=1e-6, atol=1e-6)
    tied[:, 1:] |= close
    tied[:, :-1] |= close
    np.testing.assert_array_equal(np.where(tied, 0, i), np.where(tied, 0, ei))


def flat_twin(xb, ids, metric):
    flat = gpuann.FlatIndex(xb.shape[1], metric=metric, device="cpu")
    flat.add(xb, ids=ids)
    return flat


def allow_set(ids: np.ndarray, seed: int = 0) -> torch.Tensor:
    """A third of ``ids``, shuffled, with repeats, unknown ids and ``-1`` (ignored)."""
    rs = np.random.default_rng(seed)
    chosen = rs.choice(ids, ids.size // 3, replace=False)
    extra = np.array([-1, ids.max() + 1, 10**15, chosen[0]])
    return torch.from_numpy(rs.permutation(np.concatenate([chosen, extra])))


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("id_kind", ["dense", "sparse"])
@pytest.mark.parametrize("path", PATHS)
def test_allow_ids_equals_the_exact_filtered_search(small, metric, id_kind, path):
    xb, xq = small
    ids = ids_of(id_kind, xb.shape[0])
    index = on_path(build("flat", metric, xb, ids=ids, nlist=NLIST), path)
    allow = allow_set(ids)
    got = index.search(xq, 10, nprobe=NLIST, allow_ids=allow)
    assert_same(got, flat_twin(xb, ids, metric).search(xq, 10, allow_ids=allow))
    # and gpuann.knn over the allowed rows alone
    rows = np.flatnonzero(np.isin(ids, allow.numpy()))
    exact = gpuann.knn(xq, xb[rows], 10, metric)
    assert_same(got, gpuann.SearchResult(exact.distances, ids[rows][exact.ids]))
    assert np.isin(got.ids, allow.numpy()).all()


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("path", PATHS)
def test_exclude_ids_equals_the_exact_filtered_search(small, metric, path):
    xb, xq = small
    ids = ids_of("sparse", xb.shape[0])
    index = on_path(build("flat", metric, xb, ids=ids, nlist=NLIST), path)
    flat = flat_twin(xb, ids, metric)
    best = flat.search(xq, 6).ids
    exclude = np.concatenate(  # each query's 3 best and one other, -1 pads, an unknown id
        [best[:, :3], best[:, 5:], np.full((len(xq), 1), -1), np.full((len(xq), 1), 12)], axis=1
    )
    got = index.search(xq, 10, nprobe=NLIST, exclude_ids=exclude)
    assert_same(got, flat.search(xq, 10, exclude_ids=exclude))
    assert not (got.ids[:, :, None] == exclude[:, None, :]).any()
    self_excluded = index.search(xb[:20], 5, nprobe=NLIST, exclude_ids=ids[:20])  # (Q,) form
    assert_same(self_excluded, flat.search(xb[:20], 5, exclude_ids=ids[:20]))
    both = index.search(xq, 10, nprobe=NLIST, exclude_ids=exclude, allow_ids=allow_set(ids))
    assert_same(both, flat.search(xq, 10, exclude_ids=exclude, allow_ids=allow_set(ids)))


@pytest.mark.parametrize("path", PATHS)
def test_pq_refine_returns_only_allowed_ids(small, path):
    xb, xq = small
    ids = ids_of("sparse", xb.shape[0])
    index = on_path(build("pq_refine", "l2", xb, ids=ids, nlist=NLIST), path)
    allow = allow_set(ids, seed=1)
    exclude = index.search(xq, 2, nprobe=NLIST, allow_ids=allow).ids
    got = index.search(xq, 10, nprobe=NLIST, allow_ids=allow, exclude_ids=exclude)
    assert (got.ids >= 0).all() and np.isin(got.ids, allow.numpy()).all()
    assert not (got.ids[:, :, None] == exclude[:, None, :]).any()
    # refine re-scores exactly: the distances are the true ones of the returned ids
    rows = np.searchsorted(ids, got.ids)
    true = ((xb[rows] - xq[:, None, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(got.distances, true, rtol=1e-4, atol=1e-4)
    # and a good share of the exact filtered neighbours is found
    exact = flat_twin(xb, ids, "l2").search(xq, 10, allow_ids=allow, exclude_ids=exclude).ids
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(got.ids, exact, strict=True)]) >= 7


def test_pq_and_sq_without_refine_return_only_allowed_ids(small):
    xb, xq = small
    allow = torch.arange(0, 2000, 5)
    pq = build("pq", "ip", xb, nlist=NLIST)
    sq = gpuann.IVFSQIndex(16, NLIST, device="cpu", metric="ip")
    sq.train(xb)
    sq.add(xb)
    for index in (pq, sq):
        got = index.search(xq, 10, nprobe=4, allow_ids=allow)
        assert np.isin(got.ids[got.ids >= 0], allow.numpy()).all()
        assert (got.ids >= 0).mean() > 0.9


@pytest.mark.parametrize("kind", ["flat", "pq_refine"])
@pytest.mark.parametrize("path", PATHS)
def test_no_allowed_id_gives_all_missing(small, kind, path):
    xb, xq = small
    index = on_path(build(kind, "l2", xb, nlist=NLIST), path)
    for allow in (torch.empty(0, dtype=torch.int64), [-1, 10**9], np.array([5000])):
        d, i = index.search(xq, 4, nprobe=NLIST, allow_ids=allow)
        assert (i == -1).all() and np.isinf(d).all() and (d > 0).all()
    # every stored id allowed: the same as no filter
    everything = index.search(xq, 4, nprobe=NLIST, allow_ids=torch.arange(2000))
    unfiltered = index.search(xq, 4, nprobe=NLIST)
    np.testing.assert_array_equal(everything.ids, unfiltered.ids)


def test_tensor_queries_and_torch_results(small):
    xb, xq = small
    index = build("flat", "l2", xb, nlist=NLIST)
    got = index.search(torch.from_numpy(xq), 3, nprobe=NLIST, allow_ids=torch.arange(100))
    assert isinstance(got.ids, torch.Tensor) and got.ids.dtype == torch.int64
    assert bool(((got.ids >= 0) & (got.ids < 100)).all())


def test_tombstones_and_filters_together(small):
    """GPU removal by tombstones, then filters over-fetched on top (the faiss-gpu path)."""
    xb, xq = small
    index = on_path(build("flat", "l2", xb, nlist=NLIST), "overfetch")
    index._faiss.use_tombstones = True
    gone = np.arange(0, 2000, 3)
    index.remove(gone)
    assert index._faiss.tombstones.numel() == gone.size
    allow = torch.arange(0, 2000, 2)  # a third of it removed already
    exclude = np.arange(len(xq))[:, None] * 2
    got = index.search(xq, 10, nprobe=NLIST, allow_ids=allow, exclude_ids=exclude)
    keep = np.setdiff1d(np.arange(2000), gone)
    flat = flat_twin(xb[keep], keep, "l2")
    assert_same(got, flat.search(xq, 10, allow_ids=allow, exclude_ids=exclude))


def test_bad_filters_raise_naming_the_argument_as_flat_does(small):
    xb, xq = small
    index = build("flat", "l2", xb, nlist=NLIST)
    flat = flat_twin(xb, np.arange(2000), "l2")
    bad = [
        ({"allow_ids": torch.tensor([1.0, 2.0])}, TypeError, r"allow_ids: expected integer ids"),
        ({"allow_ids": torch.ones(2, 2, dtype=torch.int64)}, ValueError, r"allow_ids: expected"),
        ({"allow_ids": "abc"}, TypeError, r"allow_ids: expected an int64 tensor"),
        ({"exclude_ids": np.zeros((3, 2), np.int64)}, ValueError, r"exclude_ids: expected shape"),
        ({"exclude_ids": torch.zeros(20).bool()}, TypeError, r"exclude_ids: expected integer"),
    ]
    for options, error, message in bad:
        with pytest.raises(error, match=message) as ours:
            index.search(xq, 5, **options)
        with pytest.raises(error) as theirs:
            flat.search(xq, 5, **options)
        assert str(ours.value) == str(theirs.value)


def test_unknown_ids_are_ignored_as_flat_does(small):
    xb, xq = small
    index = build("flat", "l2", xb, nlist=NLIST)
    plain = index.search(xq, 5, nprobe=NLIST)
    unknown = np.array([[10**12, -1, 2000]] * len(xq))
    got = index.search(xq, 5, nprobe=NLIST, exclude_ids=unknown)
    np.testing.assert_array_equal(got.ids, plain.ids)
    allowed = index.search(xq, 5, nprobe=NLIST, allow_ids=[7, 10**12, 2000])
    assert (allowed.ids[:, 0] == 7).all() and (allowed.ids[:, 1:] == -1).all()


def test_filters_leave_the_index_and_its_files_unchanged(small, tmp_path):
    xb, xq = small
    index = build("pq_refine", "l2", xb, nlist=NLIST)
    before = index.search(xq, 10, nprobe=8)
    allow = torch.arange(0, 2000, 4)
    filtered = index.search(xq, 10, nprobe=8, allow_ids=allow, exclude_ids=before.ids[:, :1])
    assert len(index) == index.faiss_index.ntotal == 2000
    np.testing.assert_array_equal(index.search(xq, 10, nprobe=8).ids, before.ids)
    index.save(tmp_path / "f.gpuann")
    loaded = type(index).load(tmp_path / "f.gpuann", device="cpu")
    again = loaded.search(xq, 10, nprobe=8, allow_ids=allow, exclude_ids=before.ids[:, :1])
    np.testing.assert_array_equal(again.ids, filtered.ids)
    np.testing.assert_allclose(again.distances, filtered.distances, rtol=1e-6)
    np.testing.assert_array_equal(loaded.search(xq, 10, nprobe=8).ids, before.ids)


def test_selector_kinds():
    """Dense labels get a bitmap, sparse ones a hash set; both select exactly ``allowed``."""
    faiss = _faiss.import_faiss()
    for labels, kind in ((torch.arange(3, 900, 2), "Bitmap"), (torch.arange(5) * 10**9, "Batch")):
        selector, _array = _faiss.id_selector(labels)
        assert kind in type(selector).__name__
        probe = [*labels.tolist()[:20], -1, 0, 4, int(labels[-1]) + 1]
        assert [selector.is_member(i) for i in probe] == [i in set(labels.tolist()) for i in probe]
        assert isinstance(selector, faiss.IDSelector)


def test_selector_through_the_pointer_path(small, monkeypatch):
    """The selector also reaches faiss through raw pointers (the call form CUDA tensors use)."""
    xb, xq = small
    index = build("flat", "l2", xb, nlist=NLIST)
    allow = torch.arange(0, 2000, 3)
    expected = index.search(xq, 5, nprobe=NLIST, allow_ids=allow)
    monkeypatch.setattr(_faiss, "POINTER_CALLS_ON_CPU", True)
    got = index.search(torch.from_numpy(xq), 5, nprobe=NLIST, allow_ids=allow)
    np.testing.assert_array_equal(got.ids.numpy(), expected.ids)
    assert (expected.ids % 3 == 0).all()
