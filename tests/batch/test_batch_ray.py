"""``gpuann.ray_search`` on a local Ray instance equals the local ``batch_search``."""

from __future__ import annotations

import numpy as np
import pytest
from batch_helpers import data

import gpuann

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

K = 5


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(queries: np.ndarray, target, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    rows = [{"row": i, "embedding": q} for i, q in enumerate(queries)]
    dataset = ray.data.from_items(rows)
    out = gpuann.ray_search(
        dataset, target, K, column="embedding", batch_size=64, concurrency=2, **kwargs
    ).to_pandas()
    out = out.sort_values("row")  # Ray does not promise the order of rows
    assert out["row"].tolist() == list(range(len(queries)))
    return np.stack(out["distances"].to_numpy()), np.stack(out["ids"].to_numpy())


def _assert_matches(got, expected):
    # Ray's batches are not the local job's chunks, so products have other shapes: the same
    # ids, distances equal up to float32 rounding.
    np.testing.assert_array_equal(got[1], np.asarray(expected.ids))
    np.testing.assert_allclose(got[0], np.asarray(expected.distances), rtol=1e-6, atol=1e-6)


def test_ray_search_equals_the_local_path(local_ray):
    db, queries = data(4000, seed=31), data(300, seed=32)
    index = gpuann.FlatIndex(db.shape[1], metric="ip", device="cpu")
    index.add(db, ids=np.arange(len(db)) + 1000)
    # An index object: saved once, shipped through the object store, loaded once per actor.
    _assert_matches(_run(queries, index), gpuann.batch_search(queries, index, K, progress=False))
    # A database: exact search in each actor.
    _assert_matches(
        _run(queries, db, metric="cosine"),
        gpuann.batch_search(queries, db, K, metric="cosine", progress=False),
    )
