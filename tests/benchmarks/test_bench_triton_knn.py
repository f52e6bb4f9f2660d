"""The Triton k-NN benchmark runs: ``--smoke`` end to end on the CPU (Triton interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TRITON_INTERPRET", None)  # --smoke must switch the interpreter on by itself
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_triton_knn", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_smoke_writes_timings_and_roofline(tmp_path):
    proc = _run("--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (result,) = tmp_path.glob("bench_triton_knn_smoke_*.json")
    payload = json.loads(result.read_text())
    assert payload["environment"]["versions"]["triton"]
    assert payload["ceilings"]["bytes_per_s"] > 0 and payload["ceilings"]["flops_float16"] > 0
    (case,) = payload["knn"]
    for method in ("triton", "torch"):
        assert case[f"{method}_s"] > 0 and case[f"{method}_timing"]["samples_s"]
        assert case[f"{method}_roofline_fraction"] > 0
    assert case["triton_id_agreement_with_torch"] == 1.0
    assert payload["topk"] and payload["topk"][0]["triton_s"] > 0
    assert (tmp_path / result.name.replace(".json", ".md")).exists()


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message shown without CUDA"
)
def test_without_cuda_it_says_so():
    proc = _run()
    assert (
        proc.returncode == 2 and "needs a CUDA device" in proc.stderr and "--smoke" in proc.stderr
    )


def test_plan_skips_what_cannot_run():
    from benchmarks.bench_triton_knn import plan_cases

    ceilings = {"flops_float16": 1e12, "bytes_per_s": 1e11}
    grid = {
        "queries": [16, 65536],
        "database": [1000],
        "dims": [64],
        "k": [10, 4096],
        "dtypes": ["float16"],
        "metrics": ["l2"],
    }
    cases, skipped = plan_cases(grid, ceilings, memory_bytes=1 << 34, max_case_seconds=1e-3)
    assert [(c.queries, c.k) for c in cases] == [(16, 10)]
    reasons = {(s["queries"], s["k"]): s["reason"] for s in skipped}
    assert reasons[(16, 4096)] == "k > N" and "roofline" in reasons[(65536, 10)]
