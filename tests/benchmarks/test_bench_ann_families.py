"""The ANN-families benchmark script still runs (its smoke preset, about ten seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_preset_writes_results(tmp_path):
    pytest.importorskip("faiss")
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_ann_families", "--preset", "smoke",
         "--out", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (result,) = tmp_path.glob("bench_ann_families_*.json")
    data = json.loads(result.read_text())
    families = {row["family"] for row in data["results"]}
    assert families == {"IVF-SQ8", "IVF-SQ8+refine", "PCA64+IVF-Flat", "OPQ16+IVF-PQ"}
    for row in data["results"]:
        assert row["qps_gpuann"] > 0 and row["qps_faiss"] > 0
        assert row["ratio"] == pytest.approx(row["qps_gpuann"] / row["qps_faiss"])
        assert 0 <= row["recall_at_10_gpuann"] <= 1 and 0 <= row["recall_at_10_faiss"] <= 1
    assert data["omp_wait_policy"] == "PASSIVE" and data["environment"]["load_average"]
    assert (tmp_path / result.with_suffix(".md").name).is_file()
