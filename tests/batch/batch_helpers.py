"""Seeded data and comparisons for the batch-search tests."""

from __future__ import annotations

import numpy as np

#: Small tiles (a 2 MiB budget: 8-query tiles at d=32, k=10), so small jobs have many chunks.
SMALL_BUDGET = 2 << 20
DIM = 32


def data(n: int, d: int = DIM, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """``n`` seeded vectors, clustered (not trivially easy: near neighbours are close)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((16, d)) * 2.0
    x = centres[rng.integers(0, 16, n)] + rng.standard_normal((n, d))
    return x.astype(dtype)


def save_npy(path, array: np.ndarray) -> str:
    """Write ``array`` to ``path`` and return the path as a string."""
    np.save(path, array)
    return str(path)


def assert_same(actual, expected, what: str = "") -> None:
    """Bit-for-bit equality of two ``(distances, ids)`` pairs, naming the first difference."""
    for name, a, b in zip(("distances", "ids"), actual, expected, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"{what} {name}: shape {a.shape} != {b.shape}"
        bad = np.argwhere(
            ~((a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b)
        )
        assert bad.size == 0, (
            f"{what} {name}: {len(bad)} entries differ, first at {tuple(bad[0])}: "
            f"{a[tuple(bad[0])]} != {b[tuple(bad[0])]}"
        )


#: The small checkpointed job shared by the job and robustness tests. With SMALL_BUDGET, 100
#: queries and K=6, the query tile is 12 rows (100 halved three times); chunks of 24 rows are
#: two tiles, and 100 rows make 5 chunks.
JOB_K = 6
JOB_BATCH = 24


def make_job(tmp_path):
    """A database and queries on disk, and the in-memory answer: ``(paths, expected)``."""
    import gpuann

    db, queries = data(5000, seed=11), data(100, seed=12)
    expected = gpuann.knn(queries, db, JOB_K, memory_budget=SMALL_BUDGET)
    paths = {
        "db": save_npy(tmp_path / "db.npy", db),
        "queries": save_npy(tmp_path / "q.npy", queries),
    }
    return paths, expected


def run_job(paths, out, **kwargs):
    """``batch_search`` of the job into ``out`` (budget, batch size and no progress bar unless
    given)."""
    from gpuann.batch import batch_search

    kwargs = {"memory_budget": SMALL_BUDGET, "batch_size": JOB_BATCH, "progress": False, **kwargs}
    return batch_search(paths["queries"], paths["db"], JOB_K, out=out, **kwargs)
