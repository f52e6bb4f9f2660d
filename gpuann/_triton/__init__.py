"""Launchers of the Triton kernels in ``gpuann._kernels``: tiles, allocation, grids, tuning.

Nothing here imports triton at module import: each launcher imports it when first called,
so ``import gpuann`` stays free of triton and of CUDA initialisation.

Modules
-------
aot
    Ahead-of-time compilation for sm_90 / sm_80 without a GPU: registers, spills, shared memory.
catalog
    Every launch the launchers make over a grid of shapes (what the AOT checks compile).
config
    Tile configurations, fixed defaults, the shape-keyed autotuning cache, device helpers.
knn
    The fused distance + top-k launcher (``fused_knn``).
knn_plan
    The plan of a fused k-NN call (``plan_fused_knn``), made from shapes alone.
launch
    ``KernelLaunch``: one launch without tensors, what the launchers run and the AOT checks
    compile.
resources
    What a compiled kernel needs on its GPU (``Resources``), occupancy, and the verdict.
topk
    The batched top-k launcher (``triton_topk``) and the merge of partial lists.
"""

from __future__ import annotations

import importlib.util

from gpuann._env import autotune_enabled, interpreter_enabled

__all__ = [
    "MAX_K",
    "TOPK_MAX_K",
    "autotune_enabled",
    "cdiv",
    "interpreter_enabled",
    "log2",
    "next_power_of_2",
    "triton_installed",
]

#: Largest k of the fused k-NN kernel; larger k takes a tiled torch path. Its running lists
#: and candidate buffers live in global scratch (L2-resident), so no register file bounds it:
#: every default configuration up to 2048 compiles for sm_90/sm_80 without spilling (triton
#: 3.9, ``benchmarks/results/kernel_report_*``). The merge of the partial lists (shared with
#: ``triton_topk``) also selects at most 2048.
MAX_K = 2048
#: Largest k of the batched top-k kernel (``triton_topk``): one row of 2048 keys per program
#: fits without spilling.
TOPK_MAX_K = 2048

# ``interpreter_enabled`` and ``autotune_enabled`` are re-exported from ``gpuann._env``.


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
