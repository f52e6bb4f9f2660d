"""What ``IVFFlatIndex`` and ``IVFPQIndex`` share: state, training, add, remove, search, moves.

Where faiss-gpu falls short, this layer fills in (each path also runs on CPU in the tests):

- ``remove`` on a GPU index (faiss-gpu IVF has no ``remove_ids``): removed ids become
  *tombstones*, filtered from results at search time after over-fetching ``k + #tombstones``
  candidates, which is exact: at most ``#tombstones`` of the fetched results can be dead. Past
  ``MAX_TOMBSTONES`` pending removals (or when a removed id is added again) the index is
  *compacted*: copied to the host, ``remove_ids`` run there, and copied back.
- ``k`` (or ``nprobe``) above faiss-gpu's limit of 2048: the search runs on a cached CPU copy
  of the index (a documented host round trip; the copy is rebuilt after any change).
- float16 / bfloat16 / float64 inputs are cast to float32 on the device before reaching faiss.
- int64 user ids go to faiss as its labels (``add_with_ids``, supported by CPU and GPU IVF).

Results are post-processed so equal distances come in order of lower id (faiss leaves their
order unspecified), and missing results are id ``-1`` with ``±inf`` (faiss reports
``±FLT_MAX``).
"""

from __future__ import annotations

import threading
import warnings
from contextlib import nullcontext
from typing import Any, ClassVar

import numpy as np
import torch

from gpuann._rwlock import ReadWriteLock
from gpuann._validate import as_float_matrix, as_ids, check_k, resolve_device
from gpuann._validate import check_finite as _require_finite
from gpuann.display import Bytes, html_repr, text_repr
from gpuann.ivf import _faiss
from gpuann.ivf._store import IdStore
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult
from gpuann.topk import topk_by_id

__all__ = ["MAX_TOMBSTONES", "MIN_POINTS_PER_LIST", "IVFIndexBase", "training_sample"]

#: Pending GPU removals kept as tombstones before the index is compacted.
MAX_TOMBSTONES = 1024
#: faiss warns when k-means gets fewer training points than this per list.
MIN_POINTS_PER_LIST = 39
#: faiss's k-means subsamples to this many points per list (``cp.max_points_per_centroid``).
MAX_POINTS_PER_LIST = 256


def training_sample(n: int, size: int, seed: int) -> torch.Tensor:
    """The rows an index trains on when given ``n > size`` vectors: a seeded sample.

    Parameters
    ----------
    n : int
        Number of vectors given.
    size : int
        Sample size.
    seed : int

    Returns
    -------
    torch.Tensor, shape (min(n, size),), int64, ascending row numbers (CPU)

    >>> training_sample(10, 3, seed=0).tolist() == training_sample(10, 3, seed=0).tolist()
    True
    """
    if n <= size:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def _tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the given tensors (None counts 0), from their metadata."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


class IVFIndexBase:
    """Shared implementation; use :class:`~gpuann.IVFFlatIndex` or :class:`~gpuann.IVFPQIndex`.

    Subclasses set ``_kind`` and implement ``_new_faiss_index``, ``_config`` and
    ``_default_max_train``.
    """

    _kind: ClassVar[str] = ""

    def __init__(
        self,
        dim: int,
        nlist: int,
        metric: str | Metric,
        device: str | torch.device | None,
        *,
        nprobe: int | None,
        seed: int,
        max_train_points: int | None,
        memory_budget: int | None,
        keep_vectors: bool,
    ) -> None:
        self._dim = _positive_int(dim, "dim")
        self._nlist = _positive_int(nlist, "nlist")
        self._metric = as_metric(metric)
        self._device = resolve_device(device)
        self._seed = int(seed)
        self._max_train = (
            _positive_int(max_train_points, "max_train_points")
            if max_train_points is not None
            else None
        )
        self.memory_budget = memory_budget
        self._nprobe = self._check_nprobe(
            nprobe if nprobe is not None else max(1, self._nlist // 16), "nprobe"
        )
        self._lock = ReadWriteLock()
        self._cache_mutex = threading.Lock()
        on_gpu = self._device.type == "cuda"
        #: Private switches, on for GPU indexes; tests turn them on for CPU ones.
        self._use_tombstones = on_gpu
        self._device_k_limit: int | None = _faiss.GPU_MAX_K if on_gpu else None
        self._max_tombstones = MAX_TOMBSTONES
        self._next_id = 0
        self._store = IdStore.empty(self._dim, self._device, keep_vectors)
        self._tombstones = torch.empty(0, dtype=torch.int64, device=self._device)
        self._host_cache: Any = None
        self._faiss_index = _faiss.index_to_device(self._new_faiss_index(), self._device)

    # ---------------------------------------------------------------- subclass hooks
    def _new_faiss_index(self) -> Any:
        """A new, untrained faiss CPU index with this index's parameters."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON values) that rebuild an empty twin."""
        raise NotImplementedError

    def _default_max_train(self) -> int:
        return self._nlist * MAX_POINTS_PER_LIST

    def _faiss_metric(self) -> int:
        faiss = _faiss.import_faiss()
        return faiss.METRIC_L2 if self._metric is Metric.L2 else faiss.METRIC_INNER_PRODUCT

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def nlist(self) -> int:
        """Number of inverted lists (k-means cells)."""
        return self._nlist

    @property
    def metric(self) -> Metric:
        """``Metric.L2``, ``Metric.IP`` or ``Metric.COSINE`` (IP over normalised vectors)."""
        return self._metric

    @property
    def device(self) -> torch.device:
        """Where the faiss index lives and searches run."""
        return self._device

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` has run (``add`` and ``search`` need it)."""
        return bool(self._faiss_index.is_trained)

    @property
    def max_train_points(self) -> int:
        """Training uses a seeded sample of at most this many of the vectors given."""
        return self._max_train if self._max_train is not None else self._default_max_train()

    @property
    def nprobe(self) -> int:
        """Lists visited per query when ``search`` is not given ``nprobe``."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = self._check_nprobe(value, "nprobe")

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy)."""
        with self._lock.read():
            return self._store.ids.clone()

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index (for inspection; changing it bypasses gpuann's checks)."""
        return self._faiss_index

    @property
    def nbytes(self) -> int:
        """Bytes held by the index, from sizes alone (no tensor value is read, faiss is not
        serialised).

        ``ntotal · (code_size + 8)`` for faiss's inverted lists (codes and int64 ids; ``ntotal``
        counts GPU tombstones, which faiss still holds), ``nlist · dim · 4`` for the trained
        coarse centroids, what the subclass adds (PQ codebooks), and gpuann's own tensors: the
        sorted ids, the full-precision vectors and norms kept for refinement, the tombstones.
        faiss-gpu may pad its lists beyond these logical sizes.
        """
        ntotal = len(self._store) + self._tombstones.shape[0]
        total = ntotal * (self._code_size() + 8)
        if self.is_trained:
            total += self._nlist * self._dim * 4 + self._trained_nbytes()
        store = self._store
        total += _tensor_bytes(store.ids, store.vectors, store.sqnorms, self._tombstones)
        return total

    def _code_size(self) -> int:
        """Bytes of one vector's code in faiss's inverted lists."""
        raise NotImplementedError

    def _trained_nbytes(self) -> int:
        """Bytes of trained state besides the coarse centroids (0 for IVF-Flat)."""
        return 0

    def __len__(self) -> int:
        return len(self._store)

    def _display_fields(self) -> dict[str, Any]:
        """What ``repr`` and Jupyter show: Python ints and tensor metadata only (no sync)."""
        return {
            "n": len(self),
            "dim": self._dim,
            "nlist": self._nlist,
            **self._specific_fields(),
            "metric": self._metric,
            "nprobe": self._nprobe,
            "trained": self.is_trained,
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def _specific_fields(self) -> dict[str, Any]:
        """The subclass's own display fields, shown after ``nlist``."""
        return {}

    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- checks
    def _check_nprobe(self, nprobe: Any, name: str) -> int:
        nprobe = _positive_int(nprobe, name)
        if nprobe > self._nlist:
            raise ValueError(f"{name}: expected 1 to nlist={self._nlist}, got {nprobe}")
        return nprobe

    def _prepare(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool, Any]:
        """Validated float32 contiguous vectors on the index device (normalised for cosine)."""
        x, was_numpy = as_float_matrix(x, name, dim=self._dim)
        if check_finite and not torch.compiler.is_compiling():
            _require_finite(x, name)
        source_device = x.device
        x = x.to(self._device, torch.float32)
        if self._metric is Metric.COSINE:
            x = torch.nn.functional.normalize(x, dim=1)
        return x.contiguous(), was_numpy, source_device

    def _require_trained(self, what: str) -> None:
        if not self.is_trained:
            raise RuntimeError(f"{what}: the index is not trained; call train(x) first")

    def _serial(self):
        """Serialises faiss calls on a GPU (faiss-gpu is not thread-safe); CPU calls run freely."""
        if self._faiss_index_is_cpu():
            return nullcontext()
        return _faiss.device_lock(self._device)

    # ---------------------------------------------------------------- training
    def train(self, x: Any, *, check_finite: bool = True) -> None:
        """Train the coarse quantizer (and the PQ codebooks) on ``x``.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim), floating
            At least ``nlist`` vectors (faiss warns below ``39 · nlist``). When ``n`` exceeds
            :attr:`max_train_points`, a seeded sample (:func:`training_sample`) is used.
        check_finite : bool
            Raise on NaN or infinity in ``x``.

        Raises
        ------
        ValueError
            Fewer than ``nlist`` vectors, or bad shape / dtype.
        RuntimeError
            The index is already trained.
        """
        x, _, _ = self._prepare(x, "x", check_finite)
        n = x.shape[0]
        if n < self._nlist:
            raise ValueError(
                f"x: training nlist={self._nlist} lists needs at least {self._nlist} vectors, "
                f"got {n}; pass more vectors or use a smaller nlist"
            )
        if n < MIN_POINTS_PER_LIST * self._nlist:
            warnings.warn(
                f"x: {n} training vectors for nlist={self._nlist} lists is fewer than "
                f"{MIN_POINTS_PER_LIST} per list; the lists may be poor (use a smaller nlist)",
                stacklevel=2,
            )
        rows = training_sample(n, self.max_train_points, self._seed)
        if rows.shape[0] < n:
            x = x[rows.to(self._device)].contiguous()
        with self._lock.write():
            if self.is_trained:
                raise RuntimeError(
                    "train: the index is already trained; build a new one to retrain"
                )
            with self._serial():
                _faiss.train(self._faiss_index, x)
            self._host_cache = None

    # ---------------------------------------------------------------- mutations
    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Add vectors to a trained index.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim), floating
            Any float dtype (cast to float32 on the index device).
        ids : int64 tensor, array or list, shape (n,), optional
            Unique non-negative ids not already in the index (any int64 values: faiss stores
            them as its labels). Default: consecutive ids after the largest id ever used.
        check_finite : bool
            Raise on NaN or infinity in ``x``.

        On any error the index is left unchanged.
        """
        x, _, _ = self._prepare(x, "x", check_finite)
        m = x.shape[0]
        with self._lock.write():
            self._require_trained("add")
            if ids is None:
                new_ids = torch.arange(self._next_id, self._next_id + m, device=self._device)
            else:
                new_ids = as_ids(ids, m, device=self._device)
                if m and int(new_ids.min()) < 0:
                    raise ValueError("ids: expected non-negative ids (faiss reserves -1)")
                _, present = self._store.positions(new_ids)
                if bool(present.any()):
                    dup = new_ids[present]
                    raise ValueError(
                        f"ids: {dup.numel()} id(s) already in the index: {dup[:10].tolist()}"
                    )
            if m == 0:
                return
            store = self._store.with_added(new_ids, x if self._store.vectors is not None else None)
            if self._tombstones.numel() and bool(torch.isin(new_ids, self._tombstones).any()):
                self._compact()  # a dead copy of a re-added id must not mask the new one
            with self._serial():
                _faiss.add_with_ids(self._faiss_index, x, new_ids)
            self._store = store
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
            self._host_cache = None

    def remove(self, ids: Any, *, strict: bool = True) -> int:
        """Remove vectors by id and return how many were removed.

        Parameters
        ----------
        ids : int64 tensor, array or list
        strict : bool
            When True (default) an id not in the index raises and nothing is removed; when
            False unknown ids are ignored, as faiss does.

        Notes
        -----
        On CPU faiss removes the ids from its lists at once. On GPU they become tombstones
        (see the module docstring); either way no later search returns them.
        """
        ids = as_ids(ids, -1, device=self._device)
        with self._lock.write():
            if strict:
                rows = self._store.require(ids)
            else:
                rows, found = self._store.positions(ids)
                rows = rows[found]
            if rows.numel() == 0:
                return 0
            removed = self._store.ids[rows]
            store = self._store.without(rows)
            if self._use_tombstones:
                self._tombstones = torch.cat([self._tombstones, removed]).sort().values
                if self._tombstones.numel() > self._max_tombstones:
                    self._compact()
            else:
                with self._serial():
                    _faiss.remove_ids(self._faiss_index, removed)
            self._store = store
            self._host_cache = None
            return int(rows.numel())

    def _compact(self) -> None:
        """Drop tombstoned ids from faiss for good (write lock held)."""
        if not self._tombstones.numel():
            return
        if self._faiss_index_is_cpu():
            _faiss.remove_ids(self._faiss_index, self._tombstones)
        else:
            with self._serial():
                host = _faiss.index_to_cpu(self._faiss_index)
            _faiss.remove_ids(host, self._tombstones)
            self._faiss_index = _faiss.index_to_device(host, self._device)
        self._tombstones = self._tombstones[:0]
        self._host_cache = None

    def _faiss_index_is_cpu(self) -> bool:
        return not hasattr(self._faiss_index, "getDevice")

    # ---------------------------------------------------------------- host copy
    def _host_index(self) -> Any:
        """A CPU faiss index with the same content (tombstones included): the index itself
        on CPU, else a cached copy, rebuilt after any change."""
        if self._faiss_index_is_cpu():
            return self._faiss_index
        with self._cache_mutex:
            if self._host_cache is None:
                with self._serial():
                    self._host_cache = _faiss.index_to_cpu(self._faiss_index)
            return self._host_cache

    def _compacted_host_copy(self) -> Any:
        """A CPU faiss index without tombstoned ids (for saving and moving)."""
        host = self._host_index()
        if host is self._faiss_index or self._tombstones.numel():
            host = _faiss.index_to_cpu(host)
        if self._tombstones.numel():
            _faiss.remove_ids(host, self._tombstones)
        return host

    # ---------------------------------------------------------------- queries
    def reconstruct(self, ids: Any) -> Any:
        """The stored vectors of ``ids``, as faiss decodes them.

        Exact for ``IVFFlatIndex`` (normalised for cosine), the PQ approximation for
        ``IVFPQIndex``, and exact again for ``IVFPQIndex(refine=True)``, which keeps the
        full-precision vectors.

        Parameters
        ----------
        ids : int64 tensor, array or list, shape (n,)

        Returns
        -------
        torch.Tensor of shape (n, dim), float32, on the index device; a numpy array when
        ``ids`` is one.
        """
        as_numpy = isinstance(ids, np.ndarray)
        ids = as_ids(ids, -1, device=self._device, unique=False)
        with self._lock.write():  # the first call may build faiss's id -> entry map
            pos = self._store.require(ids)
            if self._store.vectors is not None:
                vectors = self._store.vectors[pos]
            else:
                vectors = self._reconstruct_from_faiss(ids)
        return vectors.cpu().numpy() if as_numpy else vectors

    def _reconstruct_from_faiss(self, ids: torch.Tensor) -> torch.Tensor:
        faiss = _faiss.import_faiss()
        host = self._host_index()
        if host.direct_map.type != faiss.DirectMap.Hashtable:
            host.set_direct_map_type(faiss.DirectMap.Hashtable)  # kept up to date by faiss
        keys = np.ascontiguousarray(ids.cpu().numpy())
        out = host.reconstruct_batch(keys) if keys.size else np.empty((0, self._dim), "float32")
        return torch.from_numpy(out).to(self._device)

    def _search(
        self,
        queries: Any,
        k: int,
        nprobe: int | None,
        refine_factor: int | None,
        check_finite: bool,
    ) -> SearchResult:
        k = check_k(k)
        nprobe = self._nprobe if nprobe is None else self._check_nprobe(nprobe, "nprobe")
        q, was_numpy, out_device = self._prepare(queries, "queries", check_finite)
        with self._lock.read():
            self._require_trained("search")
            store, tombstones = self._store, self._tombstones
            wanted = k * (refine_factor or 1)
            fetch = min(wanted + tombstones.numel(), max(1, len(store) + tombstones.numel()))
            distances, labels = self._faiss_search(q, fetch, nprobe)
            if tombstones.numel():
                labels = labels.masked_fill(torch.isin(labels, tombstones), -1)
            if refine_factor is not None:
                from gpuann.ivf.refine import rerank

                distances, labels = rerank(q, labels, store, k, self._metric, self.memory_budget)
            else:
                distances, labels = self._tie_order(distances, labels, k, tombstones.numel() > 0)
        distances, labels = self._pad(distances, labels, k)
        if was_numpy:
            return SearchResult(distances.cpu().numpy(), labels.cpu().numpy())
        return SearchResult(distances.to(out_device), labels.to(out_device))

    def _faiss_search(
        self, q: torch.Tensor, k: int, nprobe: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self._device_k_limit
        if limit is not None and (k > limit or nprobe > limit):
            # faiss-gpu cannot select more than GPU_MAX_K: search the host copy instead.
            distances, labels = _faiss.search(self._host_index(), q.cpu(), k, nprobe)
            return distances.to(self._device), labels.to(self._device)
        with self._serial():
            return _faiss.search(self._faiss_index, q, k, nprobe)

    def _tie_order(
        self, distances: torch.Tensor, labels: torch.Tensor, k: int, masked: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest first, equal distances by lower id, missing (-1) last with ±inf.

        faiss returns each row sorted by distance with missing entries last, in any order
        among equal distances. On CPU, when no two neighbouring valid entries are equal and
        nothing was masked (``masked``: tombstones), that order is already the final one and
        the sort is skipped (one comparison pass; on CUDA the check would cost a host sync, so
        the rows are always sorted there).
        """
        missing = self._metric.missing_distance
        if not masked and labels.shape[1] == k and labels.device.type == "cpu":
            d, i = distances.numpy(), labels.numpy()  # numpy: less per-op overhead here
            if not ((d[:, 1:] == d[:, :-1]) & (i[:, 1:] >= 0)).any():
                d[i < 0] = missing  # ``distances`` is a fresh buffer from the faiss call
                return distances, labels
        descending = self._metric.descending
        values, labels = topk_by_id(-distances if descending else distances, labels, k)
        values = -values if descending else values
        return values.masked_fill(labels < 0, missing), labels

    def _pad(
        self, distances: torch.Tensor, labels: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        short = k - labels.shape[1]
        if short <= 0:
            return distances, labels
        n = labels.shape[0]
        fill_d = torch.full((n, short), self._metric.missing_distance, device=distances.device)
        fill_i = torch.full((n, short), -1, dtype=torch.int64, device=labels.device)
        return torch.cat([distances, fill_d], dim=1), torch.cat([labels, fill_i], dim=1)

    # ---------------------------------------------------------------- moving and saving
    def _install(self, cpu_index: Any, store: IdStore, next_id: int) -> None:
        """Adopt a CPU faiss index (copied to this index's device) and its id store."""
        self._faiss_index = _faiss.index_to_device(cpu_index, self._device)
        self._store = store.to(self._device)
        self._next_id = int(next_id)
        self._tombstones = self._tombstones[:0]
        self._host_cache = None

    def to(self, device: str | torch.device) -> IVFIndexBase:
        """This index on ``device``: ``self`` if already there, else a copy."""
        device = resolve_device(device)
        if device == self._device:
            return self
        with self._lock.read():
            other = type(self)(**self._config(), device=device)
            other.memory_budget = self.memory_budget
            other._install(self._compacted_host_copy(), self._store, self._next_id)
        return other

    def save(self, path: Any) -> None:
        """Write the index to ``path`` atomically; reload with :meth:`load` or
        :func:`gpuann.load` (onto any device)."""
        from gpuann.ivf._persist import save_ivf

        with self._lock.read():
            save_ivf(self, path)

    @classmethod
    def load(cls, path: Any, device: str | torch.device | None = None) -> IVFIndexBase:
        """Load an index of this class saved with :meth:`save`."""
        from gpuann.serialization import load

        return load(path, device, kind=cls._kind)
