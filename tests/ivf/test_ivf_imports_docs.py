"""Lean import (no faiss, no CUDA), a clear error without faiss, and runnable docstrings."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
import types

import pytest

import gpuann
from gpuann.ivf import _faiss

MODULES = [
    "gpuann.ivf._persist",
    "gpuann.ivf._results",
    "gpuann.ivf.base",
    "gpuann.ivf.factory",
    "gpuann.ivf.ivf_flat",
    "gpuann.ivf.gpu_gaps",
    "gpuann.ivf.ivf_pq",
    "gpuann.ivf.training",
    "gpuann.ivf.tuning",
]


def test_import_gpuann_imports_no_faiss_and_no_cuda():
    code = (
        "import sys, torch, gpuann, gpuann.ivf\n"
        "assert 'faiss' not in sys.modules, 'faiss imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "cls = gpuann.IVFPQIndex\n"
        "assert 'faiss' not in sys.modules, 'faiss imported by attribute access'\n"
        "lazy = {'IVFFlatIndex', 'IVFPQIndex', 'index_factory', 'tune_nprobe'}\n"
        "assert lazy <= set(gpuann.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'IVFHNSW'"):
        gpuann.IVFHNSW  # noqa: B018


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(_faiss.FaissUnavailableError, match=r"pip install gpuann\[faiss\]"):
        gpuann.IVFFlatIndex(8, 2, device="cpu")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if name not in ("gpuann.ivf._persist", "gpuann.ivf._results", "gpuann.ivf.gpu_gaps"):
        assert result.attempted > 0, f"{name} has no examples"


def test_real_faiss_loaded_but_not_found_is_a_clear_error(monkeypatch):
    """With the shim as ``sys.modules["faiss"]`` and faiss's submodules loaded but the
    package nowhere to be found, gpuann refuses to import faiss a second time (that re-runs
    faiss's class wrappers) and says what to do."""
    import gpuann.compat.faiss as shim

    monkeypatch.setattr(_faiss, "_REAL_FAISS", None)
    for name in ("faiss.class_wrappers", "faiss.extra_wrappers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "faiss.loader", types.ModuleType("faiss.loader"))
    monkeypatch.setitem(sys.modules, "faiss", shim)
    with pytest.raises(_faiss.FaissUnavailableError, match="imported before"):
        _faiss.import_faiss()
    assert sys.modules["faiss"] is shim
