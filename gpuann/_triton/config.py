"""Tile configurations: fixed defaults, candidates, and the shape-keyed autotuning cache.

``pick_config`` returns the default config when tuning is off (``GPUANN_AUTOTUNE=0``, or the
Triton interpreter runs), else times every candidate once per shape key with
``triton.testing.do_bench`` and remembers the fastest in a process-wide cache, so repeated
calls on shapes of the same bucket never re-tune. Keys bucket the number of queries (rows)
and database rows (columns) by powers of two and keep d, k, dtypes and flags exact.

Tuning never runs while a CUDA graph is being captured (timing needs synchronisation, which a
capture forbids): a capture uses the tuned config already cached for its key, else the default.
Candidates that fail to compile or launch are timed as infinitely slow; every candidate list
here is checked ahead of time by ``tests/kernels/test_aot_compile.py`` to compile for sm_80 and
sm_90 within the shared-memory limit, so a tuning run does not launch a kernel that cannot fit.

Device helpers live here too: the multiprocessor count (read once per device and cached) and
``device_guard``, which makes a tensor's device current around a launch (triton launches on
the current device; tensors on ``cuda:1`` with ``cuda:0`` current would fault).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Hashable
from typing import Any

import torch

from gpuann._triton import autotune_enabled, next_power_of_2

__all__ = [
    "TileConfig",
    "cache_info",
    "choose_splits",
    "clear_cache",
    "compute_capability",
    "device_guard",
    "knn_candidates",
    "knn_default",
    "knn_programs_per_sm",
    "knn_splits",
    "multiprocessors",
    "pick_config",
    "shape_bucket",
    "topk_candidates",
    "topk_default",
]


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """One launch configuration.

    Attributes
    ----------
    block_m : int
        Queries (or matrix rows) per program.
    block_n : int
        Database rows (or matrix columns) per tile.
    block_d : int
        Dimensions per ``tl.dot`` step (unused by the batched top-k).
    num_warps, num_stages : int
        Triton launch options.
    """

    block_m: int
    block_n: int
    block_d: int = 16
    num_warps: int = 4
    num_stages: int = 2


_CACHE: dict[tuple[Hashable, ...], TileConfig] = {}


def clear_cache() -> None:
    """Forget every tuned configuration."""
    _CACHE.clear()


def cache_info() -> dict[tuple[Hashable, ...], TileConfig]:
    """A copy of the autotuning cache: key -> chosen config."""
    return dict(_CACHE)


def shape_bucket(n: int) -> int:
    """The power-of-two bucket of a size (the autotuning key's resolution)."""
    return next_power_of_2(n)


def pick_config(
    key: tuple[Hashable, ...],
    default: TileConfig,
    candidates: list[TileConfig],
    run: Callable[[TileConfig], object],
) -> TileConfig:
    """The configuration to launch with for ``key``.

    Parameters
    ----------
    key : tuple
        Everything the best config depends on (op name, device, dtypes, bucketed shapes).
    default : TileConfig
        Used when tuning is off.
    candidates : list of TileConfig
        Timed once per key when tuning is on.
    run : callable
        Runs the operation with a config (its outputs are scratch: it may run many times).
    """
    if not autotune_enabled() or not candidates:
        return default
    if _capturing():  # no timing inside a CUDA graph capture: cached choice or default
        return _CACHE.get(key, default)
    if key not in _CACHE:
        from triton.testing import do_bench

        def timing(config: TileConfig) -> float:
            try:
                return float(do_bench(lambda: run(config), warmup=5, rep=20))
            except Exception:  # a config that does not compile or fit (e.g. out of resources)
                return math.inf

        _CACHE[key] = min(candidates, key=timing)
    return _CACHE[key]


def _capturing() -> bool:
    """True while the current CUDA stream captures a graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device_index))


def compute_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device (read once per device); None for other devices."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


def multiprocessors(device: torch.device) -> int | None:
    """Multiprocessors of a CUDA device (read once per device); None for other devices."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _multiprocessors(index)


def device_guard(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Make ``device`` the current CUDA device for a launch (a no-op for other devices)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def choose_splits(n_blocks: int, n_tiles: int, sm_count: int | None) -> int:
    """How many programs share one block's database (columns) when blocks are few.

    Aims at two programs per multiprocessor on CUDA (``sm_count`` multiprocessors; two
    programs in all when None, as under the interpreter, where programs run one after
    another), never more splits than tiles.
    """
    target = 2 * sm_count if sm_count else 2
    return max(1, min(-(-target // max(n_blocks, 1)), n_tiles))


#: Fused k-NN programs one multiprocessor holds at once, by block height: 64- and 128-row
#: tiles compile to more than 128 registers per thread at 8 warps (sm_90 and sm_80, checked by
#: ``tests/kernels/test_aot_compile.py``), so one fits; the few-query tiles hold one to four
#: (by k, d, dtype and float32 dot), and two per multiprocessor are launched for them.
KNN_TALL_BLOCK = 64
#: Splits cost candidates: the fewest whose waves come within this factor of the best time.
KNN_WAVE_SLACK = 1.12


def knn_programs_per_sm(config: TileConfig) -> int:
    """Resident fused k-NN programs per multiprocessor assumed for ``config``'s tiles."""
    return 1 if config.block_m >= KNN_TALL_BLOCK else 2


def knn_splits(n_blocks: int, n_tiles: int, sm_count: int | None, programs_per_sm: int) -> int:
    """How many programs share one query block's database in the fused k-NN kernel.

    Each split restarts its thresholds from nothing, so more splits mean more candidates (a
    split of ``n`` rows appends about ``k·ln(n/k)`` per query); too few leave
    multiprocessors idle. A launch of ``p`` programs over ``s`` slots (``sm_count ×
    programs_per_sm``) takes ``ceil(p / s)`` waves, so ``splits`` rows-per-program cost
    ``waves(splits) / splits``. The choice: the fewest splits within :data:`KNN_WAVE_SLACK` of
    the least cost over up to four programs per slot; never more splits than tiles. With no
    ``sm_count`` (the interpreter) it is :func:`choose_splits`'s two programs.

    >>> knn_splits(32, 31250, 132, 1)  # Q = 4096 in 128-query blocks, H100: one full wave
    4
    >>> knn_splits(32, 31250, 108, 1)  # A100: 96 of 108 slots rather than 10 splits' 3 waves
    3
    """
    if not sm_count:
        return choose_splits(n_blocks, n_tiles, sm_count)
    slots = sm_count * programs_per_sm
    most = max(1, min(n_tiles, 4 * slots // max(n_blocks, 1)))
    cost = {s: -(-n_blocks * s // slots) / s for s in range(1, most + 1)}
    least = min(cost.values())
    return min(s for s, c in cost.items() if c <= least * KNN_WAVE_SLACK)


#: Fused k-NN tiles (block_m, block_n, num_warps) by the largest k_pad they serve: 16-bit
#: storage with queries in the storage dtype (tensor cores), 16-bit storage with float32
#: queries (two dots: ``SPLIT_QUERIES``), float32 storage (IEEE dots; with TF32X3, the
#: default, the tall tiles of 16-bit storage with 32 dimensions per step). The lists live in
#: global scratch, so k does not shrink the tiles; 128 queries per block halve the database's
#: re-reads through L2 against 64. Each was compiled ahead of time for sm_90 and sm_80 with
#: triton 3.9 (``tests/kernels/test_aot_compile.py``, ``python -m benchmarks.kernel_report``):
#: none spills or exceeds the per-block shared memory. Before (lists in registers, merged per
#: tile): BM=64/BN=64 up to k_pad=128 and BM=16 up to 512, nothing fused beyond.
KNN_TILES_16BIT = ((2048, (128, 32, 8)),)
KNN_TILES_SPLIT = ((2048, (128, 32, 8)),)
KNN_TILES_FP32 = ((2048, (32, 64, 8)),)
KNN_TILES_TF32X3 = ((2048, (128, 32, 8)),)
#: Dimensions per dot step of float32 storage with TF32X3, which keeps the hi/lo splits of both
#: operands in registers: 32 for tall blocks when d is a multiple of 32, else 16 (a partial last
#: step, or 16-row blocks, spill at 32 on sm_80 or sm_90; 64 and 128 spill everywhere). By the
#: kernel report's model (sm_90, Q = 4096, N = 10^6, d = 128, k = 10): 10.8 ms at 32, 14.4 ms at
#: 16, against 26.9 ms for the FMA dots' 32 x 64 tiles.
KNN_TF32X3_BLOCK_D = 32
KNN_TF32X3_NARROW_D = 16
#: int8 storage takes the tiles of 16-bit storage, with 32 to 256 dimensions per dot step (an
#: int8 tensor-core product's depth; the bytes of 16-bit storage's 128). With at most 128 the
#: loop over d spilled 72-84 B per thread on sm_80 in 64-query blocks, and d = 200 (a partial
#: second step) about 1 KB per thread on sm_90. Not spill-free everywhere: in the full grid
#: (Q 1/100/4096, d 64-768, k 1-2048, l2/ip) 11 of 150 launches spill on sm_90 (4-104 B of
#: stores per thread: d = 200 with 4096 queries, d = 100 with 100) and 14 on sm_80 (8-160 B:
#: k >= 1000 at d = 200 and 384, one query at d = 64 with k = 100 and 2048). 16-query blocks
#: keep 128 per step (256 spilled 28 B at d = 384 and 768, k = 10, on sm_90).
#: The representative and report grids are spill-free.
KNN_INT8_MIN_BLOCK_D = 32
KNN_INT8_MAX_BLOCK_D = 256
#: Few queries: (block_m, block_n, num_warps) for Q <= 16 up to this k_pad; beyond it (the
#: merges of k_pad >= 128 spill with 16-row blocks), and for Q <= 64, blocks of 64. Float32
#: queries against 16-bit storage with d > BD (query chunks loaded per tile): KNN_TILES_SPLIT_D.
KNN_SMALL_Q_MAX_K = 16
KNN_TILES_FEW = (16, 32, 8)
KNN_TILES_FEW_LARGE_K = (64, 32, 8)
KNN_TILES_SPLIT_D = (16, 64, 8)


def knn_default(
    n_queries: int,
    dim: int,
    k_pad: int,
    dtype: torch.dtype,
    interpreted: bool,
    *,
    split_queries: bool = False,
    tf32x3: bool = False,
) -> TileConfig:
    """Fixed tiles of the fused k-NN kernel (tl.dot needs 16 <= each block on GPUs).

    ``split_queries``: float32 queries against 16-bit storage (two dots per tile).
    ``tf32x3``: float32 storage multiplied on the tensor cores (``TF32X3``). The tile table is
    checked by ``tests/kernels/test_aot_compile.py`` for sm_90 and sm_80.
    """
    widest = 128
    if dtype == torch.float32:
        widest = KNN_TF32X3_BLOCK_D if tf32x3 else 64
    elif dtype == torch.int8:
        widest = KNN_INT8_MAX_BLOCK_D
    narrowest = KNN_INT8_MIN_BLOCK_D if dtype == torch.int8 else 16
    block_d = min(max(narrowest, next_power_of_2(dim)), widest)
    if interpreted:
        return TileConfig(16, 32, min(block_d, 64), 4, 1)
    if dtype == torch.float32:
        table = KNN_TILES_TF32X3 if tf32x3 else KNN_TILES_FP32
    else:
        table = KNN_TILES_SPLIT if split_queries else KNN_TILES_16BIT
    block_m, block_n, num_warps = next(
        (tiles for limit, tiles in table if k_pad <= limit), table[-1][1]
    )
    if split_queries and dim > block_d:  # float32 query chunks per tile
        block_m, block_n, num_warps = KNN_TILES_SPLIT_D
    if n_queries <= 16 and k_pad <= KNN_SMALL_Q_MAX_K:  # one block of 16 queries
        block_m, block_n, num_warps = KNN_TILES_FEW
    elif n_queries <= 64 and block_m > 64:
        block_m, block_n, num_warps = KNN_TILES_FEW_LARGE_K
    if dtype == torch.float32 and tf32x3 and (block_m < 128 or dim % block_d):
        block_d = min(block_d, KNN_TF32X3_NARROW_D)
    if dtype == torch.int8 and block_m < 64:  # 16-query blocks spill at 256 (sm_90)
        block_d = min(block_d, 128)
    return TileConfig(block_m, block_n, block_d, num_warps, 3)


def knn_candidates(
    n_queries: int, dim: int, k_pad: int, dtype: torch.dtype, *, tf32x3: bool = False
) -> list[TileConfig]:
    """Configs the fused k-NN autotuner times (at most 16).

    Register budget ``BM·BN <= 4096`` scores per tile (the lists live in global scratch, so k
    does not count; 128 x 64 tiles spill), and ``num_stages`` such that the pipelined tiles
    fit sm_80's 163 KiB of shared memory. The slow AOT test compiles the candidates of its
    grid for sm_90 and sm_80.
    """
    block_d = knn_default(n_queries, dim, k_pad, dtype, False, tf32x3=tf32x3).block_d
    itemsize = dtype.itemsize
    max_m = max(16, next_power_of_2(n_queries))
    out = []
    for bm, bn, warps in itertools.product((16, 32, 64, 128), (32, 64), (4, 8)):
        if bm > max_m or bm * bn > 4096:
            continue
        stages = 3 if bn * block_d * itemsize <= 32768 else 2
        if stages * (bn + bm) * block_d * itemsize > 160 * 1024:
            continue
        out.append(TileConfig(bm, bn, block_d, warps, stages))
    return out


#: Batched top-k tiles (block_rows, block_n, num_warps) by the largest k_pad they serve
#: (AOT-checked as above). Before: 4 rows x max(512, k_pad) columns, 4 warps, which spilled at
#: k_pad = 16 and k_pad = 2048.
TOPK_TILES = ((16, (4, 256, 4)), (256, (4, 512, 4)), (512, (2, 512, 4)), (2048, (1, 0, 8)))


def topk_default(k_pad: int, interpreted: bool) -> TileConfig:
    """Fixed tiles of the batched top-k kernel (``block_n`` 0 in the table: ``k_pad``)."""
    if interpreted:
        return TileConfig(8, 64, num_warps=4, num_stages=1)
    rows, block_n, num_warps = next(
        (tiles for limit, tiles in TOPK_TILES if k_pad <= limit), TOPK_TILES[-1][1]
    )
    return TileConfig(rows, block_n or k_pad, num_warps=num_warps, num_stages=2)


def topk_candidates(k_pad: int) -> list[TileConfig]:
    """Configs the batched top-k autotuner times (``BR·max(BN, K) <= 4096`` keys, at most 14)."""
    out = []
    for br, bn, warps in itertools.product((1, 2, 4, 8), (256, 512, 1024, 2048), (4, 8)):
        if bn >= min(k_pad, 256) and br * max(bn, k_pad) <= 4096:
            out.append(TileConfig(br, bn, num_warps=warps, num_stages=2))
    return out
