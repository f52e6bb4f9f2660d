"""Streaming runs whatever backend the dispatcher picks, with the results of ``knn`` on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batch_helpers import assert_same, data

import gpuann
from gpuann.batch import batch_search, self_join

#: d = 256 and a 1 MiB budget give 512-row tiles: a 1300-row database travels in 3 chunks.
DIM, BUDGET = 256, 1 << 20


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_triton_streamed_equals_triton_knn(metric):
    db, queries = data(1300, DIM, seed=41), data(6, DIM, seed=42)
    kwargs = dict(metric=metric, memory_budget=BUDGET)
    expected = gpuann.knn(queries, db, 7, backend="triton", **kwargs)
    got = batch_search(queries, db, 7, backend="triton", progress=False, **kwargs)
    assert_same(got, expected, metric)


def test_triton_self_join_excludes_by_the_filter_path():
    x = data(520, DIM, seed=43)
    x[515] = x[3]  # a duplicate across chunks (512 + 8 rows) is still found
    # A tensor: the interpreter cannot pass numpy views of one buffer as two kernel arguments.
    x = torch.from_numpy(x)
    # One chunk of queries: the kernel's tile configuration (and its float sums) depends on
    # the number of queries, so equal bits need the query chunks ``knn`` uses.
    got = self_join(x, 4, backend="triton", memory_budget=BUDGET, batch_size=520, progress=False)
    own = np.arange(len(x))
    expected = gpuann.knn(
        x, x, 4, backend="triton", memory_budget=BUDGET, exclude_ids=torch.from_numpy(own)
    )
    got = (got.distances.numpy(), got.ids.numpy())
    expected = (expected.distances.numpy(), expected.ids.numpy())
    assert_same(got, expected)
    assert got[1][3, 0] == 515 and got[1][515, 0] == 3


def test_self_join_equals_knn_excluding_each_row():
    x = data(3000, 32, seed=44)
    x[10] = x[2000]
    got = self_join(x, 6, progress=False, memory_budget=2 << 20, database_chunk_rows=1024)
    expected = gpuann.knn(x, x, 6, memory_budget=2 << 20, exclude_ids=np.arange(len(x)))
    assert_same(got, expected)


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(gpuann.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        batch_search(data(2), data(50), 3, backend="triton", progress=False)
