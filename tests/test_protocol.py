"""The protocol every index class shares, run over every index class.

A new index class gets this whole suite by being listed once in ``CASES``;
``test_every_index_class_is_listed`` fails when a public ``gpuann.Index`` subclass is missing.
Each case builds an empty (trained, where training is needed) index and says what its rows are
(float vectors or binary codes) and how exact its search is.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import gpuann
from gpuann.index import Index, Searchable

DIM = 16
N = 300


def _vectors(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def _codes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, DIM // 2), generator=g, dtype=torch.uint8)


@dataclasses.dataclass(frozen=True)
class Case:
    """How to build and feed one index class."""

    name: str
    make: Callable[[], Any]
    data: Callable[[int, int], torch.Tensor] = _vectors
    #: Search results equal brute force (else: approximate, self-matches still found).
    exact: bool = True
    #: ``reconstruct`` returns what was added (normalised for cosine).
    lossless: bool = True
    #: Backed by the shared id-sorted row store (capacity checks apply).
    id_rows: bool = True


def _trained(index: Any) -> Any:
    index.train(_vectors(2000, 99))
    return index


def _ivf_flat():
    return _trained(gpuann.IVFFlatIndex(DIM, 8, device="cpu", nprobe=8))


def _ivf_pq():
    return _trained(gpuann.IVFPQIndex(DIM, 8, m=4, device="cpu", nprobe=8, refine=True))


CASES = [
    Case("FlatIndex", lambda: gpuann.FlatIndex(DIM, device="cpu")),
    Case("FlatIndex-cosine", lambda: gpuann.FlatIndex(DIM, metric="cosine", device="cpu")),
    Case(
        "FlatIndex-int8",
        lambda: _trained(gpuann.FlatIndex(DIM, dtype=torch.int8, device="cpu")),
        exact=False,
        lossless=False,
    ),
    Case(
        "FlatIndex-int8-refine",
        lambda: _trained(gpuann.FlatIndex(DIM, dtype=torch.int8, refine=True, device="cpu")),
        exact=False,
    ),
    Case("BinaryFlatIndex", lambda: gpuann.BinaryFlatIndex(DIM * 4, device="cpu"), data=_codes),
    Case(
        "LSHIndex",
        lambda: gpuann.LSHIndex(DIM, 64, metric="l2", device="cpu", refine=True),
        exact=False,
    ),
    Case("IVFFlatIndex", _ivf_flat, exact=False, lossless=True),
    Case("IVFPQIndex", _ivf_pq, exact=False, lossless=True),
    Case(
        "IVFSQIndex",
        lambda: _trained(gpuann.IVFSQIndex(DIM, 8, device="cpu", nprobe=8)),
        exact=False,
        lossless=False,
    ),
    Case(
        "IVFSQIndex-refine",
        lambda: _trained(gpuann.IVFSQIndex(DIM, 8, device="cpu", nprobe=8, refine=True)),
        exact=False,
    ),
    Case("KDTreeIndex", lambda: gpuann.KDTreeIndex(DIM, device="cpu"), lossless=False),
    Case("HNSWIndex", lambda: gpuann.HNSWIndex(DIM, device="cpu", ef_search=64), exact=False),
    Case(
        "HNSWIndex-cosine",
        lambda: gpuann.HNSWIndex(DIM, metric="cosine", device="cpu"),
        exact=False,
    ),
    Case(
        "HNSWIndex-sq8",
        lambda: _trained(gpuann.HNSWIndex(DIM, sq8=True, device="cpu")),
        exact=False,
        lossless=False,
    ),
    Case(
        "MemoryBank",
        lambda: gpuann.MemoryBank(4096, DIM, metric="l2", device="cpu"),
        id_rows=False,
    ),
]
IDS = [case.name for case in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request) -> Case:
    return request.param


def _filled(case: Case, n: int = N, ids: Any = None) -> tuple[Any, torch.Tensor, torch.Tensor]:
    index = case.make()
    x = case.data(n, 0)
    if ids is None:
        ids = torch.randperm(10 * n, generator=torch.Generator().manual_seed(1))[:n]
    index.add(x, ids=ids)
    return index, x, ids


def _state(index: Any, queries: torch.Tensor) -> tuple:
    result = index.search(queries, 5)
    return len(index), index.ids.clone(), result.distances.clone(), result.ids.clone()


def _assert_same_state(index: Any, queries: torch.Tensor, before: tuple) -> None:
    n, ids, distances, found = before
    after = _state(index, queries)
    assert after[0] == n
    assert torch.equal(after[1], ids)
    assert torch.equal(after[3], found)
    assert torch.equal(after[2], distances)


# ---------------------------------------------------------------- the class list
def test_every_index_class_is_listed():
    public = {name for name in gpuann.__all__ if isinstance(getattr(gpuann, name), type)}
    classes = {n for n in public if issubclass(getattr(gpuann, n), Index) and n != "Index"}
    listed = {case.make().__class__.__name__ for case in CASES}
    assert classes - listed == set(), f"index classes not in the protocol suite: {classes - listed}"


def test_every_case_is_an_index_and_searchable(case):
    index = case.make()
    assert isinstance(index, Index)
    assert isinstance(index, Searchable)


# ---------------------------------------------------------------- add and search
def test_search_finds_each_vector_itself_by_id(case):
    index, x, ids = _filled(case)
    result = index.search(x[:20], 3)
    assert result.ids.dtype == torch.int64 and result.ids.shape == (20, 3)
    assert torch.equal(result.ids[:, 0], ids[:20])
    assert len(index) == N


def test_numpy_in_numpy_out_equals_tensor_results(case):
    index, x, _ = _filled(case)
    tensor_result = index.search(x[:7], 4)
    numpy_result = index.search(x[:7].numpy(), 4)
    assert isinstance(numpy_result.ids, np.ndarray)
    assert isinstance(numpy_result.distances, np.ndarray)
    np.testing.assert_array_equal(numpy_result.ids, tensor_result.ids.numpy())
    np.testing.assert_array_equal(numpy_result.distances, tensor_result.distances.numpy())


def test_automatic_ids_continue_after_the_largest(case):
    index, _, ids = _filled(case, n=10)
    index.add(case.data(3, 5))
    assert index.ids[-3:].tolist() == [int(ids.max()) + 1 + i for i in range(3)]


def test_an_empty_index_pads_with_minus_one(case):
    index = case.make()
    result = index.search(case.data(2, 3), 4)
    assert result.ids.tolist() == [[-1] * 4] * 2


def test_k_above_the_size_pads_with_minus_one(case):
    index, x, _ = _filled(case, n=5)
    result = index.search(x[:2], 8)
    assert (result.ids[:, 5:] == -1).all() and (result.ids[:, :5] >= 0).all()


# ---------------------------------------------------------------- remove, update, reconstruct
def test_remove_never_returns_removed_ids(case):
    index, x, ids = _filled(case)
    assert index.remove(ids[:50]) == 50
    assert len(index) == N - 50
    found = index.search(x[:50], 5).ids
    assert not torch.isin(found, ids[:50]).any()
    assert set(index.ids.tolist()) == set(ids[50:].tolist())


def test_remove_counts_repeated_ids_once(case):
    index, _, ids = _filled(case, n=20)
    assert index.remove([int(ids[3]), int(ids[3])]) == 1


def test_strict_remove_of_an_unknown_id_raises_and_changes_nothing(case):
    index, x, ids = _filled(case)
    before = _state(index, x[:4])
    with pytest.raises(gpuann.UnknownIdError, match="ids: 1 id"):
        index.remove([int(ids[0]), 10**9])
    _assert_same_state(index, x[:4], before)
    assert index.remove([10**9], strict=False) == 0


def test_update_replaces_vectors(case):
    index, x, ids = _filled(case)
    index.update(ids[:1], x[1:2])
    result = index.search(x[1:2], 2)
    assert set(result.ids[0].tolist()) == {int(ids[0]), int(ids[1])}


def test_reconstruct_returns_the_stored_rows(case):
    index, x, ids = _filled(case)
    out = index.reconstruct(ids[[4, 2, 4]])
    assert out.shape == (3, x.shape[1])
    if case.lossless:
        expected = x[[4, 2, 4]]
        if index.metric is gpuann.Metric.COSINE:
            expected = torch.nn.functional.normalize(expected, dim=1)
        torch.testing.assert_close(out.to(expected.dtype), expected)
    assert isinstance(index.reconstruct(ids[:2].numpy()), np.ndarray)
    with pytest.raises(gpuann.UnknownIdError):
        index.reconstruct([10**9])


def test_reset_empties_the_index_and_ids_restart(case):
    index, _, _ = _filled(case, n=10)
    index.reset()
    assert len(index) == 0
    index.add(case.data(2, 4))
    assert index.ids.tolist() == [0, 1]


# ---------------------------------------------------------------- bad input leaves it unchanged
def _bad_calls(case: Case, x: torch.Tensor, ids: torch.Tensor):
    new = case.data(2, 7)
    width = x.shape[1]
    return [
        (lambda i: i.add(new[:, : width - 1]), r"x: expected \d+ columns"),
        (lambda i: i.add(new, ids=[1]), "ids: expected 2 ids"),
        (lambda i: i.add(new, ids=[10**7, 10**7]), "ids: duplicate ids"),
        (lambda i: i.add(new, ids=[int(ids[0]), 10**7]), r"ids: 1 id\(s\) already"),
        (lambda i: i.add(new, ids=[-1, 10**7]), "ids: expected non-negative"),
        (lambda i: i.add(new, ids=np.array([2**63, 3], dtype=np.uint64)), "ids: ids above"),
        (lambda i: i.add(new, ids=[2**64, 3]), "ids: id .* does not fit int64"),
        (lambda i: i.add(new, ids=[0.5, 3.0]), "ids: expected integer ids"),
        (lambda i: i.add(new[0]), "x: expected a 2-D"),
        (lambda i: i.update(ids[:1], new[:1, : width - 1]), r"x: expected \d+ columns"),
        (lambda i: i.update([10**9], new[:1]), "ids: 1 id"),
        (lambda i: i.search(x[:2], 0), "k: expected a positive int"),
        (lambda i: i.search(x[:2], -3), "k: expected a positive int"),
        (lambda i: i.search(x[:2], "3"), "k: expected a positive int"),
        (lambda i: i.search(x[:2, :-1], 3), r"queries: expected \d+ columns"),
        (lambda i: i.search(x[None], 3), "queries: expected a 2-D"),
        (lambda i: i.search(x[:2], 10**12), "k: 1000000000000 results for each of 2"),
    ]


def test_bad_input_raises_naming_the_argument_and_changes_nothing(case):
    index, x, ids = _filled(case)
    before = _state(index, x[:4])
    for call, message in _bad_calls(case, x, ids):
        with pytest.raises((ValueError, TypeError, OverflowError), match=message):
            call(index)
        _assert_same_state(index, x[:4], before)


def test_automatic_ids_that_would_pass_int64_are_refused(case):
    index = case.make()
    index.add(case.data(1, 0), ids=[2**63 - 1])
    with pytest.raises(OverflowError, match="ids: automatic ids would pass 2\\*\\*63 - 1"):
        index.add(case.data(2, 1))
    assert len(index) == 1


def test_nan_input_is_refused_when_vectors_are_float(case):
    index, x, _ = _filled(case)
    if not x.is_floating_point():
        pytest.skip("binary codes have no NaN")
    bad = x[:2].clone()
    bad[1, 3] = float("nan")
    before = _state(index, x[:4])
    with pytest.raises(ValueError, match="x: contains NaN"):
        index.add(bad)
    with pytest.raises(ValueError, match="queries: contains NaN"):
        index.search(bad, 2)
    _assert_same_state(index, x[:4], before)


def test_float64_beyond_float32_range_is_refused_or_exact(case):
    """Values beyond float32's range are an error for l2/ip (never stored as inf); cosine is
    scale-free, so they are normalised safely and found."""
    index, x, _ = _filled(case)
    if not x.is_floating_point():
        pytest.skip("binary codes")
    big = case.data(2, 55).double() * 1e300
    if index.metric is gpuann.Metric.COSINE:
        index.add(big, ids=[10**8, 10**8 + 1])
        assert index.search(big, 1).ids[:, 0].tolist() == [10**8, 10**8 + 1]
        return
    with pytest.raises(ValueError, match="x: "):
        index.add(big)
    with pytest.raises(ValueError, match="queries: "):
        index.search(big, 1)
    assert len(index) == N


# ---------------------------------------------------------------- capacity
def test_out_of_order_single_adds_keep_capacity_bounded(case):
    if not case.id_rows:
        pytest.skip("not backed by the id-sorted row store")
    index = case.make()
    index.add(case.data(1, 0), ids=[10**6])
    for i in range(40):
        index.add(case.data(1, i + 1), ids=[10**6 - 1 - i])
    rows = len(index)
    assert index._rows.capacity <= max(2 * rows, 1024)
    assert index.nbytes < 2**20


# ---------------------------------------------------------------- moving, saving, display
def test_save_load_round_trip_is_exact(case, tmp_path):
    index, x, _ = _filled(case)
    index.remove(index.ids[:10])
    path = tmp_path / "index.gpuann"
    index.save(path)
    loaded = gpuann.load(path, device="cpu")
    assert type(loaded) is type(index) and len(loaded) == len(index)
    assert torch.equal(loaded.ids, index.ids)
    a, b = index.search(x[:9], 5), loaded.search(x[:9], 5)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.distances, b.distances)
    assert type(index).load(path, device="cpu").dim == index.dim
    loaded.add(case.data(1, 11))
    assert int(loaded.ids.max()) == int(index.ids.max()) + 1


def test_to_the_same_device_returns_self(case):
    index = case.make()
    assert index.to(index.device) is index


def test_repr_and_html_show_the_class_and_size(case):
    index, _, _ = _filled(case, n=12)
    text = repr(index)
    assert text.startswith(f"{type(index).__name__}(")
    assert "memory=" in text
    assert f"<strong>{type(index).__name__}</strong>" in index._repr_html_()
    assert isinstance(index.nbytes, int) and index.nbytes > 0


# ---------------------------------------------------------------- threads
def test_concurrent_searches_and_adds_stay_consistent(case):
    index, x, ids = _filled(case)
    errors: list[BaseException] = []
    known = set(range(10**7, 10**7 + 200)) | set(ids.tolist())

    def searcher():
        try:
            for _ in range(15):
                found = index.search(x[:8], 3).ids
                assert set(found.flatten().tolist()) <= known | {-1}
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def adder():
        try:
            for i in range(10):
                new_ids = list(range(10**7 + 20 * i, 10**7 + 20 * i + 20))
                index.add(case.data(20, 100 + i), ids=new_ids)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    threads.append(threading.Thread(target=adder))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(index) == N + 200


# ---------------------------------------------------------------- pickling and merging
def test_pickle_round_trip_gives_the_same_results(case):
    import pickle

    index, x, _ = _filled(case)
    copy = pickle.loads(pickle.dumps(index))
    assert type(copy) is type(index) and torch.equal(copy.ids, index.ids)
    a, b = index.search(x[:6], 4), copy.search(x[:6], 4)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.distances, b.distances)


def test_merge_from_moves_every_vector_with_its_id(case):
    index, x, ids = _filled(case)
    other = case.make()
    extra = case.data(30, 21)
    other.add(extra, ids=list(range(10**7, 10**7 + 30)))
    index.merge_from(other)
    assert len(index) == N + 30 and len(other) == 0
    assert index.search(extra[:5], 1).ids[:, 0].tolist() == list(range(10**7, 10**7 + 5))
    clash = case.make()
    clash.add(case.data(1, 22), ids=ids[:1])
    before = _state(index, x[:4])
    with pytest.raises(ValueError, match="other: 1 id"):
        index.merge_from(clash)
    _assert_same_state(index, x[:4], before)
    assert len(clash) == 1
    with pytest.raises(TypeError, match="other: expected"):
        index.merge_from(object())
