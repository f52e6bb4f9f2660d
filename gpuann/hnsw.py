"""``HNSWIndex``: a graph index (faiss's HNSW) on torch tensors, with user ids and removal.

faiss's HNSW numbers its vectors 0, 1, 2… in insertion order (its *labels*) and cannot remove
one. This index keeps, on top of the shared :class:`~gpuann.index.Index` id store, each id's
label (a column of the store) and the reverse map ``label_to_id`` (``-1`` for a removed
vector). A removed vector stays in the graph as a *tombstone* — it still routes searches, it
is never returned — and :meth:`HNSWIndex.compact` rebuilds the graph without them.

The faiss calls and the ordering of faiss's results are in :mod:`gpuann._hnsw_faiss`, the
file format in :mod:`gpuann._hnsw_persist`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gpuann import _hnsw_faiss as hf
from gpuann import _hnsw_persist as hnsw_persist
from gpuann._validate import check_k, positive_int
from gpuann.errors import NotTrainedError
from gpuann.index import DEFAULT_SEED, Index
from gpuann.inputs import host_queries
from gpuann.metrics import Metric
from gpuann.range_search import RangeResult
from gpuann.result import SearchResult

__all__ = ["HNSWIndex"]

#: Above this many extra results, searches with tombstones filter them inside faiss (an
#: ``IDSelectorBitmap``) instead of fetching ``k + tombstones`` results and dropping them.
OVERFETCH_LIMIT = 256
#: Searches returning more results than this take the general path (which checks the
#: results fit in memory).
_HOST_MAX_RESULTS = 1 << 24


class HNSWIndex(Index):
    """Approximate nearest-neighbour search over an HNSW graph (faiss ``IndexHNSWFlat``).

    Parameters
    ----------
    dim : int
        Vector dimension.
    M : int
        Graph degree: each vector links to ``M`` others per level (``2 M`` on the base level).
        Larger: better recall, more memory (``≈ 8 M`` bytes per vector) and slower builds.
    ef_construction : int
        Candidates examined when a vector is inserted.
    ef_search : int
        Default candidates examined per query (``search(..., ef_search=...)`` overrides it);
        at least ``k`` are always examined.
    metric : {"l2", "ip", "cosine"}
        Cosine is the inner product of vectors normalised on the way in.
    device : str or torch.device, optional
        Where ids and results live. The graph itself is always in host memory (faiss has no GPU
        HNSW): on a CUDA device queries are copied to the host, searched by faiss on the CPU
        and the results copied back. (Building the graph on a GPU with CAGRA needs faiss-gpu
        built with cuVS, which ``gpuann.hnsw.cagra_unavailable_reasons()`` checks; not
        supported by this class yet.)
    dtype : torch.dtype
        ``torch.float32`` only (faiss stores float32, or 8-bit codes with ``sq8``).
    sq8 : bool
        Store 8-bit scalar-quantised codes (faiss ``IndexHNSWSQ``, a quarter of the memory);
        needs :meth:`train` on a sample first to learn each dimension's range.
    memory_budget : int, optional
        Accepted for a uniform signature; faiss manages its own working memory.
    seed : int
        Seeds the level of each inserted vector. Builds are reproducible when faiss runs on one
        thread (``faiss.omp_set_num_threads(1)``); with several, insertion order races.

    Notes
    -----
    ``remove`` leaves tombstones: searches fetch ``k + tombstones`` results and drop removed
    ones (beyond ``OVERFETCH_LIMIT`` tombstones, faiss skips them itself); ``update`` is a
    remove followed by an add under the same id. Among the results faiss returns, equal
    distances are ordered by lower id; missing results are ``-1`` with ``+inf`` (l2) or
    ``-inf`` (ip, cosine).

    Threads: faiss and torch each run their own OpenMP thread pool. When both use every core,
    a pool that just finished keeps its threads spinning and starves the other, which can make
    searches several times slower; set ``OMP_WAIT_POLICY=PASSIVE`` (before starting Python)
    or give torch fewer threads (see ``benchmarks/bench_hnsw.py``).

    Examples
    --------
    >>> index = HNSWIndex(8, M=16, device="cpu")
    >>> index.add(torch.eye(8), ids=torch.arange(100, 108))
    >>> index.search(torch.eye(8)[:2], 1).ids.tolist()
    [[100], [101]]
    """

    _config_keys = (
        *("dim", "M", "ef_construction", "ef_search", "metric", "sq8", "memory_budget", "seed"),
    )

    def __init__(
        self,
        dim: int,
        *,
        M: int = 32,
        ef_construction: int = 40,
        ef_search: int = 16,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        sq8: bool = False,
        memory_budget: int | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        if dtype != torch.float32:
            raise TypeError(f"dtype: HNSWIndex stores float32 (or sq8 codes), got {dtype}")
        if not isinstance(sq8, bool):
            raise TypeError(f"sq8: expected a bool, got {type(sq8).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        self._m = positive_int(M, "M")
        if self._m < 2:  # faiss's HNSW crashes the process with M = 1
            raise ValueError(f"M: expected at least 2, got {self._m}")
        self._ef_construction = positive_int(ef_construction, "ef_construction")
        self.ef_search = ef_search
        self._sq8 = sq8
        self._seed = int(seed)
        super().__init__(
            dim, metric=metric, device=device, dtype=dtype, memory_budget=memory_budget
        )
        self._faiss = hf.new_hnsw(
            self._dim, self._m, self._ef_construction, self._metric, sq8, self._seed
        )
        self._label_to_id = torch.empty(0, dtype=torch.int64)
        self._tombstones = 0
        self._allowed: np.ndarray | None = None
        self._merging: HNSWIndex | None = None
        self._adopting: Any = None  # from_faiss: the graph that already holds the vectors
        #: ``reset`` restarts the level generator at the seed (the faiss shim keeps it running,
        #: as faiss's own ``reset`` does)
        self._reseed_on_reset = True

    @classmethod
    def from_faiss(
        cls,
        graph: Any,
        *,
        device: str | torch.device | None = None,
        seed: int = DEFAULT_SEED,
    ) -> HNSWIndex:
        """An index over a copy of a faiss ``IndexHNSWFlat`` (its graph kept as it is).

        Parameters
        ----------
        graph : faiss.IndexHNSWFlat
            L2 or inner product; its ``M``, ``efConstruction`` and ``efSearch`` are kept.
        device : str or torch.device, optional
        seed : int
            Recorded as the index's seed; the copy keeps faiss's level generator as faiss's
            ``clone_index`` leaves it (vectors added later get the levels faiss would draw).

        Returns
        -------
        HNSWIndex
            Ids ``0..ntotal-1`` (faiss's labels). The vectors are checked as ``add`` checks
            them (``ValueError`` for NaN or infinite values).

        Examples
        --------
        >>> import faiss
        >>> graph = faiss.IndexHNSWFlat(8, 16)
        >>> graph.add(np.eye(8, dtype=np.float32))
        >>> index = HNSWIndex.from_faiss(graph, device="cpu")
        >>> index.M, len(index), index.search(np.eye(8, dtype=np.float32)[3:4], 1).ids.tolist()
        (16, 8, [[3]])
        """
        faiss = hf.import_faiss()
        if not isinstance(graph, faiss.Index):
            raise TypeError(
                f"graph: expected a faiss IndexHNSWFlat, got {type(graph).__module__}."
                f"{type(graph).__name__} (a gpuann.compat.faiss index holds its HNSWIndex "
                "as .index)"
            )
        kind, dim, metric_type, m = hf.describe(graph)
        metrics = {faiss.METRIC_L2: "l2", faiss.METRIC_INNER_PRODUCT: "ip"}
        if kind != "IndexHNSWFlat" or metric_type not in metrics:
            raise TypeError(
                f"graph: expected a faiss IndexHNSWFlat (L2 or inner product), got {kind} "
                f"with metric {metric_type}"
            )
        copy = faiss.clone_index(faiss.downcast_index(graph))
        index = cls(
            dim,
            M=m,
            ef_construction=int(copy.hnsw.efConstruction),
            ef_search=int(copy.hnsw.efSearch),
            metric=metrics[metric_type],
            device=device,
            seed=seed,
        )
        if copy.ntotal:
            vectors = torch.from_numpy(copy.reconstruct_n(0, copy.ntotal))
            index._adopting = copy
            try:
                index.add(vectors)
            finally:
                index._adopting = None
        return index

    # ---------------------------------------------------------------- options
    @property
    def M(self) -> int:
        """Graph degree."""
        return self._m

    @property
    def ef_construction(self) -> int:
        """Candidates examined per insertion (settable: applies to the vectors added next)."""
        return self._ef_construction

    @ef_construction.setter
    def ef_construction(self, value: int) -> None:
        value = positive_int(value, "ef_construction")
        with self._lock.write():
            self._ef_construction = value
            self._faiss.hnsw.efConstruction = value

    @property
    def ef_search(self) -> int:
        """Default candidates examined per query."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = positive_int(value, "ef_search")

    @property
    def sq8(self) -> bool:
        """Whether vectors are stored as 8-bit codes."""
        return self._sq8

    @property
    def is_trained(self) -> bool:
        """False until :meth:`train` for ``sq8``; always True otherwise."""
        return bool(self._faiss.is_trained)

    @property
    def tombstones(self) -> int:
        """Removed vectors still in the graph (see :meth:`compact`)."""
        return self._tombstones

    @property
    def _label_to_id(self) -> torch.Tensor:
        """faiss label → user id, int64, contiguous on the CPU (changed in place or replaced)."""
        return self._label_map

    @_label_to_id.setter
    def _label_to_id(self, value: torch.Tensor) -> None:
        # its numpy view, taken once per map: the host path's searches read it every call,
        # and a torch call right after faiss's search costs tens of microseconds (cold caches)
        self._label_map, self._label_map_np = value, value.numpy()

    @property
    def label_to_id(self) -> torch.Tensor:
        """faiss label → user id (``-1`` for a tombstone), int64 on the CPU (a copy)."""
        with self._lock.read():
            return self._label_to_id.clone()

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index (labels are positions in :attr:`label_to_id`)."""
        return self._faiss

    @property
    def nbytes(self) -> int:
        """Ids, labels, the label map, faiss's vectors or codes and graph links (estimated)."""
        ntotal = self._faiss.ntotal
        code = self._dim if self._sq8 else 4 * self._dim
        links = 4 * 2 * self._m * ntotal * (1 + 1 / max(self._m - 1, 1))  # base level + upper
        return super().nbytes + self._label_to_id.nbytes + ntotal * code + int(links)

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "M": self._m,
            "ef_construction": self._ef_construction,
            "ef_search": self._ef_search,
            "sq8": self._sq8,
            "seed": self._seed,
        }

    def _display_extra(self) -> dict[str, Any]:
        extra = {"M": self._m, "ef_search": self._ef_search}
        if self._sq8:
            extra["codes"] = "sq8"
        if self._tombstones:
            extra["tombstones"] = self._tombstones
        return extra

    # ---------------------------------------------------------------- storage hooks
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"label": ((), torch.int64)}

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # labels are given under the write lock (_before_insert); the vectors ride along
        label = torch.empty(x.shape[0], dtype=torch.int64, device=self._device)
        return {"label": label, "_vectors": x}

    def _append(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Add ``x`` to the graph under new labels mapped to ``ids``; returns the labels."""
        if not self.is_trained:
            raise NotTrainedError("HNSWIndex(sq8=True): call train(x) on a sample before add")
        start = self._faiss.ntotal
        labels = torch.arange(start, start + x.shape[0], dtype=torch.int64)
        new_map = torch.cat([self._label_to_id, ids.cpu()])
        if self._adopting is not None:  # from_faiss: the graph holds x already
            if start or self._adopting.ntotal != x.shape[0]:
                raise AssertionError("from_faiss: the adopted graph does not hold the vectors")
            self._faiss = self._adopting
        else:
            self._faiss.add(hf.as_numpy(x))  # the last step that can fail
        self._label_to_id = new_map
        self._allowed = None
        return labels.to(self._device)

    def _before_insert(self, ids: torch.Tensor, rows: Mapping[str, torch.Tensor]) -> None:
        x = rows.get("_vectors")
        if x is None:  # merge_from: the rows are the other index's labels
            assert self._merging is not None
            x = self._merging._decode_labels(rows["label"])
        rows["label"] = self._append(ids, x)  # type: ignore[index]  # the dict from _encode

    def _merge_rows(self, other: Index) -> None:
        # ``merge_from``: the other graph's vectors are decoded (sq8: and re-encoded with this
        # index's ranges) and inserted into this graph under new labels
        assert isinstance(other, HNSWIndex)
        self._merging = other
        try:
            super()._merge_rows(other)
        finally:
            self._merging = None

    def _bury(self, rows: torch.Tensor) -> None:
        labels = self._rows.data["label"][rows].cpu()
        self._label_to_id[labels] = -1
        self._tombstones += labels.numel()
        self._allowed = None

    def _before_remove(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        self._bury(rows)

    def _before_update(self, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        x = values.pop("_vectors")  # type: ignore[attr-defined]  # the dict from _encode
        ids = self._rows.stored_ids[rows]
        labels = self._append(ids, x)
        old = self._rows.data["label"][rows].cpu()
        self._label_to_id[old] = -1
        self._tombstones += old.numel()
        values["label"] = labels  # type: ignore[index]

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        return self._decode_labels(self._rows.data["label"][rows])

    def _decode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.cpu().numpy()
        out = torch.from_numpy(self._faiss.reconstruct_batch(labels)) if labels.size else None
        if out is None:
            out = torch.empty((0, self._dim), dtype=torch.float32)
        return out.to(self._device)

    def _reset_storage(self) -> None:
        super()._reset_storage()
        self._faiss.reset()
        if self._reseed_on_reset:
            hf.reseed(self._faiss, self._seed)
        self._label_to_id = torch.empty(0, dtype=torch.int64)
        self._tombstones = 0
        self._allowed = None

    def _renumber_storage(self) -> None:
        super()._renumber_storage()
        labels = self._rows.view("label").cpu()
        self._label_to_id[labels] = torch.arange(labels.numel(), dtype=torch.int64)

    def _copy_from(self, source: Index) -> None:
        assert isinstance(source, HNSWIndex)
        self._faiss = hf.import_faiss().clone_index(source._faiss)
        self._label_to_id = source._label_to_id.clone()
        self._tombstones = source._tombstones
        super()._copy_from(source)

    # ---------------------------------------------------------------- training
    def train(self, x: Any, *, check_finite: bool = True) -> None:
        """Learn the 8-bit codes' ranges from a sample (``sq8`` only; a no-op otherwise).

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim)
        """
        x, _, _ = self._prepare(x, "x", check_finite)
        if not self._sq8:
            return
        with self._lock.write():
            if self._faiss.ntotal:
                raise ValueError("x: the index already holds vectors; train before add")
            if x.shape[0] == 0:
                raise ValueError("x: cannot train on an empty sample")
            self._faiss.train(hf.as_numpy(x))

    def compact(self, *, reorder: bool = False) -> None:
        """Rebuild the graph without tombstones (labels become ids' ranks).

        Costs a full rebuild; search results may change slightly (another graph). With
        ``sq8``, the codes are decoded and encoded again with the same ranges.

        Parameters
        ----------
        reorder : bool
            Also rebuild a graph without tombstones whose labels are not in the ids' order
            (after ``merge_from`` of interleaved ids, say), so that label ``i`` holds the
            ``i``-th smallest id, as faiss's positions do.
        """
        with self._lock.write():
            if not self._tombstones and (
                not reorder or torch.equal(self._label_to_id, self._rows.stored_ids.cpu())
            ):
                return
            n = len(self)
            vectors = self._decode(torch.arange(n, device=self._device))
            fresh = hf.import_faiss().clone_index(self._faiss)
            fresh.reset()  # keeps the trained sq8 ranges
            hf.reseed(fresh, self._seed)
            if n:
                fresh.add(hf.as_numpy(vectors))
            self._faiss = fresh
            self._label_to_id = self._rows.stored_ids.cpu().clone()
            self._rows.data["label"][:n] = torch.arange(n, device=self._device)
            self._tombstones = 0
            self._allowed = None
            self._after_change()

    # ---------------------------------------------------------------- search
    def search(
        self,
        queries: Any,
        k: int,
        *,
        ef_search: int | None = None,
        check_finite: bool = True,
    ) -> SearchResult:
        """The ``k`` approximate nearest neighbours of each query.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim)
        k : int
        ef_search : int, optional
            Candidates examined per query (default :attr:`ef_search`; at least ``k``).
        check_finite : bool
            Raise on NaN/inf queries.

        Returns
        -------
        SearchResult
            ``(distances, ids)`` of shape (Q, k): numpy when ``queries`` is numpy, else tensors
            on the queries' device.
        """
        ef = self._ef_search if ef_search is None else positive_int(ef_search, "ef_search")
        if self._device.type == "cpu":
            found = self._search_host(queries, check_k(k), ef, check_finite)
            if found is not None:
                return found
        return self._run_search(queries, k, check_finite=check_finite, ef_search=ef)

    def _search_host(
        self, queries: Any, k: int, ef: int, check_finite: bool
    ) -> SearchResult | None:
        """:meth:`search` of float32 CPU queries on a CPU index without tombstones, in numpy
        from end to end (None: take the general path, which also raises on bad input).

        A search of one query costs faiss some tens of microseconds; the general path's
        conversions and torch ops would add several times that.
        """
        x = host_queries(queries, self._dim, self._metric, check_finite)
        if x is None or x.shape[0] * k > _HOST_MAX_RESULTS:
            return None
        with self._lock.read():
            if self._tombstones or not len(self):
                return None
            d, labels = hf.search_host(self._faiss, x, min(k, len(self)), ef)
            d, ids = hf.order_results(d, labels, self._label_map_np, k, self._metric, 0)
        if isinstance(queries, np.ndarray):
            return SearchResult(d, ids)
        return SearchResult(torch.from_numpy(d), torch.from_numpy(ids))

    def _search(self, queries: torch.Tensor, k: int, **options: Any) -> tuple[Any, Any]:
        ef, nq, ntotal = options["ef_search"], queries.shape[0], self._faiss.ntotal
        if not len(self) or not nq:
            return self._no_results(nq, k)
        allowed = None
        fetch = min(k + self._tombstones, ntotal)
        if self._tombstones > OVERFETCH_LIMIT:
            allowed, fetch = self._allowed_bitmap(), min(k, ntotal)
        d, labels = hf.search(self._faiss, queries, fetch, ef, allowed)
        label_to_id = self._label_map_np
        d, ids = hf.order_results(d, labels, label_to_id, k, self._metric, self._tombstones)
        return torch.from_numpy(d).to(self._device), torch.from_numpy(ids).to(self._device)

    def range_search(
        self,
        queries: Any,
        radius: float,
        *,
        ef_search: int | None = None,
        max_results: int | None = None,
        memory_budget: int | None = None,
        check_finite: bool = True,
    ) -> RangeResult:
        """The stored vectors within ``radius`` that a graph search finds (faiss's HNSW range
        search: approximate).

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim)
        radius : float
            ``"l2"``: squared distance ``< radius``; ``"ip"``, ``"cosine"``: ``> radius``.
        ef_search : int, optional
            Candidates examined per query (default :attr:`ef_search`): more finds more.
        max_results, memory_budget, check_finite
            As for :meth:`gpuann.Index.range_search`.

        Returns
        -------
        RangeResult
            ``(lims, distances, ids)`` in faiss's layout, each query's results nearest first,
            equal distances by lower id. Removed vectors still take places among the
            candidates a search examines, so many of them lower what is found: :meth:`compact`.
        """
        ef = self._ef_search if ef_search is None else positive_int(ef_search, "ef_search")
        return self._run_range_search(
            queries,
            radius,
            max_results=max_results,
            memory_budget=memory_budget,
            check_finite=check_finite,
            ef_search=ef,
        )

    def _range_search(
        self,
        queries: torch.Tensor,
        radius: float,
        *,
        max_results: int | None,
        memory_budget: Any,
        ef_search: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """faiss's HNSW range search, removed vectors dropped, each query's results ordered
        by distance, then id."""
        from gpuann.range_search import finish_ranges

        nq = queries.shape[0]
        if not len(self) or not nq:
            lims = torch.zeros(nq + 1, dtype=torch.int64, device=self._device)
            empty = torch.empty(0, dtype=torch.float32, device=self._device)
            return lims, empty, empty.long()
        found = hf.range_search(self._faiss, queries, radius, ef_search)
        lims, distances, labels = (torch.from_numpy(a) for a in found)
        ids = self._label_to_id[labels]
        lims, distances, ids = finish_ranges(
            lims.long(),
            distances,
            ids,
            alive=(ids >= 0) if self._tombstones else None,
            max_results=max_results,
            descending=self._metric.descending,
        )
        return lims.to(self._device), distances.to(self._device), ids.to(self._device)

    def _allowed_bitmap(self) -> np.ndarray:
        """Bitmap of live labels for faiss's ``IDSelectorBitmap`` (cached until a change)."""
        if self._allowed is None:
            live = (self._label_to_id >= 0).numpy()
            self._allowed = np.packbits(live, bitorder="little")
        return self._allowed

    # ---------------------------------------------------------------- persistence
    def _save_meta(self) -> dict[str, Any]:
        return hnsw_persist.save_meta(super()._save_meta(), self._tombstones)

    def _save_arrays(self) -> dict[str, torch.Tensor]:
        return hnsw_persist.save_arrays(super()._save_arrays(), self._label_to_id, self._faiss)

    def _restore(self, meta: dict, arrays: dict[str, torch.Tensor]) -> None:
        expected = (type(self._faiss).__name__, self._dim, self._faiss.metric_type, self._m)
        host, label_map, live = hnsw_persist.read_graph(meta, arrays, expected)
        super()._restore(meta, arrays)
        self._faiss = host
        self._faiss.hnsw.efConstruction = self._ef_construction
        hf.reseed(self._faiss, self._seed + host.ntotal)  # later adds: reproducible levels
        self._label_to_id = label_map.clone()
        self._tombstones = host.ntotal - live
        self._allowed = None
