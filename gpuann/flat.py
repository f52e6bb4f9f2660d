"""``FlatIndex``: exact search over vectors kept on the device, with user ids.

Storage invariant: rows are kept sorted by id. Exact search breaks ties by lower row, which
is then the same as lower id, with no extra work at search time; ids are found by binary
search. Appending ids larger than every stored one (the usual case, and always the case with
automatic ids) is an amortised O(batch) copy into spare capacity; ids that fall between stored
ones cost a merge, O(index size).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from gpuann._rwlock import ReadWriteLock
from gpuann._validate import as_float_matrix, as_ids, check_k, resolve_device, storage_dtype
from gpuann._validate import check_finite as _require_finite
from gpuann.display import Bytes, html_repr, text_repr
from gpuann.exact import differentiable_distances, exact_search
from gpuann.filters import as_allow_ids, as_exclude_ids, lookup_rows, row_mask
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult
from gpuann.serialization import load, register_index_kind, write_index_file

__all__ = ["FlatIndex"]

_MIN_CAPACITY = 1024


class FlatIndex:
    """Exact (brute-force) index over vectors stored on one device.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"l2", "ip", "cosine"}
        For cosine, vectors are normalised once when added.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype
        Storage dtype: float32, float16 or bfloat16. Scores accumulate in float32.
    memory_budget : int, optional
        Bytes of working memory per search (see :func:`gpuann.knn`).

    Examples
    --------
    >>> index = FlatIndex(2, device="cpu")
    >>> index.add(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), ids=[10, 11, 12])
    >>> D, I = index.search(torch.tensor([[0.9, 0.9]]), k=2)
    >>> I
    tensor([[11, 10]])
    >>> index.remove([11]), len(index)
    (1, 2)
    """

    def __init__(
        self,
        dim: int,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        memory_budget: int | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        self._dim = int(dim)
        self._metric = as_metric(metric)
        self._device = resolve_device(device)
        self._dtype = storage_dtype(dtype)
        self.memory_budget = memory_budget
        self._lock = ReadWriteLock()
        self._set_state(*self._empty_state(0), n=0, next_id=0)

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def metric(self) -> Metric:
        """The metric (``Metric.L2``, ``Metric.IP`` or ``Metric.COSINE``)."""
        return self._metric

    @property
    def device(self) -> torch.device:
        """Where the vectors live and searches run."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype."""
        return self._dtype

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy)."""
        with self._lock.read():
            return self._ids[: self._n].clone()

    @property
    def nbytes(self) -> int:
        """Bytes of device memory held, spare capacity included."""
        total = self._data.nbytes + self._ids.nbytes
        return total + (self._sqnorms.nbytes if self._sqnorms is not None else 0)

    def __len__(self) -> int:
        return self._n

    def _display_fields(self) -> dict[str, Any]:
        """What ``repr`` and Jupyter show: Python ints and tensor metadata only (no sync)."""
        return {
            "n": self._n,
            "dim": self._dim,
            "metric": self._metric,
            "dtype": self._dtype,
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- state
    def _empty_state(self, capacity: int):
        data = torch.empty((capacity, self._dim), dtype=self._dtype, device=self._device)
        ids = torch.empty(capacity, dtype=torch.int64, device=self._device)
        sqnorms = torch.empty(capacity, device=self._device) if self._metric is Metric.L2 else None
        return data, ids, sqnorms

    def _set_state(self, data, ids, sqnorms, *, n: int, next_id: int) -> None:
        self._data, self._ids, self._sqnorms = data, ids, sqnorms
        self._n, self._next_id = n, next_id

    def _prepare_vectors(
        self, x: Any, name: str, check_finite: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validated vectors in storage dtype on the index device, and their squared norms."""
        x, _ = as_float_matrix(x, name, dim=self._dim)
        if check_finite:
            _require_finite(x, name)
        x = x.to(self._device)
        if self._metric is Metric.COSINE:
            x = torch.nn.functional.normalize(x.float(), dim=1)
        x = x.to(self._dtype)
        sqnorms = None
        if self._metric is Metric.L2:
            xf = x.float()
            sqnorms = (xf * xf).sum(dim=1)
        return x, sqnorms

    def _positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``ids`` (clamped) and whether each id is stored."""
        stored = self._ids[: self._n]
        if self._n == 0:
            return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        pos = torch.searchsorted(stored, ids).clamp_(max=self._n - 1)
        return pos, stored[pos] == ids

    def _require_stored(self, ids: torch.Tensor, name: str = "ids") -> torch.Tensor:
        pos, found = self._positions(ids)
        if not bool(found.all()):
            missing = ids[~found]
            raise ValueError(
                f"{name}: {missing.numel()} id(s) not in the index: "
                f"{missing[:10].tolist()}{'…' if missing.numel() > 10 else ''}"
            )
        return pos

    # ---------------------------------------------------------------- mutations
    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Add vectors.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim), floating
        ids : int64 tensor, array or list, shape (n,), optional
            Unique ids not already in the index. Default: consecutive ids after the largest
            id ever used.
        check_finite : bool
            Raise on NaN or infinity in ``x``.

        On any error the index is left unchanged.
        """
        x, sqnorms = self._prepare_vectors(x, "x", check_finite)
        m = x.shape[0]
        with self._lock.write():
            if ids is None:
                new_ids = torch.arange(self._next_id, self._next_id + m, device=self._device)
            else:
                new_ids = as_ids(ids, m, device=self._device)
                _, present = self._positions(new_ids)
                if bool(present.any()):
                    dup = new_ids[present]
                    raise ValueError(
                        f"ids: {dup.numel()} id(s) already in the index: {dup[:10].tolist()}"
                    )
                order = torch.argsort(new_ids)
                new_ids, x = new_ids[order], x[order]
                sqnorms = sqnorms[order] if sqnorms is not None else None
            if m == 0:
                return
            n = self._n
            next_id = max(self._next_id, int(new_ids[-1]) + 1)
            if n == 0 or int(new_ids[0]) > int(self._ids[n - 1]):
                self._append(x, new_ids, sqnorms, next_id)
            else:
                self._merge(x, new_ids, sqnorms, next_id)

    def _capacity_for(self, size: int) -> int:
        return max(size, 2 * self._data.shape[0], _MIN_CAPACITY)

    def _append(self, x, new_ids, sqnorms, next_id: int) -> None:
        n, m = self._n, x.shape[0]
        data, ids, norms = self._data, self._ids, self._sqnorms
        if n + m > data.shape[0]:  # grow: allocate first, so a failure changes nothing
            data, ids, norms = self._empty_state(self._capacity_for(n + m))
            data[:n], ids[:n] = self._data[:n], self._ids[:n]
            if norms is not None:
                norms[:n] = self._sqnorms[:n]
        data[n : n + m], ids[n : n + m] = x, new_ids
        if norms is not None:
            norms[n : n + m] = sqnorms
        self._set_state(data, ids, norms, n=n + m, next_id=next_id)

    def _merge(self, x, new_ids, sqnorms, next_id: int) -> None:
        n, m = self._n, x.shape[0]
        stored = self._ids[:n]
        # Final row of each old and each new vector in the merged, id-sorted order.
        old_rows = torch.arange(n, device=self._device) + torch.searchsorted(new_ids, stored)
        new_rows = torch.arange(m, device=self._device) + torch.searchsorted(stored, new_ids)
        data, ids, norms = self._empty_state(self._capacity_for(n + m))
        data[old_rows], data[new_rows] = self._data[:n], x
        ids[old_rows], ids[new_rows] = stored, new_ids
        if norms is not None:
            norms[old_rows], norms[new_rows] = self._sqnorms[:n], sqnorms
        self._set_state(data, ids, norms, n=n + m, next_id=next_id)

    def remove(self, ids: Any, *, strict: bool = True) -> int:
        """Remove vectors by id and return how many were removed.

        Parameters
        ----------
        ids : int64 tensor, array or list
        strict : bool
            When True (default) an id not in the index raises and nothing is removed;
            when False unknown ids are ignored, as faiss does.
        """
        ids = as_ids(ids, -1, device=self._device)
        with self._lock.write():
            if strict:
                pos = self._require_stored(ids)
            else:
                pos, found = self._positions(ids)
                pos = pos[found]
            if pos.numel() == 0:
                return 0
            keep = torch.ones(self._n, dtype=torch.bool, device=self._device)
            keep[pos] = False
            kept = [t[: self._n][keep] for t in (self._data, self._ids)]
            kept_norms = self._sqnorms[: self._n][keep] if self._sqnorms is not None else None
            n = kept[0].shape[0]
            self._data[:n], self._ids[:n] = kept
            if kept_norms is not None:
                self._sqnorms[:n] = kept_norms
            removed = self._n - n
            self._n = n
            return removed

    def update(self, ids: Any, x: Any, *, check_finite: bool = True) -> None:
        """Replace the vectors of existing ids.

        Parameters
        ----------
        ids : int64 tensor, array or list, shape (n,)
            Ids already in the index.
        x : torch.Tensor or numpy.ndarray, shape (n, dim)
        """
        x, sqnorms = self._prepare_vectors(x, "x", check_finite)
        ids = as_ids(ids, x.shape[0], device=self._device)
        with self._lock.write():
            pos = self._require_stored(ids)
            self._data[pos] = x
            if sqnorms is not None:
                self._sqnorms[pos] = sqnorms

    def _renumber(self) -> None:
        """Give the vectors ids 0..n-1 in their current order (faiss ``IndexFlat`` semantics)."""
        with self._lock.write():
            self._ids[: self._n] = torch.arange(self._n, device=self._device)
            self._next_id = self._n

    def reset(self) -> None:
        """Remove every vector (ids restart at 0)."""
        with self._lock.write():
            self._set_state(*self._empty_state(0), n=0, next_id=0)

    # ---------------------------------------------------------------- queries
    def reconstruct(self, ids: Any) -> Any:
        """The stored vectors of ``ids`` (normalised for cosine).

        Parameters
        ----------
        ids : int64 tensor, array or list, shape (n,)

        Returns
        -------
        torch.Tensor of shape (n, dim) in the storage dtype on the index device, or a
        float32 numpy array when ``ids`` is a numpy array.
        """
        as_numpy = isinstance(ids, np.ndarray)
        ids = as_ids(ids, -1, device=self._device, unique=False)
        with self._lock.read():
            vectors = self._data[self._require_stored(ids)]
        return vectors.float().cpu().numpy() if as_numpy else vectors

    def search(
        self,
        queries: Any,
        k: int,
        *,
        backend: str = "auto",
        memory_budget: int | None = None,
        check_finite: bool = True,
        exclude_ids: Any = None,
        allow_ids: Any = None,
        differentiable: bool = False,
    ) -> SearchResult:
        """The ``k`` nearest stored vectors of each query.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
            Moved to the index's device if needed; results come back where the queries were.
        k : int
        backend : {"auto", "triton", "torch"}
        memory_budget : int, optional
            Overrides the index's budget for this search.
        check_finite : bool
            Raise on NaN or infinity in ``queries`` (one host sync).
        exclude_ids : int64 tensor, shape (Q, m) or (Q,), optional
            Ids never returned for each query (e.g. the query's own id); ``-1`` pads, ids
            not in the index are ignored.
        allow_ids : int64 tensor, shape (n,), optional
            The only ids that may be returned (ids not in the index are ignored).
        differentiable : bool
            Return distances recomputed for the selected pairs with autograd to ``queries``
            (the stored vectors are a copy and get no gradient); see
            :func:`gpuann.exact.differentiable_distances`. Tensor queries only.

        Returns
        -------
        SearchResult
            ``(distances, ids)`` of shape (Q, k); id ``-1`` with ±inf where fewer than ``k``
            stored vectors are eligible. Ties are ordered by lower id. Filters apply inside
            the search, with no host sync.
        """
        k = check_k(k)
        queries, was_numpy = as_float_matrix(queries, "queries", dim=self._dim)
        if check_finite and not torch.compiler.is_compiling():
            _require_finite(queries, "queries")
        if differentiable and was_numpy:
            raise TypeError("differentiable=True: queries must be a torch.Tensor")
        out_device = queries.device
        original_queries = queries = queries.to(self._device)
        if self._metric is Metric.COSINE:
            queries = torch.nn.functional.normalize(queries.float(), dim=1)
        with self._lock.read():
            n = self._n
            stored_ids = self._ids[:n]
            excluded_rows = allowed_rows = None
            if exclude_ids is not None:
                excluded = as_exclude_ids(exclude_ids, queries.shape[0], self._device)
                excluded_rows = lookup_rows(stored_ids, excluded)
            if allow_ids is not None:
                allowed = as_allow_ids(allow_ids, self._device)
                allowed_rows = row_mask(lookup_rows(stored_ids, allowed), n)
            distances, rows = exact_search(
                queries,
                self._data[:n],
                k,
                Metric.L2 if self._metric is Metric.L2 else Metric.IP,
                database_sqnorms=self._sqnorms[:n] if self._sqnorms is not None else None,
                backend=backend,
                memory_budget=memory_budget if memory_budget is not None else self.memory_budget,
                excluded_rows=excluded_rows,
                allowed_rows=allowed_rows,
            )
            if differentiable:
                distances = differentiable_distances(
                    original_queries, self._data[:n], rows, self._metric
                )
            ids = torch.where(rows >= 0, stored_ids[rows.clamp(min=0)], rows) if n else rows
        if was_numpy:
            return SearchResult(distances.cpu().numpy(), ids.cpu().numpy())
        return SearchResult(distances.to(out_device), ids.to(out_device))

    # ---------------------------------------------------------------- moving and saving
    def to(self, device: str | torch.device) -> FlatIndex:
        """This index on ``device``: ``self`` if already there, else a copy."""
        device = resolve_device(device)
        if device == self._device:
            return self
        with self._lock.read():
            other = FlatIndex(
                self._dim, self._metric, device, self._dtype, memory_budget=self.memory_budget
            )
            n = self._n
            if n:
                data = self._data[:n].to(device)
                sqnorms = self._sqnorms[:n].to(device) if self._sqnorms is not None else None
                other._set_state(
                    data, self._ids[:n].to(device), sqnorms, n=n, next_id=self._next_id
                )
            else:
                other._next_id = self._next_id
        return other

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically; reload with :func:`gpuann.load`."""
        with self._lock.read():
            n = self._n
            meta = {
                "dim": self._dim,
                "metric": self._metric.value,
                "dtype": str(self._dtype).removeprefix("torch."),
                "next_id": self._next_id,
            }
            write_index_file(
                path, "FlatIndex", meta, {"vectors": self._data[:n], "ids": self._ids[:n]}
            )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> FlatIndex:
        """Load a ``FlatIndex`` saved with :meth:`save`."""
        return load(path, device, kind="FlatIndex")


def _load_flat(meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> FlatIndex:
    from gpuann.serialization import IndexFileError

    index = FlatIndex(meta["dim"], meta["metric"], device, getattr(torch, meta["dtype"]))
    vectors, ids = arrays["vectors"], arrays["ids"]
    n = vectors.shape[0]
    if vectors.dtype != index.dtype or vectors.ndim != 2 or vectors.shape[1] != index.dim:
        raise IndexFileError("vectors do not match the header's dim and dtype")
    if ids.shape != (n,) or (n > 1 and not bool((ids[1:] > ids[:-1]).all())):
        raise IndexFileError("ids are not one strictly ascending id per vector")
    data, stored_ids = vectors.to(index.device), ids.to(index.device)
    sqnorms = (data.float() ** 2).sum(dim=1) if index.metric is Metric.L2 else None
    index._set_state(data, stored_ids, sqnorms, n=n, next_id=int(meta["next_id"]))
    return index


register_index_kind("FlatIndex", _load_flat)
