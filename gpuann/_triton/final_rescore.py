"""Exact values of the fused kernel's winners, for float32 storage scored on the tensor cores.

With ``TF32X3`` the kernel ranks float32 rows by three TF32 products of each operand's hi/lo
split: errors of the order of float32 accumulation's, but not float32 FMA's bits. The ``k``
winners of each query are re-scored here in float64 from the stored values (L2 ``‖q − x‖²``,
inner product ``⟨q, x⟩ · scale``), rounded to float32, and re-sorted by (value, tie order), so
the distances returned do not carry the tensor cores' rounding. The winners themselves were
chosen by the TF32X3 scores: where two rows' scores differ by less than float32-level errors at
the k-th place, the set may differ from an FMA search's (as between any two float32 searches).

Cost: the winners' rows are gathered and converted (about 28 bytes of traffic per
query × k × d element), in chunks of :data:`RESCORE_CHUNK_BYTES`.
"""

from __future__ import annotations

import torch

from gpuann._tiebreak import ordered_key

__all__ = ["RESCORE_CHUNK_BYTES", "RESCORE_CHUNK_BYTES_CUDA", "rescore_winners"]

#: Bytes of float64 temporaries per chunk of queries (gathered rows and their products): on
#: CUDA larger chunks, so that large k does not cost thousands of small launches.
RESCORE_CHUNK_BYTES = 64 << 20
RESCORE_CHUNK_BYTES_CUDA = 256 << 20


def rescore_winners(
    queries: torch.Tensor,
    database: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    l2: bool,
    column_scale: torch.Tensor | None = None,
    tie: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 values of ``positions``' rows, each row re-sorted nearest first.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), float32
    database : torch.Tensor, shape (N, d), float32
    values, positions : torch.Tensor, shape (Q, k), float32 and int64 (``-1`` when missing)
        The kernel's distances (L2) or similarities (inner product) and rows.
    l2 : bool
    column_scale : torch.Tensor, shape (N,), float32, optional
        Inner product: the factor of each row's score.
    tie : torch.Tensor, shape (N,), int64 in ``[0, 2**32)``, optional
        Tie order of the rows (default: the row).

    Returns
    -------
    values, positions : torch.Tensor, shape (Q, k), re-scored and re-sorted (missing last)
    """
    n_queries, k = positions.shape
    if n_queries == 0 or k == 0:
        return values, positions
    dim = queries.shape[1]
    budget = RESCORE_CHUNK_BYTES_CUDA if queries.device.type == "cuda" else RESCORE_CHUNK_BYTES
    step = max(1, budget // (16 * k * max(dim, 1)))
    out_values = torch.empty_like(values)
    out_positions = torch.empty_like(positions)
    for q0 in range(0, n_queries, step):
        part = slice(q0, q0 + step)
        found = positions[part]
        valid = found >= 0
        rows = database[found.clamp(min=0)].double()  # (B, k, d)
        q = queries[part].double()
        if l2:  # a non-finite coordinate gives NaN, as ‖x‖² − 2⟨q, x⟩ + ‖q‖² does (inf − inf)
            diff = rows.sub_(q[:, None, :])
            exact = torch.einsum("bkd,bkd->bk", diff, diff)
            exact = exact.masked_fill_(~torch.isfinite(exact), float("nan"))
        else:
            exact = torch.einsum("bkd,bd->bk", rows, q)
            if column_scale is not None:
                exact = exact * column_scale[found.clamp(min=0)].double()
        exact = torch.where(valid, exact.float(), values[part])
        order_value = exact if l2 else -exact
        order_tie = found.clamp(min=0) if tie is None else tie[found.clamp(min=0)]
        key = (ordered_key(order_value) << 32) | order_tie
        key = key.masked_fill(~valid, torch.iinfo(torch.int64).max)
        order = torch.argsort(key, dim=1)
        out_values[part] = exact.gather(1, order)
        out_positions[part] = found.gather(1, order)
    return out_values, out_positions
