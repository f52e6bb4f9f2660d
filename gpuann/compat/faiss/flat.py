"""faiss's flat indexes: ``IndexFlat``, ``IndexFlatL2``, ``IndexFlatIP``, ``IndexIDMap``,
``IndexIDMap2`` over :class:`gpuann.FlatIndex`.

``IndexIDMap`` is built as faiss builds it: the inner flat index numbers vectors by position
and :attr:`IndexIDMap.id_map` holds the caller's id of each position, so repeated ids, the
order of results and ``remove_ids`` behave exactly as in faiss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann.compat.faiss._base import Index
from gpuann.compat.faiss._common import (
    METRIC_INNER_PRODUCT,
    METRIC_L2,
    FaissRuntimeError,
    UnknownIdError,
    as_ids,
    faiss_errors,
    metric_name,
)
from gpuann.compat.faiss.hnsw import IndexHNSWFlat
from gpuann.flat import FlatIndex
from gpuann.hnsw import HNSWIndex

__all__ = [
    "IndexFlat",
    "IndexFlatIP",
    "IndexFlatL2",
    "IndexIDMap",
    "IndexIDMap2",
    "Int64Vector",
    "vector_to_array",
]


class IndexFlat(Index):
    """faiss ``IndexFlat``: exact search, ids are insertion positions.

    Parameters
    ----------
    d : int
        Dimension.
    metric : int
        ``METRIC_L2`` (default) or ``METRIC_INNER_PRODUCT``.
    device : str or torch.device, optional
        Default CUDA when available, else CPU (a gpuann extension).
    """

    def __init__(
        self, d: int, metric: int = METRIC_L2, device: str | torch.device | None = None
    ) -> None:
        self.metric_type = metric
        self.index = FlatIndex(d, metric=metric_name(metric), device=device)

    @classmethod
    def from_native(cls, native: FlatIndex) -> IndexFlat:
        """The shim over an existing ``FlatIndex`` with ids ``0..n-1`` (renumbered if not)."""
        if not isinstance(native, FlatIndex):
            raise TypeError(f"native: expected a gpuann.FlatIndex, got {type(native).__name__}")
        metric = METRIC_L2 if native.metric.value == "l2" else METRIC_INNER_PRODUCT
        shim = {METRIC_L2: IndexFlatL2, METRIC_INNER_PRODUCT: IndexFlatIP}[metric](
            native.dim, native.device
        )
        shim.index = native
        native.renumber()
        return shim

    @property
    def code_size(self) -> int:
        """Bytes per stored vector (float32)."""
        return 4 * self.d


class IndexFlatL2(IndexFlat):
    """faiss ``IndexFlatL2``: squared Euclidean distances."""

    def __init__(self, d: int, device: str | torch.device | None = None) -> None:
        super().__init__(d, METRIC_L2, device)


class IndexFlatIP(IndexFlat):
    """faiss ``IndexFlatIP``: inner products (larger is nearer)."""

    def __init__(self, d: int, device: str | torch.device | None = None) -> None:
        super().__init__(d, METRIC_INNER_PRODUCT, device)


class Int64Vector:
    """faiss's ``Int64Vector`` (``IndexIDMap.id_map``): ``size()``, ``at(i)``, numpy-able.

    A growable buffer whose last slot always holds ``-1``, so ``buffer[positions]`` maps the
    ``-1`` of missing results to ``-1`` with no extra pass.
    """

    def __init__(self) -> None:
        self._buf = np.full(1, -1, dtype=np.int64)
        self._n = 0
        self._device_copy: torch.Tensor | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    def size(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    def at(self, i: int) -> int:
        if not 0 <= i < self._n:
            raise IndexError(f"i: expected 0 to {self._n - 1}, got {i}")
        return int(self._buf[i])

    def numpy(self) -> np.ndarray:
        """A read-only view of the ids."""
        view = self._buf[: self._n]
        view.flags.writeable = False
        return view

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.array(self._buf[: self._n], dtype=dtype)

    def _changed(self) -> None:
        self._device_copy = self._sorted = None

    def extend(self, ids: np.ndarray) -> None:
        need = self._n + ids.size + 1
        if need > self._buf.size:
            grown = np.full(max(need, 2 * self._buf.size), -1, dtype=np.int64)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : self._n + ids.size] = ids
        self._n += ids.size
        self._changed()

    def keep(self, mask: np.ndarray) -> None:
        kept = self._buf[: self._n][mask]
        self._buf[: kept.size] = kept
        self._buf[kept.size : self._n] = -1
        self._n = kept.size
        self._changed()

    def clear(self) -> None:
        self._buf = np.full(1, -1, dtype=np.int64)
        self._n = 0
        self._changed()

    def take(self, positions: Any) -> Any:
        """The ids at ``positions`` (``-1`` → ``-1``), numpy or a tensor like ``positions``."""
        if isinstance(positions, np.ndarray):
            return self._buf[positions]
        if self._device_copy is None or self._device_copy.device != positions.device:
            self._device_copy = torch.from_numpy(self._buf).to(positions.device)
        return self._device_copy[positions]

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """The last position holding each id (faiss's ``rev_map``); ``-1`` if none."""
        if self._sorted is None:
            order = np.argsort(self._buf[: self._n], kind="stable")
            self._sorted = (self._buf[: self._n][order], order)
        values, order = self._sorted
        if not values.size:
            return np.full(ids.shape, -1, dtype=np.int64)
        last = np.maximum(np.searchsorted(values, ids, side="right") - 1, 0)
        return np.where(values[last] == ids, order[last], -1)

    def __getstate__(self) -> dict[str, Any]:
        return {"ids": self._buf[: self._n].copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        self.extend(state["ids"])


def vector_to_array(v: Any) -> np.ndarray:
    """faiss's ``vector_to_array``: a numpy copy of ``v`` (an ``Int64Vector``, array or list,
    or one of faiss's own vectors, such as ``index.hnsw.levels``, through faiss)."""
    if type(v).__module__.startswith("faiss"):
        from gpuann.compat.faiss.io import _real_faiss

        real = _real_faiss()
        if real is not None:
            return real.vector_to_array(v)
    return np.array(v)


class IndexIDMap(Index):
    """faiss ``IndexIDMap``: the caller's int64 ids over an empty flat or HNSW index.

    :attr:`index` is the wrapped index (as in faiss); :attr:`id_map` the id of each of its
    positions. Ids need not be unique, as in faiss. Over an ``IndexHNSWFlat``, searches take
    its ``SearchParametersHNSW`` and, as in faiss, ``remove_ids`` and ``merge_from`` raise.
    """

    _positional = True

    def __init__(self, index: IndexFlat | IndexHNSWFlat) -> None:
        if not isinstance(index, (IndexFlat, IndexHNSWFlat)):
            raise TypeError(
                "index: expected an IndexFlat or IndexHNSWFlat from gpuann.compat.faiss, got "
                f"{type(index).__name__}"
            )
        if index.ntotal:
            raise FaissRuntimeError("index: IndexIDMap needs an empty index (as in faiss)")
        self.index = index
        self.metric_type = index.metric_type
        self.own_fields = False
        self.id_map = Int64Vector()

    @property
    def _native(self) -> FlatIndex | HNSWIndex:
        return self.index.index

    @property
    def _over_graph(self) -> bool:
        return isinstance(self.index, IndexHNSWFlat)

    def _search_positions(self, x: Any, k: int, params: Any) -> tuple[Any, Any]:
        if self._over_graph:  # the graph's own parameters (efSearch; no selectors)
            return self.index._search_positions(x, k, params)
        return super()._search_positions(x, k, params)

    def _native_range(self, x: Any, thresh: float, params: Any) -> tuple[Any, Any, Any]:
        return self.index._native_range(x, thresh, params)

    def _check_mergeable(self, other: Any) -> None:
        super()._check_mergeable(other)
        if type(other.index) is not type(self.index):  # as faiss's inner check
            raise FaissRuntimeError(
                f"merge_from: cannot merge an {type(self).__name__} over "
                f"{type(other.index).__name__} into one over {type(self.index).__name__}: "
                "check_compatible_for_merge failed"
            )

    def search_and_reconstruct(
        self, x: Any, k: int, *, params: Any = None, D: Any = None, I: Any = None, R: Any = None
    ):
        """Not supported by ``IndexIDMap``, as in faiss: use ``IndexIDMap2``."""
        return self.reconstruct(0)

    @property
    def is_trained(self) -> bool:
        return self.index.is_trained

    @is_trained.setter
    def is_trained(self, value: bool) -> None:
        self.index.is_trained = value

    def _labels(self, positions: Any) -> Any:
        return self.id_map.take(positions)

    def _stored_labels(self) -> np.ndarray:
        return self.id_map.numpy()

    def add(self, x: Any) -> None:
        """Refused, as in faiss: the ids must be given."""
        raise FaissRuntimeError("add: IndexIDMap needs ids, call add_with_ids (as in faiss)")

    def add_with_ids(self, x: Any, ids: Any) -> None:
        """Add vectors with the caller's ids (any int64; floats are truncated, as faiss)."""
        x = self._convert(x)
        ids = as_ids(ids, x.shape[0])
        self._check_trained("add_with_ids")
        with faiss_errors():
            self._native.add(x)
        self.id_map.extend(ids)

    def remove_ids(self, x: Any) -> int:
        """Remove every vector whose id is in ``x`` (array or ``IDSelector``); the others keep
        their ids and order, as in faiss (over a graph: refused, as in faiss)."""
        if self._over_graph:
            return self.index.remove_ids(x)
        mask = self._selection(x).mask(self.id_map.numpy())
        positions = np.flatnonzero(mask)
        if not positions.size:
            return 0
        removed = self._native.remove(positions, strict=False)
        self._native.renumber()
        self.id_map.keep(~mask)
        return removed

    def reset(self) -> None:
        self.index.reset()
        self.id_map.clear()

    def train(self, x: Any) -> None:
        self.index.train(x)

    def reconstruct(self, key: int, x: Any = None) -> np.ndarray:
        """Not supported by ``IndexIDMap``, as in faiss: use ``IndexIDMap2``."""
        raise FaissRuntimeError(
            "reconstruct not implemented for this type of index (IndexIDMap); use IndexIDMap2"
        )

    def reconstruct_batch(self, key: Any, x: Any = None) -> np.ndarray:
        """Not supported by ``IndexIDMap``, as in faiss: use ``IndexIDMap2``."""
        return self.reconstruct(0)

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x: Any = None) -> np.ndarray:
        """Not supported by ``IndexIDMap``, as in faiss: use ``IndexIDMap2``."""
        return self.reconstruct(0)

    def merge_from(self, otherIndex: Any, add_id: int = 0) -> None:
        """Append ``otherIndex``'s vectors with their ids (plus ``add_id``); it is left empty
        (over a graph: refused, as in faiss)."""
        self._check_mergeable(otherIndex)
        if self._over_graph:
            self.index.merge_from(otherIndex.index)
        if otherIndex.ntotal:
            with faiss_errors():
                self._native.add(otherIndex._native.reconstruct(otherIndex._native.ids))
            self.id_map.extend(otherIndex.id_map.numpy() + int(add_id))
        otherIndex.reset()


class IndexIDMap2(IndexIDMap):
    """faiss ``IndexIDMap2``: ``IndexIDMap`` that can also reconstruct by id."""

    def _native_keys(self, keys: np.ndarray) -> np.ndarray:
        positions = self.id_map.positions_of(keys)
        if (positions < 0).any():
            missing = keys[positions < 0][:10].tolist()
            raise UnknownIdError(f"key: id(s) not in the index: {missing}")
        return positions

    def reconstruct(self, key: int, x: Any = None) -> np.ndarray:
        return Index.reconstruct(self, key, x)

    def search_and_reconstruct(
        self, x: Any, k: int, *, params: Any = None, D: Any = None, I: Any = None, R: Any = None
    ):
        return Index.search_and_reconstruct(self, x, k, params=params, D=D, I=I, R=R)

    def reconstruct_batch(self, key: Any, x: Any = None) -> np.ndarray:
        return Index.reconstruct_batch(self, key, x)

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x: Any = None) -> np.ndarray:
        """The stored vectors of ids ``n0 … n0 + ni - 1``."""
        ni = self.ntotal - n0 if ni < 0 else ni
        return self.reconstruct_batch(np.arange(n0, n0 + ni, dtype=np.int64), x)
