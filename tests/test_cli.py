"""The command line (the demo's own tests are in test_demo.py)."""

from __future__ import annotations

import subprocess
import sys

from gpuann.cli import main


def test_cli_help_and_errors():
    out = subprocess.run([sys.executable, "-m", "gpuann", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
    assert main(["demo", "--device", "tpu", "--synthetic-size", "0"]) == 2
