#!/usr/bin/env python3
"""Set up gpuann on a fresh machine (python3 and pip only) and run the demo or the tests.

    python3 .ci/bootstrap.py demo [demo arguments...]
    python3 .ci/bootstrap.py test [pytest arguments...]

It creates a virtual environment in .venv (GPUANN_VENV overrides the place), installs torch
first — the CUDA build where an NVIDIA GPU is present, otherwise a CPU build, so a plain CPU box
does not download gigabytes of CUDA wheels — then gpuann in editable mode with what the command
needs, and runs the command. Running it again reuses the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("GPUANN_VENV", ROOT / ".venv"))
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Fallback when PyTorch's CPU index cannot be reached: the release whose CPU wheel the
#: project's own machines carry (pip's configuration there points at it).
FALLBACK_CPU_TORCH = "torch==2.13.0"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(*args: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], cwd=ROOT, check=check).returncode


def _pip(*args: str, check: bool = True) -> int:
    return _run(
        _python(), "-m", "pip", "install", "--disable-pip-version-check", *args, check=check
    )


def _has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def _ensure_torch() -> None:
    if subprocess.run([_python(), "-c", "import torch"], capture_output=True).returncode == 0:
        return
    if _has_nvidia_gpu():
        _pip("torch>=2.6")
        return
    print("no NVIDIA GPU found: installing a CPU build of torch", flush=True)
    if _pip(
        "torch>=2.6",
        "--index-url",
        PYTORCH_CPU_INDEX,
        "--timeout",
        "20",
        "--retries",
        "0",
        check=False,
    ):
        print(f"PyTorch's CPU index is unreachable: trying {FALLBACK_CPU_TORCH}", flush=True)
        _pip(FALLBACK_CPU_TORCH)


def _ensure_env(extras: str, stamp_name: str) -> None:
    if not _python().exists():
        print(f"creating a virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    _ensure_torch()
    stamp = VENV / f".gpuann-{stamp_name}"
    pyproject = ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < pyproject.stat().st_mtime:
        _pip("-e", f".{extras}")
        stamp.touch()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        _ensure_env("[demo,gpu]" if _has_nvidia_gpu() else "[demo]", "demo")
        return _run(_python(), "-m", "gpuann", "demo", *rest, check=False)
    _ensure_env("[test]", "test")
    for lint in (("check", "."), ("format", "--check", ".")):
        if _run(_python(), "-m", "ruff", *lint, check=False):
            return 1
    return _run(_python(), "-m", "pytest", *rest, check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
