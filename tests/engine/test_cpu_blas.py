"""Single-query searches on the CPU multiply with numpy's OpenBLAS when it is chosen
(``GPUANN_CPU_BLAS``); results stay exact and equal across the engine's callers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import assert_knn_matches

import gpuann
from gpuann._env import cpu_blas_mode
from gpuann.engine import cpu_blas
from gpuann.engine.tiles import GROUP, plan_score_tiles

needs_openblas = pytest.mark.skipif(
    cpu_blas._numpy_openblas() is None, reason="numpy's BLAS is not a thread-limitable OpenBLAS"
)


def _data(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_the_mode_is_validated_and_named(monkeypatch):
    monkeypatch.setenv("GPUANN_CPU_BLAS", "mkl")
    with pytest.raises(ValueError, match="GPUANN_CPU_BLAS: expected one of auto/numpy/torch"):
        cpu_blas_mode()
    monkeypatch.setenv("GPUANN_CPU_BLAS", " Torch ")
    assert cpu_blas_mode() == "torch"
    monkeypatch.delenv("GPUANN_CPU_BLAS")
    assert cpu_blas_mode() == "auto"


def test_only_single_query_plans_on_the_cpu_use_numpy(monkeypatch):
    monkeypatch.setenv("GPUANN_CPU_BLAS", "numpy")
    active = cpu_blas._numpy_openblas() is not None
    assert cpu_blas.use_numpy_blas(torch.device("cpu"), 1) is active
    assert not cpu_blas.use_numpy_blas(torch.device("cpu"), 2)
    assert not cpu_blas.use_numpy_blas(torch.device("cuda"), 1)
    monkeypatch.setenv("GPUANN_CPU_BLAS", "torch")
    assert not cpu_blas.use_numpy_blas(torch.device("cpu"), 1)


def test_auto_follows_the_cpu_vendor(monkeypatch):
    monkeypatch.delenv("GPUANN_CPU_BLAS", raising=False)
    monkeypatch.setattr(cpu_blas, "_numpy_openblas", lambda: object())
    monkeypatch.setattr(cpu_blas, "_cpu_vendor", lambda: "AuthenticAMD")
    assert cpu_blas.numpy_blas_active()
    monkeypatch.setattr(cpu_blas, "_cpu_vendor", lambda: "GenuineIntel")
    assert not cpu_blas.numpy_blas_active()
    monkeypatch.setattr(cpu_blas, "_numpy_openblas", lambda: None)
    monkeypatch.setenv("GPUANN_CPU_BLAS", "numpy")
    assert not cpu_blas.numpy_blas_active()  # no way to limit its threads: torch multiplies


@needs_openblas
def test_numpy_product_runs_openblas_on_one_thread_and_puts_the_count_back(monkeypatch):
    blas = cpu_blas._numpy_openblas()
    seen = []
    real_matmul = np.matmul

    def spy(*args, **kwargs):
        seen.append(blas.get_num_threads())
        return real_matmul(*args, **kwargs)

    before = blas.get_num_threads()
    blas.set_num_threads(2)
    monkeypatch.setattr(np, "matmul", spy)
    try:
        a, b = _data(1, 16, 0), _data(50, 16, 1)
        out = torch.empty(1, 50)
        cpu_blas.numpy_mm_t(a, b, out)
        assert seen == [1, 1] and blas.get_num_threads() == 2  # 48 rows, then the tail 2
        torch.testing.assert_close(out, a.double().mm(b.double().T).float())
    finally:
        blas.set_num_threads(before)


@needs_openblas
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("n", [1000, 300_001])
def test_single_query_search_is_exact_with_either_blas(monkeypatch, metric, n):
    x, q = _data(n, 24, 2), _data(1, 24, 3)
    results = {}
    for mode in ("torch", "numpy"):
        monkeypatch.setenv("GPUANN_CPU_BLAS", mode)
        results[mode] = gpuann.knn(q, x, 10, metric=metric, memory_budget=8 << 20)
    for D, I in results.values():
        assert_knn_matches(D, I, q, x, 10, metric)
    assert torch.equal(results["torch"][1], results["numpy"][1])


@needs_openblas
def test_batch_search_equals_knn_for_single_query_jobs(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUANN_CPU_BLAS", "numpy")
    x, q = _data(20_001, 32, 4), _data(1, 32, 5)
    expected = gpuann.knn(q, x, 7, memory_budget=2 << 20)
    path = tmp_path / "db.npy"
    np.save(path, x.numpy())
    D, I = gpuann.batch_search(q.numpy(), path, 7, memory_budget=2 << 20, progress=False)
    np.testing.assert_array_equal(D, expected[0].numpy())
    np.testing.assert_array_equal(I, expected[1].numpy())


def test_budget_halved_cpu_tiles_hold_whole_filter_groups():
    # Regression: Q = 1, N = 10⁶ planned 250 000-row tiles, so every tile after the first
    # skipped the grouped first pass of the threshold filter.
    plan = plan_score_tiles(1, 10**6, 128, 10, 256 << 20, torch.device("cpu"))
    assert plan.database_block < 10**6 and plan.database_block % GROUP == 0
    single = plan_score_tiles(1, 100_000, 128, 10, 256 << 20, torch.device("cpu"))
    assert single.database_block == 100_000  # one tile: nothing to filter


@needs_openblas
def test_cutting_the_product_across_threads_keeps_every_bit(monkeypatch):
    x, q = _data(70_001, 100, 6), _data(1, 100, 7)
    one, two = torch.empty(1, 70_001), torch.empty(1, 70_001)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    cpu_blas.numpy_mm_t(q, x, one)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu_blas.numpy_mm_t(q, x, two)
    assert torch.equal(one, two)
    torch.testing.assert_close(two, q.double().mm(x.double().T).float())


@needs_openblas
def test_concurrent_products_keep_one_openblas_thread_until_the_last_ends():
    import threading

    blas = cpu_blas._numpy_openblas()
    before = blas.get_num_threads()
    blas.set_num_threads(2)
    try:
        x, q = _data(40_000, 64, 8), _data(1, 64, 9)
        expected = torch.empty(1, 40_000)
        cpu_blas.numpy_mm_t(q, x, expected)
        results, errors = [], []

        def search() -> None:
            try:
                for _ in range(20):
                    out = torch.empty(1, 40_000)
                    cpu_blas.numpy_mm_t(q, x, out)
                    results.append(torch.equal(out, expected))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=search) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and all(results) and len(results) == 60
        assert blas.get_num_threads() == 2
    finally:
        blas.set_num_threads(before)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's "invalid value" stays silent
@pytest.mark.parametrize("mode", ["torch", "numpy"])
def test_a_winner_sharing_a_filter_group_with_a_nan_score_is_kept(monkeypatch, mode):
    # Regression: the threshold filter's first pass takes the min of 64 scores; one NaN made
    # it NaN, the group was skipped, and a later tile's true nearest row was lost
    # (check_finite=False, one inf element giving inf - inf = NaN for L2).
    monkeypatch.setenv("GPUANN_CPU_BLAS", mode)
    x, q = _data(100_000, 8, 11), torch.zeros(1, 8)
    x[70_000] = 0.0
    x[70_001, 3] = float("inf")
    D, I = gpuann.knn(q, x, 3, memory_budget=2 << 20, check_finite=False)
    assert I[0, 0] == 70_000 and D[0, 0] == 0.0


def test_nan_rows_across_many_tiles_never_hide_real_winners():
    g = torch.Generator().manual_seed(12)
    x = torch.randint(-3, 4, (300_000, 4), generator=g).float()
    x[torch.rand(300_000, generator=g) < 0.2] = float("nan")
    best = torch.tensor([5.0, 5.0, 5.0, 5.0])  # beyond the random rows' range
    for row in (200_001, 200_777, 250_123):
        x[row] = best
    q = torch.ones(2, 4)
    D, I = gpuann.knn(q, x, 5, metric="ip", memory_budget=8 << 20, check_finite=False)
    finite = ~torch.isnan(x).any(dim=1)
    scores = torch.where(finite, x @ q[0], torch.tensor(float("-inf")))
    expected = scores.topk(5).values
    torch.testing.assert_close(D[0], expected)
    assert set(I[0, :3].tolist()) == {200_001, 200_777, 250_123}


@needs_openblas
@pytest.mark.skipif(
    cpu_blas._openblas_threads() is None, reason="no pthreads OpenBLAS thread-count functions"
)
def test_one_thread_holds_for_searches_run_from_other_threads():
    # Regression: threadpoolctl ignores set_num_threads from any thread but the first that
    # called it, so a search run from another thread multiplied on two OpenBLAS threads.
    import threading

    blas = cpu_blas._numpy_openblas()
    before = blas.get_num_threads()
    blas.set_num_threads(2)  # this (main) thread is now threadpoolctl's controlling thread
    seen = []

    def inside() -> None:
        with cpu_blas._one_openblas_thread():
            seen.append(blas.get_num_threads())
        seen.append(blas.get_num_threads())

    try:
        t = threading.Thread(target=inside)
        t.start()
        t.join()
        assert seen == [1, 2]
    finally:
        blas.set_num_threads(before)


@needs_openblas
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("n", [3, 50, 4099, 70001])
def test_identical_rows_score_alike_wherever_they_sit(monkeypatch, metric, n):
    """OpenBLAS's matrix-vector kernel scored the last n mod 4 rows in a tail loop with other
    bits: copies of one row got two distances, and their tie went by rounding, not by lower
    id (found by review, 50 copies of a row: rows 48 and 49 apart)."""
    monkeypatch.setenv("GPUANN_CPU_BLAS", "numpy")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 37, generator=g) * 5
    q = torch.randn(1, 37, generator=g)
    copies = torch.tensor(sorted({0, n // 3, n - 3, n - 2, n - 1}))
    x[copies] = q[0] + 0.001 if metric == "l2" else q[0] * 10  # the nearest rows, all equal
    D, I = gpuann.knn(q, x, len(copies), metric=metric)
    assert I[0].tolist() == copies.tolist()
    assert len(set(D[0].tolist())) == 1


def test_a_column_major_database_gives_the_row_major_bits():
    """Copies of one row in a transposed view got two distances (their norms and products
    summed in other orders than a row's own), and a FlatIndex built from it answered
    otherwise after pickling (found by review)."""
    import pickle

    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 16, generator=g)
    x[100:150] = x[7]
    q = torch.randn(4, 16, generator=g)
    column_major = x.T.contiguous().T
    for k in (1, 60):
        expected = gpuann.knn(q, x, k)
        got = gpuann.knn(q, column_major, k)
        assert torch.equal(got.ids, expected.ids) and torch.equal(got.distances, expected.distances)
        index = gpuann.FlatIndex(16, device="cpu")
        index.add(column_major)
        for searched in (index, pickle.loads(pickle.dumps(index))):
            assert torch.equal(searched.search(q, k).distances, expected.distances)
