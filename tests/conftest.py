"""Test configuration shared by every test.

The Triton interpreter must be switched on before triton is first imported, so it is set here
when no CUDA device is present: every kernel then runs (slowly, on small shapes) on the CPU.
Autotuning is switched off in tests (GPUANN_AUTOTUNE=0).
"""

from __future__ import annotations

import os

import pytest
import torch  # importing torch does not import triton

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("GPUANN_AUTOTUNE", "0")


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
