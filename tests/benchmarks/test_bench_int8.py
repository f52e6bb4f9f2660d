"""The int8 benchmark still runs (its smoke preset) and reports what it compares."""

from __future__ import annotations

import pytest

from benchmarks import bench_int8


def test_smoke_preset_compares_gpuann_and_faiss():
    pytest.importorskip("faiss")
    payload = bench_int8.run("smoke", threads=1)
    methods = {row["method"] for row in payload["results"]}
    assert {"float32", "gpuann int8", "faiss SQ8"} <= methods
    for row in payload["results"]:
        assert 0.0 <= row["recall_at_10"] <= 1.0 and row["qps"] > 0
    int8 = next(row for row in payload["results"] if row["method"] == "gpuann int8")
    assert int8["bytes_vs_float32"] < 0.3 and int8["qps_vs_faiss"] > 0
    assert "| gpuann int8 |" in bench_int8.markdown(payload)
