"""The IVF benchmark script still runs (its smoke preset, a few seconds)."""

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
        [sys.executable, "-m", "benchmarks.bench_ivf", "--preset", "smoke", "--out", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (result,) = tmp_path.glob("bench_ivf_*.json")
    data = json.loads(result.read_text())
    assert data and (tmp_path / result.with_suffix(".md").name).is_file()
