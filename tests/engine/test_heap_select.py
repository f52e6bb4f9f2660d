"""The CPU running top-k in faiss's heaps gives the torch selection's answers bit for bit: the
same tiles and products, ties by lower row, NaN after +inf, threads, concurrent callers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from reference import assert_knn_matches

import gpuann
from gpuann._env import cpu_select_mode
from gpuann.engine import heap_select

needs_heaps = pytest.mark.skipif(
    heap_select._faiss() is None, reason="the heap selection needs faiss"
)
FLT_MAX = float(np.finfo(np.float32).max)


def _integers(n: int, d: int, seed: int) -> torch.Tensor:
    """Small integers: every product is exact in float32, so any tiling gives the same scores
    (and many exact ties)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (n, d), generator=g).float()


def _both(monkeypatch, *args, **kwargs):
    """``knn`` on the heaps (checked to have run) and on the torch selection."""
    runs = []
    real_add = heap_select.HeapTopK.add

    def spy(self, scores, r0):
        runs.append(r0)
        return real_add(self, scores, r0)

    monkeypatch.setattr(heap_select.HeapTopK, "add", spy)
    monkeypatch.setattr(heap_select, "MIN_SCORES", 1)  # small shapes here: heaps anyway
    monkeypatch.setenv("GPUANN_CPU_SELECT", "auto")
    heap = gpuann.knn(*args, **kwargs)
    assert runs, "the heap scan did not run"
    runs.clear()
    monkeypatch.setenv("GPUANN_CPU_SELECT", "torch")
    plain = gpuann.knn(*args, **kwargs)
    assert not runs
    return heap, plain


def _assert_identical(a, b) -> None:
    assert torch.equal(a[1], b[1])
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())  # NaN == NaN here


def test_the_mode_is_validated(monkeypatch):
    monkeypatch.setenv("GPUANN_CPU_SELECT", "heaps")
    with pytest.raises(ValueError, match="GPUANN_CPU_SELECT: expected one of auto/torch"):
        cpu_select_mode()
    monkeypatch.setenv("GPUANN_CPU_SELECT", "torch")
    assert not heap_select.heap_select_applies(torch.device("cpu"), False, 1 << 30)


def test_only_unfiltered_searches_of_some_size_on_the_cpu():
    big = heap_select.MIN_SCORES
    assert not heap_select.heap_select_applies(torch.device("cpu"), True, big)
    assert not heap_select.heap_select_applies(torch.device("cuda"), False, big)
    assert not heap_select.heap_select_applies(torch.device("cpu"), False, big - 1)
    expected = heap_select._faiss() is not None
    assert heap_select.heap_select_applies(torch.device("cpu"), False, big) is expected


@needs_heaps
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize(
    "n_queries, n_database, k", [(37, 5000, 7), (600, 3001, 50), (3, 20_000, 1), (5, 40, 40)]
)
def test_bit_for_bit_the_torch_selection_on_exact_products(
    monkeypatch, threads, metric, n_queries, n_database, k
):
    # Many exact ties (small integers): the lower row must win every one, as in torch.
    x, q = _integers(n_database, 8, 1), _integers(n_queries, 8, 2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        heap, plain = _both(monkeypatch, q, x, k, metric=metric, memory_budget=4 << 20)
    finally:
        torch.set_num_threads(before)
    _assert_identical(heap, plain)


@needs_heaps
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("n_queries, k", [(700, 10), (1, 5), (64, 300)])
def test_random_data_matches_the_reference_and_the_torch_selection(
    monkeypatch, metric, n_queries, k
):
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(9000, 40, generator=g), torch.randn(n_queries, 40, generator=g)
    heap, plain = _both(monkeypatch, q, x, k, metric=metric)
    _assert_identical(heap, plain)  # the same products: the same bits
    assert_knn_matches(*heap, q, x, k, metric)


@needs_heaps
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_nan_and_inf_scores_are_ranked_as_the_torch_selection_ranks_them(monkeypatch, metric):
    # Regression guard: a faiss heap never takes NaN, +inf or FLT_MAX; rows meeting one leave
    # the heaps for torch's exact merge. k close to N forces those entries into the lists.
    x, q = _integers(300, 8, 4), _integers(6, 8, 5)
    x[5] = float("nan")
    x[9, 0] = float("inf")
    x[17, 3] = -float("inf")
    x[250] = float("nan")
    q[2, 0] = 0.0
    for k in (3, 290, 300):
        heap, plain = _both(monkeypatch, q, x, k, metric=metric, check_finite=False)
        _assert_identical(heap, plain)


@needs_heaps
def test_an_exact_flt_max_score_is_kept(monkeypatch):
    x = torch.tensor([[-FLT_MAX], [1.0], [2.0], [0.0]])
    q = torch.tensor([[1.0], [0.5]])  # inner-product score -q·x = FLT_MAX for row 0
    heap, plain = _both(monkeypatch, q, x, 4, metric="ip")
    _assert_identical(heap, plain)
    assert heap[1][0, -1] == 0 and heap[0][0, -1] == -FLT_MAX


@needs_heaps
def test_filtered_searches_keep_the_torch_selection(monkeypatch):
    called = []
    monkeypatch.setattr(heap_select.HeapTopK, "add", lambda *a: called.append(1))
    x = _integers(3000, 8, 6)
    D, I = gpuann.knn(x[:50], x, 5, exclude_ids=torch.arange(50)[:, None])
    assert not called and (torch.arange(50)[:, None] != I).all()


@needs_heaps
def test_rows_that_left_the_heaps_stay_out_across_the_small_last_tile(monkeypatch):
    # A NaN in the first tile (threads feed parts of the rows), then a last tile too small to
    # split (one thread feeds every row): the rows that left the heaps follow both ways.
    x, q = _integers(4096 + 10, 8, 10), _integers(600, 8, 11)
    x[7] = float("nan")
    x[4100, 2] = float("inf")
    for k in (4, 4106):
        heap, plain = _both(monkeypatch, q, x, k, check_finite=False)
        _assert_identical(heap, plain)


@needs_heaps
def test_the_callers_faiss_threads_are_left_alone():
    import faiss

    before = faiss.omp_get_max_threads()
    x, q = _integers(5000, 16, 7), _integers(64, 16, 8)
    gpuann.knn(q, x, 5)
    assert faiss.omp_get_max_threads() == before


@needs_heaps
def test_concurrent_searches_give_the_sequential_answers():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(20_000, 32, generator=g)
    queries = [torch.randn(50 + 30 * i, 32, generator=g) for i in range(4)]
    expected = [gpuann.knn(q, x, 8) for q in queries]
    got, errors = [None] * 4, []

    def search(i: int) -> None:
        try:
            got[i] = gpuann.knn(queries[i], x, 8)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(got, expected, strict=True):
        _assert_identical(a, b)
