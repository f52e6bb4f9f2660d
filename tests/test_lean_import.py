"""``import gpuann`` imports neither faiss nor triton, and does not initialise CUDA."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_is_lean():
    out = _run(
        """
        import sys, torch
        import gpuann, gpuann.compat.faiss
        heavy = [m for m in ("faiss", "triton", "scipy", "torch._dynamo") if m in sys.modules]
        print(heavy, torch.cuda.is_initialized())
        """
    )
    assert out == "[] False"


def test_cpu_search_stays_lean():
    """A CPU search needs neither triton nor faiss, and leaves CUDA alone."""
    out = _run(
        """
        import sys, torch, gpuann
        index = gpuann.FlatIndex(4, device="cpu")
        index.add(torch.randn(10, 4))
        index.search(torch.randn(2, 4), 3)
        gpuann.knn(torch.randn(2, 4), torch.randn(5, 4), 2)
        print([m for m in ("faiss", "triton") if m in sys.modules], torch.cuda.is_initialized())
        """
    )
    assert out == "[] False"


@pytest.mark.parametrize("name", ["gpuann"])
def test_public_names_are_listed(name):
    module = __import__(name)
    for attr in module.__all__:
        assert hasattr(module, attr), attr
