"""faiss's IVF indexes, ``IndexIVFFlat`` and ``IndexIVFPQ``, over gpuann's IVF indexes, and
``index_factory``.

The gpuann index keeps the caller's ids (faiss's labels), so ``remove_ids`` keeps the others'
ids as faiss's ``IndexIVF`` does. After ``train`` the quantizer holds the ``nlist`` centroids,
as in faiss (``index.quantizer.search(x, 1)`` gives each vector's list).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from gpuann.compat.faiss._base import Index
from gpuann.compat.faiss._common import (
    METRIC_L2,
    FaissRuntimeError,
    as_ids,
    faiss_errors,
    metric_name,
    metric_type_of,
    raises_as_faiss,
)
from gpuann.compat.faiss.flat import IndexFlat, IndexIDMap, IndexIDMap2
from gpuann.compat.faiss.refine import IndexRefineFlat

__all__ = ["FAISS_SEED", "DirectMap", "IndexIVF", "IndexIVFFlat", "IndexIVFPQ", "index_factory"]

#: faiss's default k-means seed (``ClusteringParameters.seed``).
FAISS_SEED = 1234
#: The native index's ``max_train_points``: every vector given to ``train`` reaches faiss,
#: which samples them itself (its k-means and PQ training, seeded as faiss's own). gpuann's
#: sample of larger sets took other vectors than faiss's: other centroids, other results
#: (found by review: any IVF trained on more than 256 · nlist vectors).
TRAIN_ON_ALL = 1 << 62


class DirectMap:
    """faiss's ``DirectMap`` types (accepted; ``reconstruct`` needs none here)."""

    NoMap = 0
    Array = 1
    Hashtable = 2


class IndexIVF(Index):
    """What faiss's ``IndexIVF`` shims share (the gpuann index is :attr:`index`)."""

    _positional = False

    def _setup(self, quantizer: Any, d: int, metric: int, device: Any) -> None:
        if quantizer is None:
            quantizer = IndexFlat(d, metric, "cpu")
        if not isinstance(quantizer, IndexFlat):
            raise TypeError(
                "quantizer: expected an IndexFlat from gpuann.compat.faiss, got "
                f"{type(quantizer).__name__}"
            )
        if quantizer.d != d:
            raise ValueError(f"quantizer: has d={quantizer.d}, the index d={d}")
        self.quantizer = quantizer
        self.metric_type = metric
        self.own_fields = False

    @classmethod
    def from_native(cls, native: Any) -> IndexIVF:
        """The shim over an existing gpuann IVF index (its quantizer filled if trained)."""
        from gpuann.ivf import IVFFlatIndex, IVFPQIndex

        metric = metric_type_of(native.metric)
        if isinstance(native, IVFFlatIndex):
            shim: IndexIVF = IndexIVFFlat(None, native.dim, native.nlist, metric, "cpu")
        elif isinstance(native, IVFPQIndex):
            shim = IndexIVFPQ(None, native.dim, native.nlist, native.m, native.nbits, metric, "cpu")
        else:
            raise TypeError(f"native: expected a gpuann IVF index, got {type(native).__name__}")
        shim.index = native
        if native.is_trained:
            shim._fill_quantizer()
        else:  # a file of an untrained index: trained later as faiss trains
            native.max_train_points = TRAIN_ON_ALL
        return shim

    # ---------------------------------------------------------------- properties
    @property
    def nlist(self) -> int:
        return self.index.nlist

    @property
    def nprobe(self) -> int:
        """Lists visited per query (faiss's default is 1; so is this shim's). Any value from
        0 is kept, as faiss keeps it: more than ``nlist`` visits every list, 0 makes a search
        raise ``RuntimeError``."""
        stored = self.__dict__.get("_nprobe")
        return self.index.nprobe if stored is None else stored

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        # faiss's SWIG size_t: TypeError for a non-int, OverflowError below 0 (found by
        # review: nprobe above nlist raised ValueError, where faiss visits every list)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"nprobe: expected an int, got {type(value).__name__}")
        if value < 0:
            raise OverflowError(f"nprobe: expected a value >= 0 (size_t), got {value}")
        self._nprobe = int(value)
        if value >= 1:
            self.index.nprobe = min(int(value), self.nlist)

    #: faiss's cap on codes scanned per query (0: none); only 0 is supported here.
    max_codes = 0

    def _lists_to_visit(self, params: Any) -> int:
        """``params.nprobe`` (``SearchParametersIVF``) or :attr:`nprobe`, at most ``nlist``;
        0 raises as faiss's ``'cur_nprobe > 0' failed``."""
        nprobe = int(params.nprobe) if hasattr(params, "nprobe") else self.nprobe
        max_codes = getattr(params, "max_codes", 0) if params is not None else self.max_codes
        if max_codes:  # faiss stops scanning after max_codes codes; silently ignored before
            raise NotImplementedError(
                "max_codes: not supported by the shim (it scans every code of nprobe lists); "
                "lower nprobe instead"
            )
        if nprobe < 1:
            raise FaissRuntimeError("search: Error: 'cur_nprobe > 0' failed")
        return min(nprobe, self.nlist)

    def make_direct_map(self, new_maintain: bool = True) -> None:
        """Nothing to do: ``reconstruct`` works without a direct map here."""

    def set_direct_map_type(self, type: Any) -> None:
        """Nothing to do: ``reconstruct`` works without a direct map here."""

    # ---------------------------------------------------------------- training, adding
    def train(self, x: Any) -> None:
        """Train the coarse quantizer (and PQ) as faiss does, then fill :attr:`quantizer`."""
        x = self._convert(x)
        if self.quantizer.ntotal:
            raise NotImplementedError(
                "train: a quantizer that already holds centroids is not supported (gpuann "
                "trains its own); pass an empty quantizer"
            )
        with faiss_errors():
            self.index.train(x)
        self._fill_quantizer()

    def _fill_quantizer(self) -> None:
        from gpuann.ivf import import_faiss

        real = import_faiss()
        host = self.index.faiss_index
        if hasattr(host, "getDevice"):
            host = real.index_gpu_to_cpu(host)
        ivf = real.extract_index_ivf(host)
        self.quantizer.reset()
        self.quantizer.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))

    def add(self, x: Any) -> None:
        """Add with ids ``ntotal, ntotal + 1, …`` as faiss does."""
        x = self._convert(x)
        n = self.ntotal
        self.add_with_ids(x, np.arange(n, n + x.shape[0], dtype=np.int64))

    def add_with_ids(self, x: Any, ids: Any) -> None:
        """Add vectors with the caller's ids (floats truncated, as faiss).

        Unlike faiss, an id already in the index is refused (``RuntimeError``): gpuann's IVF
        indexes keep one vector per id.
        """
        x = self._convert(x)
        ids = as_ids(ids, x.shape[0])
        self._check_trained("add_with_ids")
        with faiss_errors():
            try:
                self.index.add(x, ids=ids)
            except ValueError as err:
                raise FaissRuntimeError(f"add_with_ids: {err}") from err

    # ---------------------------------------------------------------- searching
    def _search_options(self, params: Any) -> dict[str, Any]:
        """``params.sel`` as the native ``allow_ids`` (the selected ids the index holds), and
        the lists to visit (:meth:`_lists_to_visit`)."""
        options = super()._search_options(params)  # sel -> allow_ids
        options["nprobe"] = self._lists_to_visit(params)
        return options

    def range_search(self, x: Any, thresh: float, *, params: Any = None):
        if params is not None and getattr(params, "nprobe", self.nprobe) != self.nprobe:
            raise NotImplementedError(
                "range_search: params.nprobe is not supported; set index.nprobe instead"
            )
        self._lists_to_visit(None)
        return super().range_search(x, thresh, params=params)  # params.sel: refused there

    # ---------------------------------------------------------------- merging
    def merge_from(self, otherIndex: Any, add_id: int = 0) -> None:
        """Move ``otherIndex``'s vectors here with their ids (both trained alike, as faiss
        requires); it is left empty and trained."""
        self._check_mergeable(otherIndex)
        if add_id:
            raise NotImplementedError("merge_from: add_id != 0 is not supported by the shim")
        theirs = otherIndex.nprobe
        otherIndex.nprobe = self.nprobe  # a search default: faiss merges regardless
        with faiss_errors():
            try:
                self.index.merge_from(otherIndex.index)
            except ValueError as err:
                raise FaissRuntimeError(f"merge_from: {err}") from err
            finally:
                otherIndex.nprobe = theirs


class IndexIVFFlat(IndexIVF):
    """faiss ``IndexIVFFlat(quantizer, d, nlist, metric)`` over :class:`gpuann.IVFFlatIndex`.

    ``quantizer`` (an empty ``IndexFlat`` of this module, or ``None``) is filled with the
    centroids by :meth:`train`.
    """

    def __init__(
        self,
        quantizer: Any,
        d: int,
        nlist: int,
        metric: int = METRIC_L2,
        device: str | torch.device | None = None,
    ) -> None:
        from gpuann.ivf.ivf_flat import IVFFlatIndex

        self._setup(quantizer, d, metric, device)
        self.index = IVFFlatIndex(
            d,
            nlist,
            metric=metric_name(metric),
            device=device,
            nprobe=1,
            seed=FAISS_SEED,
            max_train_points=TRAIN_ON_ALL,
        )

    @property
    def code_size(self) -> int:
        return 4 * self.d


class IndexIVFPQ(IndexIVF):
    """faiss ``IndexIVFPQ(quantizer, d, nlist, M, nbits, metric)`` over
    :class:`gpuann.IVFPQIndex`. Wrap it in :class:`IndexRefineFlat` to re-rank exactly."""

    def __init__(
        self,
        quantizer: Any,
        d: int,
        nlist: int,
        M: int,
        nbits: int = 8,
        metric: int = METRIC_L2,
        device: str | torch.device | None = None,
    ) -> None:
        from gpuann.ivf.ivf_pq import IVFPQIndex

        self._setup(quantizer, d, metric, device)
        self.index = IVFPQIndex(
            d,
            nlist,
            M,
            nbits=nbits,
            metric=metric_name(metric),
            device=device,
            nprobe=1,
            seed=FAISS_SEED,
            max_train_points=TRAIN_ON_ALL,
        )

    @property
    def code_size(self) -> int:
        return (self.index.m * self.index.nbits + 7) // 8


_IDMAP = re.compile(r"IDMap2?")
_REFINE = ("RFlat", "Refine(Flat)")
_SHIM_KINDS = ("Flat", "HNSW", "IVFFlat", "IVFPQ")
_SHIM_FACTORY = (
    '"Flat", "HNSW[<M>][,Flat]", "IVF<n>,Flat", "IVF<n>,PQ<m>[x<b>]", with "IDMap[2]," before '
    'Flat or HNSW, or ",RFlat" after any of them'
)


@raises_as_faiss
def index_factory(
    d: int, description: str, metric: int = METRIC_L2, device: str | torch.device | None = None
) -> Index:
    """faiss ``index_factory`` for ``"Flat"``, ``"HNSWM[,Flat]"``, ``"IVFn,Flat"``,
    ``"IVFn,PQm[xb]"``, with an ``"IDMap,"`` / ``"IDMap2,"`` prefix (flat, HNSW) or a
    ``",RFlat"`` suffix (:class:`IndexRefineFlat`, ``k_factor`` 1, as faiss); anything else
    (pre-transforms, scalar quantizers…) raises ``RuntimeError`` (also a ``ValueError``)."""
    from gpuann.ivf.factory import parse_description

    parts = [p.strip() for p in str(description).split(",")]
    id_map = parts[0] if len(parts) > 1 and _IDMAP.fullmatch(parts[0]) else None
    refine = len(parts) > 1 and parts[-1] in _REFINE
    core = parts[1 if id_map else 0 : -1 if refine else None]
    try:
        spec = parse_description(",".join(core))
    except ValueError as err:  # faiss: RuntimeError ("could not parse")
        raise FaissRuntimeError(str(err)) from None
    kind = "HNSWSQ" if spec["kind"] == "HNSW" and spec["sq8"] else spec["kind"]
    if "transform" in spec or kind not in _SHIM_KINDS:
        raise FaissRuntimeError(
            f"description: {description!r} has no gpuann.compat.faiss counterpart; the shim "
            f"builds {_SHIM_FACTORY} (gpuann.index_factory builds more, natively)"
        )
    if kind == "Flat":
        index: Index = IndexFlat(d, metric, device)
    elif kind == "HNSW":
        from gpuann.compat.faiss.hnsw import IndexHNSWFlat

        index = IndexHNSWFlat(d, spec["M"], metric, device)
    elif kind == "IVFFlat":
        index = IndexIVFFlat(None, d, spec["nlist"], metric, device)
    else:
        index = IndexIVFPQ(None, d, spec["nlist"], spec["m"], spec["nbits"], metric, device)
    if id_map:
        if refine:  # faiss nests the refinement inside the map; the shim's map cannot
            raise FaissRuntimeError(
                f"description: {description!r}: IDMap with RFlat has no gpuann counterpart"
            )
        if kind not in ("Flat", "HNSW"):
            raise FaissRuntimeError(
                f"description: {description!r}: IDMap is supported over Flat and HNSW only"
            )
        index = (IndexIDMap2 if id_map == "IDMap2" else IndexIDMap)(index)
    return IndexRefineFlat(index) if refine else index
