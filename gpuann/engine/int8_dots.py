"""Exact integer dot products of int8 queries with int8 database codes, as float32 scores.

Every backend scores int8 storage the same way: the dots are exact integers (int32
accumulation), rounded once to float32 (exact up to 2**24, so for d <= 1024), then scaled by
each query's power-of-two factor (exact too). So the torch backend, the Triton kernel's int8
``tl.dot`` and any tiling give the same bits.

On the CPU ``torch._int_mm`` (oneDNN) runs the product 2-5x faster than a float32 ``mm`` of
the same codes here (AVX512-VNNI), when a probe finds it exact (it is not without VNNI);
elsewhere (or for shapes ``_int_mm`` refuses on CUDA)
a float32 ``mm`` of the codes is exact while d <= 1024, and a float64 one beyond (and
always where d > 131 071, past which int32 accumulation could overflow).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["EXACT_FLOAT32_MAX_DIM", "EXACT_INT32_MAX_DIM", "int8_scores"]

#: Largest d for which every partial sum of int8 × int8 products (|p| <= 128 · 128) is an
#: integer below 2**24, so that a float32 ``mm`` of the codes is exact in any order.
EXACT_FLOAT32_MAX_DIM = 2**24 // (128 * 128)
#: Largest d for which int32 accumulation of int8 × int8 products cannot overflow: beyond it
#: (d > 131 071) ``torch._int_mm`` and the fused kernel's int8 ``tl.dot`` would wrap, and the
#: dots run in float64 (exact while d·128² < 2**53).
EXACT_INT32_MAX_DIM = (2**31 - 1) // (128 * 128)


@functools.cache
def _cpu_int_mm_exact() -> bool:
    """Whether this CPU's ``torch._int_mm`` gives exact dots (probed once).

    oneDNN's s8 x s8 -> s32 GEMM behind it is wrong on CPUs without VNNI (a review reproduced
    it with ``ONEDNN_MAX_CPU_ISA=AVX2``: 127s against 127s gave 8160 for 1032256), so a product
    with every value at its extremes and a random one are checked against exact integers.
    """
    g = torch.Generator().manual_seed(0)
    cases = [
        (torch.full((32, 64), 127, dtype=torch.int8), torch.full((64, 64), 127, dtype=torch.int8)),
        (
            torch.randint(-128, 128, (33, 70), generator=g, dtype=torch.int8),
            torch.randint(-128, 128, (65, 70), generator=g, dtype=torch.int8),
        ),
    ]
    try:
        return all(
            torch.equal(torch._int_mm(a, b.T).long(), a.long() @ b.long().T) for a, b in cases
        )
    except RuntimeError:
        return False


def _int_mm_ok(queries: torch.Tensor, codes: torch.Tensor) -> bool:
    if queries.shape[1] > EXACT_INT32_MAX_DIM:
        return False
    if queries.device.type == "cpu":
        # torch 2.13's CPU ``_int_mm`` returns uninitialised memory when d == 1 (seen here:
        # every d in 2..3000 and random shapes up to 700 x 5000 were exact, d == 1 never).
        return queries.shape[1] >= 2 and _cpu_int_mm_exact()
    if queries.device.type != "cuda":
        return False
    # cuBLASLt's int8 GEMM: more than 16 rows, inner and outer sizes multiples of 8.
    return queries.shape[0] > 16 and queries.shape[1] % 8 == 0 and codes.shape[0] % 8 == 0


def int8_scores(
    queries: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``scale · ⟨queries, codes⟩`` (B, n) into ``out``: exact integer dots, one rounding.

    Parameters
    ----------
    queries : torch.Tensor, shape (B, d), int8
    codes : torch.Tensor, shape (n, d), int8
    scale : torch.Tensor, shape (B, 1), float32
        Each query's factor, a power of two (the product is then exact).
    out : torch.Tensor, shape (B, n), float32, contiguous

    Examples
    --------
    >>> q = torch.tensor([[1, -2]], dtype=torch.int8)
    >>> c = torch.tensor([[3, 4], [127, 127]], dtype=torch.int8)
    >>> int8_scores(q, c, torch.tensor([[0.5]]), torch.empty(1, 2))
    tensor([[ -2.5000, -63.5000]])
    """
    if _int_mm_ok(queries, codes):
        ints = out.view(torch.int32)
        torch._int_mm(queries, codes.T, out=ints)
        return torch.mul(ints, scale, out=out)  # int32 -> float32 (one rounding), exact scale
    if queries.shape[1] <= EXACT_FLOAT32_MAX_DIM:
        torch.mm(queries.float(), codes.float().T, out=out)
    else:
        out.copy_(torch.mm(queries.double(), codes.double().T))
    return out.mul_(scale)
