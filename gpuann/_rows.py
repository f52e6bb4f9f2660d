"""``IdRows``: the one id-sorted row store every gpuann index that keeps rows is built on.

Named columns (vectors, squared norms, codes…) of ``n`` rows kept **sorted by a unique,
non-negative int64 id**, with spare capacity. Sorted ids make "lower row" mean "lower id", so
an exact search that breaks ties by lower row breaks them by lower id for free, and ids are
found by binary search — or, when the ids are consecutive (the usual case: automatic ids), by
subtraction (the *dense* fast path).

Costs: appending ids larger than every stored one is an amortised O(batch) copy into spare
capacity; ids that fall between stored ones cost a merge, O(n). Capacity grows geometrically
with the rows *held* (never with the capacity alone), so many small out-of-order adds cannot
inflate it: capacity is at most ``max(2 · rows held, 1024)`` after an add.

Every mutation allocates before it writes, so a failure leaves the store as it was. Callers
hold their index's lock.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gpuann.errors import UnknownIdError

__all__ = ["MIN_CAPACITY", "IdRows", "missing_ids_error"]

#: Rows allocated at least once a store holds anything.
MIN_CAPACITY = 1024
_INT64_MAX = 2**63 - 1


def missing_ids_error(missing: torch.Tensor, name: str = "ids") -> UnknownIdError:
    """The error for ids that are not in an index, naming the argument and the first ids."""
    more = "…" if missing.numel() > 10 else ""
    return UnknownIdError(
        f"{name}: {missing.numel()} id(s) not in the index: {missing[:10].tolist()}{more}"
    )


def _capacity(rows: int, current: int) -> int:
    """Capacity for ``rows`` rows: the current one if it fits, else double it (amortised
    appends), but never more than twice the rows held (nor less than ``MIN_CAPACITY``)."""
    if rows <= current:
        return current
    return min(max(rows, 2 * current, MIN_CAPACITY), max(2 * rows, MIN_CAPACITY))


class IdRows:
    """Named columns ``{name: (row shape, dtype)}`` of ``n`` rows, sorted by id.

    Parameters
    ----------
    device : torch.device
    columns : mapping of str to (tuple of int, torch.dtype)
        The shape of one row (``()`` for scalars) and the dtype of each column.

    Examples
    --------
    >>> rows = IdRows(torch.device("cpu"), {"x": ((2,), torch.float32)})
    >>> ids, order = rows.new_ids([7, 3], 2)
    >>> rows.insert(ids, {"x": torch.tensor([[7.0, 7.0], [3.0, 3.0]])[order]})
    >>> rows.stored_ids.tolist(), rows.view("x")[:, 0].tolist()
    ([3, 7], [3.0, 7.0])
    """

    def __init__(
        self, device: torch.device, columns: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    ) -> None:
        self.device = torch.device(device)
        self.columns = dict(columns)
        self.n = 0
        self.next_id = 0
        self.ids, self.data = self._allocate(0)
        self._dense_start: int | None = None

    # ---------------------------------------------------------------- storage
    def _allocate(self, capacity: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = torch.empty(capacity, dtype=torch.int64, device=self.device)
        data = {
            name: torch.empty((capacity, *shape), dtype=dtype, device=self.device)
            for name, (shape, dtype) in self.columns.items()
        }
        return ids, data

    @property
    def capacity(self) -> int:
        """Rows allocated."""
        return self.ids.shape[0]

    def view(self, name: str) -> torch.Tensor:
        """The ``n`` stored rows of column ``name`` (a view)."""
        return self.data[name][: self.n]

    @property
    def stored_ids(self) -> torch.Tensor:
        """The ``n`` stored ids, ascending (a view)."""
        return self.ids[: self.n]

    @property
    def nbytes(self) -> int:
        """Bytes held, spare capacity included (from sizes alone: no sync)."""
        return self.ids.nbytes + sum(t.nbytes for t in self.data.values())

    def __len__(self) -> int:
        return self.n

    # ---------------------------------------------------------------- lookups
    def positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``ids`` (clamped into range) and whether each id is stored."""
        n = self.n
        if n == 0:
            return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        if self._dense_start is not None:
            pos = ids - self._dense_start
            found = (pos >= 0) & (pos < n)
            return pos.clamp_(0, n - 1), found
        stored = self.stored_ids
        pos = torch.searchsorted(stored, ids).clamp_(max=n - 1)
        return pos, stored[pos] == ids

    def require(self, ids: torch.Tensor, name: str = "ids") -> torch.Tensor:
        """Rows of ``ids``; raise :func:`missing_ids_error` if any is not stored."""
        pos, found = self.positions(ids)
        if not bool(found.all()):
            raise missing_ids_error(ids[~found], name)
        return pos

    def ids_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Ids of ``rows``, with ``-1`` (no row) kept as ``-1``."""
        if self.n == 0:
            return torch.full_like(rows, -1)
        if self._dense_start == 0:  # ids are the rows themselves
            return rows.clone()
        return torch.where(rows >= 0, self.stored_ids[rows.clamp(min=0)], rows)

    # ---------------------------------------------------------------- ids for new rows
    def automatic_ids(self, m: int) -> torch.Tensor:
        """``m`` consecutive ids after the largest id ever used."""
        if self.next_id + m - 1 > _INT64_MAX:
            raise OverflowError(
                f"ids: automatic ids would pass 2**63 - 1 (next id {self.next_id}, {m} vectors); "
                "pass ids explicitly"
            )
        return torch.arange(self.next_id, self.next_id + m, device=self.device)

    def new_ids(self, ids: object, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validated ids for ``m`` new rows, ascending, and the order to apply to the rows.

        ``None`` gives :meth:`automatic_ids` (order ``None``). Given ids must be unique,
        non-negative and not stored already.
        """
        from gpuann._validate import as_new_ids

        if ids is None:
            return self.automatic_ids(m), None
        new = as_new_ids(ids, m, device=self.device)
        _, present = self.positions(new)
        if bool(present.any()):
            dup = new[present]
            raise ValueError(f"ids: {dup.numel()} id(s) already in the index: {dup[:10].tolist()}")
        order = torch.argsort(new)
        return new[order], order

    # ---------------------------------------------------------------- mutations
    def insert(self, new_ids: torch.Tensor, rows: Mapping[str, torch.Tensor]) -> None:
        """Insert rows whose ``new_ids`` are ascending and not stored."""
        m = new_ids.shape[0]
        if m == 0:
            return
        n = self.n
        first, last = int(new_ids[0]), int(new_ids[-1])
        capacity = _capacity(n + m, self.capacity)
        if n == 0 or first > int(self.ids[n - 1]):
            ids, data = self.ids, self.data
            if capacity != self.capacity:
                ids, data = self._allocate(capacity)
                ids[:n] = self.ids[:n]
                for name in data:
                    data[name][:n] = self.data[name][:n]
            ids[n : n + m] = new_ids
            for name in data:
                data[name][n : n + m] = rows[name]
            dense = self._dense_after_append(first, last, m)
        else:
            stored = self.ids[:n]
            old_rows = torch.arange(n, device=self.device) + torch.searchsorted(new_ids, stored)
            new_rows = torch.arange(m, device=self.device) + torch.searchsorted(stored, new_ids)
            ids, data = self._allocate(capacity)
            ids[old_rows], ids[new_rows] = stored, new_ids
            for name in data:
                data[name][old_rows], data[name][new_rows] = self.data[name][:n], rows[name]
            dense = None
        self.ids, self.data, self.n = ids, data, n + m
        self.next_id = max(self.next_id, last + 1)
        self._dense_start = dense if dense is not None else self._check_dense()

    def _dense_after_append(self, first: int, last: int, m: int) -> int | None:
        if last - first != m - 1:
            return None
        if self.n == 0:
            return first
        if self._dense_start is not None and first == self._dense_start + self.n:
            return self._dense_start
        return None

    def _check_dense(self) -> int | None:
        if self.n == 0:
            return None
        lo, hi = int(self.ids[0]), int(self.ids[self.n - 1])
        return lo if hi - lo == self.n - 1 else None

    def set_rows(self, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the given columns at ``rows`` (an ``update``)."""
        for name, value in values.items():
            self.data[name][rows] = value

    def remove_rows(self, rows: torch.Tensor) -> int:
        """Remove ``rows`` (unique, stored) and return how many were removed."""
        if rows.numel() == 0:
            return 0
        keep = torch.ones(self.n, dtype=torch.bool, device=self.device)
        keep[rows] = False
        kept_ids = self.stored_ids[keep]
        kept = {name: self.view(name)[keep] for name in self.data}
        n = kept_ids.shape[0]
        capacity = self.capacity
        if capacity > max(4 * n, MIN_CAPACITY):  # shrink what was freed: capacity follows rows
            ids, data = self._allocate(_capacity(n, 0))
        else:
            ids, data = self.ids, self.data
        ids[:n] = kept_ids
        for name in data:
            data[name][:n] = kept[name]
        removed = self.n - n
        self.ids, self.data, self.n = ids, data, n
        self._dense_start = self._check_dense()
        return removed

    def renumber(self) -> None:
        """Ids become 0..n-1 in row order (faiss's ``IndexFlat.remove_ids`` semantics)."""
        self.ids[: self.n] = torch.arange(self.n, device=self.device)
        self.next_id = self.n
        self._dense_start = 0 if self.n else None

    def reset(self) -> None:
        """Drop every row; ids restart at 0."""
        self.ids, self.data = self._allocate(0)
        self.n = self.next_id = 0
        self._dense_start = None

    def load(self, ids: torch.Tensor, rows: Mapping[str, torch.Tensor], next_id: int) -> None:
        """Replace the content by ``rows`` with ascending ``ids`` (no spare capacity)."""
        self.ids = ids.to(self.device, torch.int64).contiguous()
        self.data = {
            name: rows[name].to(self.device, dtype).reshape(-1, *shape).contiguous()
            for name, (shape, dtype) in self.columns.items()
        }
        self.n = ids.shape[0]
        self.next_id = max(int(next_id), int(ids[-1]) + 1 if self.n else 0)
        self._dense_start = self._check_dense()

    def copy_to(self, device: torch.device) -> IdRows:
        """A copy of the stored rows on ``device`` (never sharing memory with this one)."""
        other = IdRows(device, self.columns)
        same = torch.device(device) == self.device
        columns = {name: self.view(name) for name in self.data}
        if same:
            columns = {name: t.clone() for name, t in columns.items()}
        ids = self.stored_ids.clone() if same else self.stored_ids
        other.load(ids, columns, self.next_id)
        return other

    def arrays(self) -> dict[str, torch.Tensor]:
        """The stored ids and columns (views), for saving."""
        return {"ids": self.stored_ids, **{name: self.view(name) for name in self.data}}
