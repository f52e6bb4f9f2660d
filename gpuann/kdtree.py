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

The shared :class:`~gpuann.index.Index` protocol: user ids, ``add`` / ``remove`` / ``update``
(each rebuilds the tree, O(N log N)), ``reconstruct``, ``reset``, ``search`` →
:class:`~gpuann.SearchResult` with **squared L2** distances (the ``"l2"`` convention)
ascending, equal distances ordered by lower id, ``save`` / ``load``, ``to``. The points are kept
in float64 on the CPU in the shared id-sorted store (:class:`gpuann._rows.IdRows`), with no
spare capacity (the tree is rebuilt on every change anyway). The index's ``device`` is where
queries are expected and where ``ids`` and ``reconstruct`` results go (``reconstruct`` gives
the float64 points; a float64 numpy array for numpy ids); the tree itself always lives on the
CPU, so queries from another device are copied there and back.

Ties: ``cKDTree.query(k)`` picks an arbitrary point among those tied at the k-th distance.
Each query therefore fetches ``k + 1`` neighbours and recomputes their squared distances in
float64; when the k-th and (k+1)-th tie (within 1e-12 relative), all points within that
radius are gathered with ``query_ball_point`` and ranked by (distance, id). Results are exact
for float64 squared distances of the stored float64 points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann._validate import check_finite as _require_finite
from gpuann._validate import positive_int, resolve_device
from gpuann.display import Bytes
from gpuann.index import Index
from gpuann.inputs import prepare_vectors
from gpuann.metrics import Metric, as_metric

__all__ = ["KDTreeIndex"]

_TIE_RTOL = 1e-12
_CPU = torch.device("cpu")
_F32_MAX = float(torch.finfo(torch.float32).max)


class KDTreeIndex(Index):
    """Exact nearest neighbours in low dimension with a KD-tree (scipy ``cKDTree``, CPU).

    Parameters
    ----------
    dim : int
        Point dimension (meant for 2–16; any positive int is accepted).
    metric : {"l2"}
        Only squared Euclidean distance.
    device : str or torch.device, optional
        Where queries are expected and where ``ids`` / ``reconstruct`` return tensors
        (default: CUDA when available, else CPU). The points and the tree always live on the
        CPU; search results come back where the queries were.
    leafsize : int
        Points per leaf of the tree (scipy's default is 16).
    workers : int
        Threads for queries (``-1``: all cores).

    Examples
    --------
    >>> index = KDTreeIndex(2, device="cpu")
    >>> index.add(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), ids=[5, 3, 4])
    >>> index.search(torch.tensor([[0.0, 0.0]]), k=3)
    SearchResult(distances=tensor([[0., 1., 1.]]), ids=tensor([[5, 3, 4]]))
    """

    _config_keys = ("dim", "leafsize", "workers")

    def __init__(
        self,
        dim: int,
        *,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        leafsize: int = 16,
        workers: int = -1,
    ) -> None:
        if as_metric(metric) is not Metric.L2:
            raise ValueError(
                f"metric: KDTreeIndex supports only 'l2' (squared Euclidean), got {metric!r}"
            )
        self.leafsize = positive_int(leafsize, "leafsize")
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise ValueError(f"workers: expected an int, got {type(workers).__name__}")
        self.workers = int(workers)
        # The store (and so every id lookup of the base) lives on the CPU; ``device`` is home.
        super().__init__(dim, metric=Metric.L2, device=_CPU, dtype=torch.float64)
        self._home = resolve_device(device)
        self._tree: Any = None
        self._tree_nbytes = 0

    # ---------------------------------------------------------------- storage hooks
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"points": ((self._dim,), torch.float64)}

    def _config(self) -> dict[str, Any]:
        return {"dim": self._dim, "leafsize": self.leafsize, "workers": self.workers}

    def _prepare(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool, Any]:
        """``x`` as float64 on the CPU; with ``check_finite``, finite and with squared
        distances that fit the float32 distances returned."""
        x, was_numpy, source = prepare_vectors(
            x,
            name,
            dim=self._dim,
            metric=Metric.L2,
            device=_CPU,
            check_finite=False,
            dtype=torch.float64,
        )
        if check_finite and x.numel():
            _require_finite(x, name)
            peak = float(x.abs().amax())
            if peak * peak * self._dim > _F32_MAX:
                raise ValueError(
                    f"{name}: values up to {peak:.3g} give squared distances beyond float32's "
                    f"range ({_F32_MAX:.3g}), the dtype of the distances returned; rescale "
                    "the points"
                )
        return x, was_numpy, source

    def _prepare_queries(
        self, queries: Any, check_finite: bool
    ) -> tuple[torch.Tensor, bool, torch.device]:
        return self._prepare(queries, "queries", check_finite)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"points": x}

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        return self._rows.data["points"][rows]

    def _after_change(self) -> None:
        """Drop spare capacity (appends gain nothing: the tree is rebuilt) and rebuild it."""
        from scipy.spatial import cKDTree

        rows = self._rows
        if rows.capacity > rows.n:
            self._compact(rows.stored_ids, rows.view("points"), rows.next_id)
        points = rows.view("points").numpy()
        self._tree = cKDTree(points, leafsize=self.leafsize) if rows.n else None
        self._tree_nbytes = 0  # counted here: ``nbytes`` must not read a tensor (display)
        if self._tree is not None:
            self._tree_nbytes = self._tree.indices.nbytes
            if not np.may_share_memory(self._tree.data, points):
                self._tree_nbytes += self._tree.data.nbytes

    def _compact(self, ids: torch.Tensor, points: torch.Tensor, next_id: int) -> None:
        self._rows.load(ids.clone(), {"points": points.clone()}, next_id)

    def _copy_from(self, source: Index) -> None:
        rows = source._rows
        self._compact(rows.stored_ids, rows.view("points"), rows.next_id)  # never share memory
        self._after_change()

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Where queries are expected and ``ids`` / ``reconstruct`` results go; the tree and
        the points always live on the CPU."""
        return self._home

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy, on ``device``)."""
        return super().ids.to(self._home)

    @property
    def nbytes(self) -> int:
        """Bytes of host memory held: the float64 points, the int64 ids and the tree's
        permutation of the points (its nodes, a few dozen bytes per leaf, are not counted)."""
        return self._rows.nbytes + self._tree_nbytes

    def _display_fields(self) -> dict[str, Any]:
        """What ``repr`` and Jupyter show (sizes only)."""
        return {
            "n": len(self),
            "dim": self._dim,
            "leafsize": self.leafsize,
            "metric": self._metric,
            "device": self._home,
            "memory": Bytes(self.nbytes),
        }

    def to(self, device: str | torch.device) -> KDTreeIndex:
        """This index with ``device`` as its home: ``self`` if it already is, else a copy (the
        tree stays on the CPU either way)."""
        device = resolve_device(device)
        if device == self._home:
            return self
        with self._lock.read():
            other = type(self)(**self._config(), device=device)
            other._copy_from(self)
        return other

    # ---------------------------------------------------------------- search
    def search(self, queries: Any, k: int, *, check_finite: bool = True) -> Any:
        """The ``k`` nearest stored points of each query, exactly.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating (any device)
            Searched in float64 on the CPU.
        k : int
        check_finite : bool
            Raise on NaN/inf, or on values whose squared distances would not fit the float32
            distances returned (naming ``queries``).

        Returns
        -------
        SearchResult
            ``(distances, ids)`` of shape (Q, k): float32 squared L2 distances (computed in
            float64), ascending, ties by lower id; id ``-1`` and ``+inf`` beyond the index's
            size. numpy when ``queries`` is numpy, else tensors on the queries' device.
        """
        return self._run_search(queries, k, check_finite=check_finite)

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries.numpy()
        distances = np.full((q.shape[0], k), np.inf)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        n = self._rows.n
        if n and q.shape[0]:
            kk = min(k, n)
            d2, rows = self._query(q, kk)
            distances[:, :kk] = d2
            ids[:, :kk] = self._rows.stored_ids.numpy()[rows]
        return torch.from_numpy(distances.astype(np.float32)), torch.from_numpy(ids)

    def _sqdist(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        diff = self._rows.view("points").numpy()[rows] - q[:, None, :]
        return np.einsum("qkd,qkd->qk", diff, diff)

    def _query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and rows (ids are sorted, so lower row = lower id), (Q, k)."""
        n = self._rows.n
        fetch = min(k + 1, n)
        _, rows = self._tree.query(q, k=fetch, workers=self.workers)
        rows = rows.reshape(q.shape[0], fetch)
        if (rows >= n).any():  # cKDTree's "no neighbour": distances overflowed float64
            raise ValueError(
                "queries: squared distances to the stored points overflow float64; rescale "
                "the points (check_finite=True names the values)"
            )
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
