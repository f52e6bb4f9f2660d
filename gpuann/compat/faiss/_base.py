"""``Index``: what every shim shares (faiss's ``Index`` methods over a gpuann index).

The gpuann index behind a shim is :attr:`Index.index`. Shims whose faiss counterpart numbers
vectors by position (``IndexFlat``, binary, LSH) keep gpuann ids ``0..ntotal-1`` and renumber
after ``remove_ids`` (:meth:`gpuann.Index.renumber`); :meth:`Index._labels` turns those
positions into the ids a caller sees (an ``IndexIDMap``'s ``id_map``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from gpuann.compat.faiss._common import (
    FLT_MAX,
    METRIC_L2,
    FaissRuntimeError,
    as_ids,
    as_vectors,
    check_k,
    faiss_errors,
    fill_missing,
    raises_as_faiss,
)
from gpuann.compat.faiss.selectors import IDSelector, IDSelectorBatch, selected

__all__ = ["Index"]


def _sealing(init: Any) -> Any:
    """``init`` that seals the object when the outermost constructor returns."""

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        state = self.__dict__
        state["_constructing"] = state.get("_constructing", 0) + 1
        try:
            init(self, *args, **kwargs)
        finally:
            state["_constructing"] -= 1
        if not state["_constructing"]:
            state["_sealed"] = True

    return wrapped


class Index:
    """faiss's ``Index`` surface over the gpuann index :attr:`index`."""

    index: Any
    metric_type: int = METRIC_L2
    #: faiss's ``verbose`` flag (kept, unused).
    verbose: bool = False
    #: ids are positions, renumbered after ``remove_ids`` (faiss's flat and binary indexes).
    _positional = True
    #: whether the gpuann index's ``search`` takes ``allow_ids`` (for ``params.sel``).
    _filters = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every shim's constructor refuses arguments as faiss's (``RuntimeError``, see
        :func:`~gpuann.compat.faiss._common.faiss_errors`) and, once the outermost one has
        returned, seals the object (:meth:`__setattr__`)."""
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _sealing(raises_as_faiss(cls.__dict__["__init__"]))

    def __setattr__(self, name: str, value: Any) -> None:
        """As faiss's objects: an attribute the class does not have raises ``AttributeError``
        once constructed (found by review: ``index.efSearch = 3`` on an IVF index, or
        ``refine.nprobe = 8``, were kept and silently ignored). Private names, attributes the
        object already holds, and subclasses defined outside this module are free."""
        if (
            name.startswith("_")
            or name in self.__dict__
            or not self.__dict__.get("_sealed", False)
            or any(name in klass.__dict__ for klass in type(self).__mro__)
            or not type(self).__module__.startswith(__package__)
        ):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(
            f"'{type(self).__name__}' object has no attribute '{name}' (faiss's has none "
            "either; setting it would change nothing)"
        )

    # ---------------------------------------------------------------- properties
    @property
    def _native(self) -> Any:
        """The gpuann index that stores the vectors."""
        return self.index

    @property
    def d(self) -> int:
        """Dimension."""
        return self._native.dim

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return len(self._native)

    @property
    def is_trained(self) -> bool:
        """Whether the index can take vectors (settable, as in faiss)."""
        flag = self.__dict__.get("_is_trained")
        if flag is not None:
            return flag
        native = self._native
        return bool(native.is_trained) if hasattr(type(native), "is_trained") else True

    @is_trained.setter
    def is_trained(self, value: bool) -> None:
        self._is_trained = bool(value)

    @property
    def metric_arg(self) -> float:
        """faiss's ``metric_arg`` (unused by L2 and inner product)."""
        return 0.0

    def _missing(self) -> float:
        return FLT_MAX if self.metric_type == METRIC_L2 else -FLT_MAX

    # ---------------------------------------------------------------- hooks
    def _convert(self, x: Any, what: str = "x") -> Any:
        """Vectors as the gpuann index takes them (codes for binary shims)."""
        return as_vectors(x, self.d, what)

    def _labels(self, positions: Any) -> Any:
        """Caller-visible ids of gpuann ids (``-1`` stays ``-1``)."""
        return positions

    def _stored_labels(self) -> np.ndarray:
        """The caller-visible ids of every stored vector, in gpuann id order."""
        if self._positional:
            return np.arange(self.ntotal, dtype=np.int64)
        return self._native.ids.cpu().numpy()

    def _native_ids(self, mask: np.ndarray) -> np.ndarray:
        """gpuann ids of the stored vectors selected by ``mask`` (over :meth:`_stored_labels`)."""
        if self._positional:
            return np.flatnonzero(mask).astype(np.int64)
        return self._native.ids.cpu().numpy()[mask]

    def _search_options(self, params: Any) -> dict[str, Any]:
        """gpuann search options for faiss's ``params``."""
        if params is None:
            return {}
        sel = selected(getattr(params, "sel", None))
        if sel is None:
            return {}
        if not self._filters:
            raise NotImplementedError(
                f"params.sel: id selectors are not supported on {type(self).__name__} by gpuann"
            )
        allow = self._native_ids(sel.mask(self._stored_labels()))
        return {"allow_ids": torch.from_numpy(allow)}

    def _check_trained(self, what: str) -> None:
        if not self.is_trained:
            raise FaissRuntimeError(f"{what}: Error: 'is_trained' failed (train the index first)")

    # ---------------------------------------------------------------- adding
    def train(self, x: Any) -> None:
        """Nothing to train (faiss's flat indexes)."""
        self._convert(x)

    def add(self, x: Any) -> None:
        """Add vectors with ids ``ntotal, ntotal + 1, …`` as faiss does."""
        x = self._convert(x)
        self._check_trained("add")
        with faiss_errors():
            self._native.add(x)

    def add_with_ids(self, x: Any, ids: Any) -> None:
        """Not supported by faiss's flat indexes: wrap the index in ``IndexIDMap``."""
        raise FaissRuntimeError(
            f"add_with_ids not implemented for this type of index ({type(self).__name__}); "
            "wrap it in IndexIDMap"
        )

    # ---------------------------------------------------------------- searching
    def search(self, x: Any, k: int, *, params: Any = None, D: Any = None, I: Any = None):
        """``(D, I)`` of the ``k`` nearest neighbours, as faiss returns them.

        ``-1`` ids with ``±3.4028235e38`` distances where fewer than ``k`` results exist.
        """
        distances, positions = self._search_positions(x, k, params)
        return self._into(distances, self._labels(positions), D, I)

    def _search_positions(self, x: Any, k: int, params: Any) -> tuple[Any, Any]:
        """``(D, gpuann ids)`` with faiss's missing distances."""
        x, k = self._convert(x), check_k(k)
        self._check_trained("search")
        with faiss_errors():
            distances, found = self._native.search(x, k, **self._search_options(params))
        return fill_missing(distances, found, self._missing()), found

    @staticmethod
    def _into(distances: Any, ids: Any, D: Any, I: Any) -> tuple[Any, Any]:
        if D is not None:
            D[...] = distances
            distances = D
        if I is not None:
            I[...] = ids
            ids = I
        return distances, ids

    def assign(self, x: Any, k: int, labels: Any = None) -> Any:
        """The ids of the ``k`` nearest neighbours (``search`` without distances)."""
        _, ids = self.search(x, k)
        if labels is not None:
            labels[...] = ids
            return labels
        return ids

    def range_search(self, x: Any, thresh: float, *, params: Any = None):
        """``(lims, D, I)``: every vector within ``thresh`` (l2: ``< thresh``; inner product:
        ``> thresh``), faiss's layout; each query's results ordered by distance. More than
        ``gpuann.range_search.DEFAULT_MAX_RESULTS`` results raise ``ValueError`` (gpuann's
        guard; faiss has none)."""
        x = self._convert(x)
        self._check_trained("range_search")
        if params is not None and getattr(params, "sel", None) is not None:
            raise NotImplementedError("range_search: params.sel is not supported by the shim")
        with faiss_errors():
            lims, distances, positions = self._native_range(x, float(thresh), params)
        if isinstance(lims, np.ndarray):
            lims = lims.astype(np.uint64)
        return lims, distances, self._labels(positions)

    def _native_range(self, x: Any, thresh: float, params: Any) -> tuple[Any, Any, Any]:
        """The gpuann index's range search (``params``: an index's own search parameters)."""
        return self._native.range_search(x, thresh)

    def search_and_reconstruct(
        self, x: Any, k: int, *, params: Any = None, D: Any = None, I: Any = None, R: Any = None
    ):
        """``(D, I, R)``: ``search`` and the stored vectors of the results (NaN where missing,
        as faiss fills them)."""
        distances, found = self._search_positions(x, k, params)
        flat = np.asarray(found.cpu() if isinstance(found, torch.Tensor) else found).reshape(-1)
        recons = np.full((flat.size, self.d), np.nan, dtype=np.float32)
        hit = flat >= 0
        if hit.any():
            with faiss_errors():
                recons[hit] = np.asarray(self._native.reconstruct(flat[hit]), dtype=np.float32)
        recons = recons.reshape(*np.shape(found), self.d)
        distances, ids = self._into(distances, self._labels(found), D, I)
        if R is not None:
            R[...] = recons
            recons = R
        return distances, ids, recons

    # ---------------------------------------------------------------- removing, reading
    def _selection(self, x: Any) -> IDSelector:
        return x if isinstance(x, IDSelector) else IDSelectorBatch(as_ids(x))

    def remove_ids(self, x: Any) -> int:
        """Remove the ids in ``x`` (an array or an ``IDSelector``); unknown ids are ignored and
        repeats count once. Positional indexes renumber the rest ``0..ntotal-1``, as faiss."""
        mask = self._selection(x).mask(self._stored_labels())
        removed = self._native.remove(self._native_ids(mask), strict=False)
        if self._positional and removed:
            self._native.renumber()
        return removed

    def _native_keys(self, keys: np.ndarray) -> np.ndarray:
        """gpuann ids of the caller's ids (for reconstruct); unknown ones raise."""
        return keys

    def reconstruct(self, key: int, x: Any = None) -> np.ndarray:
        """The stored vector of id ``key``."""
        out = self.reconstruct_batch(np.array([key], dtype=np.int64))[0]
        if x is not None:
            x[...] = out
            return x
        return out

    def reconstruct_batch(self, key: Any, x: Any = None) -> np.ndarray:
        """The stored vectors of the ids in ``key``, shape (n, d)."""
        keys = self._native_keys(as_ids(key))
        with faiss_errors():
            out = self._native.reconstruct(keys)
        if x is not None:
            x[...] = out
            return x
        return out

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x: Any = None) -> np.ndarray:
        """The stored vectors of ids ``n0 … n0 + ni - 1`` (positions for flat indexes)."""
        ni = self.ntotal - n0 if ni < 0 else ni
        with faiss_errors():
            out = self._native.reconstruct(np.arange(n0, n0 + ni, dtype=np.int64))
        if x is not None:
            x[...] = out
            return x
        return out

    def reset(self) -> None:
        """Remove every vector (the training is kept)."""
        self._native.reset()

    # ---------------------------------------------------------------- merging
    def _check_mergeable(self, other: Any) -> None:
        if type(other) is not type(self) or (other.d, other.metric_type) != (
            self.d,
            self.metric_type,
        ):
            raise FaissRuntimeError(
                f"merge_from: cannot merge a {type(other).__name__} (d={other.d}) into a "
                f"{type(self).__name__} (d={self.d}): check_compatible_for_merge failed"
            )
        if other is self:
            raise FaissRuntimeError("merge_from: cannot merge an index into itself")

    def merge_from(self, otherIndex: Any, add_id: int = 0) -> None:
        """Move every vector of ``otherIndex`` to the end of this one; it is left empty."""
        self._check_mergeable(otherIndex)
        if otherIndex.ntotal:
            with faiss_errors():
                vectors = otherIndex._native.reconstruct(otherIndex._native.ids)
                self._native.add(vectors)
        otherIndex.reset()

    def check_compatible_for_merge(self, otherIndex: Any) -> None:
        """Raise ``RuntimeError`` unless ``otherIndex`` can be merged into this index."""
        self._check_mergeable(otherIndex)

    def __repr__(self) -> str:
        return f"<gpuann.compat.faiss.{type(self).__name__} wrapping {self._native!r}>"
