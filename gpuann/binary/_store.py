"""Rows of several tensors kept sorted by a unique int64 id, with spare capacity.

The storage scheme of :class:`gpuann.FlatIndex`, for indexes that hold more than one array per
vector (codes, vectors, norms). Sorted ids make "lower row" mean "lower id", so searches break
ties by id for free. Appending larger ids is an amortised O(batch) copy; other ids cost a merge.
Every mutation allocates before it writes, so a failure leaves the store as it was. Callers
hold their index's lock.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gpuann._validate import as_ids

__all__ = ["IdSortedRows"]

_MIN_CAPACITY = 1024


class IdSortedRows:
    """Named columns ``{name: (row shape, dtype)}`` of ``n`` rows, sorted by id.

    Parameters
    ----------
    device : torch.device
    columns : mapping of str to (tuple of int, torch.dtype)
        The shape of one row (``()`` for scalars) and the dtype of each column.
    """

    def __init__(
        self, device: torch.device, columns: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    ):
        self.device = device
        self.columns = dict(columns)
        self.n = 0
        self.next_id = 0
        self.ids, self.data = self._allocate(0)

    def _allocate(self, capacity: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = torch.empty(capacity, dtype=torch.int64, device=self.device)
        data = {
            name: torch.empty((capacity, *shape), dtype=dtype, device=self.device)
            for name, (shape, dtype) in self.columns.items()
        }
        return ids, data

    def view(self, name: str) -> torch.Tensor:
        """The ``n`` stored rows of column ``name`` (a view)."""
        return self.data[name][: self.n]

    @property
    def stored_ids(self) -> torch.Tensor:
        """The ``n`` stored ids, ascending (a view)."""
        return self.ids[: self.n]

    @property
    def nbytes(self) -> int:
        """Bytes held, spare capacity included."""
        return self.ids.nbytes + sum(t.nbytes for t in self.data.values())

    def positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``ids`` (clamped) and whether each id is stored."""
        if self.n == 0:
            return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        stored = self.stored_ids
        pos = torch.searchsorted(stored, ids).clamp_(max=self.n - 1)
        return pos, stored[pos] == ids

    def require(self, ids: torch.Tensor, name: str = "ids") -> torch.Tensor:
        """Rows of ``ids``; raise naming the missing ones if any is not stored."""
        pos, found = self.positions(ids)
        if not bool(found.all()):
            missing = ids[~found]
            more = "…" if missing.numel() > 10 else ""
            raise ValueError(
                f"{name}: {missing.numel()} id(s) not in the index: {missing[:10].tolist()}{more}"
            )
        return pos

    def new_ids(self, ids: object, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validated ids for ``m`` new rows, ascending, and the order to apply to the rows.

        ``None`` gives consecutive ids after the largest id ever used (order ``None``).
        """
        if ids is None:
            return torch.arange(self.next_id, self.next_id + m, device=self.device), None
        new = as_ids(ids, m, device=self.device)
        _, present = self.positions(new)
        if bool(present.any()):
            dup = new[present]
            raise ValueError(f"ids: {dup.numel()} id(s) already in the index: {dup[:10].tolist()}")
        order = torch.argsort(new)
        return new[order], order

    def insert(self, new_ids: torch.Tensor, rows: Mapping[str, torch.Tensor]) -> None:
        """Insert rows whose ``new_ids`` are ascending and not stored."""
        m = new_ids.shape[0]
        if m == 0:
            return
        n = self.n
        next_id = max(self.next_id, int(new_ids[-1]) + 1)
        if n == 0 or int(new_ids[0]) > int(self.ids[n - 1]):
            ids, data = self.ids, self.data
            if n + m > ids.shape[0]:
                ids, data = self._allocate(max(n + m, 2 * ids.shape[0], _MIN_CAPACITY))
                ids[:n] = self.ids[:n]
                for name in data:
                    data[name][:n] = self.data[name][:n]
            ids[n : n + m] = new_ids
            for name in data:
                data[name][n : n + m] = rows[name]
        else:
            stored = self.ids[:n]
            old_rows = torch.arange(n, device=self.device) + torch.searchsorted(new_ids, stored)
            new_rows = torch.arange(m, device=self.device) + torch.searchsorted(stored, new_ids)
            ids, data = self._allocate(max(n + m, 2 * self.ids.shape[0], _MIN_CAPACITY))
            ids[old_rows], ids[new_rows] = stored, new_ids
            for name in data:
                data[name][old_rows], data[name][new_rows] = self.data[name][:n], rows[name]
        self.ids, self.data, self.n, self.next_id = ids, data, n + m, next_id

    def remove(self, ids: torch.Tensor, strict: bool) -> int:
        """Remove ``ids`` and return how many were removed (see ``FlatIndex.remove``)."""
        if strict:
            pos = self.require(ids)
        else:
            pos, found = self.positions(ids)
            pos = pos[found]
        if pos.numel() == 0:
            return 0
        keep = torch.ones(self.n, dtype=torch.bool, device=self.device)
        keep[pos] = False
        kept_ids = self.stored_ids[keep]
        kept = {name: self.view(name)[keep] for name in self.data}
        n = kept_ids.shape[0]
        self.ids[:n] = kept_ids
        for name in self.data:
            self.data[name][:n] = kept[name]
        removed, self.n = self.n - n, n
        return removed

    def renumber(self) -> None:
        """Ids become 0..n-1 in row order (faiss's ``remove_ids`` semantics)."""
        self.ids[: self.n] = torch.arange(self.n, device=self.device)
        self.next_id = self.n

    def reset(self) -> None:
        """Drop every row; ids restart at 0."""
        self.ids, self.data = self._allocate(0)
        self.n = self.next_id = 0

    def load(self, ids: torch.Tensor, rows: Mapping[str, torch.Tensor], next_id: int) -> None:
        """Replace the content by ``rows`` with ascending ``ids`` (no spare capacity)."""
        self.ids = ids.to(self.device, torch.int64).contiguous()
        self.data = {
            name: rows[name].to(self.device, dtype).reshape(-1, *shape).contiguous()
            for name, (shape, dtype) in self.columns.items()
        }
        self.n, self.next_id = ids.shape[0], int(next_id)

    def copy_to(self, device: torch.device) -> IdSortedRows:
        """A copy of the stored rows on ``device``."""
        other = IdSortedRows(device, self.columns)
        other.load(self.stored_ids, {name: self.view(name) for name in self.data}, self.next_id)
        return other
