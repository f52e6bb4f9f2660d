"""``KDTreeIndex``: exact k-NN for low-dimensional points, on the CPU with scipy's ``cKDTree``.

When to use it (measured by ``benchmarks/bench_lsh_kdtree.py``; see its results for numbers):

- Points in **2–8 dimensions** and a **CPU**: a KD-tree visits O(log N) leaves per query
  instead of all N points, so it beats brute force (``FlatIndex`` / ``gpuann.knn`` on the CPU)
  by orders of magnitude once N reaches tens of thousands of points.
- **12–16 dimensions**: the advantage shrinks fast (the curse of dimensionality: more leaves
  overlap the query ball); on clustered, low-intrinsic-dimension data it still wins on the CPU,
  on uniform data it approaches brute force.
- **Above ~16 dimensions**: use ``FlatIndex`` (exact) or an approximate index.
- **On a GPU**: brute force over the whole batch is one matrix multiply; for large query
  batches it is usually the faster exact method even at low dimension, since this index runs on
  the CPU and pays the host↔device copies. The KD-tree wins on the GPU machine mainly for
  single queries or small batches against large N.

Protocol as the other indexes: user ids, ``add`` (rebuilds the tree, O(N log N)), ``remove``
(rebuilds), ``search`` → :class:`~gpuann.SearchResult` with **squared L2** distances (the
``"l2"`` convention) ascending, equal distances ordered by lower id, ``save`` / ``load``.
Queries may be on any device; results come back there.

Ties: ``cKDTree.query(k)`` picks an arbitrary point among those tied at the k-th distance.
Each query therefore fetches ``k + 1`` neighbours and recomputes their squared distances in
float64; when the k-th and (k+1)-th tie (within 1e-12 relative), all points within that
radius are gathered with ``query_ball_point`` and ranked by (distance, id). Results are exact
for float64 squared distances of the stored float64 points.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from gpuann._rwlock import ReadWriteLock
from gpuann._validate import as_float_matrix, as_ids, check_k, resolve_device
from gpuann._validate import check_finite as _require_finite
from gpuann.display import Bytes, html_repr, text_repr
from gpuann.result import SearchResult
from gpuann.serialization import (
    IndexFileError,
    load,
    register_index_kind,
    write_index_file,
)

__all__ = ["KDTreeIndex"]

_TIE_RTOL = 1e-12


class KDTreeIndex:
    """Exact nearest neighbours in low dimension with a KD-tree (scipy ``cKDTree``, CPU).

    Parameters
    ----------
    dim : int
        Point dimension (meant for 2–16; any positive int is accepted).
    metric : {"l2"}
        Only squared Euclidean distance.
    leafsize : int
        Points per leaf of the tree (scipy's default is 16).
    workers : int
        Threads for queries (``-1``: all cores).

    Examples
    --------
    >>> index = KDTreeIndex(2)
    >>> index.add(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), ids=[5, 3, 4])
    >>> index.search(torch.tensor([[0.0, 0.0]]), k=3)
    SearchResult(distances=tensor([[0., 1., 1.]]), ids=tensor([[5, 3, 4]]))
    """

    def __init__(
        self, dim: int, metric: str = "l2", *, leafsize: int = 16, workers: int = -1
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if str(metric).lower() not in ("l2", "euclidean"):
            raise ValueError(
                f"metric: KDTreeIndex supports only 'l2' (squared Euclidean), got {metric!r}"
            )
        if isinstance(leafsize, bool) or not isinstance(leafsize, int) or leafsize < 1:
            raise ValueError(f"leafsize: expected a positive int, got {leafsize!r}")
        self._dim = int(dim)
        self.leafsize = leafsize
        self.workers = workers
        self._lock = ReadWriteLock()
        self._set(np.empty((0, self._dim)), np.empty(0, dtype=np.int64), next_id=0)

    def _set(self, points: np.ndarray, ids: np.ndarray, next_id: int) -> None:
        from scipy.spatial import cKDTree

        tree = cKDTree(points, leafsize=self.leafsize) if len(ids) else None
        self._points, self._ids, self._tree, self._next_id = points, ids, tree, next_id

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Point dimension."""
        return self._dim

    @property
    def device(self) -> torch.device:
        """Always the CPU (queries from any device are accepted)."""
        return torch.device("cpu")

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy)."""
        return torch.from_numpy(self._ids.copy())

    @property
    def nbytes(self) -> int:
        """Bytes of host memory held: the float64 points, the int64 ids and the tree's
        permutation of the points (its nodes, a few dozen bytes per leaf, are not counted)."""
        total = self._points.nbytes + self._ids.nbytes
        if self._tree is not None:
            total += self._tree.indices.nbytes
            if not np.may_share_memory(self._tree.data, self._points):
                total += self._tree.data.nbytes
        return total

    def __len__(self) -> int:
        return len(self._ids)

    def _display_fields(self) -> dict[str, Any]:
        """What ``repr`` and Jupyter show (sizes only)."""
        return {
            "n": len(self),
            "dim": self._dim,
            "leafsize": self.leafsize,
            "metric": "l2",
            "device": self.device,
            "memory": Bytes(self.nbytes),
        }

    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- mutations
    def _points_of(self, x: Any, name: str, check_finite: bool) -> np.ndarray:
        x, _ = as_float_matrix(x, name, dim=self._dim)
        if check_finite:
            _require_finite(x, name)
        return x.detach().to("cpu", torch.float64).numpy()

    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Add points and rebuild the tree.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim), floating (any device)
        ids : int64 tensor, array or list, shape (n,), optional
            Unique ids not already in the index; default: consecutive after the largest used.

        On any error the index is left unchanged.
        """
        points = self._points_of(x, "x", check_finite)
        m = points.shape[0]
        with self._lock.write():
            if ids is None:
                new_ids = np.arange(self._next_id, self._next_id + m, dtype=np.int64)
            else:
                new_ids = as_ids(ids, m).numpy()
                present = np.isin(new_ids, self._ids)
                if present.any():
                    raise ValueError(
                        f"ids: {int(present.sum())} id(s) already in the index: "
                        f"{new_ids[present][:10].tolist()}"
                    )
            if m == 0:
                return
            all_ids = np.concatenate([self._ids, new_ids])
            order = np.argsort(all_ids, kind="stable")
            all_points = np.concatenate([self._points, points])[order]
            self._set(all_points, all_ids[order], max(self._next_id, int(new_ids.max()) + 1))

    def remove(self, ids: Any, *, strict: bool = True) -> int:
        """Remove points by id and rebuild the tree; return how many were removed."""
        ids = as_ids(ids, -1).numpy()
        with self._lock.write():
            found = np.isin(ids, self._ids)
            if strict and not found.all():
                missing = ids[~found]
                raise ValueError(
                    f"ids: {missing.size} id(s) not in the index: {missing[:10].tolist()}"
                )
            keep = ~np.isin(self._ids, ids)
            removed = int((~keep).sum())
            if removed:
                self._set(self._points[keep], self._ids[keep], self._next_id)
            return removed

    def reset(self) -> None:
        """Remove every point (ids restart at 0)."""
        with self._lock.write():
            self._set(np.empty((0, self._dim)), np.empty(0, dtype=np.int64), next_id=0)

    def reconstruct(self, ids: Any) -> torch.Tensor:
        """The stored points of ``ids``: shape (n, dim), float64, CPU."""
        ids = as_ids(ids, -1, unique=False).numpy()
        with self._lock.read():
            pos = np.searchsorted(self._ids, ids).clip(max=max(len(self._ids) - 1, 0))
            if len(self._ids) == 0 or not np.array_equal(self._ids[pos], ids):
                missing = ids if len(self._ids) == 0 else ids[self._ids[pos] != ids]
                raise ValueError(
                    f"ids: {missing.size} id(s) not in the index: {missing[:10].tolist()}"
                )
            return torch.from_numpy(self._points[pos])

    # ---------------------------------------------------------------- search
    def search(self, queries: Any, k: int, *, check_finite: bool = True) -> SearchResult:
        """The ``k`` nearest stored points of each query, exactly.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating (any device)
        k : int

        Returns
        -------
        SearchResult
            ``(distances, ids)`` of shape (Q, k): float32 squared L2 distances (computed in
            float64), ascending, ties by lower id; id ``-1`` and ``+inf`` beyond the index's
            size. numpy when ``queries`` is numpy, else tensors on the queries' device.
        """
        k = check_k(k)
        out_device = queries.device if isinstance(queries, torch.Tensor) else None
        was_numpy = isinstance(queries, np.ndarray)
        q = self._points_of(queries, "queries", check_finite)
        distances = np.full((q.shape[0], k), np.inf)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        with self._lock.read():
            n = len(self._ids)
            if n and q.shape[0]:
                kk = min(k, n)
                d2, rows = self._query(q, kk)
                distances[:, :kk], ids[:, :kk] = d2, self._ids[rows]
        distances = distances.astype(np.float32)
        if was_numpy:
            return SearchResult(distances, ids)
        return SearchResult(
            torch.from_numpy(distances).to(out_device), torch.from_numpy(ids).to(out_device)
        )

    def _sqdist(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        diff = self._points[rows] - q[:, None, :]
        return np.einsum("qkd,qkd->qk", diff, diff)

    def _query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and rows (ids are sorted, so lower row = lower id), (Q, k)."""
        n = len(self._ids)
        fetch = min(k + 1, n)
        _, rows = self._tree.query(q, k=fetch, workers=self.workers)
        rows = rows.reshape(q.shape[0], fetch)
        d2 = self._sqdist(q, rows)
        order = np.lexsort((rows, d2), axis=-1)
        d2, rows = np.take_along_axis(d2, order, 1), np.take_along_axis(rows, order, 1)
        if fetch > k:
            tied = d2[:, k] <= d2[:, k - 1] * (1 + _TIE_RTOL)
            for i in np.flatnonzero(tied):
                d2[i, :k], rows[i, :k] = self._resolve_tie(q[i], d2[i, k - 1], k)
        return d2[:, :k], rows[:, :k]

    def _resolve_tie(self, q: np.ndarray, radius2: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every point within the k-th distance (a little more), ranked by (distance, row)."""
        radius = np.sqrt(radius2 * (1 + 4 * _TIE_RTOL)) * (1 + 1e-9) + 1e-300
        rows = np.asarray(self._tree.query_ball_point(q, radius), dtype=np.int64)
        d2 = self._sqdist(q[None], rows[None])[0]
        order = np.lexsort((rows, d2))[:k]
        return d2[order], rows[order]

    # ---------------------------------------------------------------- moving and saving
    def to(self, device: str | torch.device) -> KDTreeIndex:
        """``self``: the tree always lives on the CPU; queries from ``device`` are accepted."""
        resolve_device(device)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the points and ids to ``path`` atomically (the tree is rebuilt on load)."""
        with self._lock.read():
            meta = {"dim": self._dim, "leafsize": self.leafsize, "next_id": self._next_id}
            arrays = {"points": torch.from_numpy(self._points), "ids": torch.from_numpy(self._ids)}
            write_index_file(path, "KDTreeIndex", meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> KDTreeIndex:
        """Load a ``KDTreeIndex`` saved with :meth:`save` (``device`` is accepted and ignored)."""
        return load(path, device, kind="KDTreeIndex")


def _load_kdtree(meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> KDTreeIndex:
    index = KDTreeIndex(meta["dim"], leafsize=meta["leafsize"])
    points, ids = arrays["points"], arrays["ids"]
    n = ids.shape[0]
    if points.dtype != torch.float64 or points.shape != (n, index.dim):
        raise IndexFileError("points do not match the header's dim")
    if ids.dtype != torch.int64 or (n > 1 and not bool((ids[1:] > ids[:-1]).all())):
        raise IndexFileError("ids are not one strictly ascending id per point")
    index._set(points.numpy().copy(), ids.numpy().copy(), int(meta["next_id"]))
    return index


register_index_kind("KDTreeIndex", _load_kdtree)
