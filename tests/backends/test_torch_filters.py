"""The torch backend's tiled filters: several database tiles, the CPU threshold filter.

Rows beyond the first 4096-row tile go through the CPU path that compares with each query's
running k-th score; these tests make that path meet empty places (-1), NaN k-th scores, ties
under a tie order, and tiles whose every entry is ineligible.
"""

from __future__ import annotations

import pytest
import torch
from filter_reference import filtered_reference

from gpuann.backends.base import SearchRequest
from gpuann.backends.torch_backend import torch_exact_search
from gpuann.metrics import Metric

N_ROWS = 9000  # three CPU tiles


def _search(queries, database, k, metric, **filters):
    request = SearchRequest(queries, database, k, Metric(metric), None, None, 1 << 26, **filters)
    return torch_exact_search(request)


def _check(D, I, queries, database, k, metric, **filters):
    D_ref, I_ref = filtered_reference(
        queries,
        database,
        k,
        metric,
        excluded=filters.get("excluded_rows"),
        allowed=filters.get("allowed_rows"),
        row_labels=filters.get("row_labels"),
        query_labels=filters.get("query_labels"),
        tie=filters.get("row_rank"),
    )
    assert I.tolist() == I_ref.tolist()
    torch.testing.assert_close(D.double(), torch.from_numpy(D_ref), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("with_rank", [False, True], ids=["row-order", "rank"])
def test_many_tiles_with_ties(metric, with_rank):
    queries = torch.randint(-2, 3, (5, 3)).float()
    database = torch.randint(-2, 3, (N_ROWS, 3)).float()  # 125 distinct rows: ties everywhere
    filters = {
        "excluded_rows": torch.randint(-1, N_ROWS, (5, 40)),
        "allowed_rows": torch.rand(N_ROWS) < 0.7,
        "row_labels": torch.randint(-1, 3, (N_ROWS,)),
        "query_labels": torch.randint(0, 3, (5,)),
    }
    if with_rank:
        filters["row_rank"] = torch.randperm(N_ROWS)
    D, I = _search(queries, database, 12, metric, **filters)
    _check(D, I, queries, database, 12, metric, **filters)


def test_only_the_last_tile_is_eligible():
    # The running lists are full of -1 after the first tiles: every later entry must enter.
    queries, database = torch.randn(4, 6), torch.randn(N_ROWS, 6)
    allowed = torch.zeros(N_ROWS, dtype=torch.bool)
    allowed[-10:] = True
    D, I = _search(queries, database, 15, "l2", allowed_rows=allowed)
    assert (I[:, :10] >= N_ROWS - 10).all() and (I[:, 10:] == -1).all()
    assert torch.isinf(D[:, 10:]).all()


def test_nan_rows_rank_after_numbers_and_before_padding():
    queries, database = torch.randn(3, 4), torch.randn(N_ROWS, 4)
    database[[5, 6000]] = float("nan")
    allowed = torch.zeros(N_ROWS, dtype=torch.bool)
    allowed[[5, 6000, 7000, 8999]] = True
    D, I = _search(queries, database, 6, "l2", allowed_rows=allowed)
    assert I.tolist() == [[*sorted_finite, 5, 6000, -1, -1] for sorted_finite in I[:, :2].tolist()]
    assert set(I[:, :2].flatten().tolist()) <= {7000, 8999}
    assert torch.isnan(D[:, 2:4]).all() and torch.isinf(D[:, 4:]).all()
