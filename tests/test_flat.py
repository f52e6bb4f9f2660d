"""FlatIndex: the index protocol, ids, errors that leave the index unchanged, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from reference import DEVICES, TOLERANCE, assert_knn_matches

import gpuann

METRICS = ["l2", "ip", "cosine"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _snapshot(index: gpuann.FlatIndex):
    n = len(index)
    return (n, index._rows.next_id, index.ids.clone(), index._rows.view("vectors").clone())


def _assert_unchanged(index, before):
    n, next_id, ids, data = before
    assert len(index) == n and index._rows.next_id == next_id
    assert torch.equal(index.ids, ids) and torch.equal(index._rows.view("vectors"), data)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_search_matches_reference_with_user_ids(device, metric, dtype):
    x = torch.randn(2500, 24)
    ids = torch.randperm(10**6)[:2500]
    index = gpuann.FlatIndex(24, metric=metric, device=device, dtype=dtype)
    index.add(x[:1000], ids=ids[:1000])
    index.add(x[1000:], ids=ids[1000:])  # interleaved ids: exercises the merge path
    assert len(index) == 2500 and index.device.type == device
    queries = torch.randn(9, 24)
    D, I = index.search(queries, 12)
    assert D.device == queries.device
    # The index searches what it holds: vectors normalised once (cosine), then rounded to dtype.
    stored = index.reconstruct(ids).float()
    if metric == "cosine":
        queries, metric = torch.nn.functional.normalize(queries, dim=1), "ip"
    assert_knn_matches(D, I, queries, stored, 12, metric, ids=ids.numpy(), tol=TOLERANCE[dtype])


def test_automatic_ids_continue_after_the_largest():
    index = gpuann.FlatIndex(3, device="cpu")
    index.add(torch.randn(2, 3))
    index.add(torch.randn(1, 3), ids=[10])
    index.add(torch.randn(2, 3))
    assert index.ids.tolist() == [0, 1, 10, 11, 12]
    index.remove([12])
    index.add(torch.randn(1, 3))
    assert index.ids.tolist() == [0, 1, 10, 11, 13]  # ids are never reused


def test_ties_are_ordered_by_lower_id_not_insertion_order():
    index = gpuann.FlatIndex(2, device="cpu")
    v = torch.tensor([[1.0, 0.0]])
    index.add(v.repeat(3, 1), ids=[30, 10, 20])
    index.add(v, ids=[5])
    D, I = index.search(torch.zeros(1, 2), 4)
    assert I.tolist() == [[5, 10, 20, 30]]


def test_k_larger_than_index_pads():
    index = gpuann.FlatIndex(4, metric="ip", device="cpu")
    index.add(torch.randn(3, 4))
    D, I = index.search(torch.randn(2, 4), 5)
    assert (I[:, 3:] == -1).all() and torch.isneginf(D[:, 3:]).all()


@pytest.mark.parametrize("metric", METRICS)
def test_empty_index_returns_missing_rows(metric):
    index = gpuann.FlatIndex(4, metric=metric, device="cpu")
    D, I = index.search(np.zeros((2, 4), np.float32), 3)
    assert isinstance(D, np.ndarray) and (I == -1).all()
    assert np.all(gpuann.Metric(metric).missing_distance == D)


def test_remove_update_reconstruct_reset():
    x = torch.randn(100, 8)
    index = gpuann.FlatIndex(8, device="cpu")
    index.add(x)
    assert index.remove(torch.tensor([3, 50, 99])) == 3
    assert len(index) == 97 and 50 not in index.ids.tolist()
    D, I = index.search(x[[3, 50, 99]], 1)
    assert not set(I.flatten().tolist()) & {3, 50, 99}
    index.update([7], torch.zeros(1, 8))
    assert torch.equal(index.reconstruct([7, 7]), torch.zeros(2, 8))
    assert torch.equal(index.reconstruct(torch.tensor([8])), x[8:9])
    assert index.remove([1000], strict=False) == 0
    index.reset()
    assert len(index) == 0 and index.search(x[:1], 1).ids.tolist() == [[-1]]


def test_cosine_normalises_at_add_time():
    index = gpuann.FlatIndex(2, metric="cosine", device="cpu")
    index.add(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(index.reconstruct([0]), torch.tensor([[0.6, 0.8]]))
    D, _ = index.search(torch.tensor([[6.0, 8.0]]), 1)
    assert torch.allclose(D, torch.ones(1, 1))


@pytest.mark.parametrize(
    "mutation,message",
    [
        (lambda ix: ix.add(torch.randn(2, 5)), "x: expected 4 columns"),
        (lambda ix: ix.add(torch.randn(2, 4), ids=[1, 2, 3]), "ids: expected 2 ids"),
        (lambda ix: ix.add(torch.randn(2, 4), ids=[7, 7]), "ids: duplicate ids"),
        (lambda ix: ix.add(torch.randn(2, 4), ids=[0, 100]), "ids: 1 id.s. already in the index"),
        (lambda ix: ix.add(torch.randn(2, 4), ids=[1.0, 2.0]), "ids: expected integer ids"),
        (lambda ix: ix.add(torch.tensor([[1.0, 2.0, float("nan"), 0.0]])), "x: contains NaN"),
        (lambda ix: ix.add(np.ones((2, 4), np.int32)), "x: expected a floating-point array"),
        (lambda ix: ix.remove([0, 12345]), "ids: 1 id.s. not in the index: \\[12345\\]"),
        (lambda ix: ix.update([12345], torch.randn(1, 4)), "ids: 1 id.s. not in the index"),
        (lambda ix: ix.update([0, 1], torch.randn(1, 4)), "ids: expected 1 ids"),
        (lambda ix: ix.reconstruct([999]), "ids: 1 id.s. not in the index"),
        (lambda ix: ix.search(torch.randn(2, 4), -1), "k: expected a positive int"),
        (lambda ix: ix.search(torch.randn(4), 1), "queries: expected a 2-D"),
    ],
)
def test_failed_calls_raise_clearly_and_change_nothing(mutation, message):
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(10, 4))
    before = _snapshot(index)
    with pytest.raises((ValueError, TypeError), match=message):
        mutation(index)
    _assert_unchanged(index, before)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dim": 0}, "dim: expected a positive int"),
        ({"dim": 4, "metric": "manhattan"}, "metric: expected one of"),
        ({"dim": 4, "dtype": torch.float64}, "dtype: expected one of"),
        ({"dim": 4, "device": "tpu"}, "device: expected 'cpu' or 'cuda'"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        gpuann.FlatIndex(**kwargs)


def test_growth_is_amortised():
    index = gpuann.FlatIndex(4, device="cpu")
    capacities = set()
    for _ in range(3000):
        index.add(torch.randn(1, 4))
        capacities.add(index._rows.capacity)
    assert len(index) == 3000 and len(capacities) <= 3  # 1024, 2048, 4096


def test_to_returns_self_or_a_copy():
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(5, 4))
    assert index.to("cpu") is index


@pytest.mark.cuda
def test_to_cuda_and_back():
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(50, 4), ids=torch.arange(50) * 3)
    moved = index.to("cuda")
    q = torch.randn(3, 4)
    assert moved.device.type == "cuda"
    assert torch.equal(moved.search(q, 5).ids, index.search(q, 5).ids)
    assert torch.equal(moved.to("cpu").ids, index.ids)


def test_repr_names_the_essentials():
    index = gpuann.FlatIndex(4, metric="cosine", device="cpu", dtype=torch.float16)
    index.add(torch.randn(3, 4))
    assert repr(index) == (
        "FlatIndex(n=3, dim=4, metric='cosine', dtype=float16, device='cpu', memory='16.0 KiB')"
    )


def test_concurrent_searches_with_mutations():
    """Readers always see a consistent index while a writer adds and removes far-away rows."""
    base = torch.randn(2000, 16)
    index = gpuann.FlatIndex(16, device="cpu")
    index.add(base)
    queries = base[:20] + 0.01
    expected = index.search(queries, 5)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                result = index.search(queries, 5)
                assert torch.equal(result.ids, expected.ids)
        except BaseException as err:
            errors.append(err)

    def writer():
        try:
            for step in range(30):
                far = torch.randn(50, 16) + 1000.0
                ids = torch.arange(50) + 10_000 + 100 * step
                index.add(far, ids=ids)
                index.update(ids[:5], far[:5] * 2)
                index.remove(ids)
        except BaseException as err:
            errors.append(err)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    w = threading.Thread(target=writer)
    for t in readers:
        t.start()
    w.start()
    w.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert len(index) == 2000


# ---------------------------------------------------------------- extreme values (issue 13)
def test_values_beyond_float16_are_refused_not_stored_as_inf():
    index = gpuann.FlatIndex(4, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="x: contains NaN or infinite values in float16"):
        index.add(torch.full((2, 4), 1e5))
    assert len(index) == 0


@pytest.mark.parametrize("scale", [1e-25, 1e25])
def test_cosine_is_exact_for_tiny_and_huge_norms(scale):
    """Norms below ~1e-19 or above ~1e19 under/overflowed in float32 before normalising."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    index = gpuann.FlatIndex(8, metric="cosine", device="cpu")
    index.add(x * scale)
    reference = gpuann.FlatIndex(8, metric="cosine", device="cpu")
    reference.add(x)
    q = torch.randn(5, 8, generator=g)
    assert torch.equal(index.search(q * scale, 3).ids, reference.search(q, 3).ids)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_squared_norms_beyond_float32_are_refused(metric):
    index = gpuann.FlatIndex(4, metric=metric, device="cpu")
    index.add(torch.randn(3, 4))
    with pytest.raises(ValueError, match="x: values up to 1e\\+20 give squared norms"):
        index.add(torch.full((1, 4), 1e20))
    with pytest.raises(ValueError, match="queries: values up to"):
        index.search(torch.full((1, 4), 1e20), 1)
    assert len(index) == 3


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_unsigned_tensor_ids_are_taken_or_named(dtype):
    """torch.uint64 ids raised torch's own NotImplementedError ("max_all" not implemented),
    naming no argument, even for small values (found by review)."""
    index = gpuann.FlatIndex(2, device="cpu")
    index.add(torch.randn(2, 2), ids=torch.tensor([3, 4], dtype=dtype))
    assert index.ids.tolist() == [3, 4]
    if dtype == torch.uint64:
        with pytest.raises(OverflowError, match="ids: ids above 2\\*\\*63 - 1"):
            index.add(torch.randn(1, 2), ids=torch.tensor([2**63], dtype=dtype))
        assert index.ids.tolist() == [3, 4]
