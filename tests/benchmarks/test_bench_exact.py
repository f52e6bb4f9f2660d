"""The exact-search benchmark still runs: its ``--smoke`` preset, end to end, in seconds.

The script is run as users run it (``python -m benchmarks.bench_exact`` from the repository
root, in a subprocess), so a broken import, flag or writer fails here rather than at the next
benchmark campaign.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
METHODS = ("faiss", "gpuann", "torch")

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """Run ``--smoke`` once into a temporary folder; return the JSON payload and Markdown."""
    out = tmp_path_factory.mktemp("bench_exact")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TRITON_INTERPRET", None)  # set by conftest for kernels; the benchmark needs none
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_exact", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"bench_exact --smoke failed:\n{proc.stdout}\n{proc.stderr}"
    json_files = sorted(out.glob("bench_exact_*.json"))
    md_files = sorted(out.glob("bench_exact_*.md"))
    assert len(json_files) == 1, f"expected one JSON result, found {json_files}"
    assert len(md_files) == 1, f"expected one Markdown result, found {md_files}"
    return json.loads(json_files[0].read_text()), md_files[0].read_text()


def test_environment_is_recorded(smoke_run: tuple[dict, str]) -> None:
    payload, _ = smoke_run
    env = payload["environment"]
    for key in ("device_kind", "device_name", "threads", "versions", "git_commit", "date"):
        assert key in env, f"environment lacks {key!r}: {sorted(env)}"
    for package in ("python", "torch", "numpy", "faiss"):
        assert env["versions"].get(package), f"no {package} version in {env['versions']}"
    assert env["threads"] >= 1
    assert payload["command"].startswith("python -m benchmarks.bench_exact")


def test_every_method_is_timed_and_measured(smoke_run: tuple[dict, str]) -> None:
    payload, _ = smoke_run
    assert payload["settings"]["preset"] == "smoke"
    assert len(payload["results"]) == payload["cases_planned"] >= 1
    for row in payload["results"]:
        for key in ("queries", "database", "dim", "k", "metric", "database_bytes"):
            assert key in row, f"case lacks {key!r}"
        for name in METHODS:
            result = row["methods"][name]
            assert "error" not in result, f"{name} failed: {result.get('error')}"
            timing = result["timing"]
            assert timing["repeats"] == len(timing["samples_s"]) >= 1
            assert 0 < timing["min_s"] <= timing["median_s"], f"{name}: bad timing {timing}"
            assert result["qps"] > 0
            assert result["peak_memory"]["bytes"] >= 0
            assert result["peak_memory"]["method"]


def test_comparisons_and_targets(smoke_run: tuple[dict, str]) -> None:
    payload, _ = smoke_run
    for row in payload["results"]:
        assert row["ratio_vs_faiss"] > 0 and row["ratio_vs_torch"] > 0
        assert row["budget_bytes"] > 0
        assert isinstance(row["throughput_target_met"], bool)
        assert isinstance(row["memory_target_met"], bool)
        for name in METHODS:
            agreement = row["agreement_vs_faiss"][name]
            assert agreement == pytest.approx(1.0), f"{name} ids differ from faiss: {agreement}"


def test_markdown_table(smoke_run: tuple[dict, str]) -> None:
    _, markdown = smoke_run
    assert "| Q | N | d | k |" in markdown
    assert "gpuann/faiss" in markdown and "## Targets" in markdown


def test_the_tiled_method_runs_beside_gpuann(tmp_path: Path) -> None:
    # ``--methods`` names keep their underscores (the number parser strips digit separators)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.bench_exact", "--smoke", "--out", str(tmp_path)),
            *("--methods", "gpuann,gpuann_tiled", "--in-process"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(next(tmp_path.glob("bench_exact_*.json")).read_text())
    row = payload["results"][0]
    assert row["methods"]["gpuann_tiled"]["timing"]["median_s"] > 0
    assert row["ratio_vs_tiled"] > 0
    assert "gpuann/tiled" in next(tmp_path.glob("bench_exact_*.md")).read_text()
