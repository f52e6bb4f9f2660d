"""Tile configurations: fixed defaults, candidates, and the shape-keyed autotuning cache.

``pick_config`` returns the default config when tuning is off (``GPUANN_AUTOTUNE=0``, or the
Triton interpreter runs), else times every candidate once per shape key with
``triton.testing.do_bench`` and remembers the fastest in a process-wide cache, so repeated
calls on shapes of the same bucket never re-tune. Keys bucket the number of queries (rows)
and database rows (columns) by powers of two and keep d, k, dtypes and flags exact.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Hashable

import torch

from gpuann._triton import autotune_enabled, next_power_of_2

__all__ = [
    "TileConfig",
    "cache_info",
    "choose_splits",
    "clear_cache",
    "knn_candidates",
    "knn_default",
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
    if key not in _CACHE:
        from triton.testing import do_bench

        def timing(config: TileConfig) -> float:
            try:
                return float(do_bench(lambda: run(config), warmup=5, rep=20))
            except Exception:  # a config that does not compile or fit (e.g. out of resources)
                return math.inf

        _CACHE[key] = min(candidates, key=timing)
    return _CACHE[key]


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_splits(n_blocks: int, n_tiles: int, device: torch.device) -> int:
    """How many programs share one block's database (columns) when blocks are few.

    Aims at two programs per multiprocessor on CUDA (two in all under the interpreter, where
    programs run one after another), never more splits than tiles.
    """
    if device.type == "cuda":
        target = 2 * _multiprocessors(device.index if device.index is not None else 0)
    else:
        target = 2
    return max(1, min(-(-target // max(n_blocks, 1)), n_tiles))


def knn_default(
    n_queries: int, dim: int, k_pad: int, dtype: torch.dtype, interpreted: bool
) -> TileConfig:
    """Fixed tiles of the fused k-NN kernel (tl.dot needs 16 <= each block on GPUs)."""
    block_d = min(max(16, next_power_of_2(dim)), 64 if dtype == torch.float32 else 128)
    if interpreted:
        return TileConfig(16, 32, min(block_d, 64), 4, 1)
    block_m = 16 if n_queries <= 16 else 32 if n_queries <= 32 or k_pad >= 512 else 64
    num_warps = 8 if block_m * max(128, k_pad) >= 8192 else 4
    return TileConfig(block_m, 128, block_d, num_warps, 3)


def knn_candidates(n_queries: int, dim: int, k_pad: int, dtype: torch.dtype) -> list[TileConfig]:
    """Configs the fused k-NN autotuner times (register budget: BM·max(BN, K) <= 32768)."""
    block_d = knn_default(n_queries, dim, k_pad, dtype, False).block_d
    max_m = max(16, next_power_of_2(n_queries))
    out = []
    for bm, bn, warps in itertools.product((16, 32, 64, 128), (64, 128, 256), (4, 8)):
        if bm <= max_m and bm * max(bn, k_pad) <= 32768:
            out.append(TileConfig(bm, bn, block_d, warps, 3 if bn * block_d <= 16384 else 2))
    return out


def topk_default(k_pad: int, interpreted: bool) -> TileConfig:
    """Fixed tiles of the batched top-k kernel."""
    if interpreted:
        return TileConfig(8, 64, num_warps=4, num_stages=1)
    block_n = max(512, k_pad)
    return TileConfig(max(1, min(4, 8192 // block_n)), block_n, num_warps=4, num_stages=2)


def topk_candidates(k_pad: int) -> list[TileConfig]:
    """Configs the batched top-k autotuner times."""
    out = []
    for br, bn, warps in itertools.product((1, 2, 4, 8, 16), (256, 512, 1024, 2048), (4, 8)):
        if bn >= min(k_pad, 256) and br * max(bn, k_pad) <= 16384:
            out.append(TileConfig(br, bn, num_warps=warps, num_stages=2))
    return out
