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
from gpuann.backends import torch_backend
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
    # the tiled search's heaps, not the verified OpenBLAS path (tests/engine/test_verified_cpu)
    monkeypatch.setattr(torch_backend, "verified_applies", lambda *a: False)
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
    # beyond what an index stores (squared norms over float32's range): unchecked
    heap, plain = _both(monkeypatch, q, x, 4, metric="ip", check_finite=False)
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
    lists = heap_select.HeapTopK(64, 5)
    lists.add(torch.cdist(q, x), 0)
    assert faiss.omp_get_max_threads() == before
    # ... while each worker's own is 1, so a worker's addn starts no OpenMP team.
    pool = heap_select._pool(max(1, torch.get_num_threads()))
    assert pool.submit(faiss.omp_get_max_threads).result() == 1


def _special_tile(g: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    """Small integers (ties) with NaN, ±inf, ±FLT_MAX and -0.0 sprinkled in."""
    t = torch.randint(-4, 5, (rows, cols), generator=g).float()
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), FLT_MAX, -FLT_MAX, -0.0])
    where = torch.rand((rows, cols), generator=g) < 0.03
    pick = torch.randint(0, len(specials), (rows, cols), generator=g)
    return torch.where(where, specials[pick], t)


@needs_heaps
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_heaps_equal_the_torch_lists_tile_by_tile(monkeypatch, threads):
    # HeapTopK against RunningTopK on the same tiles, bit for bit (the sign of zero too): ties
    # at tile boundaries, rows leaving the heaps in one mode (parts or whole) and carried into
    # the other, k above the rows seen so far, k == N. A tiny part size makes both modes run.
    from gpuann.engine.eligibility import RowFilters
    from gpuann.engine.running import RunningTopK

    monkeypatch.setattr(heap_select, "_MIN_PART_SCORES", 40)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(12)
    try:
        for case in range(60):
            rows = int(torch.randint(1, 9, (1,), generator=g))
            widths = torch.randint(
                1, 40, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g
            )
            n = int(widths.sum())
            k = int(torch.randint(1, n + 1, (1,), generator=g))
            heaps = heap_select.HeapTopK(rows, k)
            plain = RunningTopK(rows, k, 0, RowFilters(), torch.device("cpu"), 1 << 20)
            r0 = 0
            for w in widths.tolist():
                tile = _special_tile(g, rows, w)
                heaps.add(tile, r0)
                plain.add(tile, r0)
                r0 += w
            hv, hi = heaps.result()
            pv, pi = plain.result()
            assert torch.equal(hi, pi), case
            assert torch.equal(hv.view(torch.int32), pv.view(torch.int32)), case
            assert torch.equal(heaps.result()[1], hi)  # result() can be asked again
    finally:
        torch.set_num_threads(before)


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


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n_queries", [1, 300])
def test_exact_duplicates_anywhere_tie_and_come_back_by_lower_id(metric, n_queries):
    # Guards the choice of products: OpenBLAS's sgemm scores identical rows differently by
    # column position (so duplicates would be ordered by rounding noise); MKL's products and
    # OpenBLAS's matrix-vector product (single queries) score them alike.
    g = torch.Generator().manual_seed(13)
    x = torch.randn(200_001, 32, generator=g)
    places = [123, 777, 4097, 65_537, 100_003, 150_001, 199_999]
    x[places] = x[123].clone()
    q = x[123] + 0.01 * torch.randn(n_queries, 32, generator=g)
    D, I = gpuann.knn(q, x, 8, metric=metric)
    assert (I[:, :7] == torch.tensor(places)).all()
    assert (D[:, :7] == D[:, :1]).all()


@needs_heaps
def test_heaps_are_found_while_the_shim_stands_in_for_faiss(monkeypatch):
    # Code handed gpuann's shim as ``faiss`` (sys.modules["faiss"] = the shim) must not turn
    # the heaps off: ``import faiss`` there gives the shim, which has no heap arrays.
    import sys

    import faiss

    import gpuann.compat.faiss as shim
    import gpuann.ivf._faiss as faiss_calls

    # The real module already known (no second import of faiss, which would leak into others).
    monkeypatch.setattr(faiss_calls, "_REAL_FAISS", faiss)
    monkeypatch.setitem(sys.modules, "faiss", shim)
    heap_select._faiss.cache_clear()
    try:
        assert hasattr(heap_select._faiss(), "float_maxheap_array_t")
    finally:
        heap_select._faiss.cache_clear()
