"""Exact search is one custom op: torch.compile(fullgraph=True) works, opcheck passes."""

from __future__ import annotations

import pytest
import torch

import gpuann
from gpuann.exact import _exact_search_op


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_opcheck(metric):
    q, x = torch.randn(5, 8), torch.randn(100, 8)
    torch.library.opcheck(_exact_search_op, (q, x, None, None, 3, metric, "torch", 0))
    sq = (x * x).sum(1)
    torch.library.opcheck(_exact_search_op, (q, x, sq, None, 200, metric, "auto", 1 << 20))


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
