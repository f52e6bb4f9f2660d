"""Row-level search filters, and which (query, row) pairs they let through.

Users name ids (``exclude_ids``, ``allow_ids``, labels; see :mod:`gpuann.filters`); the engine
and the backends see row positions and masks, gathered here in :class:`RowFilters`. Self-match
masking of a self-join is an exclude filter like any other (each query excludes its own row).
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["FILTER_FIELDS", "RowFilters"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowFilters:
    """Which rows a search may return, and the order that breaks ties.

    The fields are keyword-only, so that a request dataclass can extend this one with fields
    of its own (see :class:`~gpuann.backends.base.SearchRequest`).

    Attributes
    ----------
    excluded_rows : torch.Tensor or None, shape (Q, m), int64
        Per query, row positions never returned; ``-1`` pads (any order, repeats allowed).
    allowed_rows : torch.Tensor or None, shape (N,), bool
        Only rows marked True may be returned.
    row_labels, query_labels : torch.Tensor or None, shapes (N,) and (Q,), int64
        Given together: a row is not returned for a query with the same label; negative
        labels never match.
    row_rank : torch.Tensor or None, shape (N,), int64
        Tie order, a permutation of ``range(N)``: among equal scores the lower rank wins
        (default: the lower row).
    """

    excluded_rows: torch.Tensor | None = None
    allowed_rows: torch.Tensor | None = None
    row_labels: torch.Tensor | None = None
    query_labels: torch.Tensor | None = None
    row_rank: torch.Tensor | None = None

    @property
    def labelled(self) -> bool:
        """True when label exclusion is on (both label tensors given)."""
        return self.row_labels is not None and self.query_labels is not None

    @property
    def filtered(self) -> bool:
        """True when some rows may be ineligible (any filter is set)."""
        return self.excluded_rows is not None or self.allowed_rows is not None or self.labelled

    @property
    def keyed(self) -> bool:
        """True when selection must run on packed (score, tie order) keys."""
        return self.filtered or self.row_rank is not None

    def row_filters(self) -> RowFilters:
        """These filters alone, as a plain :class:`RowFilters` (for a subclass's instance)."""
        return RowFilters(**{name: getattr(self, name) for name in FILTER_FIELDS})

    def for_queries(self, queries: slice) -> RowFilters:
        """The filters of the queries ``queries`` alone (per-query tensors sliced)."""
        return dataclasses.replace(
            self.row_filters(),
            excluded_rows=None if self.excluded_rows is None else self.excluded_rows[queries],
            query_labels=None if self.query_labels is None else self.query_labels[queries],
        )

    def tile(self, q0: int, n_q: int, r0: int, n_x: int) -> torch.Tensor | None:
        """Bool (n_q, n_x): which entries of the tile at queries ``q0``, rows ``r0`` may be
        returned (None: all)."""
        if not self.filtered:
            return None
        device = next(
            t.device
            for t in (self.excluded_rows, self.allowed_rows, self.row_labels)
            if t is not None
        )
        ok = torch.ones((n_q, n_x + 1), dtype=torch.bool, device=device)
        if self.excluded_rows is not None:
            excluded = self.excluded_rows[q0 : q0 + n_q]
            local = excluded - r0
            inside = (excluded >= 0) & (local >= 0) & (local < n_x)
            # Excluded rows outside the tile land in the spare last column (same value written).
            ok.scatter_(1, torch.where(inside, local, n_x), False)
        ok = ok[:, :n_x]
        if self.allowed_rows is not None:
            ok &= self.allowed_rows[r0 : r0 + n_x][None, :]
        if self.labelled:
            row_labels = self.row_labels[r0 : r0 + n_x][None, :]
            query_labels = self.query_labels[q0 : q0 + n_q][:, None]
            ok &= (row_labels != query_labels) | (row_labels < 0)
        return ok

    def pairs(self, query_rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Bool (n,): whether row ``positions[i]`` may be returned for query ``query_rows[i]``
        (both absolute, int64 (n,))."""
        ok = torch.ones_like(positions, dtype=torch.bool)
        if self.excluded_rows is not None:
            ok &= ~(self.excluded_rows[query_rows] == positions[:, None]).any(dim=1)
        if self.allowed_rows is not None:
            ok &= self.allowed_rows[positions]
        if self.labelled:
            row_labels = self.row_labels[positions]
            ok &= (row_labels != self.query_labels[query_rows]) | (row_labels < 0)
        return ok


#: The names of :class:`RowFilters`' fields, in order.
FILTER_FIELDS = tuple(field.name for field in dataclasses.fields(RowFilters))
