"""The verified OpenBLAS path of CPU exact search: proposals by OpenBLAS, answers proven."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from reference import assert_knn_matches

import gpuann
from gpuann.engine import cpu_blas, heap_select, verified_cpu

pytestmark = pytest.mark.skipif(
    cpu_blas._numpy_openblas() is None
    or cpu_blas._openblas_threads() is None
    or heap_select._faiss() is None,
    reason="needs numpy's OpenBLAS (pthreads, thread count settable) and faiss's heaps",
)


@pytest.fixture
def verified(monkeypatch):
    """Force the verified path (any CPU vendor, any size) and count what ran: fast passes
    (with their candidates per query) and queries left to the pairwise last resort."""
    monkeypatch.setenv("GPUANN_CPU_BLAS", "numpy")
    monkeypatch.setenv("GPUANN_CPU_SELECT", "auto")
    monkeypatch.setattr(verified_cpu, "MIN_ROWS", 1)  # small shapes here too
    monkeypatch.setattr(verified_cpu, "MIN_IP_QUERIES", 1)  # and few queries
    monkeypatch.setattr(verified_cpu, "MIN_L2_QUERIES", 1)
    runs = {"passes": [], "fallback": 0}
    real_init, real_last = verified_cpu._FastPass.__init__, verified_cpu._pairwise_search

    def init(self, q, kc, l2):
        runs["passes"].append(kc)
        real_init(self, q, kc, l2)

    def last_resort(q, *args):
        runs["fallback"] += q.shape[0]
        return real_last(q, *args)

    monkeypatch.setattr(verified_cpu._FastPass, "__init__", init)
    monkeypatch.setattr(verified_cpu, "_pairwise_search", last_resort)
    return runs


def _tiled(monkeypatch, *args, **kwargs):
    """The same search on the tiled path (MKL products)."""
    with monkeypatch.context() as m:
        m.setenv("GPUANN_CPU_BLAS", "torch")
        return gpuann.knn(*args, **kwargs)


def _with_copies(seed: int, n: int, d: int, n_queries: int, copies: int, near: int):
    """Gaussian rows and queries, ``copies`` rows (at sorted random ``spots``) replaced by one
    row close to query ``near``: ``(x, q, spots)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    q = torch.randn(n_queries, d, generator=g)
    spots = torch.randperm(n, generator=g)[:copies].sort().values
    x[spots] = q[near] + 0.01 * torch.randn(d, generator=g)
    return x, q, spots


def _integers(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (n, d), generator=g).float()


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize(("n_queries", "k"), [(2, 1), (37, 10), (300, 100), (64, 700)])
def test_matches_the_float64_reference(verified, metric, n_queries, k):
    g = torch.Generator().manual_seed(n_queries + k)
    x = torch.randn(5000, 24, generator=g)
    q = torch.randn(n_queries, 24, generator=g)
    index = gpuann.FlatIndex(24, metric=metric, device="cpu")
    index.add(x)
    D, I = index.search(q, k)
    assert verified["passes"], "the verified path did not run"
    assert verified["fallback"] == 0
    assert_knn_matches(D, I, q, x, k, metric)
    if metric != "cosine":  # knn's cosine over raw rows scales columns: the tiled search
        D2, I2 = gpuann.knn(q, x, k, metric=metric)  # no stored norms: computed per tile
        assert torch.equal(I, I2) and torch.equal(D, D2)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("k", [1, 10, 57])
def test_bit_for_bit_the_tiled_search_on_exact_products(verified, monkeypatch, metric, k):
    # Small integers: every product and re-score is exact in float32, ties everywhere, so both
    # paths must give the same bits, ties by lower row.
    q, x = _integers(300, 9, 0), _integers(4000, 9, 1)
    D, I = gpuann.knn(q, x, k, metric=metric)
    assert verified["passes"]
    D_ref, I_ref = _tiled(monkeypatch, q, x, k, metric=metric)
    assert torch.equal(I, I_ref) and torch.equal(D, D_ref)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_duplicates_beyond_the_candidates_tie_by_lower_id(verified, monkeypatch, metric):
    # 2000 copies of one row, scattered: OpenBLAS scores them one rounding apart by column, so
    # its heaps keep arbitrary copies. The proof fails at every tier (all candidates tie with
    # the k-th, 416 per heap, 2 heaps for a lone query), and the pairwise last resort answers:
    # the 10 lowest copies.
    x, q, spots = _with_copies(5, 20000, 64, 40, copies=2000, near=0)
    D, I = gpuann.knn(q, x, 10, metric=metric)
    assert I[0].tolist() == spots[:10].tolist()
    assert torch.unique(D[0]).numel() == 1
    assert verified["passes"] == [26, 104, 416] and verified["fallback"] == 1
    _, I_ref = _tiled(monkeypatch, q, x, 10, metric=metric)
    assert torch.equal(I, I_ref)


def test_a_few_duplicates_are_proven_after_the_retry(verified):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20000, 32, generator=g)
    q = torch.randn(20, 32, generator=g)
    spots = torch.randperm(20000, generator=g)[:40].sort().values
    x[spots] = q[3] + 0.01
    D, I = gpuann.knn(q, x, 10)
    assert I[3].tolist() == spots[:10].tolist()
    assert verified["passes"] == [26, 104] and verified["fallback"] == 0
    assert_knn_matches(D, I, q, x, 10, "l2")


def _pairwise_reference(q: torch.Tensor, x: torch.Tensor, k: int, metric: str):
    """Top-k by each pair's own float32 score (the verified path's answer), NaN last."""
    if metric == "l2":
        scores = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        scores = -(q[:, None, :] * x[None, :, :]).sum(-1)
    out_values, out_rows = [], []
    for row in scores.numpy():
        key = np.where(np.isnan(row), np.inf, row)
        order = np.lexsort((np.arange(row.size), np.isnan(row), key))[:k]
        out_values.append(row[order])
        out_rows.append(order)
    values = torch.from_numpy(np.stack(out_values))
    return (values if metric == "l2" else -values), torch.from_numpy(np.stack(out_rows))


@pytest.mark.parametrize("where", ["query", "database"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs(verified, where, value):
    # check_finite=False: a query holding NaN/inf is not proven and is scored pairwise
    # against every row. A database row holding one is left out of the norm bound; under L2
    # it scores last (NaN after +inf) and the other rows are still proven; under inner
    # product a query that met a NaN or +inf fast score is not proven (see the overflow
    # test) and is scored pairwise.
    q, x = _integers(200, 8, 2), _integers(3000, 8, 3)
    (q if where == "query" else x)[5, 2] = value
    for metric in ("l2", "ip"):
        before = verified["fallback"]
        D, I = gpuann.knn(q, x, 7, metric=metric, check_finite=False)
        D_ref, I_ref = _pairwise_reference(q, x, 7, metric)
        assert torch.equal(I, I_ref), metric
        np.testing.assert_array_equal(D.numpy(), D_ref.numpy())  # NaN == NaN here
        scored_pairwise = verified["fallback"] - before
        if where == "query":
            assert scored_pairwise == 1
        elif metric == "l2":
            assert scored_pairwise == 0


def test_inner_products_that_overflow_in_the_fast_pass_are_not_proven(verified):
    # Regression (review): OpenBLAS's order of summation overflowed to +inf for the row whose
    # pairwise inner product is the largest (+2e38, finite); faiss's heaps drop +inf, and the
    # proof accepted the rest: the best row was missing for 1008 of 1024 queries.
    d, n = 16, 4096
    q = np.zeros((256, d), np.float32)
    q[:, [0, 5, 7, 8, 12, 15]] = 1e20
    x = np.zeros((n, d), np.float32)
    x[:, 7] = np.linspace(0.1e18, 0.5e18, n).astype(np.float32)
    x[777] = 0
    x[777, [0, 5]] = -2e18
    x[777, [7, 8, 12, 15]] = 1.5e18
    # squared norms beyond float32's: what the engine gets with check_finite=False
    q, x = torch.from_numpy(q), torch.from_numpy(x)
    D, I = gpuann.knn(q, x, 10, metric="ip", check_finite=False)
    assert (I[:, 0] == 777).all()


def test_a_lone_pair_scores_as_among_others():
    # Regression (review): torch sums a lone output over threads past 32 768 elements, so the
    # last resort's 1 x 1 blocks gave other bits than the same pair in a 2-row block.
    d = 40000
    for l2 in (True, False):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(5, d, generator=g) * torch.rand(5, d, generator=g) * 10
        q = torch.randn(1, d, generator=g)
        lone = torch.empty(1, 1)
        verified_cpu._score_pairs(q[:, None, :], x[4:5][None].clone(), l2, lone)
        among = torch.empty(1, 2)
        verified_cpu._score_pairs(q[:, None, :], x[3:5][None].clone(), l2, among)
        assert lone.item() == among[0, 1].item()


def test_retries_take_fewer_queries_per_pass(verified, monkeypatch):
    # 4x and 16x the candidates: the queries of a retry are split so that its lists fit the
    # budget as the first pass's did.
    g = torch.Generator().manual_seed(12)
    x = torch.randn(40000, 16, generator=g)
    q = torch.randn(600, 16, generator=g)
    x[:24000] = q.repeat_interleave(40, dim=0)  # 40 copies of every query: no proof at 26
    sizes = []
    real = verified_cpu._attempt

    def spy(q_, k, kc, *args):
        sizes.append((kc, q_.shape[0]))
        return real(q_, k, kc, *args)

    monkeypatch.setattr(verified_cpu, "_attempt", spy)
    D, I = gpuann.knn(q, x, 10, memory_budget=1 << 20)
    assert sizes[0] == (26, 600)
    retries = [n for kc, n in sizes if kc == 104]
    assert sum(retries) == 600 and len(retries) == 2
    assert max(retries) <= (1 << 20) // (2 * 12 * 104)
    assert torch.equal(I, torch.arange(0, 24000, 40)[:, None] + torch.arange(10))


def test_rescoring_in_chunks_under_a_small_budget(verified, monkeypatch):
    q, x = torch.randn(500, 16), torch.randn(6000, 16)
    gathered = []
    real = verified_cpu._pairwise

    def spy(q_, rows, l2, gather, budget):
        def counted(index):
            gathered.append(index.numel())
            return gather(index)

        return real(q_, rows, l2, counted, budget)

    monkeypatch.setattr(verified_cpu, "_pairwise", spy)
    D, I = gpuann.knn(q, x, 50, memory_budget=1 << 20)
    assert len(gathered) > 1 and max(gathered) * 16 * 4 <= (1 << 20) // 4
    assert_knn_matches(D, I, q, x, 50, "l2")
    # 1500 queries in groups of 662 under 1 MiB: the answers of one group of all
    many = torch.randn(1500, 16)
    passes = len(verified["passes"])
    small = gpuann.knn(many, x, 50, memory_budget=1 << 20)
    assert len(verified["passes"]) - passes == 3
    large = gpuann.knn(many, x, 50)
    assert torch.equal(small[0], large[0]) and torch.equal(small[1], large[1])


def test_not_used_where_it_does_not_apply(verified, monkeypatch):
    x, q = torch.randn(3000, 8), torch.randn(100, 8)
    with monkeypatch.context() as m:
        m.setattr(verified_cpu, "MIN_ROWS", 3001)
        gpuann.knn(q, x, 5)  # fewer rows than MIN_ROWS
    gpuann.knn(q, x, 5, metric="cosine")  # knn's cosine scales raw rows per column
    with monkeypatch.context() as m:
        m.setattr(verified_cpu, "MIN_IP_QUERIES", 64)
        m.setattr(verified_cpu, "MIN_L2_QUERIES", 2)
        gpuann.knn(q[:63], x, 5, metric="ip")  # too few queries
        gpuann.knn(q[:1], x, 5)
    gpuann.knn(q, x, 5, exclude_ids=torch.zeros(100, 1, dtype=torch.int64))  # filters
    gpuann.knn(q.half(), x.half(), 5)  # 16-bit storage
    monkeypatch.setenv("GPUANN_CPU_BLAS", "torch")
    gpuann.knn(q, x, 5)
    monkeypatch.setenv("GPUANN_CPU_BLAS", "numpy")
    monkeypatch.setenv("GPUANN_CPU_SELECT", "torch")
    gpuann.knn(q, x, 5)
    assert verified["passes"] == []
    monkeypatch.setenv("GPUANN_CPU_SELECT", "auto")
    with monkeypatch.context() as m:
        m.setattr(verified_cpu, "MIN_IP_QUERIES", 64)
        m.setattr(verified_cpu, "MIN_L2_QUERIES", 2)
        gpuann.knn(q[:64], x, 5, metric="ip")
        gpuann.knn(q[:2], x, 5)
    assert len(verified["passes"]) == 2


def test_concurrent_searches(verified):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8000, 32, generator=g)
    queries = [torch.randn(150, 32, generator=g) for _ in range(4)]
    expected = [gpuann.knn(q, x, 10) for q in queries]
    got = [None] * 4

    def run(i):
        got[i] = gpuann.knn(queries[i], x, 10)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("where", ["memmap", "numpy", "tensor"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_streamed_batches_give_knn_bit_for_bit(verified, tmp_path, where, metric):
    # The answer is the top-k by pairwise score: the same for every cut into query batches
    # and database chunks, including queries that need the retries (40 copies) and the
    # pairwise last resort (2000 copies), whose re-scoring reads rows back from the file.
    from gpuann.batch import batch_search

    g = torch.Generator().manual_seed(8)
    x = torch.randn(20000, 32, generator=g)
    q = torch.randn(300, 32, generator=g)
    x[torch.randperm(20000, generator=g)[:40]] = q[3] + 0.01
    x[torch.randperm(20000, generator=g)[:2000]] = q[250] + 0.01
    expected = gpuann.knn(q, x, 10, metric=metric)
    assert verified["fallback"] >= 1 and len(verified["passes"]) >= 3
    np.save(tmp_path / "db.npy", x.numpy())
    database = {
        "memmap": lambda: np.load(tmp_path / "db.npy", mmap_mode="r"),
        "numpy": lambda: x.numpy(),
        "tensor": lambda: x,
    }[where]()
    for batch_size, chunk_rows in ((300, None), (64, 4096), (7, 6144)):
        before = len(verified["passes"])
        D, I = batch_search(
            q,
            database,
            10,
            metric=metric,
            batch_size=batch_size,
            database_chunk_rows=chunk_rows,
            progress=False,
        )
        assert len(verified["passes"]) > before, "the streamed search did not verify"
        assert torch.equal(torch.as_tensor(I), expected[1]), (batch_size, chunk_rows)
        assert torch.equal(torch.as_tensor(D), expected[0]), (batch_size, chunk_rows)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_few_queries_split_the_rows_and_bound_by_the_better_heap(verified, metric):
    # Few queries: each worker keeps candidates from its share of the rows. Copies of each
    # query all in the first share fill that heap; the proof must take the better of the
    # heaps' worst scores (the other share's is far), or it proves arbitrary copies.
    g = torch.Generator().manual_seed(9)
    x = torch.randn(20000, 48, generator=g)
    q = torch.randn(3, 48, generator=g)
    lowest = []
    for i in range(3):
        spots = torch.randperm(9000, generator=g)[:60].sort().values
        x[spots] = q[i] + 0.01
        lowest.append(spots[:10].tolist())
    D, I = gpuann.knn(q, x, 10, metric=metric)
    assert I.tolist() == lowest
    assert verified["passes"][:2] == [26, 104]


def test_a_database_with_strided_rows_is_passed_in_copied_chunks(verified):
    g = torch.Generator().manual_seed(10)
    wide = torch.randn(30000, 64, generator=g)
    x = wide[:, ::2]  # rows not contiguous
    q = torch.randn(100, 32, generator=g)
    D, I = gpuann.knn(q, x, 10, memory_budget=4 << 20)  # chunks of 8192 rows
    assert verified["passes"]
    D2, I2 = gpuann.knn(q, x.contiguous(), 10)
    assert torch.equal(I, I2) and torch.equal(D, D2)


def test_smaller_databases_take_the_passes_when_the_search_is_large(verified, monkeypatch):
    monkeypatch.setattr(verified_cpu, "MIN_ROWS", 1 << 15)
    g = torch.Generator().manual_seed(11)
    x, q = torch.randn(5000, 16, generator=g), torch.randn(1000, 16, generator=g)
    gpuann.knn(q[:800], x, 5)  # 4.0e6 scores < 2**22
    gpuann.knn(torch.randn(1000, 16, generator=g), x[:4000], 5)  # fewer than 4096 rows
    assert verified["passes"] == []
    D, I = gpuann.knn(q, x, 5)  # 5e6 scores
    assert verified["passes"] == [21]
    assert_knn_matches(D, I, q, x, 5, "l2")


def test_one_long_row_does_not_loosen_every_l2_bound(verified):
    # Regression (review): the bound outside the candidates used the largest row norm for
    # every row, so one row 300x longer than the rest sent every query to the pairwise last
    # resort (1.09 s vs 0.042 s tiled); the bound now also uses that a long row is far.
    g = torch.Generator().manual_seed(13)
    x = torch.randn(32768, 64, generator=g)
    x[123] *= 300
    q = torch.randn(64, 64, generator=g)
    D, I = gpuann.knn(q, x, 10)
    assert verified["fallback"] == 0 and verified["passes"] == [26]
    assert_knn_matches(D, I, q, x, 10, "l2")
    # ... and a query next to the long row still finds it
    D, I = gpuann.knn(x[123:124] * 1.0001, x, 3)
    assert I[0, 0] == 123


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_only_candidates_that_may_rank_are_rescored(verified, monkeypatch, metric):
    # Gaussian data: the k-th and the next fast scores are far apart next to the error bound,
    # so about k of the first pass's 26 candidates per query are re-scored; near-ties (40
    # copies of one row, one rounding apart by column) are all re-scored and tie by lower id.
    x, q, spots = _with_copies(11, 20000, 128, 100, copies=40, near=7)
    gathered = []
    real = verified_cpu._pairwise

    def counting(q_, rows, *args):
        gathered.append(int((rows >= 0).sum()))
        return real(q_, rows, *args)

    monkeypatch.setattr(verified_cpu, "_pairwise", counting)
    index = gpuann.FlatIndex(128, metric=metric, device="cpu")
    index.add(x)
    D, I = index.search(q, 10)
    assert verified["passes"][0] == 26 and verified["fallback"] == 0
    assert gathered[0] <= 100 * 11  # of 2600 candidates: the k best and few more
    if metric == "l2":
        assert I[7].tolist() == spots[:10].tolist()
    assert_knn_matches(D, I, q, x, 10, metric)
    D_ref, I_ref = _pairwise_reference(q, x, 10, metric)
    assert torch.equal(I, I_ref) and torch.equal(D, D_ref)


def test_rescoring_keeps_every_candidate_within_twice_the_bound_of_the_kth():
    # inner product, eps = gamma * |q| * r_max = 0.1: the 2nd best fast score is 0.1, so every
    # candidate up to 0.1 + 2 eps (and its rounding) may still rank; -1 places never do
    rows = torch.tensor([[7, 3, 9, 4, 5, -1], [1, 2, 3, 4, 5, 6]])
    fast = torch.tensor([[0.25, 0.1, 5.0, 0.0, 0.15, 0.2], [0.0, 0.0, 9.0, 9.0, 9.0, 9.0]])
    one = torch.ones(2, dtype=torch.float64)
    kept = verified_cpu._worth_rescoring(rows, fast, 2, False, one, 1.0, 0.1)
    assert kept.tolist() == [[7, 3, 4, 5], [1, 2, -1, -1]]  # 0.31 > 0.3 + rounding
    fast[0, 0] = 0.31
    kept = verified_cpu._worth_rescoring(rows, fast, 2, False, one, 1.0, 0.1)
    assert kept.tolist() == [[3, 4, 5], [1, 2, -1]]  # as wide as the most kept
    # L2 adds |q|^2 to the fast scores and bounds by gamma (|q| + r_max)^2 = 0.4
    kept = verified_cpu._worth_rescoring(rows, fast, 2, True, one, 1.0, 0.1)
    assert kept[0].tolist() == [7, 3, 4, 5]
    # no bound (an infinite row norm): everything is re-scored
    assert torch.equal(verified_cpu._worth_rescoring(rows, fast, 2, False, one, np.inf, 0.1), rows)
    fast[1, :2] = -np.inf  # and a NaN limit (-inf + inf) keeps them too
    assert torch.equal(verified_cpu._worth_rescoring(rows, fast, 2, False, one, np.inf, 0.1), rows)


def test_a_fast_score_that_overflows_keeps_every_candidate(verified):
    # L2's fast score ‖x‖² − 2⟨q, x⟩ of row 0 overflows to -inf though every value is valid
    # (found by review): it must not make row 2, nearer, look skippable. Truth: rows 1, 2.
    s = np.float32(np.sqrt(1.5e38 / 2))
    q = np.array([s, s], np.float32)
    x0, x1 = (1.4 * q).astype(np.float32), q.copy()
    x2 = (q + np.float32(np.sqrt(1e37 / 2)) * np.array([1, -1], np.float32)).astype(np.float32)
    rng = np.random.default_rng(0)
    far = (rng.standard_normal((32765, 2)) * 1e18 + np.array([-s, s])).astype(np.float32)
    index = gpuann.FlatIndex(2, metric="l2", device="cpu")
    index.add(np.vstack([x0, x1, x2, far]))
    D, I = index.search(np.vstack([q, q]), 2)
    assert verified["passes"]
    assert I.tolist() == [[1, 2], [1, 2]]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_norms_are_measured_once_per_chunk_and_shared_by_every_job(verified, monkeypatch, metric):
    """Jobs that each see every row (many queries) share one measurement of the rows' norms
    (L2 without stored norms measured them in every job; inner products in the first job
    alone, the others waiting for it)."""
    calls = []
    real = verified_cpu._squared_norms

    def spy(x, pool, parts):
        calls.append((x.shape[0], parts))
        return real(x, pool, parts)

    monkeypatch.setattr(verified_cpu, "_squared_norms", spy)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(6000, 20, generator=g), torch.randn(64, 20, generator=g)
    D, I = gpuann.knn(q, x, 10, metric=metric)
    assert verified["passes"] and calls == [(6000, 2)]
    assert_knn_matches(D, I, q, x, 10, metric)
    index = gpuann.FlatIndex(20, metric=metric)
    index.add(x)
    D2, I2 = index.search(q, 10)
    assert torch.equal(I, I2) and torch.equal(D, D2)
    # an index's stored norms are used as they are (L2, and float32 inner products)
    assert calls == [(6000, 2)]


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_a_float32_index_keeps_the_norms_its_inner_product_bounds_read(
    verified, monkeypatch, tmp_path, metric
):
    """An inner-product or cosine index with float32 storage keeps each row's squared norm
    (derived, not saved) and its searches measure none, before and after remove, save and
    load, with the float64 reference's answers (found: 5-7 ms of a 70-180 ms search went to
    measuring them again on every call)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    g = torch.Generator().manual_seed(4)
    x, q = torch.randn(6000, 20, generator=g), torch.randn(64, 20, generator=g)
    index = gpuann.FlatIndex(20, metric=metric)
    index.add(x)
    index.remove([5, 77])
    index.save(tmp_path / "ip.gpuann")
    keep = torch.tensor([i for i in range(6000) if i not in (5, 77)])

    def measured(*args):
        raise AssertionError("the norms were measured again")

    monkeypatch.setattr(verified_cpu, "_squared_norms", measured)
    for searched in (index, gpuann.FlatIndex.load(tmp_path / "ip.gpuann")):
        verified["passes"].clear()
        D, I = searched.search(q, 10)
        assert verified["passes"], "the verified path did not run"
        assert_knn_matches(D, I, q, x[keep], 10, metric, ids=keep)


def test_the_overflow_scan_is_skipped_only_where_no_inner_product_can_overflow():
    """``_Job._bounded``: ``‖q‖ ‖x‖ <= FLT_MAX / 2`` skips the scan of an inner product's
    scores for values at or above FLT_MAX; a larger, NaN or infinite norm does not."""
    qs = np.zeros((4, 3), np.float32)
    qs[0, 0] = 1.0
    qs[1, 0] = 1e19
    qs[2, 0] = np.nan
    qs[3, 0] = np.inf
    job = verified_cpu._Job(qs, 0, 4, 2, l2=False, measures_norms=True)
    half = float(np.finfo(np.float32).max) / 2
    assert job._bounded(0, 1, half**2) and not job._bounded(0, 1, (2 * half) ** 2)
    assert job._bounded(1, 1, (half / 1e19) ** 2) and not job._bounded(1, 1, (half / 9e18) ** 2)
    assert not job._bounded(0, 2, (half / 9e18) ** 2)  # the block's largest norm decides
    assert not job._bounded(2, 1, 1.0) and not job._bounded(3, 1, 1.0)
    assert not job._bounded(0, 1, float("inf"))
