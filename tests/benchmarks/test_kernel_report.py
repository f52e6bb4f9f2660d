"""The kernel report's cost model: wave quantisation and the replayed branch frequencies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from benchmarks.kernel_report import (
    GPUS,
    estimate,
    replay_presets,
    replay_selection,
    with_merge,
    with_presets,
)

SASS = {"steady": 100, "branch": 500, "inner": 300, "inner_loop": 10, "fast": 20, "slow": 80}


def _plan(n_blocks, n_splits, per_split=3200, block_n=32, block_m=128, warps=8):
    launch = SimpleNamespace(
        grid=(n_blocks, n_splits),
        args=(("rows_per_split", per_split),),
        constexprs=(("BN", block_n), ("BM", block_m), ("RB", 16)),
        num_warps=warps,
    )
    return SimpleNamespace(partial=launch)


SHAPE = {"queries": 4096, "rows": 10**6, "dim": 128}


@pytest.mark.parametrize(("n_splits", "per_sm"), [(9, 3), (4, 1), (8, 2), (5, 2)])
def test_estimate_charges_the_busiest_multiprocessor(n_splits, per_sm):
    gpu = GPUS[90]
    freq = {"append": 0.5, "single": 0.5, "merge": 0.01}
    est = estimate(SHAPE, _plan(32, n_splits), SASS, freq, gpu)
    programs = 32 * n_splits
    assert est["programs"] == programs and est["programs_per_sm"] == per_sm
    assert math.isclose(est["wave_stretch"], per_sm * gpu["sms"] / programs)
    # Idle multiprocessors do not help: a GPU with just the SMs the programs fill evenly
    # takes as long.
    exact = {**gpu, "sms": programs / per_sm}
    filled = estimate(SHAPE, _plan(32, n_splits), SASS, freq, exact)
    assert filled["programs_per_sm"] == per_sm and math.isclose(filled["wave_stretch"], 1.0)
    assert math.isclose(est["fused_estimate_ms"], filled["fused_estimate_ms"])


def test_estimate_adds_the_rescoring_of_float32_winners():
    gpu = GPUS[90]
    freq = {"append": 0.5, "single": 0.5, "merge": 0.01}
    plan = _plan(32, 4)
    base = estimate(SHAPE | {"k": 100}, plan, SASS, freq, gpu)
    plan.partial.constexprs += (("TF32X3", True),)
    tf32 = estimate(SHAPE | {"k": 100, "dtype": "float32"}, plan, SASS, freq, gpu)
    assert tf32["rescore_estimate_ms"] == pytest.approx(1e3 * 28 * 4096 * 100 * 128 / gpu["bw"])
    assert tf32["fused_estimate_ms"] == pytest.approx(
        base["fused_estimate_ms"] + tf32["rescore_estimate_ms"]
    )


def test_replay_appends_every_tile_when_every_row_is_nearer():
    # Rows ever nearer to every query: each tile holds a new best, so every tile appends.
    queries = torch.zeros(4, 2)
    database = torch.stack([torch.arange(64, 0, -1).float(), torch.zeros(64)], dim=1)
    freq = replay_selection(queries, database, 2, 4, 8, 64, 8)
    assert freq["append"] == 1.0 and freq["query_tiles"] == 1.0
    # The reverse order: the thresholds are set at the first merge, when the second tile
    # would overflow the 8-key buffers; after that nothing beats them.
    freq = replay_selection(queries, database.flip(0), 2, 4, 8, 64, 8)
    assert freq["append"] == pytest.approx(2 / 8)


def test_replay_with_presets_admits_only_what_they_allow():
    # Rows ever nearer (as above): without presets every tile appends; with each query's
    # true k-th score as its preset only the last tile holds candidates, and a preset below
    # it leaves every query short.
    queries = torch.zeros(4, 2)
    database = torch.stack([torch.arange(64, 0, -1).float(), torch.zeros(64)], dim=1)
    scores = (database**2).sum(1)  # the kernel's score against a zero query
    kth = torch.sort(scores).values[1].expand(4)
    freq = replay_selection(queries, database, 2, 4, 8, 64, 8, preset=kth)
    assert freq["append"] == pytest.approx(1 / 8) and freq["short"] == 0.0
    assert freq["scores"] == pytest.approx(2 / 64)
    low = replay_selection(queries, database, 2, 4, 8, 64, 8, preset=kth - 1e-3)
    assert low["short"] == 1.0
    none = replay_selection(queries, database, 2, 4, 8, 64, 8, preset=torch.full((4,), math.nan))
    assert none == {**replay_selection(queries, database, 2, 4, 8, 64, 8), "short": 0.0}


def test_replay_presets_are_the_samples_kth_scores():
    gen = torch.Generator().manual_seed(0)
    queries, database = torch.randn(8, 4, generator=gen), torch.randn(400, 4, generator=gen)
    thr = replay_presets(queries, database, 4, 10)
    sample = database[::4]
    scores = (sample**2).sum(1)[None, :] - 2.0 * queries @ sample.T
    assert torch.allclose(thr, torch.sort(scores, dim=1).values[:, 9])


def test_presets_add_the_sample_pass_the_check_and_the_blocks_run_again():
    gpu = GPUS[90]
    plan = _plan(32, 4)
    plan.preset, plan.preset_stride, plan.preset_k = _plan(32, 4, per_split=100), 32, 64
    plan.n_splits, plan.k_found, plan.k_pad = 4, 1000, 1024
    plan.preset.n_splits, plan.preset.k_pad = 4, 64
    shape = SHAPE | {"k": 1000}
    freq = {"append": 1.0, "single": 0.5, "merge": 0.001, "short": 0.0}
    freq["sample"] = {"append": 1.0, "single": 0.5, "merge": 0.01}
    main = estimate(shape, plan, SASS, freq, gpu)
    both = with_presets(main, shape, plan, SASS, freq, gpu)
    sample = estimate(
        shape | {"rows": 10**6 // 32, "k": 64}, plan.preset, SASS, freq["sample"], gpu
    )
    assert both["sample_estimate_ms"] == pytest.approx(sample["fused_estimate_ms"])
    assert both["fused_estimate_ms"] == pytest.approx(
        main["fused_estimate_ms"] + sample["fused_estimate_ms"] + both["preset_check_ms"]
    )
    assert both["p_redo_block"] == 0.0
    short = with_presets(main, shape, plan, SASS, freq | {"short": 0.01}, gpu)
    assert short["p_redo_block"] == pytest.approx(1 - 0.99**128)
    assert short["fused_estimate_ms"] > both["fused_estimate_ms"]


def test_replay_counts_the_chunks_each_merge_takes():
    # Rows ever nearer: every tile of 2 rows appends 2 keys per query to 8-key buffers, so a
    # merge comes before every fifth tile (8 keys: both 4-key chunks) and at the end. A
    # buffer merged whole (no chunk) counts one.
    queries = torch.zeros(4, 2)
    database = torch.stack([torch.arange(40, 0, -1).float(), torch.zeros(40)], dim=1)
    freq = replay_selection(queries, database, 2, 4, 2, 40, 8, chunk=4)
    # 20 tiles: merges before tiles 5, 9, 13 and 17, and at the end (8 keys): 2 chunks each.
    assert freq["merge"] == pytest.approx(5 / 20)
    assert freq["chunks"] == 2.0
    short = replay_selection(queries, database[:10], 2, 4, 2, 10, 8, chunk=4)
    # 5 tiles: one overflow merge (8 keys, 2 chunks) then the final one (2 keys, 1 chunk).
    assert short["merge"] == pytest.approx(2 / 5) and short["chunks"] == 1.5
    whole = replay_selection(queries, database[:10], 2, 4, 2, 10, 8)
    assert whole["chunks"] == 1.0


def test_estimate_charges_only_the_chunks_merged():
    gpu = GPUS[90]
    plan = _plan(32, 4)
    plan.partial.constexprs += (("CAP", 512), ("CHUNK", 256))
    sass = SASS | {"inner_loop": 10, "chunk": 4}
    freq = {"append": 0.5, "single": 0.5, "merge": 0.01}
    every = estimate(SHAPE, plan, sass, freq | {"chunks": 2.0}, gpu)
    assert every["sass_merge"] == SASS["inner"] - 10 + 10 * (128 // 16)
    half = estimate(SHAPE, plan, sass, freq | {"chunks": 1.5}, gpu)
    assert half["sass_merge"] == every["sass_merge"] - 0.5 * 4 * (128 // 16)
    # Without the replayed count, or a buffer merged whole, every merge takes it all.
    assert estimate(SHAPE, plan, sass, freq, gpu)["sass_merge"] == every["sass_merge"]


def test_the_merge_of_the_splits_costs_its_issue_or_memory_bound():
    gpu = GPUS[90]
    launch = SimpleNamespace(
        grid=(1024,), args=(("n_splits", 4),), constexprs=(("K", 1024),), num_warps=4
    )
    plan = SimpleNamespace(merge=launch)
    shape = SHAPE | {"k": 1000}
    memory = 1e3 * (4096 * 4 * 1024 * 8 + 4096 * 1000 * 12) / gpu["bw"]
    rate = gpu["sms"] * 4 * gpu["clock_hz"]
    light = with_merge({"fused_estimate_ms": 1.0}, shape, plan, {"total": 10, "loop": 5}, gpu)
    assert light["merge_launch_estimate_ms"] == pytest.approx(memory)  # memory-bound
    assert light["fused_estimate_ms"] == pytest.approx(1.0 + memory)
    heavy = with_merge({"fused_estimate_ms": 1.0}, shape, plan, {"total": 5000, "loop": 4000}, gpu)
    issue = 1e3 * 1024 * 4 * (1000 + 4 * 4000) / rate  # the loop once per split
    assert heavy["merge_launch_estimate_ms"] == pytest.approx(issue) and issue > memory
