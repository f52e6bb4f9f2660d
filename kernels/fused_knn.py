"""Fused exact k-NN: distance tiles with ``tl.dot`` and a running top-k, per block of queries.

Program ``(m, s)`` takes queries ``[m·BM, (m+1)·BM)`` and database rows
``[s·rows_per_split, (s+1)·rows_per_split)``, visits the rows in order in tiles of ``BN`` and
writes its ``K`` best keys (ascending) to ``partial[query, s, :]``. The (Q, N) distance matrix
never exists. Scores are "smaller is nearer", as in the torch backend:
``‖x‖² − 2⟨q, x⟩`` for L2 (``‖q‖²`` is added to the winners by the merge) and
``−⟨q, x⟩ · scale`` for inner product. Filters (rows excluded per query, an allowed-row mask,
label exclusion) give ineligible entries the ``MISSING_HI`` word of padding, so they never
enter the top-k and rows with fewer than K eligible entries end in ``SENTINEL``s.

Precision: products are exact and accumulate in float32. float16/bfloat16 storage runs the
tensor cores on the storage dtype; float32 queries against such storage are split into
``hi + lo`` parts in that dtype (``SPLIT_QUERIES``), two dots that keep ~16 (bf16) or ~22
(fp16) bits of each query instead of 8 or 11. float32 storage uses ``input_precision="ieee"``
so TF32 never changes a result on the GPU (the interpreter always computes in full float32).
Under the interpreter a bfloat16 ``tl.dot`` returns garbage (triton 3.9: its operands are
read as raw 16-bit integers), so the launcher sets ``UPCAST`` there: products of bfloat16
values are exact in float32 either way, so the results are the GPU's.
"""

from __future__ import annotations

import triton
import triton.language as tl
from gpuann._kernels.bitonic import MISSING_HI, SENTINEL, merge_tile, score_to_hi


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b.T`` in float32 (``UPCAST``: operands to float32 first, exact the same)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, tl.trans(b), acc, input_precision="ieee", out_dtype=tl.float32)
    return tl.dot(a, tl.trans(b), acc, out_dtype=tl.float32)


@triton.jit
def _dot(q, x, acc, SPLIT_QUERIES: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + q @ x.T``: q (BM, BD) float32 or storage dtype, x (BN, BD) storage dtype."""
    if SPLIT_QUERIES:
        q_hi = q.to(x.dtype)
        q_lo = (q - q_hi.to(tl.float32)).to(x.dtype)
        acc = _mma(q_hi, x, acc, IEEE, UPCAST)
        acc = _mma(q_lo, x, acc, IEEE, UPCAST)
    else:
        acc = _mma(q, x, acc, IEEE, UPCAST)
    return acc


@triton.jit
def fused_knn_kernel(
    q_ptr,
    x_ptr,
    sqnorm_ptr,
    scale_ptr,
    partial_ptr,
    exclude_ptr,
    allowed_ptr,
    row_label_ptr,
    query_label_ptr,
    rank_ptr,
    n_queries,
    n_rows,
    dim,
    rows_per_split,
    n_splits,
    stride_q,
    stride_x,
    n_exclude,
    stride_exclude,
    L2: tl.constexpr,
    HAS_SQNORMS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    HAS_ALLOWED: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_RANK: tl.constexpr,
    SPLIT_QUERIES: tl.constexpr,
    IEEE: tl.constexpr,
    SINGLE_D: tl.constexpr,
    UPCAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    LOG_BN: tl.constexpr,
    BD: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
):
    """Partial top-K keys of a block of queries over one split of the database.

    Parameters
    ----------
    q_ptr : (n_queries, dim), float32 or the storage dtype, row stride ``stride_q``
    x_ptr : (n_rows, dim), float32 / float16 / bfloat16, row stride ``stride_x``
    sqnorm_ptr : (n_rows,) float32 squared row norms (read when ``HAS_SQNORMS``; else computed)
    scale_ptr : (n_rows,) float32 factor of each inner product (read when ``HAS_SCALE``)
    exclude_ptr : (n_queries, n_exclude) int64 rows skipped per query, ``-1`` pads, row stride
        ``stride_exclude`` (read when ``HAS_EXCLUDE``)
    allowed_ptr : (n_rows,) uint8, nonzero where a row may be returned (``HAS_ALLOWED``)
    row_label_ptr, query_label_ptr : (n_rows,), (n_queries,) int64: a row is skipped for a
        query with the same non-negative label (``HAS_LABELS``)
    rank_ptr : (n_rows,) int64 tie order in [0, 2**32), packed instead of the row
        (``HAS_RANK``; the launcher maps ranks back to rows)
    SINGLE_D : constexpr bool, ``dim <= BD``
    UPCAST : constexpr bool, dot in float32 (the interpreter's bfloat16 ``tl.dot`` is wrong)
    partial_ptr : (n_queries, n_splits, K) int64, written: ascending keys, ``SENTINEL``-padded
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    mask_m = offs_m < n_queries
    offs_d = tl.arange(0, BD)
    row_start = pid_s.to(tl.int64) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n_rows)
    acc = tl.full((BM, K), SENTINEL, tl.int64)
    if SINGLE_D:  # dim <= BD: the query block is one tile, loaded once
        q_once = tl.load(
            q_ptr + offs_m[:, None] * stride_q + offs_d[None, :],
            mask=mask_m[:, None] & (offs_d[None, :] < dim),
            other=0.0,
        )
    for start in range(row_start, row_end, BN):
        rows = start + tl.arange(0, BN)  # int64: no overflow in rows * stride_x
        mask_n = rows < row_end
        dot = tl.zeros((BM, BN), dtype=tl.float32)
        sq = tl.zeros((BN,), dtype=tl.float32)
        for d0 in range(0, dim, BD):
            cols = d0 + offs_d
            mask_d = cols < dim
            x = tl.load(
                x_ptr + rows[:, None] * stride_x + cols[None, :],
                mask=mask_n[:, None] & mask_d[None, :],
                other=0.0,
            )
            if SINGLE_D:
                q = q_once
            else:
                q = tl.load(
                    q_ptr + offs_m[:, None] * stride_q + cols[None, :],
                    mask=mask_m[:, None] & mask_d[None, :],
                    other=0.0,
                )
            dot = _dot(q, x, dot, SPLIT_QUERIES, IEEE, UPCAST)
            if L2 and not HAS_SQNORMS:
                xf = x.to(tl.float32)
                sq += tl.sum(xf * xf, axis=1)
        if L2:
            if HAS_SQNORMS:
                sq = tl.load(sqnorm_ptr + rows, mask=mask_n, other=0.0)
            score = sq[None, :] - 2.0 * dot
        elif HAS_SCALE:
            score = -dot * tl.load(scale_ptr + rows, mask=mask_n, other=0.0)[None, :]
        else:
            score = -dot
        eligible = mask_n[None, :]
        if HAS_ALLOWED:
            allowed = tl.load(allowed_ptr + rows, mask=mask_n, other=0)
            eligible = eligible & (allowed != 0)[None, :]
        if HAS_LABELS:
            row_label = tl.load(row_label_ptr + rows, mask=mask_n, other=-1)[None, :]
            query_label = tl.load(query_label_ptr + offs_m, mask=mask_m, other=-1)[:, None]
            eligible = eligible & ((row_label != query_label) | (row_label < 0))
        if HAS_EXCLUDE:
            # Full (BM, BN) shape before the loop: a loop-carried value may not change shape
            # (without labels ``eligible`` is still (1, BN) here; only the GPU compiler sees it).
            eligible = tl.broadcast_to(eligible, (BM, BN))
            for j in range(0, n_exclude):
                skip = tl.load(exclude_ptr + offs_m * stride_exclude + j, mask=mask_m, other=-1)
                eligible = eligible & (skip[:, None] != rows[None, :])
        hi = tl.where(eligible, score_to_hi(score), MISSING_HI)
        if HAS_RANK:
            tie = tl.load(rank_ptr + rows, mask=mask_n, other=0)
            acc = merge_tile(acc, hi, tie, BM, K, LOG_K, BN, LOG_BN, False)
        else:
            acc = merge_tile(acc, hi, rows, BM, K, LOG_K, BN, LOG_BN)
    offs_k = tl.arange(0, K)
    out = partial_ptr + (offs_m[:, None] * n_splits + pid_s) * K + offs_k[None, :]
    tl.store(out, acc, mask=mask_m[:, None])
