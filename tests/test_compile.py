"""Exact search is one custom op: torch.compile(fullgraph=True) works, opcheck passes."""

from __future__ import annotations

import pytest
import torch

import gpuann
from gpuann.differentiable import _gather_rows_op
from gpuann.exact import _exact_search_op


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_opcheck(metric):
    q, x = torch.randn(5, 8), torch.randn(100, 8)
    torch.library.opcheck(_exact_search_op, (q, x, None, None, None, 3, metric, "torch", 0))
    sq = (x * x).sum(1)
    torch.library.opcheck(_exact_search_op, (q, x, sq, None, None, 200, metric, "auto", 1 << 20))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck_with_filters(backend):
    q, x = torch.randn(5, 8), torch.randn(100, 8)
    filters = (
        torch.randint(-1, 100, (5, 3)),  # excluded rows
        torch.rand(100) < 0.5,  # allowed rows
        torch.randint(-1, 3, (100,)),  # row labels
        torch.randint(0, 3, (5,)),  # query labels
        torch.randperm(100),  # tie order
    )
    torch.library.opcheck(_exact_search_op, (q, x, None, None, None, 7, "ip", backend, 0, *filters))


def test_opcheck_gather_rows():
    torch.library.opcheck(_gather_rows_op, (torch.randn(10, 4), torch.randint(-1, 10, (3, 2))))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_compiled_knn_has_no_graph_break(metric):
    database = torch.randn(300, 16)

    def step(q):
        D, I = gpuann.knn(q, database, 5, metric=metric)
        return D.sum(dim=1), I

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    q = torch.randn(7, 16)
    D, I = compiled(q)
    D_ref, I_ref = step(q)
    assert torch.equal(I, I_ref) and torch.allclose(D, D_ref)


def test_compiled_index_search():
    index = gpuann.FlatIndex(8, device="cpu")
    index.add(torch.randn(200, 8), ids=torch.arange(200) * 5)

    def lookup(q):
        return index.search(q, 4).ids

    compiled = torch.compile(lookup, fullgraph=True, backend="aot_eager")
    q = torch.randn(3, 8)
    assert torch.equal(compiled(q), lookup(q))


def _training_step(model, bank):
    """One contrastive step: in-batch and memory-bank hard negatives mined by gpuann."""

    def step(x, labels):
        emb = torch.nn.functional.normalize(model(x), dim=1)
        D, I = bank.search(emb, 4, exclude_labels=labels, differentiable=True)
        hard = D.masked_fill(I < 0, -1.0)  # similarities to the hardest negatives
        in_batch = emb @ emb.T
        same = labels[:, None] == labels[None, :]
        positive = in_batch.masked_fill(~same, -2.0).fill_diagonal_(-2.0).amax(dim=1)
        logits = torch.cat([positive[:, None], in_batch.masked_fill(same, -2.0), hard], dim=1)
        loss = torch.nn.functional.cross_entropy(logits / 0.1, torch.zeros_like(labels))
        bank.add(emb, labels=labels)
        return loss, I

    return step


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_training_step_matches_eager(compiler):
    # Search, loss and add in one graph: the backward must see the bank as it was at search
    # time (inductor once re-read it after the add: see gpuann.differentiable._gather_rows_op).
    torch.manual_seed(0)
    data = [(torch.randn(12, 6), torch.randint(0, 3, (12,))) for _ in range(4)]
    runs = {}
    for mode in ("eager", compiler):
        torch.manual_seed(1)
        model = torch.nn.Linear(6, 5)
        bank = gpuann.MemoryBank(20, 5, device="cpu")  # wraps around within 4 steps
        step = _training_step(model, bank)
        if mode != "eager":
            step = torch.compile(step, fullgraph=True, backend=compiler)
        out = []
        for x, labels in data:
            loss, I = step(x, labels)
            loss.backward()
            out.append((loss.detach(), I, model.weight.grad.clone()))
            model.zero_grad()
        runs[mode] = (out, bank.state_dict())
    for (loss, I, grad), (loss_ref, I_ref, grad_ref) in zip(
        runs[compiler][0], runs["eager"][0], strict=True
    ):
        assert torch.equal(I, I_ref)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)
    for name, value in runs["eager"][1].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(runs[compiler][1][name], value, rtol=1e-5, atol=1e-6)
