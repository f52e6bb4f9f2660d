"""Out-of-core exact search equals in-memory ``gpuann.knn`` bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batch_helpers import SMALL_BUDGET, assert_same, data, save_npy

import gpuann
from gpuann.batch import batch_search, self_join

N = 10_001  # not a multiple of the 4096-row tiles and transfers


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("where", ["memmap", "numpy", "tensor", "float16-memmap"])
def test_streamed_equals_knn(tmp_path, metric, where):
    db = data(N, seed=1, dtype=np.float16 if where.startswith("float16") else np.float32)
    queries = data(203, seed=2)
    database = {
        "memmap": lambda: np.load(save_npy(tmp_path / "db.npy", db), mmap_mode="r"),
        "float16-memmap": lambda: save_npy(tmp_path / "db.npy", db),  # a path
        "numpy": lambda: db,
        "tensor": lambda: torch.from_numpy(db),
    }[where]()
    expected = gpuann.knn(queries, db, 10, metric=metric)
    got = batch_search(
        queries, database, 10, metric=metric, progress=False, database_chunk_rows=4096
    )
    assert_same(got, expected, f"{metric}/{where}")


def test_chunks_and_tiles_do_not_change_results(tmp_path):
    db, queries = data(N, seed=3), data(50, seed=4)
    expected = gpuann.knn(queries, db, 7, memory_budget=SMALL_BUDGET)
    path = save_npy(tmp_path / "db.npy", db)
    for batch_size in (8, 24, 1000):
        got = batch_search(
            queries, path, 7, batch_size=batch_size, memory_budget=SMALL_BUDGET, progress=False
        )
        assert_same(got, expected, f"batch_size={batch_size}")


def test_k_beyond_database_pads_with_minus_one():
    db, queries = data(5, seed=5), data(3, seed=6)
    D, I = batch_search(queries, db, 8, progress=False)
    assert (I[:, 5:] == -1).all() and np.isinf(D[:, 5:]).all()
    assert_same((D, I), gpuann.knn(queries, db, 8))


def test_ties_go_to_the_lower_id():
    db = np.repeat(data(3, seed=7), 4, axis=0)  # every vector four times
    D, I = batch_search(db[:2], db, 5, progress=False, database_chunk_rows=1)
    assert I[0].tolist() == [0, 1, 2, 3, int(I[0, 4])] and I[1].tolist()[:4] == [0, 1, 2, 3]


def test_nan_in_database_is_reported_with_its_row():
    db = data(100, seed=8)
    db[57, 3] = np.nan
    with pytest.raises(ValueError, match=r"database: contains NaN.*57"):
        batch_search(data(2), db, 3, progress=False)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_self_join_excludes_itself_only(tmp_path, metric):
    x = data(1500, seed=9)
    x[100] = x[7]  # an exact duplicate must still be found
    got = self_join(
        save_npy(tmp_path / "x.npy", x),
        5,
        metric=metric,
        progress=False,
        memory_budget=SMALL_BUDGET,
    )
    ref = gpuann.knn(x, x, 6, metric=metric, memory_budget=SMALL_BUDGET)
    rows = np.arange(len(x))[:, None]
    ids, dist = ref.ids.copy(), ref.distances.copy()
    keep = ids != rows
    keep[keep.sum(axis=1) == 6, 5] = False  # self was not in the top 6 (a tie): drop the last
    expected_ids = ids[keep].reshape(len(x), 5)
    np.testing.assert_array_equal(got.ids, expected_ids)
    np.testing.assert_array_equal(got.distances, dist[keep].reshape(len(x), 5))
    assert got.ids[7, 0] == 100 and got.ids[100, 0] == 7
    assert (got.ids != rows).all()


def test_self_join_pads_past_n_minus_one():
    D, I = self_join(data(3, seed=10), 4, progress=False)
    assert (I[:, 2:] == -1).all() and np.isinf(D[:, 2:]).all()
    assert all(sorted(row[:2]) == sorted({0, 1, 2} - {i}) for i, row in enumerate(I.tolist()))
