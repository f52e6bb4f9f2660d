"""Search filters given by id, turned into the row-level filters of a ``SearchRequest``.

Users name ids (``exclude_ids``, ``allow_ids``, labels); backends see row positions and masks.
Every conversion here is made of tensor ops of fixed shape (sort, ``searchsorted``,
``scatter``): no host sync and no data-dependent shape, so it runs inside CUDA graphs and
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "as_allow_ids",
    "as_exclude_ids",
    "as_labels",
    "lookup_rows",
    "rank_of",
    "row_mask",
]


def _as_int_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name}: expected an int64 tensor, got {type(x).__name__}") from None
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer ids (int64), got {x.dtype}")
    return x.to(device=device, dtype=torch.int64)


def as_exclude_ids(exclude_ids: Any, n_queries: int, device: torch.device) -> torch.Tensor:
    """Validate ``exclude_ids``: (Q, m) ids to skip per query, ``-1`` pads.

    A 1-D tensor of length Q means one id per query (self-exclusion).

    Returns
    -------
    torch.Tensor, shape (Q, m), int64, on ``device``
    """
    ids = _as_int_tensor(exclude_ids, "exclude_ids", device)
    if ids.ndim == 1:
        ids = ids[:, None]
    if ids.ndim != 2 or ids.shape[0] != n_queries:
        raise ValueError(
            f"exclude_ids: expected shape ({n_queries}, m) (one row per query, -1 pads), "
            f"got {tuple(ids.shape)}"
        )
    return ids


def as_allow_ids(allow_ids: Any, device: torch.device) -> torch.Tensor:
    """Validate ``allow_ids``: a 1-D set of the only ids that may be returned."""
    ids = _as_int_tensor(allow_ids, "allow_ids", device)
    if ids.ndim != 1:
        raise ValueError(f"allow_ids: expected a 1-D tensor of ids, got shape {tuple(ids.shape)}")
    return ids


def as_labels(labels: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """Validate labels: (n,) int64; negative means "no label" (never matches)."""
    labels = _as_int_tensor(labels, name, device)
    if labels.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(labels.shape)}")
    return labels


def lookup_rows(
    sorted_ids: torch.Tensor, ids: torch.Tensor, order: torch.Tensor | None = None
) -> torch.Tensor:
    """Row of each id in ``ids``, ``-1`` where it is not stored (or is negative).

    Parameters
    ----------
    sorted_ids : torch.Tensor, shape (n,), int64, ascending
        The stored ids, sorted.
    ids : torch.Tensor, any shape, int64
    order : torch.Tensor, shape (n,), int64, optional
        Row of each entry of ``sorted_ids`` (default: the entry's own index).

    Returns
    -------
    torch.Tensor, shape of ``ids``, int64

    >>> lookup_rows(torch.tensor([2, 5, 9]), torch.tensor([[5, -1], [7, 9]]))
    tensor([[ 1, -1],
            [-1,  2]])
    """
    n = sorted_ids.shape[0]
    if n == 0:
        return torch.full_like(ids, -1)
    pos = torch.searchsorted(sorted_ids, ids.contiguous()).clamp_(max=n - 1)
    found = (sorted_ids[pos] == ids) & (ids >= 0)
    rows = pos if order is None else order[pos]
    return torch.where(found, rows, -1)


def row_mask(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Bool (n,) marking ``rows`` (entries ``-1`` ignored), built with a scatter (no sync).

    >>> row_mask(torch.tensor([3, -1, 0]), 4)
    tensor([ True, False, False,  True])
    """
    mask = torch.zeros(n + 1, dtype=torch.bool, device=rows.device)
    mask.scatter_(0, torch.where(rows >= 0, rows, n).flatten(), True)
    return mask[:n]


def rank_of(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort ``keys`` once: (sorted keys, row of each sorted key, rank of each row).

    ``rank[row]`` is the row's place in ascending key order (ties by lower row): the tie
    order a search uses when rows are not stored in id order.

    >>> rank_of(torch.tensor([7, 3, 5]))
    (tensor([3, 5, 7]), tensor([1, 2, 0]), tensor([2, 0, 1]))
    """
    sorted_keys, order = torch.sort(keys, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(order.shape[0], device=order.device))
    return sorted_keys, order, rank
