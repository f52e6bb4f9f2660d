"""The plan of a fused k-NN call: every decision about its launches, from shapes alone.

``plan_fused_knn`` decides everything about a launch of the fused distance + top-k kernel
(``gpuann._kernels.fused_knn``) from shapes, dtypes and flags alone (tiles, splits,
constexprs, the merge that follows), without a tensor: the launcher
(:func:`gpuann._triton.knn.fused_knn`) runs that plan, and the ahead-of-time checks
(``gpuann._triton.aot``) compile the very same plans for sm_90 and sm_80 on a machine without
a GPU.
"""

from __future__ import annotations

import dataclasses

import torch

from gpuann._env import triton_fp32_dot
from gpuann._triton import cdiv, log2, next_power_of_2
from gpuann._triton.config import TileConfig, knn_default, knn_programs_per_sm, knn_splits
from gpuann._triton.launch import KernelLaunch
from gpuann._triton.topk import FINISH_L2, FINISH_NEGATE, plan_merge

__all__ = ["FusedKnnPlan", "partial_bytes", "plan_fused_knn"]

_NO_FILTERS = (False, False, False, False)


#: Widest database tile of any fused k-NN configuration (bounds the candidate buffers).
MAX_BLOCK_N = 128


def buffer_keys(k_pad: int, block_n: int) -> int:
    """Keys in one query's candidate buffer: a power of two, the list's size (at most 1024).

    At least one tile: the buffers are merged before a tile's candidates would overflow one,
    so they always fit. Above 1024 keys a merge spills, so k_pad = 2048 takes 1024-key buffers
    (merged into the 2048-key lists twice as often).
    """
    return min(max(k_pad, block_n), 1024)


#: Keys per thread one merge of candidate buffers into running lists holds
#: (``RB · (K + CAP) / threads``; 8 spilled float32 and 4-warp programs on sm_90).
MERGE_KEYS_PER_THREAD = 4


def merge_rows(block_m: int, k_pad: int, cap: int, num_warps: int) -> int:
    """Rows of lists merged at a time (``RB``): a power of two, at most ``block_m``."""
    budget = MERGE_KEYS_PER_THREAD * 32 * num_warps
    rows = 1
    while rows * 2 <= block_m and rows * 2 * (k_pad + cap) <= budget:
        rows *= 2
    return rows


def partial_bytes(n_queries: int, k: int, splits: int) -> int:
    """Bytes of the kernel's scratch for ``n_queries`` queries over ``splits`` splits.

    The partial top-k lists and the candidate buffers, at the widest tile (an upper bound;
    the query blocks' padding is not counted).
    """
    k_pad = next_power_of_2(k)
    return n_queries * splits * (k_pad + buffer_keys(k_pad, MAX_BLOCK_N)) * 8


@dataclasses.dataclass(frozen=True)
class FusedKnnPlan:
    """Every decision of one fused k-NN call, made before any tensor is touched.

    Attributes
    ----------
    config : TileConfig
    k_found : int
        ``min(k, N)``: results that exist (the rest is padding).
    k_pad : int
        Power of two the kernel selects (``K``).
    query_dtype : torch.dtype
        dtype the queries are passed in (float32 for float32 storage or split queries).
    ieee, split_queries : bool
    n_splits : int
        Programs sharing one query block's database.
    n_slots : int
        Query rows of the kernel's lists and buffers (``n_blocks · BM``: whole blocks).
    cap : int
        Keys in one query's candidate buffer.
    partial : KernelLaunch
        The fused kernel's launch; ``merge``: the merge of the partial lists.
    """

    config: TileConfig
    k_found: int
    k_pad: int
    query_dtype: torch.dtype
    ieee: bool
    split_queries: bool
    n_splits: int
    n_slots: int
    cap: int
    partial: KernelLaunch
    merge: KernelLaunch


def plan_fused_knn(
    n_queries: int,
    n_rows: int,
    dim: int,
    k: int,
    *,
    storage_dtype: torch.dtype,
    query_dtype: torch.dtype,
    l2: bool,
    has_sqnorms: bool = False,
    has_scale: bool = False,
    filters: tuple[bool, bool, bool, bool] = _NO_FILTERS,
    n_exclude: int = 0,
    stride_x: int | None = None,
    sm_count: int | None = None,
    interpreted: bool = False,
    config: TileConfig | None = None,
    splits: int | None = None,
    max_splits: int | None = None,
    fp32_dot: str | None = None,
) -> FusedKnnPlan:
    """The launches ``fused_knn`` makes for these shapes (``n_queries, n_rows >= 1``).

    Parameters
    ----------
    n_queries, n_rows, dim, k : int
    storage_dtype, query_dtype : torch.dtype
        The database's and the queries' dtypes as given to ``fused_knn`` (int8 storage: int8
        queries, with a per-query power-of-two factor, and for L2 the rows' sqnorms).
    l2, has_sqnorms, has_scale : bool
    filters : tuple of 4 bool
        (excluded rows, allowed rows, labels, row rank) given.
    n_exclude : int
        Columns of ``excluded_rows`` (its row stride too: it is made contiguous).
    stride_x : int, optional
        Row stride of the database (default ``dim``).
    sm_count : int, optional
        Multiprocessors of the device (None: not CUDA, e.g. the interpreter).
    interpreted : bool
        The Triton interpreter runs the kernels (small tiles, ``UPCAST`` for bfloat16).
    config, splits, max_splits
        As in :func:`fused_knn`; ``config`` None means the fixed default.
    fp32_dot : str, optional
        Float32 storage: ``"tf32x3"`` (tensor cores) or ``"ieee"`` (FMA dots); default
        ``GPUANN_TRITON_FP32``.
    """
    k_found = min(k, n_rows)
    k_pad = next_power_of_2(k_found)
    int8 = storage_dtype == torch.int8
    if int8 and (query_dtype != torch.int8 or (l2 and not has_sqnorms)):
        raise ValueError("int8 storage takes int8 queries (and, for L2, the rows' sqnorms)")
    ieee = storage_dtype == torch.float32
    tf32x3 = ieee and (fp32_dot or triton_fp32_dot()) == "tf32x3"
    split_queries = not ieee and query_dtype != storage_dtype
    q_dtype = torch.float32 if ieee or split_queries else query_dtype
    if config is None:
        config = knn_default(
            n_queries,
            dim,
            k_pad,
            storage_dtype,
            interpreted,
            split_queries=split_queries,
            tf32x3=tf32x3,
        )
    has_exclude, has_allowed, has_labels, has_rank = filters
    n_blocks = cdiv(n_queries, config.block_m)
    n_tiles = cdiv(n_rows, config.block_n)
    n_split = splits or knn_splits(n_blocks, n_tiles, sm_count, knn_programs_per_sm(config))
    n_split = max(1, min(n_split, max_splits or n_split))
    per_split = cdiv(cdiv(n_rows, n_split), config.block_n) * config.block_n
    n_split = cdiv(n_rows, per_split)
    cap = buffer_keys(k_pad, config.block_n)
    placeholder = q_dtype
    partial = KernelLaunch.make(
        "fused_knn:fused_knn_kernel",
        (n_blocks, n_split),
        {
            "q_ptr": q_dtype,
            "x_ptr": storage_dtype,
            "sqnorm_ptr": torch.float32 if l2 and has_sqnorms else placeholder,
            "scale_ptr": torch.float32 if not l2 and has_scale else placeholder,
            "qscale_ptr": torch.float32 if int8 else placeholder,
            "partial_ptr": torch.int64,
            "buffer_ptr": torch.int64,
            "exclude_ptr": torch.int64 if has_exclude else placeholder,
            "allowed_ptr": torch.uint8 if has_allowed else placeholder,
            "row_label_ptr": torch.int64 if has_labels else placeholder,
            "query_label_ptr": torch.int64 if has_labels else placeholder,
            "rank_ptr": torch.int64 if has_rank else placeholder,
            "n_queries": n_queries,
            "n_rows": n_rows,
            "dim": dim,
            "rows_per_split": per_split,
            "n_splits": n_split,
            "stride_q": dim,
            "stride_x": dim if stride_x is None else stride_x,
            "n_exclude": n_exclude if has_exclude else 0,
            "stride_exclude": n_exclude if has_exclude else 0,
            "k_last": k_found - 1,
        },
        {
            "L2": l2,
            "HAS_SQNORMS": l2 and has_sqnorms,
            "HAS_SCALE": not l2 and has_scale,
            "HAS_EXCLUDE": has_exclude,
            "HAS_ALLOWED": has_allowed,
            "HAS_LABELS": has_labels,
            "HAS_RANK": has_rank,
            "SPLIT_QUERIES": split_queries,
            "IEEE": ieee,
            "TF32X3": tf32x3,
            "INT8": int8,
            "SINGLE_D": dim <= config.block_d,
            "UPCAST": interpreted and storage_dtype == torch.bfloat16,
            "BM": config.block_m,
            "BN": config.block_n,
            "LOG_BN": log2(config.block_n),
            "BD": config.block_d,
            "K": k_pad,
            "LOG_K": log2(k_pad),
            "CAP": cap,
            "LOG_CAP": log2(cap),
            "RB": merge_rows(config.block_m, k_pad, cap, config.num_warps),
            # The one-key append spills with float32 FMA dots, with float32 query chunks, and
            # with TF32X3 dots over a partial last chunk of d.
            "ONE_APPEND": (not ieee or (tf32x3 and dim % config.block_d == 0))
            and not (split_queries and dim > config.block_d),
        },
        config.num_warps,
        config.num_stages,
    )
    merge = plan_merge(n_queries, n_split, k_pad, k_found, k, FINISH_L2 if l2 else FINISH_NEGATE)
    return FusedKnnPlan(
        config,
        k_found,
        k_pad,
        q_dtype,
        ieee,
        split_queries,
        n_split,
        n_blocks * config.block_m,
        cap,
        partial,
        merge,
    )
