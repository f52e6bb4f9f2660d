"""The README stays true: its code blocks run, and its faiss example matches real faiss."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(after_heading: str, language: str = "python") -> str:
    section = README.split(f"## {after_heading}", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


def test_faiss_example_prints_what_faiss_prints():
    pytest.importorskip("faiss")
    code = _block("Coming from faiss")
    assert "import gpuann.compat.faiss as faiss" in code
    np.random.seed(0)  # noqa: NPY002 - the README example uses numpy's global generator
    ours = _run(code)
    np.random.seed(0)  # noqa: NPY002
    theirs = _run(code.replace("import gpuann.compat.faiss as faiss", "import faiss"))
    assert ours == theirs and ours.strip()


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=lambda c: c.splitlines()[-1][:40])
def test_every_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(code)


def test_quickstart_saves_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(_block("Quickstart"))
    assert (tmp_path / "vectors.gpuann").is_file()


def test_setup_commands_are_the_ones_ci_runs():
    commands = _block("Set up and run", "bash").splitlines()
    assert [c.split("#")[0].strip() for c in commands] == [
        "python3 .ci/bootstrap.py demo",
        "python3 .ci/bootstrap.py test",
    ]
    assert "python3 .ci/bootstrap.py test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_demo_command_runs():
    """The README's demo command, in the environment this test runs in (no new venv)."""
    env = {**os.environ, "GPUANN_VENV": sys.prefix}
    out = subprocess.run(
        [sys.executable, ".ci/bootstrap.py", "demo", "--synthetic-size", "2000"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "gpuann demo on" in out.stdout


def test_cli_examples_run(tmp_path):
    """The README's `gpuann ...` command lines, run on small files in a scratch folder."""
    commands = _block("Large batch retrieval", "bash").strip().splitlines()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "db.npy", rng.standard_normal((3000, 16), dtype=np.float32))
    np.save(tmp_path / "q.npy", rng.standard_normal((50, 16), dtype=np.float32))
    for line in commands:
        args = line.split()
        assert args[0] == "gpuann"
        if "--index-type" in args and "ivf-pq" in args:
            args += ["--nlist", "16", "--m", "4"]  # small data: fewer lists than the defaults
        args += ["--no-progress"] if args[1] == "search" else []
        if "--out" in args and args[1] == "search" and (tmp_path / "results").exists():
            args += ["--overwrite"]
        out = subprocess.run(
            [sys.executable, "-m", "gpuann", *args[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, f"{line}\n{out.stderr[-2000:]}"
    assert np.load(tmp_path / "results" / "ids.npy").shape == (50, 10)
