"""MemoryBank: ring-buffer semantics, filters, ties by id after wrap-around, checkpoints."""

from __future__ import annotations

import pytest
import torch
from filter_reference import filtered_reference
from reference import DEVICES

import gpuann

BACKENDS = ["torch", "triton"]


def _logical(bank: gpuann.MemoryBank):
    """(embeddings, ids, labels) of the stored items in id order."""
    ids = bank.ids[bank.filled]
    order = ids.argsort()
    return bank.embeddings[bank.filled][order], ids[order], bank.labels[bank.filled][order]


def test_wrap_around_overwrites_the_oldest_in_place():
    bank = gpuann.MemoryBank(5, 2, device="cpu", metric="l2")
    pointer = bank.embeddings.data_ptr()
    bank.push(torch.arange(6.0).view(3, 2))
    bank.push(torch.arange(100.0, 108.0).view(4, 2), labels=torch.tensor([1, 2, 3, 4]))
    assert len(bank) == 5 and int(bank.count) == 7
    assert bank.ids.tolist() == [5, 6, 2, 3, 4]  # slots 0, 1 hold the wrapped rows
    assert bank.labels.tolist() == [3, 4, -1, 1, 2]
    assert bank.embeddings[0].tolist() == [104.0, 105.0]
    assert bank.embeddings.data_ptr() == pointer  # no reallocation


def test_oversize_batch_keeps_the_last_capacity_rows():
    bank = gpuann.MemoryBank(5, 1, device="cpu", metric="l2")
    bank.push(torch.zeros(2, 1))
    bank.push(torch.arange(12.0)[:, None])
    _, ids, _ = _logical(bank)
    assert ids.tolist() == [9, 10, 11, 12, 13]
    D, I = bank.search(torch.tensor([[100.0]]), 5)
    assert I.tolist() == [[13, 12, 11, 10, 9]]
    assert len(bank) == 5 and int(bank.count) == 14


def test_partial_bank_pads_and_never_returns_empty_slots():
    bank = gpuann.MemoryBank(64, 3, device="cpu")
    bank.push(torch.randn(3, 3))
    D, I = bank.search(torch.randn(2, 3), 5)
    assert (I[:, 3:] == -1).all() and (D[:, 3:] == float("-inf")).all()
    assert sorted(I[0, :3].tolist()) == [0, 1, 2]


def test_ties_go_to_the_lower_id_after_wrap_around():
    bank = gpuann.MemoryBank(4, 2, device="cpu", metric="l2")
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    bank.push(e)  # ids 0..3 in slots 0..3
    bank.push(e[1:2])  # id 4 (a copy of id 1) overwrites slot 0: slot order != id order
    D, I = bank.search(torch.tensor([[1.0, 0.0]]), 3)
    assert I.tolist() == [[1, 4, 2]]  # id 1 (slot 1) before id 4 (slot 0)
    bank.push(e[1:2], ids=torch.tensor([0]))  # overwrites slot 1: a copy with a lower id
    _, I = bank.search(torch.tensor([[1.0, 0.0]]), 2)
    assert bank.ids.tolist() == [4, 0, 2, 3] and I.tolist() == [[0, 4]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_user_ids_tie_order_and_replacement(backend):
    bank = gpuann.MemoryBank(6, 2, device="cpu", metric="ip")
    v = torch.tensor([[1.0, 0.0]])
    bank.push(v.expand(3, 2), ids=torch.tensor([30, 10, 20]))
    _, I = bank.search(v, 3, backend=backend)
    assert I.tolist() == [[10, 20, 30]]
    bank.push(torch.tensor([[0.5, 0.0]]), ids=torch.tensor([10]))  # id 10 replaced
    D, I = bank.search(v, 4, backend=backend)
    assert I.tolist() == [[20, 30, 10, -1]] and D[0, 2] == 0.5 and len(bank) == 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_search_with_filters_matches_reference(device, backend, metric):
    bank = gpuann.MemoryBank(40, 4, device=device, metric=metric)
    for _ in range(3):  # 51 pushed: wrapped around
        n = 17
        x = torch.randint(-2, 3, (n, 4), device=device).float()
        x[x.abs().sum(1) == 0] = 1.0  # no zero vectors (cosine)
        bank.push(x, labels=torch.randint(0, 4, (n,), device=device))
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
    bank.push(x[:250], labels=labels[:250])
    bank.push(x[250:], labels=labels[250:])  # wraps: rows 100.. are kept
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
    bank.push(torch.randn(14, 3), labels=torch.arange(14) % 3)
    state = bank.state_dict()
    other = gpuann.MemoryBank(10, 3, device="cpu", metric="l2")
    pointer = other.embeddings.data_ptr()
    other.load_state_dict(state)
    assert other.embeddings.data_ptr() == pointer
    q = torch.randn(4, 3)
    assert torch.equal(other.search(q, 6).ids, bank.search(q, 6).ids)
    bank.push(torch.randn(2, 3))
    other.push(bank.embeddings[bank.ids >= 14])
    assert torch.equal(other.ids, bank.ids)  # the push counter was restored
    model = torch.nn.Module()
    model.bank = gpuann.MemoryBank(10, 3, device="cpu", metric="cosine")
    assert "bank.embeddings" in model.state_dict()
    with pytest.raises(ValueError, match="checkpoint of a MemoryBank"):
        model.bank.load_state_dict(state)


def test_reset_and_argument_checks():
    bank = gpuann.MemoryBank(4, 2, device="cpu")
    bank.push(torch.randn(3, 2))
    bank.reset()
    assert len(bank) == 0 and (bank.search(torch.randn(1, 2), 2).ids == -1).all()
    with pytest.raises(ValueError, match="bank's dim"):
        bank.push(torch.randn(3, 5))
    with pytest.raises(ValueError, match="labels"):
        bank.push(torch.randn(3, 2), labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="capacity"):
        gpuann.MemoryBank(0, 2, device="cpu")
    assert "capacity=4" in repr(bank)
