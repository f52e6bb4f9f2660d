"""Differentiable search: distances of the selected pairs carry autograd; gradcheck passes."""

from __future__ import annotations

import pytest
import torch

import gpuann
from gpuann.differentiable import differentiable_distances

METRICS = ["l2", "ip", "cosine"]


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_queries_and_database(metric):
    queries = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    database = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    positions = torch.randint(0, 30, (4, 3))
    positions[1, 2] = -1  # a missing place: ±inf, no gradient

    def fn(q, x):
        d = differentiable_distances(q, x, positions, metric)
        return torch.where(positions >= 0, d, 0.0)

    assert torch.autograd.gradcheck(fn, (queries, database))


@pytest.mark.parametrize("metric", METRICS)
def test_knn_gradcheck_through_the_search(metric):
    database = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    queries = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def fn(q, x):
        return gpuann.knn(q, x, 3, metric=metric, differentiable=True).distances

    assert torch.autograd.gradcheck(fn, (queries, database))


@pytest.mark.parametrize("metric", METRICS)
def test_index_and_bank_distances_match_the_search(metric):
    x = torch.randn(500, 8)
    index = gpuann.FlatIndex(8, metric=metric, device="cpu")
    index.add(x)
    bank = gpuann.MemoryBank(512, 8, device="cpu", metric=metric)
    bank.add(x)
    q = torch.randn(6, 8, requires_grad=True)
    for searcher in (index, bank):
        D, I = searcher.search(q, 5, differentiable=True)
        D_plain, I_plain = searcher.search(q.detach(), 5)
        assert torch.equal(I, I_plain) and D.requires_grad and not D_plain.requires_grad
        torch.testing.assert_close(D, D_plain, rtol=1e-5, atol=1e-5)
        (grad,) = torch.autograd.grad(D.sum(), q)
        assert grad.shape == q.shape and torch.isfinite(grad).all()
    if metric == "l2":  # d/dq sum_j ||q - x_j||^2 = sum_j 2 (q - x_j)
        expected = 2 * (q.detach()[:, None, :] - x[I]).sum(dim=1)
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_only_selected_pairs_are_saved_for_backward():
    q = torch.randn(16, 8, requires_grad=True)
    x = torch.randn(3000, 8, requires_grad=True)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        D, _ = gpuann.knn(q, x, 4, differentiable=True)
    assert shapes and all(torch.Size(s).numel() <= 3000 * 8 for s in shapes), shapes
    D.sum().backward()
    assert int((x.grad.abs().sum(dim=1) > 0).sum()) <= 16 * 4


def test_padding_has_no_gradient():
    bank = gpuann.MemoryBank(8, 3, device="cpu", metric="l2")
    bank.add(torch.randn(2, 3))
    q = torch.randn(2, 3, requires_grad=True)
    D, I = bank.search(q, 4, differentiable=True)
    assert (I[:, 2:] == -1).all() and torch.isinf(D[:, 2:]).all()
    (grad,) = torch.autograd.grad(D[:, :2].sum() + 0 * D[:, 2:].clamp(max=0).sum(), q)
    assert torch.isfinite(grad).all()
