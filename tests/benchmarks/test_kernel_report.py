"""The kernel report's cost model: wave quantisation and the replayed branch frequencies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from benchmarks.kernel_report import GPUS, estimate, replay_selection

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
