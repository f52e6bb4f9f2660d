"""faiss's search parameters and id selectors.

A selector is evaluated on the ids an index holds (a boolean mask); the shim hands the
selected ids to gpuann's ``allow_ids`` filter, which applies inside the exact search (flat
indexes) or as faiss's own id selector in the list scan (IVF indexes; see
:meth:`gpuann.IVFFlatIndex.search`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "IDSelector",
    "IDSelectorAnd",
    "IDSelectorArray",
    "IDSelectorBatch",
    "IDSelectorBitmap",
    "IDSelectorNot",
    "IDSelectorOr",
    "IDSelectorRange",
    "IDSelectorXOr",
    "SearchParameters",
    "SearchParametersIVF",
]


def _id_array(args: tuple[Any, ...], name: str) -> np.ndarray:
    """faiss's ``(n, ids)`` swig form or the Python ``(ids,)`` form."""
    if len(args) == 2:
        n, ids = args
        return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)[: int(n)]
    if len(args) == 1:
        return np.ascontiguousarray(args[0], dtype=np.int64).reshape(-1)
    raise TypeError(f"{name}: expected (ids) or (n, ids)")


class IDSelector:
    """Base of faiss's id selectors: :meth:`mask` says which ids are selected."""

    def mask(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of ``ids`` (int64) that are selected."""
        raise NotImplementedError

    def is_member(self, id: int) -> bool:
        """Whether ``id`` is selected (faiss's ``is_member``)."""
        return bool(self.mask(np.array([id], dtype=np.int64))[0])


class IDSelectorBatch(IDSelector):
    """Ids in a set: ``IDSelectorBatch(ids)`` or faiss's ``IDSelectorBatch(n, ids)``."""

    def __init__(self, *args: Any) -> None:
        self.ids = np.unique(_id_array(args, "IDSelectorBatch"))

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.ids)


class IDSelectorArray(IDSelectorBatch):
    """Ids in an array: ``IDSelectorArray(ids)`` or ``IDSelectorArray(n, ids)``."""


class IDSelectorRange(IDSelector):
    """Ids ``imin <= id < imax``."""

    def __init__(self, imin: int, imax: int, assume_sorted: bool = False) -> None:
        self.imin, self.imax, self.assume_sorted = int(imin), int(imax), bool(assume_sorted)

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= self.imin) & (ids < self.imax)


class IDSelectorBitmap(IDSelector):
    """Ids whose bit is set in ``bitmap`` (bit ``i % 8`` of byte ``i // 8``, as faiss)."""

    def __init__(self, *args: Any) -> None:
        bitmap = args[-1]
        self.bitmap = np.ascontiguousarray(bitmap, dtype=np.uint8).reshape(-1)
        if len(args) == 2:
            self.bitmap = self.bitmap[: int(args[0])]

    def mask(self, ids: np.ndarray) -> np.ndarray:
        inside = (ids >= 0) & (ids < self.bitmap.size * 8)
        out = np.zeros(ids.shape, dtype=bool)
        i = ids[inside]
        out[inside] = (self.bitmap[i >> 3] >> (i & 7)) & 1 == 1
        return out


class IDSelectorNot(IDSelector):
    """Ids that ``sel`` does not select."""

    def __init__(self, sel: IDSelector) -> None:
        self.sel = sel

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return ~self.sel.mask(ids)


class IDSelectorAnd(IDSelector):
    """Ids both selectors select."""

    def __init__(self, lhs: IDSelector, rhs: IDSelector) -> None:
        self.lhs, self.rhs = lhs, rhs

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return self.lhs.mask(ids) & self.rhs.mask(ids)


class IDSelectorOr(IDSelectorAnd):
    """Ids either selector selects."""

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return self.lhs.mask(ids) | self.rhs.mask(ids)


class IDSelectorXOr(IDSelectorAnd):
    """Ids exactly one selector selects."""

    def mask(self, ids: np.ndarray) -> np.ndarray:
        return self.lhs.mask(ids) ^ self.rhs.mask(ids)


class SearchParameters:
    """faiss's ``SearchParameters(sel=...)``."""

    def __init__(self, *, sel: IDSelector | None = None) -> None:
        self.sel = sel


class SearchParametersIVF(SearchParameters):
    """faiss's ``SearchParametersIVF(nprobe=..., max_codes=..., sel=...)``."""

    def __init__(
        self, *, nprobe: int = 1, max_codes: int = 0, sel: IDSelector | None = None
    ) -> None:
        super().__init__(sel=sel)
        self.nprobe, self.max_codes = int(nprobe), int(max_codes)


def selected(sel: Any) -> IDSelector | None:
    """The shim's selector from ``params.sel`` (a faiss selector object is refused)."""
    if sel is None or isinstance(sel, IDSelector):
        return sel
    raise TypeError(
        f"params.sel: expected an IDSelector from gpuann.compat.faiss, got {type(sel).__name__}"
    )
