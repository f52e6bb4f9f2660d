"""Preset thresholds of the fused k-NN kernel (``HAS_THR``), under the interpreter on CPU.

A sample pass estimates each query's k-th score; the kernel never lets a threshold above it,
and the launcher runs the blocks whose presets admitted fewer than k scores again without
them. The results must be the same keys as without presets — bit for bit, ties and filters
included — whether the presets are right, too low (a second launch), or missing (NaN).
"""

from __future__ import annotations

import pytest
import torch

from gpuann._triton import knn as knn_module
from gpuann._triton.knn import fused_knn, score_of_key
from gpuann._triton.knn_plan import PRESET_MIN_K, plan_fused_knn, preset_sample
from gpuann._triton.launch import KernelLaunch
from gpuann.backends.torch_backend import torch_exact_search
from gpuann.engine.eligibility import RowFilters

#: Queries (three blocks of the interpreter's 16), rows, dimension (small: the interpreter
#: runs a call in seconds).
Q, N, D = 40, 600, 8


def _data(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(Q, D, generator=gen).to(dtype), torch.randn(N, D, generator=gen).to(dtype)


def _every_filter(gen):
    return RowFilters(
        excluded_rows=torch.randint(0, N, (Q, 7), generator=gen),
        allowed_rows=torch.rand(N, generator=gen) < 0.6,
        row_labels=torch.randint(0, 5, (N,), generator=gen),
        query_labels=torch.randint(0, 5, (Q,), generator=gen),
        row_rank=torch.randperm(N, generator=gen),
    )


@pytest.mark.parametrize("filtered", [False, True])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_presets_change_no_result(metric, filtered):
    # Filtered: excluded rows, allowed rows and labels (the sample's own too), and a row rank
    # as tie word.
    q, x = _data()
    rows = _every_filter(torch.Generator().manual_seed(3)) if filtered else None
    k = 40
    plan = plan_fused_knn(
        Q, N, D, k, storage_dtype=x.dtype, query_dtype=q.dtype, l2=True, preset=True
    )
    assert plan.preset is not None and (plan.preset_stride, plan.preset_k) == (2, 50)
    D0, I0 = fused_knn(q, x, k, metric == "l2", filters=rows, preset=False)
    D1, I1 = fused_knn(q, x, k, metric == "l2", filters=rows, preset=True)
    assert torch.equal(I1, I0) and torch.equal(D1, D0)


@pytest.mark.parametrize(
    ("dtype", "metric", "k"), [(torch.float16, "ip", 60), (torch.float32, "l2", 45)], ids=str
)
def test_presets_keep_ties_in_row_order(dtype, metric, k):
    # 20 copies of 30 integer rows: every score is exact and tied 20 times, so the preset
    # sits on a tie and the threshold's ``<=`` must keep every equal score.
    from gpuann.backends.base import SearchRequest
    from gpuann.metrics import Metric

    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (30, D), generator=gen).float().repeat(20, 1).to(dtype)
    q = torch.randint(-2, 3, (Q, D), generator=gen).float().to(dtype)
    request = SearchRequest(
        q, x, k, Metric(metric), database_sqnorms=None, column_scale=None, memory_budget=1 << 26
    )
    D_ref, I_ref = torch_exact_search(request)
    D1, I1 = fused_knn(q, x, k, metric == "l2", preset=True)
    assert torch.equal(I1, I_ref) and torch.equal(D1.float(), D_ref.float())


def _spy_launches(monkeypatch):
    """Record the flags of every launch with preset thresholds (the kernel's ``flag_ptr``)."""
    seen = []
    real = KernelLaunch.launch

    def launch(self, fn, tensors, **floats):
        if dict(self.constexprs).get("HAS_THR"):
            seen.append((tensors["flag_ptr"].clone(), tensors["thr_ptr"].clone()))
        return real(self, fn, tensors, **floats)

    monkeypatch.setattr(KernelLaunch, "launch", launch)
    return seen


def _same_with_presets(monkeypatch, q, x, k, l2, **kwargs):
    """Search with and without presets, assert the same results; the first launch's presets
    and the second launch's flags."""
    D0, I0 = fused_knn(q, x, k, l2, preset=False, **kwargs)
    seen = _spy_launches(monkeypatch)
    D1, I1 = fused_knn(q, x, k, l2, preset=True, **kwargs)
    assert torch.equal(I1, I0) and torch.equal(D1, D0)
    (_, thr), (again, _) = seen
    return thr, again


@pytest.mark.parametrize("low", ["one query", "all", "nan"])
def test_presets_too_low_run_their_blocks_again(monkeypatch, low):
    # A preset below the true k-th admits fewer than k scores: that query's block (16 queries
    # under the interpreter) must run again without presets, and only that block; a NaN
    # preset is no preset. Results equal the run without presets either way.
    q, x = _data(seed=2)
    k = 40
    D0, I0 = fused_knn(q, x, k, True, preset=False)
    real = knn_module.preset_thresholds

    def lowered(plan, tensors, filters):
        thr = real(plan, tensors, filters)
        where = {"one query": slice(20, 21), "all": slice(0, Q)}
        if low == "nan":
            thr[:] = float("nan")
        else:
            thr[where[low]] = -float("inf")
        return thr

    monkeypatch.setattr(knn_module, "preset_thresholds", lowered)
    seen = _spy_launches(monkeypatch)
    D1, I1 = fused_knn(q, x, k, True, preset=True)
    assert torch.equal(I1, I0) and torch.equal(D1, D0)
    (first_flags, _), (again, thr_again) = seen
    assert bool(first_flags.all())
    blocks = again.view(-1, 16).amax(dim=1).tolist()
    expected = {"one query": [0, 1, 0], "all": [1, 1, 1]}
    assert blocks == expected.get(low, [0, 0, 0])
    assert bool(thr_again.isnan().all())


def test_presets_from_the_sample_admit_enough(monkeypatch):
    # On random data each query's preset (the 50th score of every 2nd row) admits about
    # 2.5 k of the kernel's scores, at least k: the second launch runs no block.
    q, x = _data(seed=4)
    k = 40
    seen = _spy_launches(monkeypatch)
    fused_knn(q, x, k, True, preset=True)
    (_, thr), (again, _) = seen
    assert not bool(again.any())
    scores = (x * x).sum(1)[None, :] - 2.0 * q @ x.T  # the kernel's L2 score
    admitted = (scores <= thr[:Q, None]).sum(1)
    assert int(admitted.min()) >= k and 1.5 * k < float(admitted.float().mean()) < 4 * k
    sample = torch.sort(scores[:, ::2], dim=1).values[:, 49]
    torch.testing.assert_close(thr[:Q], sample, rtol=1e-5, atol=1e-5)


def test_int8_storage_with_presets():
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-100, 100, (N, D), generator=gen, dtype=torch.int8)
    q = torch.randint(-100, 100, (Q, D), generator=gen, dtype=torch.int8)
    scale = torch.full((Q,), 0.5)
    sq = (x.float() ** 2).sum(1)
    kw = {"database_sqnorms": sq, "query_scale": scale}
    D0, I0 = fused_knn(q, x, 40, True, preset=False, **kw)
    D1, I1 = fused_knn(q, x, 40, True, preset=True, **kw)
    assert torch.equal(I1, I0) and torch.equal(D1, D0)


def test_preset_rule(monkeypatch):
    assert preset_sample(PRESET_MIN_K - 1, 10**7) is None
    assert preset_sample(1000, 31_999) is None  # fewer than 32 rows per result
    for k in (256, 300, 1000, 2048, 5000):
        stride, k_seed = preset_sample(k, 10**8)
        assert k / 32 <= stride < k / 16
        assert k_seed <= 64 and 2.0 <= k_seed * stride / k <= 2.6
    assert preset_sample(10, 100, force=True) == (1, 25)
    kwargs = {"storage_dtype": torch.float16, "query_dtype": torch.float16, "l2": True}
    assert plan_fused_knn(4096, 10**6, 128, 1000, **kwargs).preset is not None
    monkeypatch.setenv("GPUANN_TRITON_PRESET", "off")
    assert plan_fused_knn(4096, 10**6, 128, 1000, **kwargs).preset is None
    monkeypatch.setenv("GPUANN_TRITON_PRESET", "sometimes")
    with pytest.raises(ValueError, match="GPUANN_TRITON_PRESET"):
        plan_fused_knn(4096, 10**6, 128, 1000, **kwargs)


def test_score_of_key_inverts_the_kernel_keys():
    scores = torch.tensor([-3.5, -0.0, 0.0, 1e-30, 2.0, float("inf"), float("-inf")])
    bits = scores.view(torch.int32)
    hi = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)  # score_to_hi
    keys = (hi << 32) | torch.arange(scores.numel())
    back = score_of_key(keys)
    assert torch.equal(back, scores + 0.0)
    assert torch.isnan(score_of_key(torch.tensor([torch.iinfo(torch.int64).max]))).all()


def test_explicit_preset_pair_is_checked():
    kwargs = {"storage_dtype": torch.float32, "query_dtype": torch.float32, "l2": True}
    assert plan_fused_knn(Q, N, D, 40, preset=(64, 10), **kwargs).preset_k == 10
    for bad in [(64, 50), (0, 5), (4, 0)]:  # 10 sampled rows hold no 50th; no stride 0
        with pytest.raises(ValueError, match="preset"):
            plan_fused_knn(Q, N, D, 40, preset=bad, **kwargs)


def test_open_presets_do_not_run_again(monkeypatch):
    # 30 allowed rows for k = 40: the sample (every 2nd row) holds ~15, fewer than its 50th,
    # so every preset is NaN and the first launch runs open -- exact, though short of k:
    # no block may run again.
    q, x = _data(seed=6)
    rows = RowFilters(allowed_rows=torch.arange(N) % 20 == 0)
    thr, again = _same_with_presets(monkeypatch, q, x, 40, True, filters=rows)
    assert bool(thr[:Q].isnan().all()) and not bool(again.any())


def test_excluded_rows_do_not_tighten_presets(monkeypatch):
    # Each query excludes its 100 nearest rows (a second page of results): a sample that
    # kept them would put its 50th score among them and admit next to nothing.
    q, x = _data(seed=7)
    scores = (x * x).sum(1)[None, :] - 2.0 * q @ x.T
    rows = RowFilters(excluded_rows=scores.argsort(dim=1)[:, :100])
    thr, again = _same_with_presets(monkeypatch, q, x, 40, True, filters=rows)
    assert not bool(again.any())
    nearest_left = scores.sort(dim=1).values[:, 100]
    assert bool((thr[:Q] > nearest_left).all())


def test_large_k_flushes_half_buffers_in_chunks():
    # float16 storage at k = 1000: K = 1024 lists, 512-key buffers merged 256 keys at a time,
    # two splits; integer data, so ties everywhere. Equal to the torch backend, with and
    # without presets.
    from gpuann.backends.base import SearchRequest
    from gpuann.metrics import Metric

    gen = torch.Generator().manual_seed(8)
    q = torch.randint(-3, 4, (5, D), generator=gen).to(torch.float16)
    x = torch.randint(-3, 4, (2600, D), generator=gen).to(torch.float16)
    k = 1000
    plan = plan_fused_knn(
        5, 2600, D, k, storage_dtype=x.dtype, query_dtype=q.dtype, l2=False, preset=True
    )
    consts = dict(plan.partial.constexprs)
    assert (consts["K"], consts["CAP"], consts["CHUNK"], plan.n_splits) == (1024, 512, 256, 2)
    request = SearchRequest(
        q, x, k, Metric("ip"), database_sqnorms=None, column_scale=None, memory_budget=1 << 26
    )
    D_ref, I_ref = torch_exact_search(request)
    for preset in (False, True):
        D1, I1 = fused_knn(q, x, k, False, preset=preset)
        assert torch.equal(I1, I_ref) and torch.equal(D1.float(), D_ref.float()), preset


def test_presets_of_scaled_inner_products(monkeypatch):
    # Inner product with a per-row scale (cosine over stored norms): the sample reads every
    # 2nd row's scale, so its preset is the 50th of those rows' kernel scores.
    q, x = _data(seed=9)
    scale = torch.rand(N, generator=torch.Generator().manual_seed(10)) + 0.5
    thr, again = _same_with_presets(monkeypatch, q, x, 40, False, column_scale=scale)
    assert not bool(again.any())
    scores = -(q @ x.T) * scale[None, :]  # the kernel's inner-product score
    sample = torch.sort(scores[:, ::2], dim=1).values[:, 49]
    torch.testing.assert_close(thr[:Q], sample, rtol=1e-5, atol=1e-5)


def test_admitted_keys_count_each_list_up_to_k():
    # The check between the two launches: each split's list length (a binary search over the
    # ascending keys, SENTINELs last), at most k per split, summed per query — the count of
    # the non-sentinel keys among each list's first k.
    from gpuann._triton.knn import SENTINEL, admitted_keys

    gen = torch.Generator().manual_seed(5)
    n_slots, n_splits, k_pad, k = 48, 3, 64, 50
    keys = torch.randint(0, 2**40, (n_slots, n_splits, k_pad), generator=gen)
    lengths = torch.randint(0, k_pad + 1, (n_slots, n_splits), generator=gen)
    keys[torch.arange(k_pad) >= lengths[..., None]] = SENTINEL
    lists = torch.sort(keys, dim=2).values
    expected = (lists[:, :, :k] != SENTINEL).sum(dim=(1, 2))
    assert torch.equal(admitted_keys(lists, k), expected)
    assert torch.equal(admitted_keys(lists, k), lengths.clamp(max=k).sum(dim=1))
