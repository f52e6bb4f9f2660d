"""``python -m benchmarks.gpu_suite``: a clear refusal without CUDA, and a plan-only dry run."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_suite


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, capsys):
    assert gpu_suite.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_dry_run_writes_the_plan(tmp_path):
    assert gpu_suite.main(["--out", str(tmp_path), "--dry-run"]) == 0
    (json_file,) = tmp_path.glob("gpu_suite_*.json")
    payload = json.loads(json_file.read_text())
    assert payload["dry_run"] and payload["results"] == {}
    cases = payload["plan"]["knn_cases"]
    first = cases[0]
    assert (first["queries"], first["dim"], first["k"], first["dtype"]) == (
        4096,
        128,
        10,
        "float16",
    )
    assert len(cases) == 4 * 2 * 3 * 3
    assert sum(gpu_suite.SECTIONS.values()) <= 1.0
    assert (tmp_path / json_file.name.replace(".json", ".md")).read_text().startswith("# gpu_suite")


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--out", str(tmp_path), "--sections", "knn,nope"])
