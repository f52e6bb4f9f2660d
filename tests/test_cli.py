"""The command line (the demo's own tests are in test_demo.py)."""

from __future__ import annotations

import subprocess
import sys

from gpuann.cli import main


def test_cli_help_and_errors():
    out = subprocess.run([sys.executable, "-m", "gpuann", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
    assert main(["demo", "--device", "tpu", "--synthetic-size", "0"]) == 2


def test_zero_or_negative_sizes_are_errors_not_defaults(tmp_path, capsys):
    """``--memory-budget-mib 0`` and ``build --nlist 0`` used to be replaced by defaults."""
    import numpy as np
    import pytest

    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((50, 4), dtype=np.float32))
    out = str(tmp_path / "out")
    cases = [
        [
            "search",
            "--queries",
            str(data),
            "--database",
            str(data),
            "-k",
            "2",
            "--out",
            out,
            "--memory-budget-mib",
            "0",
        ],
        ["search", "--queries", str(data), "--database", str(data), "-k", "0", "--out", out],
        ["build", "--vectors", str(data), "--index-type", "ivf-flat", "--nlist", "0", "--out", out],
        ["build", "--vectors", str(data), "--index-type", "ivf-pq", "--m", "-1", "--out", out],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "expected a positive int" in capsys.readouterr().err
