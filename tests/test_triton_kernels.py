"""The Triton building blocks: key packing, the selection network, and the tuning cache."""

from __future__ import annotations

import pytest
import torch

import gpuann._triton.config as config
from gpuann._triton import MAX_K, TOPK_MAX_K, autotune_enabled, next_power_of_2

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from gpuann._kernels.bitonic import hi_to_score, pack, score_to_hi, smallest, unpack  # noqa: E402

from gpuann._tiebreak import ordered_key  # noqa: E402


@triton.jit
def _roundtrip_kernel(score_ptr, pos_ptr, key_ptr, hi_ptr, back_ptr, pos_out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    hi = score_to_hi(tl.load(score_ptr + offs)[None, :])
    key = pack(hi, tl.load(pos_ptr + offs))
    hi2, position = unpack(key)
    tl.store(key_ptr + offs[None, :], key)
    tl.store(hi_ptr + offs[None, :], hi)
    tl.store(back_ptr + offs[None, :], hi_to_score(hi2))
    tl.store(pos_out_ptr + offs[None, :], position)


@triton.jit
def _smallest_kernel(
    x_ptr, out_ptr, R: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr, FLIP: tl.constexpr
):
    N: tl.constexpr = 1 << LOG_N
    K: tl.constexpr = 1 << LOG_K
    rows = tl.arange(0, R)[:, None]
    x = tl.load(x_ptr + rows * N + tl.arange(0, N)[None, :])
    tl.store(out_ptr + rows * K + tl.arange(0, K)[None, :], smallest(x, R, N, LOG_N, LOG_K, FLIP))


def test_keys_order_like_torch_and_positions_use_all_32_bits():
    scores = torch.tensor(
        [-float("inf"), -3.5, -0.0, 0.0, 1e-38, 2.0, float("inf"), float("nan"), -float("nan")]
    )
    n = 16
    scores = torch.cat([scores, torch.zeros(n - scores.numel())])
    positions = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**31 + 5, 2**32 - 1, 7, 8, 9] + [3] * 7)
    outs = [
        torch.empty(n, dtype=dt) for dt in (torch.int64, torch.int32, torch.float32, torch.int64)
    ]
    _roundtrip_kernel[(1,)](scores, positions, *outs, N=n)
    key, hi, back, pos = outs
    assert torch.equal(hi.long(), ordered_key(scores))  # same order image as the torch side
    assert torch.equal(pos, positions)
    assert torch.equal(key, (ordered_key(scores) << 32) | positions)
    finite = ~scores.isnan()
    assert torch.equal(back[finite], scores[finite] + 0.0) and back[~finite].isnan().all()
    assert hi[7] == hi[8] == 0x7FC00000  # both NaNs canonical, after +inf


@pytest.mark.parametrize("log_n, log_k", [(5, 0), (5, 2), (5, 5), (7, 4)])
@pytest.mark.parametrize("flip", [0, 1])
def test_network_selects_the_k_smallest_sorted(log_n, log_k, flip):
    keys = torch.randint(-50, 50, (4, 1 << log_n), dtype=torch.int64) * 2**33
    out = torch.empty(4, 1 << log_k, dtype=torch.int64)
    _smallest_kernel[(1,)](keys, out, 4, log_n, log_k, flip)
    expected = keys.sort(dim=1).values[:, : 1 << log_k]
    assert torch.equal(out, expected.flip(1) if flip else expected)


def test_autotune_times_each_candidate_once_per_key(monkeypatch):
    import triton.testing

    calls = []
    monkeypatch.setattr(config, "autotune_enabled", lambda: True)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: (fn(), calls[-1].block_n)[1])
    config.clear_cache()
    candidates = [config.TileConfig(16, bn) for bn in (128, 32, 64)]
    default = config.TileConfig(16, 256)
    try:
        chosen = config.pick_config(("op", 1), default, candidates, calls.append)
        assert chosen.block_n == 32 and len(calls) == 3  # fastest (fake time = block_n)
        assert config.pick_config(("op", 1), default, candidates, calls.append) == chosen
        assert len(calls) == 3  # cached: not re-tuned
        config.pick_config(("op", 2), default, candidates, calls.append)
        assert len(calls) == 6  # a new key is tuned
        assert set(config.cache_info()) == {("op", 1), ("op", 2)}
    finally:
        config.clear_cache()


def test_autotune_switch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("GPUANN_AUTOTUNE", "1")
    assert autotune_enabled()
    monkeypatch.setenv("GPUANN_AUTOTUNE", "0")
    assert not autotune_enabled()
    default = config.TileConfig(16, 64)
    assert config.pick_config(("op",), default, [config.TileConfig(32, 32)], print) is default
    monkeypatch.setenv("GPUANN_AUTOTUNE", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not autotune_enabled()  # the interpreter always uses the fixed configs


@pytest.mark.parametrize("k", [1, 3, 64, MAX_K])
def test_candidates_respect_the_register_budget(k):
    k_pad = next_power_of_2(k)
    candidates = config.knn_candidates(4096, 128, k_pad, torch.float16)
    assert candidates
    for cfg in candidates:  # fused k-NN: the lists are in global scratch, k does not count
        assert cfg.block_m >= 16 and cfg.block_m * cfg.block_n <= 4096
    for k_topk in (k, TOPK_MAX_K):
        topk = config.topk_candidates(next_power_of_2(k_topk))
        assert topk and all(c.block_m * max(c.block_n, k_pad) <= 4096 for c in topk)


@pytest.mark.parametrize("k_pad", [1, 16, 128, 512, 1024, 2048])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_default_tiles_by_queries_and_k(k_pad, dtype):
    cfg = config.knn_default(4096, 128, k_pad, dtype, interpreted=False)
    assert cfg.block_m * cfg.block_n <= 4096  # what the AOT check found fits
    if dtype != torch.float32:
        assert cfg.block_m == 128  # tall blocks: the database is re-read once per 128 queries
    else:  # FMA dots: 32-query blocks; on the tensor cores (TF32X3), tall ones
        assert cfg.block_m == 32
        tf32 = config.knn_default(4096, 128, k_pad, dtype, interpreted=False, tf32x3=True)
        assert (tf32.block_m, tf32.block_d) == (128, config.KNN_TF32X3_BLOCK_D)
    few = config.knn_default(8, 128, k_pad, dtype, interpreted=False, tf32x3=True)
    assert few.block_m == (16 if k_pad <= config.KNN_SMALL_Q_MAX_K else 64)


def test_env_flags_come_from_gpuann_env():
    import gpuann._env as env
    import gpuann._triton as gt

    assert gt.interpreter_enabled is env.interpreter_enabled
    assert gt.autotune_enabled is env.autotune_enabled


def test_no_tuning_inside_graph_capture(monkeypatch):
    monkeypatch.setattr(config, "autotune_enabled", lambda: True)
    monkeypatch.setattr(config, "_capturing", lambda: True)
    config.clear_cache()
    default = config.TileConfig(16, 64)

    def run(cfg):
        raise AssertionError("timed a candidate during capture")

    try:
        assert config.pick_config(("cap",), default, [config.TileConfig(32, 32)], run) is default
        assert ("cap",) not in config.cache_info()  # the default is not remembered as tuned
        tuned = config.TileConfig(32, 64)
        config._CACHE[("cap",)] = tuned
        assert config.pick_config(("cap",), default, [tuned], run) is tuned  # cached choice
    finally:
        config.clear_cache()


def test_multiprocessors_and_device_guard_off_cuda():
    cpu = torch.device("cpu")
    assert config.multiprocessors(cpu) is None
    with config.device_guard(cpu):
        pass
    assert config.choose_splits(1, 10, None) == 2
    assert config.choose_splits(1, 1000, 132) == 264
    assert config.choose_splits(64, 1000, 132) == 5


@pytest.mark.parametrize(
    ("n_blocks", "sms", "programs_per_sm", "splits", "waves"),
    [
        (32, 132, 1, 4, 1),  # Q = 4096 in 128-query blocks: 128 of 132 slots, one wave
        (32, 108, 1, 3, 1),  # A100: 96 of 108 slots, not 10 splits in 3 waves (10% faster)
        (1, 132, 1, 118, 1),  # within 12% of 132 splits
        (1, 132, 2, 236, 1),
        (50, 132, 1, 5, 2),  # 2 splits fill 76% of one wave; 5 fill 95% of two
        (128, 132, 1, 1, 1),
        (133, 132, 1, 3, 4),  # one split: a second wave for one program; three: 4 waves
        (1000, 132, 1, 1, 8),
    ],
)
def test_knn_splits_fill_whole_waves(n_blocks, sms, programs_per_sm, splits, waves):
    slots = sms * programs_per_sm
    assert config.knn_splits(n_blocks, 31250, sms, programs_per_sm) == splits
    assert -(-n_blocks * splits // slots) == waves
    assert config.knn_splits(n_blocks, 3, sms, programs_per_sm) <= 3  # never more than tiles
    assert config.knn_splits(n_blocks, 1000, None, 1) == config.choose_splits(n_blocks, 1000, None)


def test_knn_programs_per_sm_by_block_height():
    assert config.knn_programs_per_sm(config.TileConfig(128, 32, 128, 8)) == 1
    assert config.knn_programs_per_sm(config.TileConfig(64, 32, 128, 8)) == 1
    assert config.knn_programs_per_sm(config.TileConfig(16, 32, 128, 8)) == 2
