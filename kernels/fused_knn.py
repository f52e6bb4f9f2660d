"""Fused exact k-NN: distance tiles with ``tl.dot``, a per-query threshold and a candidate buffer.

Program ``(m, s)`` takes queries ``[m·BM, (m+1)·BM)`` and database rows
``[s·rows_per_split, (s+1)·rows_per_split)``, visits the rows in order in tiles of ``BN`` and
writes its ``K`` best keys (ascending) to ``partial[query, s, :]``. The (Q, N) distance matrix
never exists. Scores are "smaller is nearer", as in the torch backend:
``‖x‖² − 2⟨q, x⟩`` for L2 (``‖q‖²`` is added to the winners by the merge) and
``−⟨q, x⟩ · scale`` for inner product. Filters (rows excluded per query, an allowed-row mask,
label exclusion) make entries ineligible, so they never enter the top-k and rows with fewer
than K eligible entries end in ``SENTINEL``s.

Selection (the idea of FAISS's WarpSelect and cuVS's fused L2 k-NN): each query keeps a
*threshold*, the score of its true k-th best so far (place ``k_last``, not the padded K),
tested on the accumulator registers: one row-min per score and a block-wide max per tile. The
few scores at or below it are packed into keys and appended to the query's candidate buffer
of ``CAP`` keys in global scratch: when no query of the block has more than one candidate in
the tile (nine appends in ten at k = 10) one key per query, else at places from a cumsum of
the hits. Only when a buffer would overflow (and once at the end) are the block's buffers
merged into its running top-K lists, which also live in global scratch (``partial``, so k
does not bound the tiles), ``RB`` rows at a time, and the thresholds reloaded. The threshold
keeps ties (``<=``): an equal score may win on its tie word (``HAS_RANK``), so no candidate
of the final top-k is ever skipped and the result is the same set of keys as a full sort of
the kernel's scores. Block barriers order the buffers' writes and reads between the
program's threads.

Preset thresholds (``HAS_THR``, large k): a threshold that starts open admits about
``k (1 + ln(rows / k))`` scores per split, and every one of them passes through a sorting
merge. The launcher can instead give each query a *preset*, estimated from a sample of the
rows to admit about ``2.5 k`` scores in all; the threshold is then never above the preset,
and the lists are merged about once per program. A preset that admitted fewer than ``k``
scores is detected by the launcher, whose second launch redoes only those blocks.

Precision: products are exact and accumulate in float32. float16/bfloat16 storage runs the
tensor cores on the storage dtype; float32 queries against such storage are split into
``hi + lo`` parts in that dtype (``SPLIT_QUERIES``), two dots that keep ~16 (bf16) or ~22
(fp16) bits of each query instead of 8 or 11. float32 storage runs on the tensor cores with
``TF32X3`` (``input_precision="tf32x3"``: three TF32 products of each operand's hi/lo split,
errors of the order of float32 accumulation's; the launcher re-scores the winners in float64),
or with FMA dots (``input_precision="ieee"``, ``GPUANN_TRITON_FP32=ieee``). Either way the
scores differ from a cuBLAS product's in the last bits, so ids can differ from the torch
backend's only where two scores at the k-th place are that close. int8 queries against int8
storage (``INT8``) accumulate exactly in int32 on the tensor cores; each query's factor is a
power of two, so every score is exactly the torch backend's.
Under the interpreter a bfloat16 ``tl.dot`` returns garbage (triton 3.9: its operands are
read as raw 16-bit integers), so the launcher sets ``UPCAST`` there: products of bfloat16
values are exact in float32 either way, so the results are the GPU's.
"""

from __future__ import annotations

import triton
import triton.language as tl
from gpuann._kernels.bitonic import SENTINEL, hi_to_score, merge_keys, pack, score_to_hi


@triton.jit
def _mma(
    a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr, TF32X3: tl.constexpr, INT8: tl.constexpr
):
    """``acc + a @ b.T`` in float32 (``UPCAST``: operands to float32 first, exact the same).

    Float32 operands (``IEEE``): FMA dots, or with ``TF32X3`` three TF32 tensor-core products
    of the hi/lo split of each operand (errors of the order of float32 accumulation's). int8
    operands (``INT8``): exact int32 accumulation (``acc`` is int32).
    """
    # (one return: the compiler also compiles what follows a constexpr branch's return)
    if INT8:
        out = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
    else:
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE and TF32X3:
            out = tl.dot(a, tl.trans(b), acc, input_precision="tf32x3", out_dtype=tl.float32)
        elif IEEE:
            out = tl.dot(a, tl.trans(b), acc, input_precision="ieee", out_dtype=tl.float32)
        else:
            out = tl.dot(a, tl.trans(b), acc, out_dtype=tl.float32)
    return out


@triton.jit
def _dot(
    q,
    x,
    acc,
    SPLIT_QUERIES: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    TF32X3: tl.constexpr,
    INT8: tl.constexpr,
):
    """``acc + q @ x.T``: q (BM, BD) float32 or storage dtype, x (BN, BD) storage dtype."""
    if SPLIT_QUERIES:
        q_hi = q.to(x.dtype)
        q_lo = (q - q_hi.to(tl.float32)).to(x.dtype)
        acc = _mma(q_hi, x, acc, IEEE, UPCAST, TF32X3, INT8)
        acc = _mma(q_lo, x, acc, IEEE, UPCAST, TF32X3, INT8)
    else:
        acc = _mma(q, x, acc, IEEE, UPCAST, TF32X3, INT8)
    return acc


@triton.jit
def fused_knn_kernel(
    q_ptr,
    x_ptr,
    sqnorm_ptr,
    scale_ptr,
    qscale_ptr,
    partial_ptr,
    buffer_ptr,
    exclude_ptr,
    allowed_ptr,
    row_label_ptr,
    query_label_ptr,
    rank_ptr,
    thr_ptr,
    flag_ptr,
    n_queries,
    n_rows,
    dim,
    rows_per_split,
    n_splits,
    stride_q,
    stride_x,
    n_exclude,
    stride_exclude,
    k_last,
    L2: tl.constexpr,
    HAS_SQNORMS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    HAS_ALLOWED: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_RANK: tl.constexpr,
    HAS_THR: tl.constexpr,
    SPLIT_QUERIES: tl.constexpr,
    IEEE: tl.constexpr,
    TF32X3: tl.constexpr,
    INT8: tl.constexpr,
    SINGLE_D: tl.constexpr,
    UPCAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    LOG_BN: tl.constexpr,
    BD: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
    CAP: tl.constexpr,
    LOG_CAP: tl.constexpr,
    CHUNK: tl.constexpr,
    LOG_CHUNK: tl.constexpr,
    RB: tl.constexpr,
    ONE_APPEND: tl.constexpr,
):
    """Partial top-K keys of a block of queries over one split of the database.

    Parameters
    ----------
    q_ptr : (n_queries, dim), float32 or the storage dtype, row stride ``stride_q``
    x_ptr : (n_rows, dim), float32 / float16 / bfloat16 / int8, row stride ``stride_x``
    sqnorm_ptr : (n_rows,) float32 squared row norms (read when ``HAS_SQNORMS``; else computed)
    scale_ptr : (n_rows,) float32 factor of each inner product (read when ``HAS_SCALE``)
    qscale_ptr : (n_queries,) float32 factor of each query's int32 dots, a power of two (read
        when ``INT8``: int8 queries and storage; exact, so the scores are the torch backend's)
    exclude_ptr : (n_queries, n_exclude) int64 rows skipped per query, ``-1`` pads, row stride
        ``stride_exclude`` (read when ``HAS_EXCLUDE``)
    allowed_ptr : (n_rows,) uint8, nonzero where a row may be returned (``HAS_ALLOWED``)
    row_label_ptr, query_label_ptr : (n_rows,), (n_queries,) int64: a row is skipped for a
        query with the same non-negative label (``HAS_LABELS``)
    rank_ptr : (n_rows,) int64 tie order in [0, 2**32), packed instead of the row
        (``HAS_RANK``; the launcher maps ranks back to rows)
    thr_ptr : (ceil(n_queries / BM) · BM,) float32 (read when ``HAS_THR``): each query's
        *preset threshold*, a score no candidate may exceed (NaN: none). The launcher takes
        it from a sample of the rows, where it admits about 2–2.5 ``k`` rows in all: the lists
        then stay short of the many candidates a threshold that starts open lets in. A
        preset is only an estimate — it is right when its query's splits admitted at least
        ``k_last + 1`` scores in all, which the launcher checks (see ``flag_ptr``).
    flag_ptr : (ceil(n_queries / BM) · BM,) uint8 (read when ``HAS_THR``): a program runs
        only if a query of its block is flagged (nonzero); the launcher's second launch,
        with NaN presets and its blocks' lists emptied, flags the queries whose presets
        admitted too few scores.
    TF32X3 : constexpr bool, float32 storage (``IEEE``) on the tensor cores: three TF32
        products of each operand's hi/lo split (else FMA dots)
    INT8 : constexpr bool, int8 queries and storage: dots accumulated exactly in int32, then
        scaled by ``qscale`` (L2 needs ``HAS_SQNORMS``: the decoded rows' norms)
    SINGLE_D : constexpr bool, ``dim <= BD``
    UPCAST : constexpr bool, dot in float32 (the interpreter's bfloat16 ``tl.dot`` is wrong)
    partial_ptr : (ceil(n_queries / BM) · BM, n_splits, K) int64, ``SENTINEL``-filled: the
        running lists, in the end each split's K best keys, ascending
    buffer_ptr : (ceil(n_queries / BM) · BM, n_splits, CAP) int64, ``SENTINEL``-filled: the
        candidate buffers (scratch)
    k_last : int, ``min(k, n_rows) - 1``: the threshold is the key at this place of the list
    CAP, LOG_CAP : constexpr, keys per candidate buffer (a power of two, ``>= BN``)
    CHUNK, LOG_CHUNK : constexpr, keys of a buffer merged at a time (a power of two dividing
        ``CAP``; only chunks holding keys are merged)
    RB : constexpr, rows merged at a time (a power of two dividing BM)
    ONE_APPEND : constexpr bool, a tile where no query of the block has more than one
        candidate stores one key per query instead of the cumsum's compaction (off where it
        spills: float32 storage, float32 query chunks)
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    mask_m = offs_m < n_queries
    offs_d = tl.arange(0, BD)
    row_start = pid_s.to(tl.int64) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n_rows)
    # Rows of the running lists (``partial``) and of the candidate buffers of this program.
    first = pid_m.to(tl.int64) * BM * n_splits + pid_s
    base = first + tl.arange(0, BM).to(tl.int64) * n_splits
    buf = buffer_ptr + base[:, None] * CAP  # (BM, 1) pointers
    thr = tl.full((BM,), float("nan"), tl.float32)  # NaN: the list is not full yet
    if HAS_THR:
        flagged = tl.load(flag_ptr + offs_m, mask=mask_m, other=0).to(tl.int32)
        if tl.max(flagged) == 0:  # no query of this block to (re)do
            return
        thr = tl.load(thr_ptr + offs_m, mask=mask_m, other=float("nan"))
    preset = thr
    open_ = thr != thr  # rows whose every eligible score is a candidate
    count = tl.zeros((BM,), tl.int32)
    q_once = offs_m  # unused unless SINGLE_D
    qscale = tl.zeros((BM,), tl.float32)  # unused unless INT8
    if INT8:  # the factor of the int32 dots in the scores: −2s (L2) or −s, powers of two
        qscale = tl.load(qscale_ptr + offs_m, mask=mask_m, other=1.0) * (-2.0 if L2 else -1.0)
    if SINGLE_D:  # dim <= BD: the query block is one tile, loaded once
        q_once = tl.load(
            q_ptr + offs_m[:, None] * stride_q + offs_d[None, :],
            mask=mask_m[:, None] & (offs_d[None, :] < dim),
            other=0.0,
        )
    # Whole tiles without a row mask, then the split's last partial tile (if any) with one.
    full_end = row_start + (row_end - row_start) // BN * BN
    for part in tl.static_range(2):
        lo = row_start + part * (full_end - row_start)
        hi = full_end + part * (row_end - full_end)
        thr, open_, count = _scan(
            lo,
            hi,
            part == 1,
            q_ptr,
            x_ptr,
            sqnorm_ptr,
            scale_ptr,
            partial_ptr,
            buffer_ptr,
            exclude_ptr,
            allowed_ptr,
            row_label_ptr,
            query_label_ptr,
            rank_ptr,
            q_once,
            qscale,
            preset,
            offs_m,
            mask_m,
            offs_d,
            buf,
            first,
            base,
            thr,
            open_,
            count,
            dim,
            n_splits,
            stride_q,
            stride_x,
            n_exclude,
            stride_exclude,
            k_last,
            L2,
            HAS_SQNORMS,
            HAS_SCALE,
            HAS_EXCLUDE,
            HAS_ALLOWED,
            HAS_LABELS,
            HAS_RANK,
            HAS_THR,
            SPLIT_QUERIES,
            IEEE,
            TF32X3,
            INT8,
            SINGLE_D,
            UPCAST,
            BM,
            BN,
            BD,
            K,
            LOG_K,
            CAP,
            LOG_CAP,
            CHUNK,
            LOG_CHUNK,
            RB,
            ONE_APPEND,
        )
    if tl.max(count) > 0:
        _flush(
            partial_ptr,
            buffer_ptr,
            first,
            n_splits,
            base,
            k_last,
            count,
            preset,
            HAS_THR,
            BM,
            RB,
            K,
            LOG_K,
            CAP,
            LOG_CAP,
            CHUNK,
            LOG_CHUNK,
        )


@triton.jit
def _scan(
    scan_start,
    scan_end,
    MASKED: tl.constexpr,
    q_ptr,
    x_ptr,
    sqnorm_ptr,
    scale_ptr,
    partial_ptr,
    buffer_ptr,
    exclude_ptr,
    allowed_ptr,
    row_label_ptr,
    query_label_ptr,
    rank_ptr,
    q_once,
    qscale,
    preset,
    offs_m,
    mask_m,
    offs_d,
    buf,
    first,
    base,
    thr,
    open_,
    count,
    dim,
    n_splits,
    stride_q,
    stride_x,
    n_exclude,
    stride_exclude,
    k_last,
    L2: tl.constexpr,
    HAS_SQNORMS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    HAS_ALLOWED: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_RANK: tl.constexpr,
    HAS_THR: tl.constexpr,
    SPLIT_QUERIES: tl.constexpr,
    IEEE: tl.constexpr,
    TF32X3: tl.constexpr,
    INT8: tl.constexpr,
    SINGLE_D: tl.constexpr,
    UPCAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
    CAP: tl.constexpr,
    LOG_CAP: tl.constexpr,
    CHUNK: tl.constexpr,
    LOG_CHUNK: tl.constexpr,
    RB: tl.constexpr,
    ONE_APPEND: tl.constexpr,
):
    """Rows ``[scan_start, scan_end)`` in tiles of BN (whole tiles unless ``MASKED``).

    Returns the state carried from tile to tile: thresholds (BM,) float32, ``open_`` (BM,)
    (every eligible score is a candidate) and buffer counts (BM,) int32.
    """
    # Whole tiles (not MASKED) need no row mask, and without filters no eligibility at all.
    FILTERED: tl.constexpr = MASKED or HAS_ALLOWED or HAS_LABELS or HAS_EXCLUDE
    offs_n = tl.arange(0, BN)
    if SINGLE_D:  # the next tile is loaded while this one is scored (prefetch across tiles)
        x_next = _load_rows(x_ptr, scan_start + offs_n, scan_end, offs_d, dim, stride_x)
    for start in range(scan_start, scan_end, BN):
        rows = start + offs_n  # int64: no overflow in rows * stride_x
        mask_n = rows < scan_end
        if INT8:  # exact int32 dots  # noqa: SIM108 (a constexpr branch of the jit code)
            acc = tl.zeros((BM, BN), dtype=tl.int32)
        else:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
        sq = tl.zeros((BN,), dtype=tl.float32)
        if SINGLE_D:
            x = x_next
            x_next = _load_rows(x_ptr, rows + BN, scan_end, offs_d, dim, stride_x)
            acc = _dot(q_once, x, acc, SPLIT_QUERIES, IEEE, UPCAST, TF32X3, INT8)
            if L2 and not HAS_SQNORMS:
                xf = x.to(tl.float32)
                sq += tl.sum(xf * xf, axis=1)
        else:
            for d0 in range(0, dim, BD):
                cols = d0 + offs_d
                mask_d = cols < dim
                x = tl.load(
                    x_ptr + rows[:, None] * stride_x + cols[None, :],
                    mask=mask_n[:, None] & mask_d[None, :],
                    other=0.0,
                )
                q = tl.load(
                    q_ptr + offs_m[:, None] * stride_q + cols[None, :],
                    mask=mask_m[:, None] & mask_d[None, :],
                    other=0.0,
                )
                acc = _dot(q, x, acc, SPLIT_QUERIES, IEEE, UPCAST, TF32X3, INT8)
                if L2 and not HAS_SQNORMS:
                    xf = x.to(tl.float32)
                    sq += tl.sum(xf * xf, axis=1)
        if L2:
            if HAS_SQNORMS:
                if MASKED:
                    sq = tl.load(sqnorm_ptr + rows, mask=mask_n, other=0.0)
                else:
                    sq = tl.load(sqnorm_ptr + rows)
            if INT8:  # ‖x‖² + (−2s)·dot: the product is exact, one rounding (as torch's)
                score = sq[None, :] + acc.to(tl.float32) * qscale[:, None]
            else:
                score = sq[None, :] - 2.0 * acc
        elif INT8:  # (−s)·dot, exact
            score = acc.to(tl.float32) * qscale[:, None]
        elif HAS_SCALE:
            if MASKED:
                score = -acc * tl.load(scale_ptr + rows, mask=mask_n, other=0.0)[None, :]
            else:
                score = -acc * tl.load(scale_ptr + rows)[None, :]
        else:
            score = -acc
        if FILTERED:
            eligible = mask_n[None, :]
            if HAS_ALLOWED:
                allowed = tl.load(allowed_ptr + rows, mask=mask_n, other=0)
                eligible = eligible & (allowed != 0)[None, :]
            if HAS_LABELS:
                row_label = tl.load(row_label_ptr + rows, mask=mask_n, other=-1)[None, :]
                query_label = tl.load(query_label_ptr + offs_m, mask=mask_m, other=-1)[:, None]
                eligible = eligible & ((row_label != query_label) | (row_label < 0))
            if HAS_EXCLUDE:
                # Full (BM, BN) shape before the loop: a loop-carried value may not change
                # shape (without labels ``eligible`` is (1, BN) here; only the GPU sees it).
                eligible = tl.broadcast_to(eligible, (BM, BN))
                for j in range(0, n_exclude):
                    skip = tl.load(exclude_ptr + offs_m * stride_exclude + j, mask=mask_m, other=-1)
                    eligible = eligible & (skip[:, None] != rows[None, :])
            nearest = tl.min(tl.where(eligible, score, float("inf")), axis=1)
        else:
            nearest = tl.min(score, axis=1)
        # Per row: the tile's best score against the threshold (one min per score; NaN
        # scores are skipped by the min and only candidates of open rows). A false alarm
        # (an ineligible +inf against a +inf threshold) only costs the exact test below.
        if tl.max((open_ | (nearest <= thr)).to(tl.int32)) > 0:
            hit = (score <= thr[:, None]) | open_[:, None]
            if FILTERED:
                hit = hit & eligible
            hits = hit.to(tl.int32)
            n_hit = tl.sum(hits, axis=1)
            # One block-wide max answers both questions (2: a buffer would overflow, 1: a row
            # has several candidates); after an overflow the cumsum side runs, which takes any.
            worst = tl.max((count + n_hit > CAP).to(tl.int32) * 2 + (n_hit > 1).to(tl.int32))
            if worst >= 2:  # a buffer would overflow: merge them all first
                thr = _flush(
                    partial_ptr,
                    buffer_ptr,
                    first,
                    n_splits,
                    base,
                    k_last,
                    count,
                    preset,
                    HAS_THR,
                    BM,
                    RB,
                    K,
                    LOG_K,
                    CAP,
                    LOG_CAP,
                    CHUNK,
                    LOG_CHUNK,
                )
                open_ = thr != thr
                count = tl.zeros((BM,), tl.int32)
            if ONE_APPEND and worst == 0:  # mostly at most one candidate per query
                one = n_hit > 0
                col = tl.max(tl.where(hit, offs_n[None, :], 0), axis=1)
                # The one score, exactly: a lone candidate beats every other score of its row,
                # so it is the row's min, except in an open row of a filtered tile, whose one
                # eligible score may be NaN (which the min skips).
                if FILTERED:  # noqa: SIM108 (a constexpr branch of the jit code)
                    value = tl.sum(tl.where(hit, score, 0.0), axis=1)
                else:
                    value = nearest
                # (names unlike the other branch's: the GPU compiler wants one type per name)
                if HAS_RANK:
                    tie_one = tl.load(rank_ptr + start + col, mask=one, other=0)
                else:
                    tie_one = start + col
                key = (score_to_hi(value).to(tl.int64) << 32) | tie_one
                tl.store(buffer_ptr + base * CAP + count, key, mask=one)
            else:
                if HAS_RANK:  # noqa: SIM108 (a constexpr branch of the jit code)
                    tie = tl.load(rank_ptr + rows, mask=mask_n, other=0)
                else:
                    tie = rows
                place = count[:, None] + tl.cumsum(hits, axis=1) - 1
                tl.store(buf + place, pack(score_to_hi(score), tie), mask=hit)
            count += n_hit
    return thr, open_, count


@triton.jit
def _load_rows(x_ptr, rows, end, offs_d, dim, stride_x):
    """Database rows ``rows`` (BN,) x ``offs_d`` (BD,), zero past ``end`` or ``dim``."""
    return tl.load(
        x_ptr + rows[:, None] * stride_x + offs_d[None, :],
        mask=(rows[:, None] < end) & (offs_d[None, :] < dim),
        other=0.0,
    )


@triton.jit
def _flush(
    partial_ptr,
    buffer_ptr,
    first,
    n_splits,
    base,
    k_last,
    count,
    preset,
    HAS_THR: tl.constexpr,
    BM: tl.constexpr,
    RB: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
    CAP: tl.constexpr,
    LOG_CAP: tl.constexpr,
    CHUNK: tl.constexpr,
    LOG_CHUNK: tl.constexpr,
):
    """Merge a program's candidate buffers into its running lists, ``RB`` rows at a time.

    ``base`` (BM,) int64, ``first + i · n_splits``: the rows of ``partial`` (K keys each) and
    of the buffers (CAP keys each, ``SENTINEL`` where empty; emptied again here); ``count``
    (BM,) int32, the keys in each buffer (from its front). Returns
    the float32 score of each list's key at place ``k_last`` (NaN while that place is
    empty), or the query's ``preset`` where that is lower (``HAS_THR``): the new thresholds.
    """
    tl.debug_barrier()  # other threads of the program wrote the buffers
    offs_k = tl.arange(0, K)
    if CAP == CHUNK:
        offs_c = tl.arange(0, CAP)
        for r0 in range(0, BM, RB):
            rows = first + (r0 + tl.arange(0, RB)).to(tl.int64) * n_splits
            at_list = partial_ptr + rows[:, None] * K + offs_k[None, :]
            at_buf = buffer_ptr + rows[:, None] * CAP + offs_c[None, :]
            merged = merge_keys(tl.load(at_list), tl.load(at_buf), RB, K, LOG_K, CAP, LOG_CAP)
            tl.store(at_list, merged)
            tl.store(at_buf, tl.full((RB, CAP), SENTINEL, tl.int64))
    else:
        # In chunks of CHUNK keys, the filled ones only (keys are appended from the front): a
        # network over the whole buffer held registers that every tile of the scan paid for
        # (see ``gpuann._triton.knn_plan.flush_keys``).
        offs_c = tl.arange(0, CHUNK)
        filled = tl.max(count)
        for r0 in range(0, BM, RB):
            rows = first + (r0 + tl.arange(0, RB)).to(tl.int64) * n_splits
            at_list = partial_ptr + rows[:, None] * K + offs_k[None, :]
            merged = tl.load(at_list)
            for c0 in tl.static_range(0, CAP, CHUNK):
                if c0 < filled:
                    at_buf = buffer_ptr + rows[:, None] * CAP + c0 + offs_c[None, :]
                    merged = merge_keys(merged, tl.load(at_buf), RB, K, LOG_K, CHUNK, LOG_CHUNK)
                    tl.store(at_buf, tl.full((RB, CHUNK), SENTINEL, tl.int64))
            tl.store(at_list, merged)
    tl.debug_barrier()  # lists written and buffers emptied before anyone reads or appends
    kth = tl.load(partial_ptr + base * K + k_last)
    thr = hi_to_score((kth >> 32).to(tl.int32))
    if HAS_THR:  # the lower of the two (NaN: a list not full yet, or no preset)
        thr = tl.where((thr != thr) | (preset < thr), preset, thr)
    return thr
