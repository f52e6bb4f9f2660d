"""Distances of selected (query, row) pairs with autograd: gradients for training losses.

A search selects the pairs without autograd; :func:`differentiable_distances` recomputes only
those ``Q · k`` distances (never a (Q, N) matrix) so a loss can flow back to the queries, and
to the database when it requires grad.
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann.metrics import Metric, as_metric

__all__ = ["differentiable_distances", "grad_queries"]


def _gather_rows_impl(database: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return database[positions.clamp(min=0)]


#: The selected rows of a database that gets no gradient (a bank or index buffer), gathered by
#: an opaque op: the backward must use the rows as they were at search time, and torch
#: 2.13's partitioner would otherwise re-read them from a buffer that a later ``push`` in
#: the same compiled step overwrote (pytorch/pytorch#197039), giving wrong gradients.
_gather_rows_op = torch.library.custom_op("gpuann::gather_rows", _gather_rows_impl, mutates_args=())


@_gather_rows_op.register_fake
def _gather_rows_fake(database, positions):
    return database.new_empty((*positions.shape, database.shape[1]))


def _gather_rows(database: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    if database.requires_grad or not torch.compiler.is_compiling():
        return database[positions.clamp(min=0)]
    return _gather_rows_op(database, positions)


def grad_queries(queries: Any, differentiable: bool) -> torch.Tensor | None:
    """The queries a ``search(..., differentiable=True)`` recomputes distances for, else ``None``.

    Raises ``TypeError`` when ``differentiable`` and ``queries`` is not a tensor (numpy
    queries have no autograd).

    >>> grad_queries(torch.zeros(1, 2), False) is None
    True
    """
    if not differentiable:
        return None
    if not isinstance(queries, torch.Tensor):
        raise TypeError("differentiable=True: queries must be a torch.Tensor")
    return queries


def differentiable_distances(
    queries: torch.Tensor,
    database: torch.Tensor,
    positions: torch.Tensor,
    metric: str | Metric = "l2",
) -> torch.Tensor:
    """Distances of selected (query, row) pairs, recomputed with autograd.

    Costs O(Q·k·d): the selected rows are gathered, never a (Q, N) matrix. Gradients flow
    to ``queries`` and, when it requires grad, to ``database`` (through the gather).

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), floating
    database : torch.Tensor, shape (N, d), floating, on the queries' device
    positions : torch.Tensor, shape (Q, k), int64
        Rows of ``database`` (``-1``: missing, gets ±inf and no gradient).
    metric : {"l2", "ip", "cosine"}
        Squared L2 distance, inner product, or cosine similarity (vectors normalised here).

    Returns
    -------
    torch.Tensor, shape (Q, k), the promoted dtype of the inputs and float32

    Examples
    --------
    >>> q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    >>> d = differentiable_distances(q, x, torch.tensor([[0, -1]]))
    >>> d
    tensor([[1., inf]], grad_fn=<WhereBackward0>)
    >>> d[:, 0].sum().backward(); q.grad
    tensor([[2., 0.]])
    """
    metric = as_metric(metric)
    dtype = torch.promote_types(torch.promote_types(queries.dtype, database.dtype), torch.float32)
    valid = positions >= 0
    if database.shape[0] == 0:  # nothing to gather: every place is missing
        return torch.full(
            positions.shape, metric.missing_distance, dtype=dtype, device=positions.device
        )
    q = queries.to(dtype)
    x = _gather_rows(database, positions).to(dtype)  # (Q, k, d)
    if metric is Metric.COSINE:
        q = torch.nn.functional.normalize(q, dim=-1)
        x = torch.nn.functional.normalize(x, dim=-1)
    if metric is Metric.L2:
        values = (q[:, None, :] - x).square().sum(dim=-1)
    else:
        values = (q[:, None, :] * x).sum(dim=-1)
    return torch.where(valid, values, torch.full_like(values, metric.missing_distance))
