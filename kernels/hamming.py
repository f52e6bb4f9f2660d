"""Hamming-distance k-nearest-neighbour search over packed binary codes (jit code only).

Codes are rows of int32 words (bit order is irrelevant to a Hamming distance, as long as queries
and database agree). One program takes ``BLOCK_Q`` queries and one contiguous split of the
database, and streams it in tiles of ``BLOCK_N`` rows:

- distance tile: ``popcount(q_word ^ x_word)`` summed over the words, int32;
- packed keys: ``distance << 32 | row`` (int64): smaller key = nearer, and among equal distances
  the lower row (the lower id: indexes keep rows sorted by id) wins, exactly as exact search;
- running top-k with a threshold filter: the accumulator holds ``K`` keys (unsorted) and its
  maximum is the row's current k-th best. A tile whose smallest key does not beat it costs one
  ``min`` reduction; otherwise its smallest key replaces the accumulator's maximum, repeatedly,
  while any query of the block still improves. Only ``min``/``max`` reductions are used (no
  ``tl.sort``), which the interpreter runs quickly.

Slots ``K <= j < K_PAD`` of the accumulator hold negative keys that are never replaced; the
launcher drops them. Unfilled slots keep sentinel keys (distance ``0x7FFFFFFF``) that the
launcher turns into id ``-1``.

``K`` is a runtime argument that is never specialised (``do_not_specialize``): one compilation
per ``K_PAD`` serves every k up to it. Row offsets are int64 from the split's first row on, so
``pid_s * rows_per_split`` and the rows above 2**31 do not wrap for ``2**31 <= N < 2**32``.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

#: Distance field of a never-filled accumulator slot (above any real distance).
SENTINEL_DISTANCE = tl.constexpr(0x7FFFFFFF)
#: Key of an out-of-range row or of a candidate already taken.
_BIG_KEY = tl.constexpr(0x7FFFFFFFFFFFFFFF)


@triton.jit
def _popcount32(x, USE_POPC: tl.constexpr):
    """Set bits of each int32 element, as int32."""
    if USE_POPC:
        return libdevice.popc(x)
    else:
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        u = u + (u >> 8)
        u = u + (u >> 16)
        return (u & 0x3F).to(tl.int32)


@triton.jit(do_not_specialize=["K"])
def hamming_topk_kernel(
    q_ptr,
    db_ptr,
    out_ptr,
    n_queries,
    n_database,
    n_words,
    rows_per_split,
    stride_q,
    stride_db,
    stride_out_split,
    stride_out_q,
    K,
    K_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_POPC: tl.constexpr,
):
    """Write, for each query and database split, the ``K`` smallest packed keys.

    Parameters
    ----------
    q_ptr : int32 pointer, (n_queries, n_words) with row stride ``stride_q``
    db_ptr : int32 pointer, (n_database, n_words) with row stride ``stride_db``
    out_ptr : int64 pointer, (n_splits, n_queries, K_PAD)
    rows_per_split : int
        Database rows per split (a multiple of ``BLOCK_N``); program axis 1 is the split.
    """
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = offs_q < n_queries
    q_rows = offs_q.to(tl.int64) * stride_q
    slots = tl.arange(0, K_PAD)
    sentinel = (SENTINEL_DISTANCE << 32) + K_PAD - slots.to(tl.int64)
    acc = tl.where(slots < K, sentinel, -1 - slots.to(tl.int64))
    acc = tl.broadcast_to(acc[None, :], (BLOCK_Q, K_PAD))
    thr = tl.max(acc, axis=1)
    start = pid_s.to(tl.int64) * rows_per_split  # int64: no wrap for N >= 2**31
    stop = tl.minimum(start + rows_per_split, n_database)
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < stop
        db_rows = offs_n.to(tl.int64) * stride_db
        dist = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.int32)
        for w in range(0, n_words):
            qw = tl.load(q_ptr + q_rows + w, mask=q_mask, other=0)
            xw = tl.load(db_ptr + db_rows + w, mask=n_mask, other=0)
            dist += _popcount32(qw[:, None] ^ xw[None, :], USE_POPC)
        keys = (dist.to(tl.int64) << 32) | offs_n.to(tl.int64)[None, :]
        keys = tl.where(n_mask[None, :], keys, _BIG_KEY)
        best = tl.min(keys, axis=1)
        improving = tl.max((best < thr).to(tl.int32), axis=0) > 0
        while improving:
            better = best < thr
            replace = (acc == thr[:, None]) & better[:, None]
            acc = tl.where(replace, best[:, None], acc)
            keys = tl.where(keys == best[:, None], _BIG_KEY, keys)
            thr = tl.max(acc, axis=1)
            best = tl.min(keys, axis=1)
            improving = tl.max((best < thr).to(tl.int32), axis=0) > 0
    out = out_ptr + pid_s.to(tl.int64) * stride_out_split
    out = out + offs_q.to(tl.int64)[:, None] * stride_out_q
    tl.store(out + slots[None, :], acc, mask=q_mask[:, None])
