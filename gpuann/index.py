"""``Index``: the base every gpuann index class derives from, and the ``Searchable`` protocol.

The base owns what every index shares, so each class supplies only its storage and scoring:

- the readers-writer lock (concurrent searches, exclusive mutations);
- ``dim``, ``metric``, ``device``, ``dtype``, ``ids``, ``len``, ``nbytes``;
- input preparation: numpy in → numpy out, argument checks naming the argument, the NaN/inf
  policy (values are checked *after* conversion to the dtype they are computed in, so a
  float64 value beyond float32's range is an error, not an ``inf``), scale-safe cosine
  normalisation;
- id management over one id-sorted row store (:class:`gpuann._rows.IdRows`): ``add`` with
  ids, ``remove``, ``update``, ``reconstruct``, ``reset`` — all-or-nothing
  (:class:`gpuann._mutations.Mutations`);
- ``to``, ``save``/``load`` through small hooks (:class:`gpuann._persistence.Persistence`),
  and the text and HTML reprs.

A subclass sets ``_columns()`` (what one row holds), ``_encode`` (prepared vectors → columns)
and ``_search`` (prepared queries → distances and ids); the hooks ``_before_insert``,
``_before_remove``, ``_before_update`` and ``_after_change`` let an index keep an outside
structure (a faiss index, a KD-tree) in step. Its public ``search`` keeps its own signature and
docstring and calls :meth:`Index._run_search`.

Every option after the structural arguments is keyword-only, with the same names and defaults
everywhere: ``metric``, ``device``, ``dtype``, ``memory_budget``, ``seed`` (default 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from gpuann._mutations import Mutations
from gpuann._persistence import Persistence
from gpuann._rows import IdRows
from gpuann._rwlock import ReadWriteLock
from gpuann._validate import (
    check_k,
    check_result_size,
    non_negative_int,
    positive_int,
    resolve_device,
)
from gpuann.display import Bytes, html_repr, text_repr
from gpuann.inputs import check_memory_budget, prepare_vectors
from gpuann.metrics import Metric, as_metric
from gpuann.range_search import RangeResult
from gpuann.result import SearchResult

__all__ = ["DEFAULT_SEED", "Index", "Searchable"]

#: The default ``seed`` of every index that draws random numbers.
DEFAULT_SEED = 0
_F32_MAX = float(torch.finfo(torch.float32).max)


@runtime_checkable
class Searchable(Protocol):
    """What code that only searches needs (``ShardedIndex``, ``batch_search``, ``gpuann.eval``).

    Every :class:`Index` is ``Searchable``; so is anything with these members.
    """

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def __len__(self) -> int: ...

    def search(self, queries: Any, k: int) -> SearchResult: ...


class Index(Mutations, Persistence):
    """The base of every gpuann index: locking, validation, ids, persistence, display.

    Parameters
    ----------
    dim : int
        Vector dimension (for binary indexes: bits per code).
    metric : str or Metric
        ``"l2"`` (squared Euclidean), ``"ip"`` (inner product) or ``"cosine"``.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype
        Storage dtype of the rows.
    memory_budget : int, optional
        Bytes of working memory per search (default: see :func:`gpuann.knn`).
    """

    #: The name saved in index files (the class name unless set).
    kind: ClassVar[str] = ""
    #: Columns computed from the others on load (not saved), e.g. squared norms.
    _derived_columns: ClassVar[tuple[str, ...]] = ()
    #: Constructor arguments that ``_config`` returns and ``load``/``to`` pass back.
    _config_keys: ClassVar[tuple[str, ...]] = ("dim", "metric", "dtype", "memory_budget")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__name__
        from gpuann.serialization import register_index_kind

        register_index_kind(cls.kind, cls._from_file)

    def __init__(
        self,
        dim: int,
        *,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        memory_budget: int | None = None,
    ) -> None:
        self._dim = positive_int(dim, "dim")
        self._metric = as_metric(metric)
        self._device = resolve_device(device)
        self._dtype = dtype
        self.memory_budget = check_memory_budget(memory_budget)
        self._lock = ReadWriteLock()
        self._rows = IdRows(self._device, self._columns())

    # ---------------------------------------------------------------- subclass hooks
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What one stored row holds: ``{name: (row shape, dtype)}``."""
        return {"vectors": ((self._dim,), self._dtype)}

    def _prepare(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool, Any]:
        """Validated input on the index device, the form ``_encode`` and ``_search`` take.

        Returns the tensor, whether ``x`` was numpy, and the device it came from.
        """
        return prepare_vectors(
            x,
            name,
            dim=self._dim,
            metric=self._metric,
            device=self._device,
            check_finite=check_finite,
            dtype=self._input_dtype(),
        )

    def _input_dtype(self) -> torch.dtype:
        """The dtype ``add``/``update`` inputs are converted to (default: the storage dtype)."""
        return self._dtype

    def _prepare_queries(
        self, queries: Any, check_finite: bool
    ) -> tuple[torch.Tensor, bool, torch.device]:
        """Validated queries on the index device (kept in their float dtype; float64 →
        float32), normalised for cosine."""
        return prepare_vectors(
            queries,
            "queries",
            dim=self._dim,
            metric=self._metric,
            device=self._device,
            check_finite=check_finite,
            dtype=None,
        )

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prepared vectors (n, dim) → the stored columns of their ``n`` rows."""
        return {"vectors": x, **self._derive({"vectors": x})}

    def _derive(self, columns: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``_derived_columns`` computed from the saved ones."""
        return {}

    def _search(self, queries: torch.Tensor, k: int, **options: Any) -> tuple[Any, Any]:
        """``(distances, ids)`` of shape (Q, k) on the index device; read lock held."""
        raise NotImplementedError

    def _before_insert(self, ids: torch.Tensor, rows: Mapping[str, torch.Tensor]) -> None:
        """Called with the write lock held before rows are stored; raising aborts the add."""

    def _before_remove(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Called before rows are dropped (``ids`` are theirs); raising aborts the remove."""

    def _before_update(self, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        """Called before rows are overwritten; raising aborts the update."""

    def _after_change(self) -> None:
        """Called after every successful mutation (add, remove, update, reset, load)."""

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        """The stored vectors of ``rows`` (for :meth:`reconstruct`)."""
        return self._rows.data["vectors"][rows]

    def _require(self, ids: torch.Tensor) -> torch.Tensor:
        """Storage positions of ``ids``; raise :class:`~gpuann.UnknownIdError` if any is not
        stored (read or write lock held)."""
        return self._rows.require(ids)

    def _writing(self) -> contextlib.AbstractContextManager:
        """The context of every mutation: the write lock."""
        return self._lock.write()

    def _display_extra(self) -> dict[str, Any]:
        """Fields a subclass adds to the repr, after ``dim`` (Python values only)."""
        return {}

    def _config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON values) that rebuild an empty twin."""
        values = {
            "dim": self._dim,
            "metric": self._metric.value,
            "dtype": str(self._dtype).removeprefix("torch."),
            "memory_budget": self.memory_budget,
        }
        return {key: values[key] for key in self._config_keys if key in values}

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
        """Where the index lives and searches run."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype."""
        return self._dtype

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy, on the index device)."""
        with self._lock.read():
            return self._rows.stored_ids.clone()

    @property
    def nbytes(self) -> int:
        """Bytes of memory the index holds, spare capacity included (from sizes: no sync)."""
        return self._rows.nbytes

    def __len__(self) -> int:
        return self._rows.n

    # ---------------------------------------------------------------- display
    def _display_fields(self) -> dict[str, Any]:
        """What ``repr`` and Jupyter show: Python ints and tensor metadata only (no sync)."""
        return {
            "n": len(self),
            "dim": self._dim,
            **self._display_extra(),
            "metric": self._metric,
            "dtype": self._dtype,
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- search
    def _run_search(
        self, queries: Any, k: int, *, check_finite: bool = True, **options: Any
    ) -> SearchResult:
        """Validate ``k`` and ``queries``, call ``_search`` under the read lock, convert back.

        Results come back as numpy when ``queries`` was numpy, else on the queries' device.
        """
        k = check_k(k)
        q, was_numpy, source = self._prepare_queries(queries, check_finite)
        if not torch.compiler.is_compiling():
            check_result_size(q.shape[0], k, self._device)
        with self._lock.read():
            distances, ids = self._search(q, k, **options)
        return self._output(distances, ids, was_numpy, source)

    def _budget(self, memory_budget: int | None) -> int | None:
        """This search's memory budget: ``memory_budget``, else the index's."""
        return memory_budget if memory_budget is not None else self.memory_budget

    def _no_results(self, n_queries: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distances, ids)`` of shape (Q, k) with every result missing (±inf, ``-1``)."""
        shape = (n_queries, k)
        return (
            torch.full(shape, self._metric.missing_distance, device=self._device),
            torch.full(shape, -1, dtype=torch.int64, device=self._device),
        )

    @staticmethod
    def _output(distances: Any, ids: Any, was_numpy: bool, source: torch.device) -> SearchResult:
        if was_numpy:
            return SearchResult(distances.detach().cpu().numpy(), ids.cpu().numpy())
        return SearchResult(distances.to(source), ids.to(source))

    def range_search(
        self,
        queries: Any,
        radius: float,
        *,
        max_results: int | None = None,
        memory_budget: int | None = None,
        check_finite: bool = True,
    ) -> RangeResult:
        """Every stored vector within ``radius`` of each query (faiss's ``range_search``).

        Parameters
        ----------
        queries : shape (Q, dim), as for :meth:`search`
        radius : float
            ``"l2"``: squared distance ``< radius``; similarities (``"ip"``, ``"cosine"``):
            ``> radius``; Hamming: distance ``< radius``.
        max_results : int, optional
            Raise ``ValueError`` (naming ``radius``) when more results are found (default
            :data:`gpuann.range_search.DEFAULT_MAX_RESULTS`).
        memory_budget : int, optional
            Bytes of working memory per tile.

        Returns
        -------
        RangeResult
            ``(lims, distances, ids)``: query ``i``'s results are
            ``distances[lims[i]:lims[i+1]]`` and ``ids[lims[i]:lims[i+1]]``, nearest first,
            equal distances by lower id. numpy when ``queries`` is numpy.
        """
        return self._run_range_search(
            queries,
            radius,
            max_results=max_results,
            memory_budget=memory_budget,
            check_finite=check_finite,
        )

    def _run_range_search(
        self,
        queries: Any,
        radius: float,
        *,
        max_results: int | None,
        memory_budget: int | None,
        check_finite: bool,
        **options: Any,
    ) -> RangeResult:
        """:meth:`range_search` with an index's own ``options`` for :meth:`_range_search`."""
        if isinstance(radius, bool) or not isinstance(radius, (int, float, np.number)):
            raise TypeError(f"radius: expected a number, got {type(radius).__name__}")
        if not np.isfinite(float(radius)):
            raise ValueError(f"radius: expected a finite number, got {radius}")
        if max_results is not None:
            max_results = non_negative_int(max_results, "max_results")
        budget = check_memory_budget(memory_budget)
        q, was_numpy, source = self._prepare_queries(queries, check_finite)
        with self._lock.read():
            lims, distances, ids = self._range_search(
                q,
                float(radius),
                max_results=max_results,
                memory_budget=self._budget(budget),
                **options,
            )
        if was_numpy:
            return RangeResult(lims.cpu().numpy(), distances.cpu().numpy(), ids.cpu().numpy())
        return RangeResult(lims.to(source), distances.to(source), ids.to(source))

    def _range_search(
        self, queries: torch.Tensor, radius: float, *, max_results: int | None, memory_budget: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no range_search")
