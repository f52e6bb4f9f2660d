"""MemoryBank: ring-buffer semantics, filters, ties by id after wrap-around, checkpoints."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from filter_reference import filtered_reference
from reference import DEVICES

import gpuann

BACKENDS = ["torch", "triton"]


def _logical(bank: gpuann.MemoryBank):
    """(embeddings, ids, labels) of the stored items in id order."""
    ids = bank.slot_ids[bank.filled]
    order = ids.argsort()
    return bank.embeddings[bank.filled][order], ids[order], bank.labels[bank.filled][order]


def test_wrap_around_overwrites_the_oldest_in_place():
    bank = gpuann.MemoryBank(5, 2, device="cpu", metric="l2")
    pointer = bank.embeddings.data_ptr()
    bank.add(torch.arange(6.0).view(3, 2))
    bank.add(torch.arange(100.0, 108.0).view(4, 2), labels=torch.tensor([1, 2, 3, 4]))
    assert len(bank) == 5 and int(bank.count) == 7
    assert bank.slot_ids.tolist() == [5, 6, 2, 3, 4]  # slots 0, 1 hold the wrapped rows
    assert bank.labels.tolist() == [3, 4, -1, 1, 2]
    assert bank.embeddings[0].tolist() == [104.0, 105.0]
    assert bank.embeddings.data_ptr() == pointer  # no reallocation


def test_oversize_batch_keeps_the_last_capacity_rows():
    bank = gpuann.MemoryBank(5, 1, device="cpu", metric="l2")
    bank.add(torch.zeros(2, 1))
    bank.add(torch.arange(12.0)[:, None])
    _, ids, _ = _logical(bank)
    assert ids.tolist() == [9, 10, 11, 12, 13]
    D, I = bank.search(torch.tensor([[100.0]]), 5)
    assert I.tolist() == [[13, 12, 11, 10, 9]]
    assert len(bank) == 5 and int(bank.count) == 14


def test_partial_bank_pads_and_never_returns_empty_slots():
    bank = gpuann.MemoryBank(64, 3, device="cpu")
    bank.add(torch.randn(3, 3))
    D, I = bank.search(torch.randn(2, 3), 5)
    assert (I[:, 3:] == -1).all() and (D[:, 3:] == float("-inf")).all()
    assert sorted(I[0, :3].tolist()) == [0, 1, 2]


def test_ties_go_to_the_lower_id_after_wrap_around():
    bank = gpuann.MemoryBank(4, 2, device="cpu", metric="l2")
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    bank.add(e)  # ids 0..3 in slots 0..3
    bank.add(e[1:2])  # id 4 (a copy of id 1) overwrites slot 0: slot order != id order
    D, I = bank.search(torch.tensor([[1.0, 0.0]]), 3)
    assert I.tolist() == [[1, 4, 2]]  # id 1 (slot 1) before id 4 (slot 0)
    bank.add(e[1:2], ids=torch.tensor([0]))  # overwrites slot 1: a copy with a lower id
    _, I = bank.search(torch.tensor([[1.0, 0.0]]), 2)
    assert bank.slot_ids.tolist() == [4, 0, 2, 3] and I.tolist() == [[0, 4]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_user_ids_tie_order_and_replacement(backend):
    bank = gpuann.MemoryBank(6, 2, device="cpu", metric="ip")
    v = torch.tensor([[1.0, 0.0]])
    bank.add(v.expand(3, 2), ids=torch.tensor([30, 10, 20]))
    _, I = bank.search(v, 3, backend=backend)
    assert I.tolist() == [[10, 20, 30]]
    with pytest.raises(ValueError, match=r"ids: 1 id\(s\) already in the bank: \[10\]"):
        bank.add(torch.tensor([[0.5, 0.0]]), ids=torch.tensor([10]))
    bank.add(torch.tensor([[0.5, 0.0]]), ids=torch.tensor([10]), replace=True)  # newest now
    D, I = bank.search(v, 4, backend=backend)
    assert I.tolist() == [[20, 30, 10, -1]] and D[0, 2] == 0.5 and len(bank) == 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_search_with_filters_matches_reference(device, backend, metric):
    bank = gpuann.MemoryBank(40, 4, device=device, metric=metric)
    for _ in range(3):  # 51 added: wrapped around
        n = 17
        x = torch.randint(-2, 3, (n, 4), device=device).float()
        x[x.abs().sum(1) == 0] = 1.0  # no zero vectors (cosine)
        bank.add(x, labels=torch.randint(0, 4, (n,), device=device))
    queries = torch.randint(-2, 3, (5, 4), device=device).float() + 0.5
    labels = torch.randint(0, 4, (5,), device=device)
    exclude = torch.tensor([[11, -1], [12, 40], [50, 3], [-1, -1], [25, 26]], device=device)
    allow = torch.arange(15, 51, device=device)
    D, I = bank.search(
        queries, 9, exclude_labels=labels, exclude_ids=exclude, allow_ids=allow, backend=backend
    )
    x, ids, row_labels = _logical(bank)
    rows_of = {int(v): r for r, v in enumerate(ids.tolist())}
    excluded = [[rows_of.get(int(v), -1) for v in row] for row in exclude.tolist()]
    D_ref, R_ref = filtered_reference(
        queries,
        x,
        9,
        metric,
        excluded=torch.tensor(excluded),
        allowed=torch.isin(ids, allow),
        row_labels=row_labels,
        query_labels=labels,
    )
    expected = [[int(ids[r]) if r >= 0 else -1 for r in row] for row in R_ref.tolist()]
    assert I.tolist() == expected
    torch.testing.assert_close(D.cpu().double(), torch.from_numpy(D_ref), rtol=1e-6, atol=1e-5)


def test_cosine_bank_matches_reference():
    bank = gpuann.MemoryBank(300, 16, device="cpu")
    x = torch.randn(400, 16)
    labels = torch.randint(0, 5, (400,))
    bank.add(x[:250], labels=labels[:250])
    bank.add(x[250:], labels=labels[250:])  # wraps: rows 100.. are kept
    q, q_labels = torch.randn(7, 16), torch.randint(0, 5, (7,))
    D, I = bank.search(q, 10, exclude_labels=q_labels)
    D_ref, R_ref = filtered_reference(
        q, x[100:], 10, "cosine", row_labels=labels[100:], query_labels=q_labels
    )
    assert I.tolist() == (torch.from_numpy(R_ref) + 100).tolist()
    torch.testing.assert_close(D.double(), torch.from_numpy(D_ref), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_in_place():
    torch.manual_seed(1)
    bank = gpuann.MemoryBank(10, 3, device="cpu", metric="l2")
    bank.add(torch.randn(14, 3), labels=torch.arange(14) % 3)
    state = bank.state_dict()
    other = gpuann.MemoryBank(10, 3, device="cpu", metric="l2")
    pointer = other.embeddings.data_ptr()
    other.load_state_dict(state)
    assert other.embeddings.data_ptr() == pointer
    q = torch.randn(4, 3)
    assert torch.equal(other.search(q, 6).ids, bank.search(q, 6).ids)
    bank.add(torch.randn(2, 3))
    other.add(bank.embeddings[bank.slot_ids >= 14])
    assert torch.equal(other.slot_ids, bank.slot_ids)  # the add counter was restored
    model = torch.nn.Module()
    model.bank = gpuann.MemoryBank(10, 3, device="cpu", metric="cosine")
    assert "bank.embeddings" in model.state_dict()
    with pytest.raises(ValueError, match="checkpoint of a MemoryBank"):
        model.bank.load_state_dict(state)


def test_reset_and_argument_checks():
    bank = gpuann.MemoryBank(4, 2, device="cpu")
    bank.add(torch.randn(3, 2))
    bank.reset()
    assert len(bank) == 0 and (bank.search(torch.randn(1, 2), 2).ids == -1).all()
    with pytest.raises(ValueError, match="x: expected 2 columns"):
        bank.add(torch.randn(3, 5))
    with pytest.raises(ValueError, match="labels"):
        bank.add(torch.randn(3, 2), labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="capacity"):
        gpuann.MemoryBank(0, 2, device="cpu")
    assert "capacity=4" in repr(bank)


def _vectors_of(ids: torch.Tensor, dim: int) -> torch.Tensor:
    """A vector that only id ``i`` has: a search result can be checked against its id."""
    return ((ids[:, None] * 7919 + torch.arange(dim) * 104729) % 1000).float() / 100.0


def test_concurrent_add_and_search_return_consistent_results():
    """Issue 13 item 5: a search racing an add once saw a slot's new vector with its old id
    (thousands of mismatching results in a second); add and search now take the lock."""
    dim, k = 8, 8
    bank = gpuann.MemoryBank(64, dim, metric="l2", device="cpu")
    bank.add(_vectors_of(torch.arange(64), dim))
    stop = time.monotonic() + 1.5
    mismatches, searches = [], [0]

    def writer():
        start = 64
        while time.monotonic() < stop:
            bank.add(_vectors_of(torch.arange(start, start + 16), dim))
            start += 16

    def reader(seed):
        g = torch.Generator().manual_seed(seed)
        while time.monotonic() < stop:
            q = torch.rand(4, dim, generator=g) * 10
            D, I = bank.search(q, k)
            stored = _vectors_of(I.flatten(), dim).view(4, k, dim)
            expected = ((q[:, None, :].double() - stored.double()) ** 2).sum(-1)
            mismatches.append(int(((D.double() - expected).abs() > 1e-3 * (1 + expected)).sum()))
            searches[0] += 1

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert searches[0] > 10 and sum(mismatches) == 0
    slots_hold_their_ids = _vectors_of(bank.slot_ids, dim)
    assert torch.equal(bank.embeddings, slots_hold_their_ids)


def test_add_refuses_bad_ids_and_values_and_leaves_the_bank_unchanged():
    """Issue 13 item 11: duplicate, negative and already stored ids, and NaN, were accepted."""
    bank = gpuann.MemoryBank(8, 2, metric="l2", device="cpu")
    bank.add(torch.ones(2, 2), ids=[2, 6])  # the next automatic ids are 7, 8
    state = {name: t.clone() for name, t in bank.state_dict().items() if torch.is_tensor(t)}
    for x, ids, match in (
        (torch.zeros(2, 2), [3, 3], "ids: duplicate ids"),
        (torch.zeros(2, 2), [3, -1], "ids: expected non-negative ids"),
        (torch.zeros(2, 2), [6, 7], r"ids: 1 id\(s\) already in the bank: \[6\]"),
        (torch.tensor([[0.0, float("nan")]]), [9], "x: contains NaN"),
    ):
        with pytest.raises(ValueError, match=match):
            bank.add(x, ids=ids)
    with pytest.raises(ValueError, match="queries: contains NaN"):
        bank.search(torch.tensor([[float("nan"), 0.0]]), 1)
    for name, value in state.items():
        assert torch.equal(bank.state_dict()[name], value), name


def test_numpy_arguments_and_results():
    """Issue 13: numpy integers for capacity/dim were refused; numpy queries got tensors."""
    bank = gpuann.MemoryBank(np.int64(6), np.int32(2), metric="l2", device="cpu")
    assert bank.capacity == 6 and bank.dim == 2 and isinstance(bank.dim, int)
    bank.add(np.arange(8.0).reshape(4, 2), labels=np.array([0, 1, 0, 1]))
    D, I = bank.search(np.array([[2.0, 3.0]], dtype=np.float32), 2)
    assert isinstance(D, np.ndarray) and isinstance(I, np.ndarray) and I.tolist() == [[1, 0]]
    assert bank.reconstruct(np.array([3])).tolist() == [[6.0, 7.0]]


def test_ids_remove_update_reconstruct_and_files(tmp_path):
    bank = gpuann.MemoryBank(4, 2, metric="l2", device="cpu")
    bank.add(torch.arange(12.0).view(6, 2))  # ids 2..5 survive
    assert bank.ids.tolist() == [2, 3, 4, 5] and bank.slot_ids.tolist() == [4, 5, 2, 3]
    assert bank.remove([3, 4]) == 2 and bank.ids.tolist() == [2, 5] and len(bank) == 2
    with pytest.raises(gpuann.errors.UnknownIdError, match=r"ids: 1 id\(s\) not in the index"):
        bank.remove([2, 3])
    assert bank.remove([2, 3], strict=False) == 1
    bank.update([5], torch.tensor([[0.0, 1.0]]))
    assert bank.reconstruct([5]).tolist() == [[0.0, 1.0]]
    assert bank.search(torch.zeros(1, 2), 2).ids.tolist() == [[5, -1]]
    bank.add(torch.ones(1, 2))  # automatic ids continue after the largest id ever stored
    assert bank.ids.tolist() == [5, 6]
    path = tmp_path / "bank.gpuann"
    bank.save(path)
    loaded = gpuann.load(path, device="cpu")
    assert isinstance(loaded, gpuann.MemoryBank) and loaded.capacity == 4
    for name, value in bank.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(loaded.state_dict()[name], value), name
    assert bank.to("cpu") is bank and bank.device == torch.device("cpu")
    bank.reset()
    assert len(bank) == 0 and bank.ids.tolist() == [] and int(bank.count) == 0


@pytest.mark.cuda
def test_module_to_moves_the_buffers_and_the_device():
    bank = gpuann.MemoryBank(4, 2, metric="l2", device="cpu")
    bank.add(torch.ones(3, 2))
    assert bank.to("cuda") is bank and bank.device.type == "cuda"
    assert bank.embeddings.is_cuda and bank.ids.is_cuda
    bank.add(torch.zeros(1, 2, device="cuda"))
    assert bank.search(torch.zeros(1, 2), 1).ids.tolist() == [[3]]


@pytest.mark.parametrize(
    ("cast", "dtype"),
    [
        (lambda m: m.half(), torch.float16),
        (lambda m: m.to(torch.bfloat16), torch.bfloat16),
        (lambda m: m.double(), torch.float32),  # not a storage dtype: the bank keeps its own
    ],
)
def test_module_casts_keep_the_bank_working(tmp_path, cast, dtype):
    """A cast of the module (or of a model holding the bank) cast the float32 squared norms
    too: inf in float16 (distances inf), bfloat16 search raised, and .double() made a bank
    that saved but did not load (found by review)."""
    x = torch.tensor([[300.0, 0.0], [299.0, 0.0], [1.0, 2.0]])
    model = torch.nn.Module()
    model.bank = gpuann.MemoryBank(8, 2, metric="l2", device="cpu")
    model.bank.add(x)
    cast(model)
    bank = model.bank
    assert bank.dtype == dtype and bank.embeddings.dtype == dtype
    assert bank.sqnorms.dtype == torch.float32
    fresh = gpuann.MemoryBank(8, 2, metric="l2", device="cpu", dtype=dtype)
    fresh.add(x)
    q = torch.tensor([[300.0, 0.0]])
    expected = fresh.search(q, 2)
    for searched in (bank, _saved_and_loaded(bank, tmp_path)):
        D, I = searched.search(q, 2)
        assert torch.equal(I, expected.ids) and torch.equal(D, expected.distances)


def _saved_and_loaded(bank, tmp_path):
    bank.save(tmp_path / "bank.gpuann")
    return gpuann.load(tmp_path / "bank.gpuann")
