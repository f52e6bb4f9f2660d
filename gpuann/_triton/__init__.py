"""Launchers of the Triton kernels in ``gpuann._kernels``: tiles, allocation, grids, tuning.

Nothing here imports triton at module import: each launcher imports it when first called,
so ``import gpuann`` stays free of triton and of CUDA initialisation.

Modules
-------
config
    Tile configurations, fixed defaults and the shape-keyed autotuning cache.
knn
    The fused distance + top-k launcher (``fused_knn``).
topk
    The batched top-k launcher (``triton_topk``) and the merge of partial lists.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = [
    "MAX_K",
    "autotune_enabled",
    "cdiv",
    "interpreter_enabled",
    "log2",
    "next_power_of_2",
    "triton_installed",
]

#: Largest k the kernels select in registers; larger k takes a tiled torch path.
MAX_K = 2048

_TRUE = {"1", "true", "on", "yes"}


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the Triton interpreter (kernels run on the CPU)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def autotune_enabled() -> bool:
    """True unless ``GPUANN_AUTOTUNE=0`` or the interpreter runs (fixed configs are used then)."""
    flag = os.environ.get("GPUANN_AUTOTUNE", "1").strip().lower()
    return flag not in {"0", "false", "off", "no"} and not interpreter_enabled()


def triton_installed() -> bool:
    """True when triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def next_power_of_2(n: int) -> int:
    """Smallest power of two ``>= max(n, 1)``.

    >>> next_power_of_2(1), next_power_of_2(24), next_power_of_2(64)
    (1, 32, 64)
    """
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling of ``a / b`` for non-negative ints.

    >>> cdiv(7, 2), cdiv(8, 2)
    (4, 4)
    """
    return -(-a // b)


def log2(n: int) -> int:
    """Exact base-2 logarithm of a power of two."""
    if n <= 0 or n & (n - 1):
        raise ValueError(f"expected a power of two, got {n}")
    return n.bit_length() - 1
