"""Tie-aware ordering of scores: packed sort keys, top-k with ties to the lower column, merges.

Every function here selects the *smallest* values (callers negate similarities) and breaks ties
by a tie-break order given explicitly: the column position in a row, or an id. ``torch.topk``
alone leaves the order of equal values unspecified; these functions make it deterministic:
among equal values the lower position (or id) wins, on every device.

Missing entries are marked by id ``-1`` and always sort after real ones.
"""

from __future__ import annotations

import torch

__all__ = ["merge_topk", "ordered_key", "topk_by_id", "topk_lex"]

_SIGN_MASK = 0x7FFFFFFF


def ordered_key(values: torch.Tensor) -> torch.Tensor:
    """An int64 image of float32 ``values`` with the same order.

    NaN maps above ``+inf`` and ``-0.0`` equals ``+0.0``.

    >>> ordered_key(torch.tensor([-1.0, -0.0, 0.0, 2.0, float("inf"), float("nan")])).diff() >= 0
    tensor([True, True, True, True, True])
    """
    v = values.float() + 0.0  # -0.0 + 0.0 == +0.0
    v = torch.where(torch.isnan(v), torch.full_like(v, float("nan")).abs(), v)
    bits = v.view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ _SIGN_MASK, bits)


def _packed_key(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(value, pos) packed into one int64 that sorts lexicographically; pos in [0, 2**32)."""
    return (ordered_key(values) << 32) | pos


def _lex_order(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Permutation of each row that sorts by value, then by ``pos``."""
    return torch.argsort(_packed_key(values, pos), dim=1)


def topk_lex(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row, ties broken by lower column.

    Parameters
    ----------
    scores : torch.Tensor, shape (R, W), float32
    k : int
        At most ``W`` entries are returned.

    Returns
    -------
    values : torch.Tensor, shape (R, min(k, W)), float32, ascending
    columns : torch.Tensor, shape (R, min(k, W)), int64

    >>> topk_lex(torch.tensor([[3.0, 1.0, 1.0, 0.0]]), 2)
    (tensor([[0., 1.]]), tensor([[3, 1]]))
    """
    R, W = scores.shape
    if W >= 2**32:
        raise ValueError(f"scores: rows longer than 2**32 are not supported, got {W}")
    kk = min(k, W)
    if kk == W or kk * 8 >= W:
        # Narrow rows: one sort of packed keys is exact and cheap.
        cols = torch.arange(W, device=scores.device).expand(R, W)
        key = _packed_key(scores, cols)
        _, order = torch.topk(key, kk, dim=1, largest=False, sorted=True)
        return scores.gather(1, order), order
    # Wide rows: float top-(k+1); rows whose k-th and (k+1)-th values tie at the boundary are
    # reselected exactly with packed keys (rare with real data).
    vals, cols = torch.topk(scores, kk + 1, dim=1, largest=False, sorted=True)
    # A NaN k-th place is a tie too (NaN != NaN): which NaNs topk kept is arbitrary.
    boundary_tie = (vals[:, kk - 1] == vals[:, kk]) | torch.isnan(vals[:, kk - 1])
    vals, cols = vals[:, :kk], cols[:, :kk]
    if scores.device.type != "cpu" or bool(boundary_tie.any()):
        # On CUDA the repair is done unconditionally (masked) to avoid a host sync.
        rows = boundary_tie.nonzero().flatten() if scores.device.type == "cpu" else None
        sub = scores if rows is None else scores.index_select(0, rows)
        sub_cols = torch.arange(W, device=scores.device).expand(sub.shape[0], W)
        _, exact_cols = torch.topk(_packed_key(sub, sub_cols), kk, dim=1, largest=False)
        if rows is None:
            cols = torch.where(boundary_tie[:, None], exact_cols, cols)
        else:
            cols = cols.index_copy(0, rows, exact_cols)
        vals = scores.gather(1, cols)
    elif not bool((vals[:, 1:] == vals[:, :-1]).any() | torch.isnan(vals[:, -1:]).any()):
        # CPU, no tie inside the k and no NaN (NaN sorts last, so the last column shows one):
        # topk's value order is already the (value, column) order.
        return vals, cols
    order = _lex_order(vals, cols)
    return vals.gather(1, order), cols.gather(1, order)


def merge_topk(
    run_values: torch.Tensor,
    run_ids: torch.Tensor,
    new_values: torch.Tensor,
    new_ids: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a running top-k with new candidates whose ids are all larger than the running ones.

    This is the merge of a streaming search: tiles of the database are visited in id order,
    so a tie between an old and a new entry goes to the old one, and ties among new entries go
    to the earlier column. ``run_*`` must be sorted (value, then id); ``new_*`` in id order.

    Parameters
    ----------
    run_values, run_ids : torch.Tensor, shape (R, k0)
    new_values, new_ids : torch.Tensor, shape (R, m)
    k : int

    Returns
    -------
    values, ids : torch.Tensor, shape (R, min(k, k0 + m)), sorted by (value, id)
    """
    values = torch.cat([run_values, new_values], dim=1)
    ids = torch.cat([run_ids, new_ids], dim=1)
    values = torch.where(ids < 0, torch.full_like(values, float("nan")), values)
    top_values, cols = topk_lex(values, k)
    return top_values, ids.gather(1, cols)


def topk_by_id(
    values: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest of each row, ties broken by lower id, id ``-1`` last.

    For merging result lists whose ids come in no particular order (shards, partial results).

    Parameters
    ----------
    values : torch.Tensor, shape (R, W), float32
    ids : torch.Tensor, shape (R, W), int64 (``-1`` marks a missing entry)
    k : int

    Returns
    -------
    values, ids : torch.Tensor, shape (R, min(k, W))

    >>> topk_by_id(torch.tensor([[1.0, 1.0, 0.5]]), torch.tensor([[9, 4, -1]]), 2)
    (tensor([[1., 1.]]), tensor([[4, 9]]))
    """
    values = torch.where(ids < 0, torch.full_like(values, float("nan")), values.float())
    by_id = torch.sort(ids, dim=1, stable=True).indices
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    by_value = torch.sort(values, dim=1, stable=True).indices[:, :k]
    return values.gather(1, by_value), ids.gather(1, by_value)
