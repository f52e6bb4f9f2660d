"""``IVFIndexBase``: what ``IVFFlatIndex`` and ``IVFPQIndex`` share, on :class:`gpuann.Index`.

The base owns the lock, input preparation, the ids (one :class:`~gpuann._rows.IdRows` store:
no columns, or with ``refine=True`` the float32 vectors and squared norms,
:class:`gpuann.refine.KeptVectors`), the mutations, ``to``, ``save``/``load`` and the reprs.
The faiss index (a :class:`~gpuann.ivf.gpu_gaps.GapFilledFaiss`, which also fills
faiss-gpu's gaps), with the user's ids as its labels, is kept in step through the base's
hooks by :class:`~gpuann.ivf.faiss_sync.FaissSync`. Results are made by
:mod:`gpuann.ivf._results` (tie order, padding, re-ranking); files by
:mod:`gpuann.ivf._persist`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from gpuann._validate import non_negative_int, positive_int, storage_dtype
from gpuann.budget import check_budget
from gpuann.errors import NotTrainedError
from gpuann.index import DEFAULT_SEED, Index
from gpuann.inputs import prepare_vectors
from gpuann.ivf import _faiss
from gpuann.ivf._persist import IVFPersistence
from gpuann.ivf._results import faiss_range_search, refined_search, tie_exact_search
from gpuann.ivf.faiss_sync import FaissSync
from gpuann.ivf.gpu_gaps import GapFilledFaiss
from gpuann.ivf.label_filter import LabelFilter, label_filter
from gpuann.ivf.training import (
    MAX_POINTS_PER_LIST,
    TrainingMinimum,
    require_training_points,
    training_minimum,
    training_set,
)
from gpuann.metrics import Metric
from gpuann.range_search import RangeResult
from gpuann.refine import DEFAULT_REFINE_FACTOR, KeptVectors
from gpuann.result import SearchResult

__all__ = ["IVFIndexBase"]

#: The constructor arguments of every IVF index, in the order ``_config`` lists them.
_BASE_CONFIG_KEYS = (
    *("dim", "nlist", "metric", "dtype", "memory_budget", "seed", "nprobe", "max_train_points"),
)
#: Those of the indexes that can re-rank (``_can_refine``), after the subclass's own.
_REFINE_CONFIG_KEYS = ("refine", "refine_factor")


class IVFIndexBase(IVFPersistence, FaissSync, KeptVectors, Index):
    """Shared implementation; use :class:`~gpuann.IVFFlatIndex` or :class:`~gpuann.IVFPQIndex`.

    Subclasses implement ``_new_faiss_index``, ``_code_size`` and (optionally)
    ``_trained_nbytes`` and ``_default_max_train``, and name their own constructor arguments
    in ``_own_config_keys`` (returned by ``_specific_config``); ``_config_keys`` follows.

    Examples
    --------
    >>> from gpuann.ivf import IVFFlatIndex
    >>> x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    >>> index = IVFFlatIndex(8, 4, device="cpu", nprobe=4)
    >>> index.train(x)
    >>> index.add(x)
    >>> index.remove([0, 1]), len(index), index.faiss_index.ntotal
    (2, 398, 398)
    >>> index.update([2], x[:1])
    >>> index.search(x[:1], 1).ids.tolist()
    [[2]]
    """

    _config_keys: ClassVar[tuple[str, ...]] = _BASE_CONFIG_KEYS
    #: The subclass's own constructor arguments.
    _own_config_keys: ClassVar[tuple[str, ...]] = ()
    #: Whether ``refine=True`` is meaningful (IVF-Flat's vectors are exact already).
    _can_refine: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        refine_keys = _REFINE_CONFIG_KEYS if cls._can_refine else ()
        cls._config_keys = (*_BASE_CONFIG_KEYS, *cls._own_config_keys, *refine_keys)
        super().__init_subclass__(**kwargs)

    def __init__(
        self,
        dim: int,
        nlist: int,
        *,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        memory_budget: int | None = None,
        seed: int = DEFAULT_SEED,
        nprobe: int | None = None,
        max_train_points: int | None = None,
        refine: bool = False,
        refine_factor: int = DEFAULT_REFINE_FACTOR,
    ) -> None:
        self._nlist = positive_int(nlist, "nlist")
        self._seed = non_negative_int(seed, "seed")
        if self._seed >= 2**31:
            raise ValueError(f"seed: expected 0 to 2**31 - 1 (faiss's seed is an int), got {seed}")
        self._max_train = (
            None if max_train_points is None else self._check_max_train(max_train_points)
        )
        self._init_refine(refine, refine_factor)
        if refine and not self._can_refine:
            raise ValueError(f"refine: {type(self).__name__} stores exact vectors already")
        dtype = storage_dtype(dtype)
        if dtype != torch.float32:
            raise ValueError(f"dtype: IVF indexes keep float32 vectors (faiss's), got {dtype}")
        super().__init__(
            dim, metric=metric, device=device, dtype=dtype, memory_budget=memory_budget
        )
        self._nprobe = self._check_nprobe(
            max(1, self._nlist // 16) if nprobe is None else nprobe, "nprobe"
        )
        self._pending_undo: Any = None
        self._faiss = GapFilledFaiss(self._new_faiss_index(), self._device)

    # ---------------------------------------------------------------- subclass hooks
    def _new_faiss_index(self) -> Any:
        """A new, untrained faiss CPU index with this index's parameters."""
        raise NotImplementedError

    def _code_size(self) -> int:
        """Bytes of one vector's code in faiss's inverted lists."""
        raise NotImplementedError

    def _trained_nbytes(self) -> int:
        """Bytes of trained state besides the coarse centroids (0 for IVF-Flat)."""
        return 0

    def _default_max_train(self) -> int:
        return self._nlist * MAX_POINTS_PER_LIST

    def _training_minimum(self) -> TrainingMinimum:
        """The fewest training vectors faiss accepts (IVF-PQ adds its codebooks')."""
        return training_minimum(self._nlist)

    def _faiss_metric(self) -> int:
        faiss = _faiss.import_faiss()
        return faiss.METRIC_L2 if self._metric is Metric.L2 else faiss.METRIC_INNER_PRODUCT

    def _config(self) -> dict[str, Any]:
        values = {
            "dim": self._dim,
            "nlist": self._nlist,
            "metric": self._metric.value,
            "dtype": "float32",
            "memory_budget": self.memory_budget,
            "seed": self._seed,
            "nprobe": self._nprobe,
            "max_train_points": self._max_train,
            "refine": self._refine,
            "refine_factor": self.refine_factor,
            **self._specific_config(),
        }
        return {key: values[key] for key in self._config_keys}

    def _specific_config(self) -> dict[str, Any]:
        """The subclass's own constructor arguments (JSON values)."""
        return {}

    # ---------------------------------------------------------------- properties
    @property
    def nlist(self) -> int:
        """Number of inverted lists (k-means cells)."""
        return self._nlist

    @property
    def seed(self) -> int:
        """Seed of the training sample and of faiss's k-means."""
        return self._seed

    @property
    def is_trained(self) -> bool:
        """Whether :meth:`train` has run (``add`` and ``search`` need it)."""
        return bool(self._faiss.index.is_trained)

    @property
    def max_train_points(self) -> int:
        """Training uses a seeded sample of at most this many of the vectors given (settable
        before :meth:`train`)."""
        return self._max_train if self._max_train is not None else self._default_max_train()

    @max_train_points.setter
    def max_train_points(self, value: int) -> None:
        self._max_train = self._check_max_train(value)

    def _check_max_train(self, value: Any) -> int:
        """``value`` if a sample of that many vectors can be trained on (else ``train`` would
        fail in faiss, whatever it is given)."""
        value = positive_int(value, "max_train_points")
        require_training_points(value, self._training_minimum(), "max_train_points")
        return value

    @property
    def nprobe(self) -> int:
        """Lists visited per query when ``search`` is not given ``nprobe``."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = self._check_nprobe(value, "nprobe")

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index (for inspection; changing it bypasses gpuann's checks)."""
        return self._faiss.index

    @property
    def nbytes(self) -> int:
        """Bytes held, from sizes alone (no tensor value is read, faiss is not serialised).

        ``ntotal · (code_size + 8)`` for faiss's inverted lists (codes and int64 ids; ``ntotal``
        counts GPU tombstones, which faiss still holds), ``nlist · dim · 4`` for the trained
        coarse centroids, what the subclass adds (PQ codebooks), and gpuann's own tensors: the
        id store (spare capacity included; with ``refine`` the float32 vectors and norms) and
        the tombstones. faiss-gpu may pad its lists beyond these logical sizes.
        """
        total = self._faiss.ntotal * (self._code_size() + 8)
        if self.is_trained:
            total += self._nlist * self._dim * 4 + self._trained_nbytes()
        return total + self._rows.nbytes + self._faiss.tombstones.nbytes

    def _display_fields(self) -> dict[str, Any]:
        from gpuann.display import Bytes

        return {
            "n": len(self),
            "dim": self._dim,
            "nlist": self._nlist,
            **self._display_extra(),
            **({"refine": self._refine} if self._can_refine else {}),
            "metric": self._metric,
            "nprobe": self._nprobe,
            "trained": self.is_trained,
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    # ---------------------------------------------------------------- input
    def _check_nprobe(self, nprobe: Any, name: str) -> int:
        nprobe = positive_int(nprobe, name)
        if nprobe > self._nlist:
            raise ValueError(f"{name}: expected 1 to nlist={self._nlist}, got {nprobe}")
        return nprobe

    def _prepare(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool, Any]:
        x, was_numpy, source = super()._prepare(x, name, check_finite)
        return x.contiguous(), was_numpy, source

    def _prepare_queries(
        self, queries: Any, check_finite: bool
    ) -> tuple[torch.Tensor, bool, torch.device]:
        q, was_numpy, source = prepare_vectors(
            queries,
            "queries",
            dim=self._dim,
            metric=self._metric,
            device=self._device,
            check_finite=check_finite,
            dtype=torch.float32,  # what faiss searches with
        )
        return q.contiguous(), was_numpy, source

    def _require_trained(self, what: str) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"{what}: the index is not trained; call train(x) first")

    # ---------------------------------------------------------------- training
    def train(self, x: Any, *, check_finite: bool = True) -> None:
        """Train the coarse quantizer (and the PQ codebooks) on ``x``.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim), floating
            At least ``nlist`` vectors (faiss warns below ``39 · nlist``), and for IVF-PQ at
            least ``2**nbits`` (:func:`~gpuann.ivf.training.training_minimum`). When ``n``
            exceeds :attr:`max_train_points`, a seeded sample is used
            (:func:`~gpuann.ivf.training.training_sample`).
        check_finite : bool
            The usual NaN/inf and range checks of every index. Values faiss's k-means cannot
            handle (:func:`~gpuann.ivf.training.check_trainable`) are refused either way:
            faiss would abort the process.

        Raises
        ------
        ValueError
            Fewer vectors than faiss needs, values faiss cannot train on, bad shape / dtype.
        RuntimeError
            The index is already trained, or faiss failed; either way the index is left as
            it was (untrained, an empty coarse quantizer), so ``train`` can be retried.
        """
        x, _, _ = self._prepare(x, "x", check_finite)
        minimum = self._training_minimum()
        x = training_set(x, self._nlist, self.max_train_points, self._seed, self._metric, minimum)
        with self._lock.write():
            if self.is_trained:
                raise RuntimeError(
                    "train: the index is already trained; build a new one to retrain"
                )
            self._faiss.train(x)

    # ---------------------------------------------------------------- storage hooks
    # (the mutation hooks, keeping faiss in step, are FaissSync's)
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return self._kept_columns()

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        """Exact vectors with ``refine``, else faiss's decoding (exact for IVF-Flat)."""
        if self._refine:
            return self._rows.data["vectors"][rows]
        return self._faiss.reconstruct(self._rows.stored_ids[rows], self._dim)

    def _renumber_storage(self) -> None:
        raise NotImplementedError("renumber: IVF indexes keep their ids, as faiss's IndexIVF")

    # ---------------------------------------------------------------- search
    def search(
        self,
        queries: Any,
        k: int,
        *,
        nprobe: int | None = None,
        refine_factor: int | None = None,
        check_finite: bool = True,
        exclude_ids: Any = None,
        allow_ids: Any = None,
    ) -> SearchResult:
        """The ``k`` nearest stored vectors of each query among ``nprobe`` lists.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
            Any float dtype; moved to the index device. Results come back where the queries
            were (numpy in, numpy out).
        k : int
            Any positive int (from 2048 a GPU index searches a host copy: faiss-gpu selects
            at most 2048 candidates, and ``k + 1`` are fetched, see Returns).
        nprobe : int, optional
            Lists to visit, 1 to ``nlist``; default :attr:`nprobe`.
        refine_factor : int, optional
            With ``refine=True``: re-rank ``refine_factor · k`` candidates by exact distance
            (default :attr:`refine_factor`). Passing it to an index built without ``refine``
            raises.
        check_finite : bool
            Raise on NaN or infinity in ``queries``.
        exclude_ids : int64 tensor, shape (Q, m) or (Q,), optional
            Ids never returned for each query (e.g. the query's own id); ``-1`` pads, ids
            not in the index are ignored. Each query fetches ``m`` more candidates from faiss
            and drops its excluded ones (exact: at most ``m`` of them are excluded).
        allow_ids : int64 tensor, shape (n,), optional
            The only ids that may be returned (ids not in the index are ignored; none in the
            index: every result missing). On a CPU index faiss applies them as an id selector
            (``SearchParametersIVF(sel=...)``) inside the list scan. faiss-gpu takes no
            selector: a CUDA index fetches ``k`` plus the number of stored ids not allowed
            and drops those (exact, as for GPU tombstones), or, when that is more than
            faiss-gpu can select (2048), searches its host copy with the selector.

        The filters are those of :meth:`gpuann.FlatIndex.search`, applied to the ``nprobe``
        lists searched: with ``nprobe = nlist`` an IVF-Flat search equals an exact search
        over the eligible ids. With ``refine`` the candidates are filtered before the
        re-ranking.

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k): float32 and int64. Without refine the
            distances are faiss's (exact for IVF-Flat, estimates from the codes otherwise);
            with refine, exact (the arithmetic of exact search: ``‖x‖² − 2⟨q, x⟩`` selected,
            ``‖q‖²`` added to the winners). Equal distances ordered by lower id, also where
            they straddle the ``k``-th place: of several vectors tied there, those of lower
            id are returned (faiss keeps any of them; gpuann fetches one candidate more than
            ``k``, and where that one is tied too, 8 times as many for those queries until
            the tie ends, then sorts by distance and id). Id ``-1`` with ±inf where fewer
            than ``k`` results were found (all of them on a trained, empty index).
        """
        factor = self._refine_factor_for(refine_factor)
        nprobe = self._nprobe if nprobe is None else self._check_nprobe(nprobe, "nprobe")
        return self._run_search(
            queries,
            k,
            check_finite=check_finite,
            nprobe=nprobe,
            refine_factor=factor,
            exclude_ids=exclude_ids,
            allow_ids=allow_ids,
        )

    def _search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        nprobe: int,
        refine_factor: int | None,
        exclude_ids: Any = None,
        allow_ids: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_queries, stored = queries.shape[0], len(self)
        filters = self._label_filter(exclude_ids, allow_ids, n_queries)
        self._require_trained("search")
        if stored == 0 or (filters is not None and filters.hidden == stored):
            return self._no_results(n_queries, k)
        if refine_factor is not None:
            budget = check_budget(self.memory_budget, self._device)
            args = (queries, k, nprobe, refine_factor, self._metric, budget, filters)
            return refined_search(self._faiss, self._rows, *args)
        return tie_exact_search(self._faiss, queries, k, nprobe, stored, self._metric, filters)

    def _label_filter(self, exclude_ids: Any, allow_ids: Any, n_queries: int) -> LabelFilter | None:
        """The validated filters as faiss labels (:func:`gpuann.ivf.label_filter.label_filter`)."""
        return label_filter(self._rows.stored_ids, exclude_ids, allow_ids, n_queries, self._device)

    def range_search(
        self,
        queries: Any,
        radius: float,
        *,
        max_results: int | None = None,
        memory_budget: int | None = None,
        check_finite: bool = True,
    ) -> RangeResult:
        """The stored vectors within ``radius`` of each query among :attr:`nprobe` lists
        (faiss's IVF range search, on the host copy of a GPU index).

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim)
        radius : float
            ``"l2"``: squared distance ``< radius``; ``"ip"``, ``"cosine"``: ``> radius``.
        max_results, memory_budget, check_finite
            As for :meth:`gpuann.Index.range_search`.

        Returns
        -------
        RangeResult
            ``(lims, distances, ids)`` in faiss's layout, each query's results nearest first,
            equal distances by lower id. Approximate: vectors in lists not visited are
            missed. The distances, and the comparison with ``radius``, are faiss's: exact
            for IVF-Flat, estimates from the codes for IVF-PQ and IVF-SQ, **also with
            ``refine=True``** (the kept vectors re-rank :meth:`search` only): a vector may
            be returned although its exact distance is beyond ``radius``, or missed
            although it is within. Re-scoring faiss's candidates would fix the distances
            but not the vectors missed, so it is not done: for exact distances re-score the
            ids returned (with ``refine``, :meth:`reconstruct` gives the kept vectors), or
            use :meth:`search`.
        """
        return self._run_range_search(
            queries,
            radius,
            max_results=max_results,
            memory_budget=memory_budget,
            check_finite=check_finite,
        )

    def _range_search(
        self, queries: torch.Tensor, radius: float, *, max_results: int | None, memory_budget: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """faiss's range search over ``nprobe`` lists (see :func:`faiss_range_search`)."""
        self._require_trained("range_search")
        lims, distances, labels = faiss_range_search(
            self._faiss, queries, radius, self._nprobe, self._metric, max_results
        )
        return lims.to(self._device), distances.to(self._device), labels.to(self._device)
