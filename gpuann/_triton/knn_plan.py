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
import math

import torch

from gpuann._env import triton_fp32_dot, triton_preset
from gpuann._triton import cdiv, log2, next_power_of_2
from gpuann._triton.config import TileConfig, knn_default, knn_programs_per_sm, knn_splits
from gpuann._triton.launch import KernelLaunch
from gpuann._triton.topk import FINISH_L2, FINISH_NEGATE, plan_merge

__all__ = ["FusedKnnPlan", "partial_bytes", "plan_fused_knn", "preset_sample"]

_NO_FILTERS = (False, False, False, False)


#: Widest database tile of any fused k-NN configuration (bounds the candidate buffers).
MAX_BLOCK_N = 128


def buffer_keys(k_pad: int, block_n: int, halve: bool = False) -> int:
    """Keys in one query's candidate buffer: a power of two, the list's size (at most 1024),
    half of it from 512 keys on when ``halve``.

    At least one tile: the buffers are merged before a tile's candidates would overflow one,
    so they always fit. Above 1024 keys a merge spills, so k_pad = 2048 keeps 1024-key
    buffers (merged into the 2048-key lists twice as often). Half-size buffers (16-bit and
    int8 storage, ``halve``): the merge then holds fewer registers, and the tile loop outside
    it took 176 SASS per tile (sm_90) instead of 209–214, at the cost of merges twice as
    often (the kernel report's model puts that ahead at k = 300 and, with preset thresholds,
    at k = 1000); float32 storage keeps full buffers (halved ones spilled 16–72 B per thread
    there, sm_80 and sm_90).

    >>> [buffer_keys(k, 32, halve=True) for k in (1, 16, 128, 256, 512, 1024, 2048)]
    [32, 32, 128, 256, 256, 512, 1024]
    >>> [buffer_keys(k, 32) for k in (16, 512, 1024, 2048)]
    [32, 512, 1024, 1024]
    """
    keys = k_pad // 2 if halve and k_pad >= 512 else k_pad
    return min(max(keys, block_n), 1024)


def flush_keys(k_pad: int, cap: int, halve: bool = False) -> int:
    """Keys of a candidate buffer merged into a list at a time (``CHUNK``): 256 for halved
    buffers of lists of up to 1024 keys (1024-key lists took 176 SASS per steady tile with
    512-key buffers merged in two chunks, 211 in one, sm_90), else the whole buffer (chunks of
    a 2048-key list each merge through the whole list, 11 stages of 2048 keys).

    >>> [flush_keys(k, buffer_keys(k, 32, True), True) for k in (16, 256, 512, 1024, 2048)]
    [32, 256, 256, 256, 1024]
    """
    return min(cap, 256) if halve and k_pad <= 1024 else cap


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

    The partial top-k lists and the candidate buffers, at the widest tile, and where k may
    take preset thresholds those of the sample pass too (an upper bound; the query blocks'
    padding is not counted).
    """
    k_pad = next_power_of_2(k)
    per_split = k_pad + buffer_keys(k_pad, MAX_BLOCK_N)
    if k >= PRESET_MIN_K:
        per_split += PRESET_MAX_K + buffer_keys(PRESET_MAX_K, MAX_BLOCK_N)
    return n_queries * splits * per_split * 8


#: Preset thresholds (``HAS_THR``) from this many results up (by default), over databases of
#: at least ``PRESET_MIN_ROWS_PER_K`` rows per result. A threshold that starts open admits
#: about ``k (1 + ln(rows_per_split / k))`` scores per split, most of them in the first
#: tiles, and each admitted score passes through a sorting merge; the sample pass costs
#: ``1 / stride`` of a scan with ``PRESET_MAX_K`` results. Chosen by the kernel report's model
#: (``python -m benchmarks.kernel_report``): estimates, not measurements.
PRESET_MIN_K = 256
PRESET_MIN_ROWS_PER_K = 32
#: Results the sample pass keeps per query (at most) and the scores the preset is to admit in
#: all, in multiples of k: the sample's k'-th score admits about ``k' · stride`` rows, within
#: about ``1 / sqrt(k')`` of it (a Gamma(k') tail). The cap on k' leaves 2 k at k = 256 and
#: 2048 (2.05 k at 1000, up to 2.5 k between): fewer than k with probability about 4e-7 per
#: query at k' = 64 and 2 k (1e-10 at 2.5 k), so a block of queries seldom runs twice.
PRESET_MAX_K = 64
PRESET_OVERFETCH = 2.5


def _checked_sample(sample: tuple[int, int], n_rows: int) -> tuple[int, int]:
    """An explicit ``(stride, k_seed)``: a positive stride and ``1 <= k_seed <=`` the rows
    it samples."""
    stride, k_seed = (int(v) for v in sample)
    if stride < 1 or not 1 <= k_seed <= cdiv(n_rows, stride):
        raise ValueError(
            f"preset must be (stride >= 1, 1 <= k_seed <= ceil(n_rows / stride)), got {sample}"
            f" for {n_rows} rows"
        )
    return stride, k_seed


def preset_sample(k_found: int, n_rows: int, force: bool = False) -> tuple[int, int] | None:
    """``(stride, k_seed)`` of the sample pass behind preset thresholds, or None.

    The sample is every ``stride``-th row (a power of two, the smallest at least
    ``k / 32``); its ``k_seed``-th best score per query is the preset. None below
    :data:`PRESET_MIN_K` results or :data:`PRESET_MIN_ROWS_PER_K` rows per result (unless
    ``force``), or where the sample would hold fewer than ``k_seed`` rows.

    >>> preset_sample(1000, 10**6), preset_sample(2048, 10**6), preset_sample(100, 10**6)
    ((32, 64), (64, 64), None)
    """
    if not force and (k_found < PRESET_MIN_K or n_rows < PRESET_MIN_ROWS_PER_K * k_found):
        return None
    stride = next_power_of_2(cdiv(k_found, 32))
    k_seed = min(PRESET_MAX_K, math.ceil(PRESET_OVERFETCH * k_found / stride))
    if cdiv(n_rows, stride) < k_seed:
        return None
    return stride, k_seed


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
    preset : FusedKnnPlan or None
        With preset thresholds (``HAS_THR``): the plan of the sample pass (every
        ``preset_stride``-th row, ``preset_k`` results) whose ``preset_k``-th score per query
        is that query's preset; ``partial`` then runs twice, the second time only for the
        blocks whose presets admitted fewer than ``k_found`` scores (see
        :mod:`gpuann._triton.knn`).
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
    preset: FusedKnnPlan | None = None
    preset_stride: int = 0
    preset_k: int = 0


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
    preset: bool | tuple[int, int] | None = None,
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
    preset : bool or (stride, k_seed), optional
        Preset thresholds from a sample pass: None follows :func:`preset_sample` (and
        ``GPUANN_TRITON_PRESET``), True forces them wherever a sample fits, False turns them
        off; a pair forces that sample.
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
    if isinstance(preset, tuple):
        sample = _checked_sample(preset, n_rows)
    elif preset is None:
        sample = preset_sample(k_found, n_rows) if triton_preset() == "auto" else None
    else:
        sample = preset_sample(k_found, n_rows, force=True) if preset else None
    n_blocks = cdiv(n_queries, config.block_m)
    n_tiles = cdiv(n_rows, config.block_n)
    n_split = splits or knn_splits(n_blocks, n_tiles, sm_count, knn_programs_per_sm(config))
    n_split = max(1, min(n_split, max_splits or n_split))
    per_split = cdiv(cdiv(n_rows, n_split), config.block_n) * config.block_n
    n_split = cdiv(n_rows, per_split)
    halve = not ieee  # 16-bit and int8 storage: half-size buffers, merged in chunks
    cap = buffer_keys(k_pad, config.block_n, halve)
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
            "thr_ptr": torch.float32 if sample else placeholder,
            "flag_ptr": torch.uint8 if sample else placeholder,
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
            "HAS_THR": sample is not None,
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
            "CHUNK": flush_keys(k_pad, cap, halve),
            "LOG_CHUNK": log2(flush_keys(k_pad, cap, halve)),
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
    seed = None
    if sample is not None:  # every stride-th row, the same filters but the rank (ties)
        stride, k_seed = sample
        seed = plan_fused_knn(
            n_queries,
            cdiv(n_rows, stride),
            dim,
            k_seed,
            storage_dtype=storage_dtype,
            query_dtype=query_dtype,
            l2=l2,
            has_sqnorms=has_sqnorms,
            has_scale=has_scale,
            filters=(has_exclude, has_allowed, has_labels, False),
            n_exclude=n_exclude,
            stride_x=(dim if stride_x is None else stride_x) * stride,
            sm_count=sm_count,
            interpreted=interpreted,
            max_splits=max_splits,
            fp32_dot=fp32_dot,
            preset=False,
        )
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
        seed,
        sample[0] if sample else 0,
        sample[1] if sample else 0,
    )
