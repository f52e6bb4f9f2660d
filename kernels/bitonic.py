"""Packed keys and a bitonic selection network built from ``tl.min`` / ``tl.max``.

A *key* is an int64 whose order is the order of (score, position): the high 32 bits hold an
order-preserving int32 image of the float32 score, the low 32 bits the position (row of the
database, column of a matrix), so among equal scores the lower position wins. NaN maps to the
canonical positive NaN's image (after ``+inf``); ``-0.0`` equals ``+0.0``. Positions that do not
exist get the high word ``MISSING_HI`` (after NaN), and an empty slot is ``SENTINEL``.

The network compares pairs with ``tl.min``/``tl.max`` over an axis of size 2 (the shape of
``tl.sort``'s own network, which uses an ``xor_sum`` instead): identical results, but about a
hundred times faster under the Triton interpreter, and no ``tl.topk``/``tl.sort`` version traps
(non-power-of-two k, k = 1, no ``descending=`` before 3.8).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: High word of a position that does not exist (beyond the end of a row or of the database).
MISSING_HI = tl.constexpr(0x7FFFFFFF)
#: Int32 image of the canonical NaN (0x7FC00000): after +inf (0x7F800000), before MISSING_HI.
NAN_HI = tl.constexpr(0x7FC00000)
#: The key of an empty slot: after every real or missing entry.
SENTINEL = tl.constexpr(0x7FFFFFFFFFFFFFFF)


@triton.jit
def score_to_hi(score):
    """Int32 image of float32 ``score`` with the same order (NaN last, -0.0 == +0.0)."""
    s = score + 0.0  # -0.0 + 0.0 == +0.0
    bits = s.to(tl.int32, bitcast=True)
    hi = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(s != s, NAN_HI, hi)


@triton.jit
def hi_to_score(hi):
    """Inverse of :func:`score_to_hi` (NaN comes back as the canonical NaN)."""
    bits = tl.where(hi < 0, hi ^ 0x7FFFFFFF, hi)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def pack(hi, position):
    """Key of (``hi``, ``position``): int32 (R, W) and int64 (W,) in [0, 2**32) -> int64 (R, W)."""
    return (hi.to(tl.int64) << 32) | position[None, :]


@triton.jit
def unpack(key):
    """(high word int32, position int64) of int64 keys."""
    high = key >> 32  # arithmetic shift: floor(key / 2**32)
    # key - high * 2**32 is the low word as a non-negative int64 (no 32-bit mask literal,
    # whose type would be uint32).
    return high.to(tl.int32), key - (high << 32)


@triton.jit
def _compare_swap(
    x,
    R: tl.constexpr,
    N: tl.constexpr,
    STRIDE: tl.constexpr,
    DIR_SHIFT: tl.constexpr,
    FLIP: tl.constexpr,
):
    """One column of comparators on each row of ``x`` (R, N): positions i and i + STRIDE.

    Pairs form groups of ``2 * STRIDE``; group ``g`` sorts descending when bit ``DIR_SHIFT`` of
    ``g``, xor ``FLIP``, is set.
    """
    G: tl.constexpr = N // (2 * STRIDE)
    y = tl.reshape(x, (R, G, 2, STRIDE))
    lo = tl.min(y, axis=2, keep_dims=True)
    hi = tl.max(y, axis=2, keep_dims=True)
    right = tl.reshape(tl.arange(0, 2), (1, 1, 2, 1))
    if G == 1:
        swap = right ^ FLIP
    elif DIR_SHIFT < 31:
        desc = (tl.arange(0, G) >> DIR_SHIFT) & 1
        swap = right ^ (tl.reshape(desc, (1, G, 1, 1)) ^ FLIP)
    else:
        swap = right ^ FLIP
    y = tl.where(swap != 0, hi, lo)
    return tl.reshape(y, (R, N))


@triton.jit
def sort_runs(x, R: tl.constexpr, N: tl.constexpr, LOG_RUN: tl.constexpr, FLIP: tl.constexpr):
    """Sort each run of ``2**LOG_RUN`` entries of every row; runs alternate direction.

    Run ``r`` is ascending when ``r`` is even (descending when ``FLIP``); a single run covering
    the row is sorted in the direction ``FLIP`` gives.
    """
    for s in tl.static_range(1, LOG_RUN + 1):
        for t in tl.static_range(0, s):
            x = _compare_swap(x, R, N, 1 << (s - 1 - t), t, FLIP)
    return x


@triton.jit
def merge_runs(x, R: tl.constexpr, N: tl.constexpr, LOG_RUN: tl.constexpr, FLIP: tl.constexpr):
    """Sort each bitonic run of ``2**LOG_RUN`` entries (directions as in :func:`sort_runs`)."""
    for t in tl.static_range(0, LOG_RUN):
        x = _compare_swap(x, R, N, 1 << (LOG_RUN - 1 - t), t, FLIP)
    return x


@triton.jit
def smallest(
    x,
    R: tl.constexpr,
    N: tl.constexpr,
    LOG_N: tl.constexpr,
    LOG_K: tl.constexpr,
    FLIP: tl.constexpr,
):
    """The ``2**LOG_K`` smallest keys of each row of ``x`` (R, N = 2**LOG_N), sorted.

    Ascending, or descending when ``FLIP``. Runs of K are sorted, then pairs of runs (one
    ascending, one descending) are halved with an elementwise min and re-merged.
    """
    K: tl.constexpr = 1 << LOG_K
    x = sort_runs(x, R, N, LOG_K, FLIP)
    for r in tl.static_range(0, LOG_N - LOG_K):
        x = tl.min(tl.reshape(x, (R, N >> (r + 1 + LOG_K), 2, K)), axis=2)
        x = tl.reshape(x, (R, N >> (r + 1)))
        x = merge_runs(x, R, N >> (r + 1), LOG_K, FLIP)
    return x


@triton.jit
def merge_tile(
    acc,
    hi,
    positions,
    R: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
    BN: tl.constexpr,
    LOG_BN: tl.constexpr,
    ORDERED: tl.constexpr = True,
):
    """Merge a tile into a running top-k.

    Parameters
    ----------
    acc : int64 (R, K), ascending keys (``SENTINEL`` for empty slots)
    hi : int32 (R, BN), :func:`score_to_hi` of the tile's scores (``MISSING_HI`` for padding)
    positions : int64 (BN,), the tile's positions (tie-break words), in [0, 2**32)
    ORDERED : constexpr bool
        The tile's positions are all above those in ``acc`` (a tile of a row-ordered scan).

    Returns
    -------
    int64 (R, K), ascending: the K smallest keys of ``acc`` and the tile.

    A tile in which no entry beats its row's current k-th key costs one comparison per entry:
    when ``ORDERED``, an entry whose high word equals the k-th's loses the tie (its position
    is higher); otherwise whole keys are compared.
    """
    kth = tl.max(acc, axis=1)
    if ORDERED:
        hits = tl.sum((hi < (kth >> 32).to(tl.int32)[:, None]).to(tl.int32))
    else:
        hits = tl.sum((pack(hi, positions) < kth[:, None]).to(tl.int32))
    if hits > 0:
        acc = merge_keys(acc, pack(hi, positions), R, K, LOG_K, BN, LOG_BN)
    return acc


@triton.jit
def merge_keys(
    acc,
    keys,
    R: tl.constexpr,
    K: tl.constexpr,
    LOG_K: tl.constexpr,
    N: tl.constexpr,
    LOG_N: tl.constexpr,
):
    """The K smallest of a running top-k ``acc`` (R, K) ascending and keys (R, N), ascending.

    ``keys`` are in any order (``SENTINEL`` for empty slots); N and K are powers of two.
    """
    if N >= K:
        best = smallest(keys, R, N, LOG_N, LOG_K, 1)  # (R, K) descending
    else:
        # All N sorted descending, placed after K - N sentinels: still descending.
        tile = smallest(keys, R, N, LOG_N, LOG_N, 1)
        runs = tl.broadcast_to(tl.reshape(tile, (R, 1, N)), (R, K // N, N))
        last = tl.reshape(tl.arange(0, K // N) == K // N - 1, (1, K // N, 1))
        best = tl.reshape(tl.where(last, runs, SENTINEL), (R, K))
    # Ascending acc against descending best: the elementwise min holds the K smallest of
    # both, as a bitonic sequence.
    return merge_runs(tl.minimum(acc, best), R, K, LOG_K, 0)
