"""faiss's ``IndexHNSWFlat`` over :class:`gpuann.HNSWIndex` (which runs faiss's own graph).

The native index is built with faiss's default level seed (12345), so that on one thread a
new shim and a new faiss index build the same graph from the same vectors and return the same
results (ties aside: the shim orders equal distances by lower id), also after ``reset``
(the generator keeps running, as faiss's) and after ``read_index`` of a faiss file. After
``clone_index`` or pickling the shim's generator restarts at another point than faiss's:
graphs built from then on differ from faiss's, as two faiss builds with other seeds do.

As in faiss, vectors are numbered ``0, 1, …`` in insertion order and can neither be removed
nor merged (``remove_ids`` and ``merge_from`` raise ``RuntimeError``); ``hnsw.efSearch``
and ``hnsw.efConstruction`` are read and set as faiss's are, and
``SearchParametersHNSW(efSearch=...)`` applies to one search.
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann.compat.faiss._base import Index
from gpuann.compat.faiss._common import (
    METRIC_INNER_PRODUCT,
    METRIC_L2,
    FaissRuntimeError,
    check_k,
    faiss_errors,
    fill_missing,
    metric_name,
)
from gpuann.compat.faiss.selectors import SearchParameters
from gpuann.hnsw import HNSWIndex

__all__ = ["FAISS_HNSW_SEED", "HNSWView", "IndexHNSW", "IndexHNSWFlat", "SearchParametersHNSW"]

#: The seed of faiss's ``HNSW`` level generator (``rng(12345)`` in faiss's constructor).
FAISS_HNSW_SEED = 12345


class SearchParametersHNSW(SearchParameters):
    """faiss's ``SearchParametersHNSW(efSearch=..., sel=...)`` (``sel`` is not supported by
    the HNSW shim)."""

    def __init__(
        self, *, efSearch: int = 16, check_relative_distance: bool = True, sel: Any = None
    ) -> None:
        super().__init__(sel=sel)
        self.efSearch = int(efSearch)
        self.check_relative_distance = bool(check_relative_distance)


class HNSWView:
    """``index.hnsw``: faiss's ``efSearch`` and ``efConstruction`` (read and set), the rest of
    faiss's ``HNSW`` structure read from the graph."""

    def __init__(self, shim: IndexHNSWFlat) -> None:
        object.__setattr__(self, "_shim", shim)

    @property
    def efSearch(self) -> int:
        return self._shim.index.ef_search

    @efSearch.setter
    def efSearch(self, value: int) -> None:
        self._shim.index.ef_search = int(value)

    @property
    def efConstruction(self) -> int:
        return self._shim.index.ef_construction

    @efConstruction.setter
    def efConstruction(self, value: int) -> None:
        self._shim.index.ef_construction = int(value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # (copy and pickle probe before __init__ ran)
            raise AttributeError(name)
        return getattr(self._shim.index.faiss_index.hnsw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("efSearch", "efConstruction"):
            object.__setattr__(self, name, value)  # the properties above
        else:
            raise AttributeError(f"hnsw.{name}: the shim sets efSearch and efConstruction only")


class IndexHNSW(Index):
    """What faiss's HNSW indexes share (for ``isinstance`` checks, as faiss's
    ``IndexHNSW``)."""


class IndexHNSWFlat(IndexHNSW):
    """faiss ``IndexHNSWFlat(d, M=32, metric=METRIC_L2)``: an HNSW graph over float32 vectors.

    Parameters
    ----------
    d : int
        Dimension.
    M : int
        Graph degree (faiss's default 32).
    metric : int
        ``METRIC_L2`` (default) or ``METRIC_INNER_PRODUCT``.
    device : str or torch.device, optional
        Where results come back for torch queries (a gpuann extension; the graph stays in host
        memory).
    """

    _filters = False

    def __init__(
        self,
        d: int,
        M: int = 32,
        metric: int = METRIC_L2,
        device: str | torch.device | None = None,
    ) -> None:
        self.metric_type = metric
        self.index = HNSWIndex(
            d, M=M, metric=metric_name(metric), device=device or "cpu", seed=FAISS_HNSW_SEED
        )
        self.index._reseed_on_reset = False  # faiss's reset keeps its level generator

    @classmethod
    def from_native(cls, native: HNSWIndex) -> IndexHNSWFlat:
        """The shim over an existing float32 ``HNSWIndex`` (l2 or ip), its ids renumbered
        ``0..n-1`` (faiss's positions)."""
        if not isinstance(native, HNSWIndex) or native.sq8:
            raise TypeError(f"native: expected a float32 gpuann.HNSWIndex, got {native!r}")
        if native.metric.value not in ("l2", "ip"):
            raise TypeError(f"native: faiss has no {native.metric.value} HNSW index")
        shim = cls.__new__(cls)
        shim.metric_type = METRIC_L2 if native.metric.value == "l2" else METRIC_INNER_PRODUCT
        shim.index = native
        native._reseed_on_reset = False
        native.renumber()
        native.compact(reorder=True)  # faiss's positions: label i holds id i
        return shim

    @property
    def hnsw(self) -> HNSWView:
        """faiss's ``index.hnsw`` (``efSearch``, ``efConstruction``, …)."""
        return HNSWView(self)

    @property
    def code_size(self) -> int:
        """Bytes per stored vector (float32)."""
        return 4 * self.d

    def _search_positions(self, x: Any, k: int, params: Any) -> tuple[Any, Any]:
        x, k = self._convert(x), check_k(k)
        options = self._search_options(params)
        ef = getattr(params, "efSearch", None)
        if ef is not None:
            options["ef_search"] = int(ef)
        with faiss_errors():
            distances, found = self._native.search(x, k, **options)
        return fill_missing(distances, found, self._missing()), found

    def _native_range(self, x: Any, thresh: float, params: Any) -> tuple[Any, Any, Any]:
        ef = getattr(params, "efSearch", None)
        return self._native.range_search(x, thresh, ef_search=None if ef is None else int(ef))

    def remove_ids(self, x: Any) -> int:
        """Refused, as in faiss (its HNSW cannot remove; ``gpuann.HNSWIndex`` can)."""
        raise FaissRuntimeError("remove_ids not implemented for this type of index")

    def merge_from(self, otherIndex: Any, add_id: int = 0) -> None:
        """Refused, as in faiss (``gpuann.HNSWIndex.merge_from`` merges)."""
        raise FaissRuntimeError("merge_from() not implemented for this type of index")
