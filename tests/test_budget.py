"""Searches stay inside their memory budget: never a (queries × database) allocation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import gpuann
from gpuann.budget import plan_tiles


@pytest.mark.parametrize("budget_mib", [1, 8, 64, 512])
@pytest.mark.parametrize("k", [1, 100, 5000])
@pytest.mark.parametrize("dim", [1, 128, 1536])
def test_plans_fit_their_budget(budget_mib, k, dim):
    budget = budget_mib << 20
    try:
        plan = plan_tiles(
            100_000, 10_000_000, dim, k, budget, bytes_per_score=28, preferred_database_block=65536
        )
    except ValueError as err:
        assert "memory_budget" in str(err)
        return
    assert plan.bytes_per_step <= budget
    assert plan.query_block >= 1 and plan.database_block >= 1


# A search whose full distance matrix would take 10000 × 40000 × 4 B = 1.6 GB.
_PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch, gpuann
    torch.manual_seed(0)
    budget = int(sys.argv[1])
    index = gpuann.FlatIndex(16, device="cpu")
    index.add(torch.randn(40_000, 16))
    queries = torch.randn(10_000, 16)
    index.search(queries[:10], 10)  # warm up allocator and thread pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    D, I = index.search(queries, 10, memory_budget=budget)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(after - before)
    """
)


def test_peak_memory_of_a_large_search_stays_under_the_budget():
    budget = 48 << 20
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(budget)],
        capture_output=True,
        text=True,
        check=True,
    )
    growth = int(out.stdout.strip().splitlines()[-1])
    # The results themselves (10000 × 10 × 12 B = 1.2 MB) and allocator slack come on top.
    assert growth <= budget + (16 << 20), f"peak RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.cuda
def test_cuda_peak_allocation_stays_under_the_budget():
    database = torch.randn(200_000, 64, device="cuda")
    queries = torch.randn(20_000, 64, device="cuda")
    budget = 64 << 20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gpuann.knn(queries, database, 10, memory_budget=budget)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= budget + 20_000 * 10 * 12 * 2 + (8 << 20), f"peak {peak / 2**20:.1f} MiB"


def test_default_cuda_budget_reads_free_memory_once_per_refresh(monkeypatch):
    import gpuann.budget as budget_module

    calls, clock = [], [100.0]
    monkeypatch.setattr(budget_module, "_cuda_budgets", {})
    monkeypatch.setattr(budget_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda index: calls.append(index) or (8 << 30, 16 << 30)
    )
    device = torch.device("cuda", 3)
    assert budget_module.default_budget(device) == budget_module.MAX_CUDA_BUDGET
    assert budget_module.default_budget(device) == budget_module.MAX_CUDA_BUDGET
    assert calls == [3]  # cached: no cudaMemGetInfo per search
    clock[0] += budget_module.BUDGET_REFRESH_SECONDS
    budget_module.default_budget(device)
    assert calls == [3, 3]
