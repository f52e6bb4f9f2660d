"""Batched top-k of a float matrix, and the merge of partial top-k lists into final results.

``topk_partial_kernel`` streams column tiles of a block of rows (one split of the columns per
program) with the same packed keys and network as the fused k-NN kernel; ``merge_keys_kernel``
merges the ``n_splits`` sorted partial lists of each row and turns keys back into values and
positions. Both select the *smallest* keys: a largest-first selection is a smallest-first one
of the negated values (NaN stays last either way).
"""

from __future__ import annotations

import triton
import triton.language as tl
from gpuann._kernels.bitonic import (
    MISSING_HI,
    SENTINEL,
    hi_to_score,
    merge_runs,
    merge_tile,
    score_to_hi,
    unpack,
)

#: ``merge_keys_kernel`` finishing modes: the score as is, negated, or ``max(score + ‖q‖², 0)``.
FINISH_PLAIN = tl.constexpr(0)
FINISH_NEGATE = tl.constexpr(1)
FINISH_L2 = tl.constexpr(2)


@triton.jit
def topk_partial_kernel(
    x_ptr,
    partial_ptr,
    n_rows,
    n_cols,
    cols_per_split,
    n_splits,
    stride_row,
    LARGEST: tl.constexpr,
    BR: tl.constexpr,
    BN: tl.constexpr,
    LOG_BN: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
):
    """Partial top-K keys of a block of rows over one split of the columns.

    Parameters
    ----------
    x_ptr : (n_rows, n_cols), float32 / float16 / bfloat16, row stride ``stride_row``
    partial_ptr : (n_rows, n_splits, K) int64, written: ascending keys, ``SENTINEL``-padded
    """
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_r = pid_r.to(tl.int64) * BR + tl.arange(0, BR)
    mask_r = offs_r < n_rows
    col_start = pid_s.to(tl.int64) * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, n_cols)
    acc = tl.full((BR, K), SENTINEL, tl.int64)
    for start in range(col_start, col_end, BN):
        cols = start + tl.arange(0, BN)
        mask_c = cols < col_end
        x = tl.load(
            x_ptr + offs_r[:, None] * stride_row + cols[None, :],
            mask=mask_r[:, None] & mask_c[None, :],
            other=0.0,
        ).to(tl.float32)
        if LARGEST:
            x = -x
        hi = tl.where(mask_c[None, :], score_to_hi(x), MISSING_HI)
        acc = merge_tile(acc, hi, cols, BR, K, LOG_K, BN, LOG_BN)
    out = partial_ptr + (offs_r[:, None] * n_splits + pid_s) * K + tl.arange(0, K)[None, :]
    tl.store(out, acc, mask=mask_r[:, None])


@triton.jit
def merge_keys_kernel(
    partial_ptr,
    sqnorm_ptr,
    values_ptr,
    positions_ptr,
    n_rows,
    n_splits,
    k,
    stride_out,
    missing_value,
    FINISH: tl.constexpr,
    BR: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
):
    """Merge ``n_splits`` ascending key lists per row; write the ``k`` best as (value, position).

    Parameters
    ----------
    partial_ptr : (n_rows, n_splits, K) int64, each list ascending
    sqnorm_ptr : (n_rows,) float32, added to every value when ``FINISH == FINISH_L2``
    values_ptr : (n_rows, stride_out) float32: columns ``< k`` written (``missing_value``
        where nothing was found)
    positions_ptr : (n_rows, stride_out) int64: columns ``< k`` written (``-1`` where nothing
        was found)
    """
    pid = tl.program_id(0)
    offs_r = pid.to(tl.int64) * BR + tl.arange(0, BR)
    mask_r = offs_r < n_rows
    offs_k = tl.arange(0, K)
    acc = tl.full((BR, K), SENTINEL, tl.int64)
    for s in range(0, n_splits):
        # Each list read back to front is descending: min against ascending acc is bitonic.
        src = partial_ptr + (offs_r[:, None] * n_splits + s) * K + (K - 1 - offs_k)[None, :]
        part = tl.load(src, mask=mask_r[:, None], other=SENTINEL)
        acc = merge_runs(tl.minimum(acc, part), BR, K, LOG_K, 0)
    hi, position = unpack(acc)
    value = hi_to_score(hi)
    if FINISH == FINISH_NEGATE:
        value = -value
    elif FINISH == FINISH_L2:
        value = value + tl.load(sqnorm_ptr + offs_r, mask=mask_r, other=0.0)[:, None]
        value = tl.where(value < 0.0, 0.0, value)  # clamp, keeping NaN
    missing = hi == MISSING_HI
    value = tl.where(missing, missing_value, value)
    position = tl.where(missing, -1, position)
    dst = offs_r[:, None] * stride_out + offs_k[None, :]
    mask = mask_r[:, None] & (offs_k[None, :] < k)
    tl.store(values_ptr + dst, value, mask=mask)
    tl.store(positions_ptr + dst, position, mask=mask)
