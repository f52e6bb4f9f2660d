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
(each rebuilds the tree, O(N log N), before it stores anything: a tree scipy refuses leaves the
index as it was), ``reconstruct``, ``reset``, ``search`` →
:class:`~gpuann.SearchResult` with **squared L2** distances (the ``"l2"`` convention)
ascending, equal distances ordered by lower id, ``save`` / ``load``, ``to``. The points are kept
in float64 on the CPU in the shared id-sorted store (:class:`gpuann._rows.IdRows`), with no
spare capacity (the tree is rebuilt on every change anyway). The index's ``device`` is where
queries are expected and where ``ids`` and ``reconstruct`` results go (``reconstruct`` gives
the float64 points; a float64 numpy array for numpy ids); the tree itself always lives on the
CPU, so queries from another device are copied there and back. Points must be finite:
``add`` and ``update`` refuse NaN and infinity (naming ``x``) even with ``check_finite=False``,
which then skips only the check that squared distances fit float32.

Ties: ``cKDTree.query(k)`` picks an arbitrary point among those tied at the k-th distance.
Each query therefore fetches ``k + 1`` neighbours and recomputes their squared distances in
float64; when the k-th and (k+1)-th tie (within 1e-12 relative), all points within that
radius are gathered with ``query_ball_point`` and ranked by (distance, id). Results are exact
for float64 squared distances of the stored float64 points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
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
        # (ids, points, tree, tree bytes) after the mutation under way, built before it stores
        self._staged: tuple[torch.Tensor, torch.Tensor, Any, int] | None = None

    # ---------------------------------------------------------------- storage hooks
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"points": ((self._dim,), torch.float64)}

    def _config(self) -> dict[str, Any]:
        return {"dim": self._dim, "leafsize": self.leafsize, "workers": self.workers}

    def _prepare(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool, Any]:
        """``x`` as float64 on the CPU; with ``check_finite``, finite and with squared
        distances that fit the float32 distances returned. Points to store (``x``) must be
        finite even with ``check_finite=False``: a KD-tree cannot hold NaN or infinity."""
        x, was_numpy, source = prepare_vectors(
            x,
            name,
            dim=self._dim,
            metric=Metric.L2,
            device=_CPU,
            check_finite=False,
            dtype=torch.float64,
        )
        if name == "x":
            _require_finite_points(x)
        elif check_finite:
            _require_finite(x, name)
        if check_finite and x.numel():
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

    # The tree of the rows a mutation leaves is built in its ``_before_*`` hook, before the
    # row store changes, and adopted by ``_after_change``: if scipy refuses it (or memory runs
    # out), the mutation fails with the rows and the tree as they were.
    def _before_insert(self, ids: torch.Tensor, rows: Mapping[str, torch.Tensor]) -> None:
        all_ids = torch.cat([self._rows.stored_ids, ids])
        order = torch.argsort(all_ids)  # unique ids: the row store's order
        points = torch.cat([self._rows.view("points"), rows["points"]])[order]
        self._stage(all_ids[order], points)

    def _before_remove(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        keep = torch.ones(self._rows.n, dtype=torch.bool)
        keep[rows] = False
        self._stage(self._rows.stored_ids[keep], self._rows.view("points")[keep])

    def _before_update(self, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        points = self._rows.view("points").clone()
        points[rows] = values["points"]
        self._stage(self._rows.stored_ids.clone(), points)

    def _stage(self, ids: torch.Tensor, points: torch.Tensor) -> None:
        self._staged = None
        self._staged = (ids, points, *self._build(points))

    def _build(self, points: torch.Tensor) -> tuple[Any, int]:
        """The tree of ``points`` (None when empty) and the bytes it adds to them."""
        from scipy.spatial import cKDTree

        if not points.shape[0]:
            return None, 0
        array = points.numpy()
        tree = cKDTree(array, leafsize=self.leafsize)
        # counted here: ``nbytes`` must not read a tensor (display)
        nbytes = tree.indices.nbytes
        if not np.may_share_memory(tree.data, array):
            nbytes += tree.data.nbytes
        return tree, nbytes

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The write lock; a tree staged by a mutation that failed is dropped with it."""
        with self._lock.write():
            try:
                yield
            finally:
                self._staged = None

    def _after_change(self) -> None:
        """Adopt the staged rows and tree (no spare capacity: appends gain nothing, the tree is
        rebuilt), or rebuild the tree where no hook staged one (reset, renumber, load)."""
        staged, self._staged = self._staged, None
        rows = self._rows
        if staged is not None and torch.equal(staged[0], rows.stored_ids):
            ids, points, tree, nbytes = staged
            rows.load(ids, {"points": points}, rows.next_id)  # the rows just stored, compact
        else:
            if rows.capacity > rows.n:
                self._compact(rows.stored_ids, rows.view("points"), rows.next_id)
            tree, nbytes = self._build(rows.view("points"))
        self._tree, self._tree_nbytes = tree, nbytes

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


def _require_finite_points(x: torch.Tensor) -> None:
    """Raise, naming ``x``, when points to store hold NaN or infinity (whatever
    ``check_finite``: scipy's tree refuses them)."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"x: contains NaN or infinite values (rows {bad}{'…' if len(bad) == 5 else ''}); "
            "a KD-tree holds finite points only, also with check_finite=False"
        )
