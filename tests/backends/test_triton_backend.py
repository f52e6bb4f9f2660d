"""The Triton exact-search backend against the torch backend, under the interpreter on CPU.

The torch backend is the reference semantics: same scores, ties to the lower row, NaN last.
Ids must match exactly wherever the reference distances are separated by more than the
tolerance (and everywhere when all scores are exact, as with small integer data).
"""

from __future__ import annotations

import pytest
import torch
from reference import DEVICES

import gpuann
from gpuann._triton import MAX_K
from gpuann._triton.knn import fused_knn
from gpuann.backends.base import SearchRequest
from gpuann.backends.dispatch import (
    BackendUnavailableError,
    explain,
    get_backend,
    select_backend,
)
from gpuann.backends.torch_backend import torch_exact_search
from gpuann.metrics import Metric

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: Absolute distance tolerance per storage dtype, relative to the data's scale. Scores are
#: float32 in both backends; float32 queries against 16-bit storage are split into two
#: 16-bit parts by the kernel, which keeps 16 significant bits of each coordinate for
#: bfloat16 (relative error up to 2**-17) and 22 for float16.
TOL = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 5e-5}
# (queries, rows, dim, k): Q = 1 and d = 1; odd sizes; k above the interpreter's 32-row
# tile; k > N (padding with -1).
SHAPES = [(1, 37, 1, 1), (5, 83, 19, 3), (9, 70, 8, 64), (3, 40, 5, 50)]
BUDGET = 1 << 26


def _request(queries, database, k, metric, **kwargs) -> SearchRequest:
    fields = {"database_sqnorms": None, "column_scale": None, "memory_budget": BUDGET}
    return SearchRequest(queries, database, k, Metric(metric), **{**fields, **kwargs})


def assert_same_knn(D, I, D_ref, I_ref, D_next, tol: float) -> None:
    """Tie-aware: ids equal except among reference distances within ``tol`` of each other.

    ``D_next`` (Q,) is the reference's (k+1)-th distance (±inf when there is none): an id at the
    k-th place may differ when the excluded next row is within ``tol``.
    """
    assert D.shape == D_ref.shape and I.dtype == torch.int64
    torch.testing.assert_close(I == -1, I_ref == -1, msg="padding differs")
    finite = D_ref[torch.isfinite(D_ref)].abs()
    scale = max([1.0, *finite.tolist()])
    torch.testing.assert_close(D, D_ref, rtol=0, atol=tol * scale, equal_nan=True)
    ext = torch.cat([D_ref, D_next[:, None]], dim=1).double()
    gap = (ext[:, 1:] - ext[:, :-1]).abs()
    gap = gap.nan_to_num(nan=float("inf"))
    before = torch.cat([torch.full_like(gap[:, :1], float("inf")), gap[:, :-1]], dim=1)
    clear = (torch.minimum(before, gap[:, :]) > 2 * tol * scale)[:, : D.shape[1]]
    differ = I.ne(I_ref)
    bad = clear & differ
    assert not bad.any(), f"ids differ at {bad.nonzero().tolist()}: {I[bad]} vs {I_ref[bad]}"
    for row in I:  # no id twice
        real = row[row >= 0]
        assert real.unique().numel() == real.numel()


def _reference(request: SearchRequest):
    """Torch backend results for k, and the (k+1)-th distance of each query."""
    D, I = torch_exact_search(request)
    wider = torch_exact_search(_replace_k(request, request.k + 1))[0][:, -1]
    return D, I, wider


def _replace_k(request: SearchRequest, k: int) -> SearchRequest:
    return SearchRequest(**{**request.__dict__, "k": k})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_knn_matches_torch_backend(device, metric, dtype, shape):
    q, n, d, k = shape
    queries = torch.randn(q, d, device=device)
    database = torch.randn(n, d, device=device).to(dtype)
    D, I = gpuann.knn(queries, database, k, metric=metric, backend="triton")
    D_ref, I_ref = gpuann.knn(queries, database, k, metric=metric, backend="torch")
    D_next = gpuann.knn(queries, database, k + 1, metric=metric, backend="torch")[0][:, -1]
    sign = 1 if metric == "l2" else -1  # compare as "smaller is nearer"
    assert_same_knn(sign * D, I, sign * D_ref, I_ref, sign * D_next, TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exact_ties_go_to_the_lower_row(device, metric, dtype):
    # Small integers: every score is exact in float32, so results must be identical, and
    # duplicated rows tie exactly.
    base = torch.randint(-3, 4, (20, 6), device=device).float()
    database = torch.cat([base, base, base[:7]]).to(dtype)
    queries = torch.randint(-3, 4, (6, 6), device=device).float()
    request = _request(queries, database, 11, metric)
    D, I = get_backend("triton").search(request)
    D_ref, I_ref = torch_exact_search(request)
    assert torch.equal(I, I_ref) and torch.equal(D, D_ref)


@pytest.mark.parametrize("splits", [1, 3, 8])
@pytest.mark.parametrize("k", [5, 64])
def test_split_database_merges_like_one_pass(splits, k):
    queries, database = torch.randn(4, 12), torch.randn(300, 12)
    request = _request(queries, database, k, "l2")
    D_ref, I_ref, D_next = _reference(request)
    D, I = fused_knn(queries, database, k, True, splits=splits)
    assert_same_knn(D, I, D_ref, I_ref, D_next, TOL[torch.float32])


def test_strided_database_and_given_norms_and_scale():
    wide = torch.randn(90, 40)
    database = wide[:, 3:20]  # row stride 40, not the row length
    queries = torch.randn(3, 17)
    sqnorms = (database * database).sum(dim=1)
    l2 = _request(queries, database, 7, "l2", database_sqnorms=sqnorms)
    scale = torch.rand(90) + 0.5
    ip = _request(queries, database, 7, "ip", column_scale=scale)
    for request in (l2, ip):
        D, I = get_backend("triton").search(request)
        D_ref, I_ref, D_next = _reference(request)
        sign = 1 if request.metric is Metric.L2 else -1
        assert_same_knn(sign * D, I, sign * D_ref, I_ref, sign * D_next, TOL[torch.float32])


def test_float16_queries_against_float16_storage():
    queries = torch.randn(4, 24).half()  # same dtype: no query split, tensor-core dot
    database = torch.randn(100, 24).half()
    request = _request(queries, database, 9, "ip")
    D, I = get_backend("triton").search(request)
    D_ref, I_ref, D_next = _reference(request)
    assert_same_knn(-D, I, -D_ref, I_ref, -D_next, TOL[torch.float16])


def test_nan_scores_rank_after_every_number():
    database = torch.randn(50, 4)
    database[[3, 30]] = float("nan")
    queries = torch.randn(3, 4)
    for metric in ("l2", "ip"):
        request = _request(queries, database, 50, metric)
        D, I = get_backend("triton").search(request)
        D_ref, I_ref = torch_exact_search(request)
        assert torch.equal(I, I_ref)
        assert I[:, -2:].tolist() == [[3, 30]] * 3  # NaN rows last, lower row first
        torch.testing.assert_close(D, D_ref, equal_nan=True, rtol=0, atol=1e-5)


def test_k_at_the_kernel_limit_runs_fused():
    queries, database = torch.randn(2, 4), torch.randn(MAX_K + 60, 4)
    request = _request(queries, database, MAX_K, "l2")
    assert select_backend(request, "triton").name == "triton"
    D, I = get_backend("triton").search(request)
    D_ref, I_ref, D_next = _reference(request)
    assert_same_knn(D, I, D_ref, I_ref, D_next, TOL[torch.float32])


def test_k_above_the_kernel_limit_is_a_declared_reason():
    # Not handed to torch inside the Triton backend: the dispatcher says so and moves on.
    queries, database = torch.randn(2, 4), torch.randn(MAX_K + 60, 4)
    request = _request(queries, database, MAX_K + 52, "l2")
    reason = f"k={MAX_K + 52} is above the kernel's limit of {MAX_K}"
    assert reason in get_backend("triton").not_supported_reasons(request)
    with pytest.raises(BackendUnavailableError, match=reason):
        select_backend(request, "triton")
    assert f"triton: passed over: {reason}" in explain("exact_search", request, backend="triton")


def test_small_budget_chunks_queries():
    queries, database = torch.randn(40, 8), torch.randn(64, 8)
    request = _request(queries, database, 64, "l2", memory_budget=40 * 64 * 8)
    D, I = get_backend("triton").search(request)
    D_ref, I_ref, D_next = _reference(request)
    assert_same_knn(D, I, D_ref, I_ref, D_next, TOL[torch.float32])


def test_auto_never_picks_triton_for_cpu_tensors():
    request = _request(torch.randn(2, 3), torch.randn(5, 3), 2, "l2")
    assert get_backend("triton").not_supported_reasons(request) == []  # interpreter is on
    assert select_backend(request).name == "torch"
    assert select_backend(request, "triton").name == "triton"


def test_reasons_name_what_is_missing(monkeypatch):
    backend = get_backend("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    request = _request(torch.randn(2, 3), torch.randn(5, 3), 2, "l2")
    assert any("TRITON_INTERPRET=1" in r for r in backend.not_supported_reasons(request))
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        select_backend(request, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    wrong = _request(torch.randn(2, 3), torch.randn(5, 3).double(), 2, "l2")
    assert any("float64" in r for r in backend.not_supported_reasons(wrong))
    huge = _request(torch.randn(2, 1), torch.zeros(1, 1).expand(2**32, 1), 2, "l2")
    assert any("2**32" in r for r in backend.not_supported_reasons(huge))


def test_compiled_knn_with_triton_backend_has_no_graph_break():
    queries, database = torch.randn(3, 8), torch.randn(40, 8)

    def search(q, x):
        return gpuann.knn(q, x, 4, backend="triton", check_finite=False)

    D, I = torch.compile(search, fullgraph=True, backend="aot_eager")(queries, database)
    D_ref, I_ref = gpuann.knn(queries, database, 4, backend="torch")
    assert torch.equal(I, I_ref)
    torch.testing.assert_close(D, D_ref, rtol=0, atol=1e-5)


# The kernel keeps a per-query threshold and a candidate buffer (``CAP`` keys; under the
# interpreter 32-row tiles, CAP = max(K, 32)) merged into the running lists when one would
# overflow. These shapes force merges in every tile, between tiles and at the end only.


@pytest.mark.parametrize("k", [1, 10, 33, 100, 300])
@pytest.mark.parametrize("order", ["nearer", "farther"])
def test_thresholds_when_every_row_beats_the_last(k, order):
    # "nearer": each row is nearer than every row before it, so every score is a candidate
    # and every buffer fills (a merge per tile); "farther": only the first tile has any.
    n = 700
    scale = torch.arange(1, n + 1, dtype=torch.float32)
    scale = scale if order == "nearer" else scale.flip(0)
    database = scale[:, None] * torch.tensor([1.0, 0.5, 0.25])
    queries = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0], [0.5, 0.5, -1.0]])
    request = _request(queries, database, k, "ip")
    D, I = get_backend("triton").search(request)
    D_ref, I_ref = torch_exact_search(request)
    assert torch.equal(I, I_ref)
    torch.testing.assert_close(D, D_ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("k", [7, 40, 130])
def test_ties_across_buffer_merges_go_to_the_lower_row(k):
    # 25 copies of 12 integer rows: equal scores in every tile, candidates at the threshold
    # (kept by ``<=``) and merges that must order them by row.
    base = torch.randint(-2, 3, (12, 5), generator=torch.Generator().manual_seed(1)).float()
    database = base.repeat(25, 1)
    queries = torch.randint(-2, 3, (19, 5), generator=torch.Generator().manual_seed(2)).float()
    for metric in ("l2", "ip"):
        request = _request(queries, database, k, metric)
        D, I = get_backend("triton").search(request)
        D_ref, I_ref = torch_exact_search(request)
        assert torch.equal(I, I_ref) and torch.equal(D, D_ref)


@pytest.mark.parametrize("seed", range(3))
def test_rank_tie_words_across_merges(seed):
    # With a row rank (``HAS_RANK``) an equal score may win on its tie word although its row
    # is higher: candidates equal to the threshold must enter the buffer (a strict ``<``
    # there fails this test).
    from gpuann.engine.eligibility import RowFilters

    gen = torch.Generator().manual_seed(seed)
    database = torch.randint(-1, 2, (6, 3), generator=gen).float().repeat(100, 1)
    queries = torch.randint(-1, 2, (4, 3), generator=gen).float()
    rank = torch.randperm(600, generator=gen)
    scores = ((queries[:, None, :] - database[None, :, :]) ** 2).sum(-1)  # exact integers
    for k in (5, 45, 100):
        D, I = fused_knn(queries, database, k, True, filters=RowFilters(row_rank=rank))
        keys = scores * 1024 + rank[None, :].float()  # (score, rank) order, exact in float32
        assert torch.equal(I, torch.sort(keys, dim=1, stable=True).indices[:, :k])


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_single_candidate_appends(k, metric, dtype):
    # Past the first tiles a block of queries mostly has at most one candidate per query in
    # a tile: with 16-bit storage (``ONE_APPEND``) the kernel then stores each query's one key
    # without the cumsum. Random data, a long scan, with and without a row rank as tie word.
    from gpuann.engine.eligibility import RowFilters

    gen = torch.Generator().manual_seed(7)
    queries = torch.randn(16, 8, generator=gen).to(dtype)
    database = torch.randn(3000, 8, generator=gen).to(dtype)
    request = _request(queries, database, k, metric)
    D_ref, I_ref, D_next = _reference(request)
    sign = 1 if metric == "l2" else -1
    D, I = fused_knn(queries, database, k, metric == "l2", splits=1)
    assert_same_knn(sign * D, I, sign * D_ref, I_ref, sign * D_next, TOL[dtype])
    rank = torch.randperm(3000, generator=gen)  # changes only the order of equal scores
    D2, I2 = fused_knn(
        queries, database, k, metric == "l2", splits=1, filters=RowFilters(row_rank=rank)
    )
    assert torch.equal(D2, D)
    tied = torch.zeros_like(I, dtype=torch.bool)
    tied[:, 1:] |= D[:, 1:] == D[:, :-1]
    tied[:, :-1] |= D[:, 1:] == D[:, :-1]
    assert torch.equal(I2[~tied], I[~tied])


def _float64_knn(queries, database, k, metric):
    """Float64 values rounded to float32, sorted by (value, row): the re-scored reference."""
    q, x = queries.double(), database.double()
    if metric == "l2":
        exact = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1).float()
        order = torch.argsort(exact, dim=1, stable=True)
    else:
        exact = (q @ x.T).float()
        order = torch.argsort(-exact, dim=1, stable=True)
    order = order[:, :k]
    return exact.gather(1, order), order


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_float32_storage_winners_are_rescored_exactly(metric, monkeypatch):
    # TF32X3 (the default for float32 storage): the kernel ranks, the winners' values are
    # float64 re-scores rounded to float32, re-sorted with ties to the lower row.
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(150, 24, generator=gen)
    x[40:45] = x[3]  # exact ties: the lower row first
    q = torch.cat([x[3:4] + 1e-3, torch.randn(6, 24, generator=gen)])
    D, I = fused_knn(q, x, 12, metric == "l2")
    D_ref, I_ref = _float64_knn(q, x, 12, metric)
    assert torch.equal(I, I_ref)
    assert torch.equal(D, D_ref)  # bit for bit: float64 arithmetic, one rounding
    monkeypatch.setenv("GPUANN_TRITON_FP32", "ieee")  # FMA dots: the kernel's own values,
    D_fma, I_fma = fused_knn(q, x, 12, metric == "l2")  # whose bits (not ties) may differ
    assert torch.equal(I_fma[1:], I_ref[1:])  # from row to row under the interpreter
    torch.testing.assert_close(D_fma, D_ref, rtol=1e-5, atol=1e-4)
    assert not torch.equal(D_fma, D_ref)  # so the exact values above are the re-scoring's


def test_rescored_winners_keep_padding_and_tie_order():
    from gpuann._triton.final_rescore import rescore_winners

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 3.0]])
    q = torch.tensor([[1.0, 0.0]])
    # Rows 2 and 0 tie; the kernel's order (2, 0) and values are re-done; -1 stays last.
    values = torch.tensor([[0.1, 0.2, 2.0, float("inf")]])
    rows = torch.tensor([[2, 0, 1, -1]])
    D, I = rescore_winners(q, x, values, rows, True)
    assert I.tolist() == [[0, 2, 1, -1]] and D.tolist() == [[0.0, 0.0, 2.0, float("inf")]]
    rank = torch.tensor([5, 0, 1, 2])  # a tie order that puts row 2 before row 0
    D, I = rescore_winners(q, x, values, rows, True, tie=rank)
    assert I.tolist() == [[2, 0, 1, -1]]
    D, I = rescore_winners(
        q, x, values[:, :3], rows[:, :3], False, torch.tensor([1.0, 3.0, 2.0, 1.0])
    )
    assert I.tolist() == [[2, 0, 1]] and D.tolist() == [[2.0, 1.0, 0.0]]


def test_float32_plan_picks_tensor_cores_unless_told(monkeypatch):
    from gpuann._triton.knn_plan import plan_fused_knn

    def flags(**kw):
        plan = plan_fused_knn(
            4096,
            10**6,
            128,
            10,
            storage_dtype=torch.float32,
            query_dtype=torch.float32,
            l2=True,
            sm_count=132,
            **kw,
        )
        return dict(plan.partial.constexprs), plan.config

    constexprs, cfg = flags()
    assert constexprs["TF32X3"] and constexprs["ONE_APPEND"] and cfg.block_m == 128
    assert cfg.block_d == 32
    monkeypatch.setenv("GPUANN_TRITON_FP32", "ieee")
    constexprs, cfg = flags()
    assert not constexprs["TF32X3"] and not constexprs["ONE_APPEND"] and cfg.block_m == 32
    assert flags(fp32_dot="tf32x3")[0]["TF32X3"]
    monkeypatch.setenv("GPUANN_TRITON_FP32", "fast")
    with pytest.raises(ValueError, match="GPUANN_TRITON_FP32"):
        flags()


def test_rescored_infinite_rows_are_nan_as_in_the_torch_backend():
    # check_finite off: inf − inf is NaN in ‖x‖² − 2⟨q, x⟩, so the re-scoring says NaN too.
    x = torch.tensor([[float("nan"), 0.0], [float("inf"), 0.0], [2.0, 0.0]])
    q = torch.tensor([[1.0, 0.0]])
    D, I = fused_knn(q, x, 3, True)
    D_ref, I_ref = torch_exact_search(_request(q, x, 3, "l2"))
    assert torch.equal(I, I_ref) and I.tolist() == [[2, 0, 1]]
    torch.testing.assert_close(D, D_ref, equal_nan=True)


def test_gpus_without_tf32_keep_fma_dots(monkeypatch):
    import gpuann._triton.knn as knn_module

    monkeypatch.setattr(knn_module, "compute_capability", lambda device: (7, 5))
    gen = torch.Generator().manual_seed(5)
    x, q = torch.randn(90, 24, generator=gen), torch.randn(4, 24, generator=gen)
    D, I = fused_knn(q, x, 5, True)
    D_exact, _ = _float64_knn(q, x, 5, "l2")
    assert not torch.equal(D, D_exact)  # the kernel's own FMA values: not re-scored
    torch.testing.assert_close(D, D_exact, rtol=1e-5, atol=1e-4)


def test_single_candidate_tile_that_overflows_a_buffer_merges_first():
    # After the first tiles fill the buffers, each later tile holds exactly one new best row
    # for every query: a one-key tile whose append would overflow. It must merge first (a
    # write past a buffer lands in the next query's). Integer distances: exact on both sides.
    tiles = 40
    a = torch.full((tiles * 32,), 3000.0)
    a[:32] = 2000.0 + torch.arange(32)
    a[32::32] = 1000.0 - torch.arange(1, tiles)
    x = torch.stack([a, torch.zeros_like(a)], dim=1)
    q = torch.stack([torch.zeros(16), torch.arange(16.0)], dim=1)
    for k in (1, 3):
        D, I = fused_knn(q, x, k, True)
        D_ref, I_ref = torch_exact_search(_request(q, x, k, "l2"))
        assert torch.equal(I, I_ref) and torch.equal(D, D_ref)
