"""Filters inside exact search (exclude, allow, labels, tie order) on every backend.

Small integer data makes every float32 score exact, so each backend must return exactly the
float64 reference that applies the same filters, including its ties.
"""

from __future__ import annotations

import pytest
import torch
from filter_reference import filtered_reference
from reference import DEVICES

import gpuann
from gpuann.backends.base import SearchRequest
from gpuann.backends.dispatch import get_backend
from gpuann.metrics import Metric

BACKENDS = ["torch", "triton"]
FILTERS = ["exclude", "allow", "labels", "rank", "all"]


def _integer_data(device, n_queries=6, n_rows=150, dim=5):
    queries = torch.randint(-2, 3, (n_queries, dim), device=device).float()
    database = torch.randint(-2, 3, (n_rows, dim), device=device).float()
    return queries, database


def _filters(kind: str, n_queries: int, n_rows: int, device) -> dict:
    out = {}
    if kind in ("exclude", "all"):
        out["excluded_rows"] = torch.randint(-1, n_rows, (n_queries, 7), device=device)
    if kind in ("allow", "all"):
        out["allowed_rows"] = torch.rand(n_rows, device=device) < 0.4
    if kind in ("labels", "all"):
        out["row_labels"] = torch.randint(-1, 4, (n_rows,), device=device)
        out["query_labels"] = torch.randint(0, 4, (n_queries,), device=device)
    if kind in ("rank", "all"):
        out["row_rank"] = torch.randperm(n_rows, device=device)
    return out


def _check(D, I, queries, database, k, metric, request_filters) -> None:
    D_ref, I_ref = filtered_reference(
        queries,
        database,
        k,
        metric,
        excluded=request_filters.get("excluded_rows"),
        allowed=request_filters.get("allowed_rows"),
        row_labels=request_filters.get("row_labels"),
        query_labels=request_filters.get("query_labels"),
        tie=request_filters.get("row_rank"),
    )
    assert I.cpu().tolist() == I_ref.tolist()
    torch.testing.assert_close(D.cpu().double(), torch.from_numpy(D_ref), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("kind", FILTERS)
def test_request_filters_match_reference(device, backend, metric, kind):
    queries, database = _integer_data(device)
    request_filters = _filters(kind, queries.shape[0], database.shape[0], device)
    request = SearchRequest(
        queries, database, 20, Metric(metric), None, None, 1 << 24, **request_filters
    )
    D, I = get_backend(backend).search(request)
    _check(D, I, queries, database, 20, metric, request_filters)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_eligible_than_k_pads(device, backend):
    queries, database = _integer_data(device, n_rows=60)
    allowed = torch.zeros(60, dtype=torch.bool, device=device)
    allowed[[3, 17, 42]] = True
    excluded = torch.tensor([[17, -1]] * queries.shape[0], device=device)
    for metric, missing in (("l2", float("inf")), ("ip", float("-inf"))):
        request = SearchRequest(
            queries,
            database,
            5,
            Metric(metric),
            None,
            None,
            1 << 24,
            excluded_rows=excluded,
            allowed_rows=allowed,
        )
        D, I = get_backend(backend).search(request)
        assert (I[:, 2:] == -1).all() and (D[:, 2:] == missing).all()
        assert set(I[:, :2].flatten().tolist()) <= {3, 42}
        _check(
            D, I, queries, database, 5, metric, {"excluded_rows": excluded, "allowed_rows": allowed}
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_eligible(backend):
    queries, database = _integer_data("cpu", n_rows=40)
    request = SearchRequest(
        queries,
        database,
        3,
        Metric.L2,
        None,
        None,
        1 << 24,
        allowed_rows=torch.zeros(40, dtype=torch.bool),
    )
    D, I = get_backend(backend).search(request)
    assert (I == -1).all() and torch.isinf(D).all()


def test_knn_self_exclusion_and_allow_list():
    x = torch.randn(300, 16)
    own = torch.arange(300)
    D, I = gpuann.knn(x, x, 4, exclude_ids=own)
    assert not (own[:, None] == I).any()
    D_ref, I_ref = filtered_reference(x, x, 4, "l2", excluded=own[:, None])
    assert I.tolist() == I_ref.tolist()
    torch.testing.assert_close(D.double(), torch.from_numpy(D_ref), rtol=1e-5, atol=1e-4)
    allow = torch.tensor([5, 299, 7, 1000, -3])  # out-of-range ids are ignored
    _, I = gpuann.knn(x[:4], x, 3, metric="cosine", allow_ids=allow)
    assert set(I.flatten().tolist()) <= {5, 7, 299}


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_index_filters_by_id(metric):
    index = gpuann.FlatIndex(8, metric=metric, device="cpu")
    x = torch.randn(200, 8)
    ids = torch.randperm(1000)[:200] * 3  # sparse ids, added in no particular order
    index.add(x, ids=ids)
    q = x[:6]
    exclude = torch.stack([ids[:6], torch.full((6,), -1), torch.full((6,), 5)], dim=1)
    allow = ids[torch.rand(200) < 0.5]
    D, I = index.search(q, 5, exclude_ids=exclude, allow_ids=torch.cat([allow, torch.tensor([1])]))
    allowed = torch.isin(ids, allow)
    excluded_rows = torch.where(
        torch.isin(exclude, ids), torch.searchsorted(ids.sort().values, exclude), -1
    )
    rows_in_id_order = ids.argsort()
    D_ref, R_ref = filtered_reference(
        q,
        x[rows_in_id_order],
        5,
        metric,
        excluded=excluded_rows,
        allowed=allowed[rows_in_id_order],
    )
    assert I.tolist() == ids[rows_in_id_order][torch.from_numpy(R_ref)].tolist()
    torch.testing.assert_close(D.double(), torch.from_numpy(D_ref), rtol=1e-5, atol=1e-4)
    assert not (ids[:6, None] == I).any()


def test_filter_arguments_are_checked():
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(10, 4))
    with pytest.raises(ValueError, match="exclude_ids"):
        index.search(torch.randn(3, 4), 2, exclude_ids=torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="allow_ids"):
        index.search(torch.randn(3, 4), 2, allow_ids=torch.zeros(2))
