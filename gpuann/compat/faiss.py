"""faiss-compatible names over gpuann indexes: change ``import faiss`` and keep your code.

>>> import numpy as np
>>> import gpuann.compat.faiss as faiss
>>> data = np.random.default_rng(0).random((1000, 16), dtype="float32")
>>> index = faiss.IndexFlatL2(16)
>>> index.add(data)
>>> D, I = index.search(data[:2], 3)
>>> I[:, 0].tolist(), index.ntotal
([0, 1], 1000)

Differences from faiss, all in the user's favour: numpy or torch tensors (on any device) are
accepted and returned in kind; the index lives on the GPU when one is present; equal distances
are ordered by lower id; searches are safe from several threads.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from gpuann.exact import knn as _knn
from gpuann.flat import FlatIndex
from gpuann.serialization import load as _load

__all__ = [
    "METRIC_INNER_PRODUCT",
    "METRIC_L2",
    "IndexFlat",
    "IndexFlatIP",
    "IndexFlatL2",
    "IndexIDMap",
    "IndexIDMap2",
    "knn",
    "normalize_L2",
    "read_index",
    "write_index",
]

#: faiss's metric constants (same values as faiss).
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
_METRICS = {METRIC_L2: "l2", METRIC_INNER_PRODUCT: "ip"}


def _metric_name(metric_type: int) -> str:
    try:
        return _METRICS[metric_type]
    except KeyError:
        raise ValueError(
            f"metric: expected faiss.METRIC_L2 or faiss.METRIC_INNER_PRODUCT, got {metric_type!r}"
        ) from None


class _Shim:
    """What every shim shares; the gpuann index behind it is :attr:`index`."""

    index: Any
    #: faiss's flat, binary and LSH indexes renumber the survivors after ``remove_ids``.
    _renumbers_on_remove = True

    @property
    def ntotal(self) -> int:
        return len(self.index)

    @property
    def is_trained(self) -> bool:
        return getattr(self.index, "is_trained", True)

    def train(self, x: Any) -> None:
        """Nothing to train (kept for faiss compatibility)."""

    def add(self, x: Any) -> None:
        """Add with ids ``ntotal, ntotal + 1, …`` as faiss does."""
        self.index.add(x)

    def _search_kwargs(self, params: Any) -> dict[str, Any]:
        if params is not None:
            raise NotImplementedError("search params are not supported by the gpuann faiss shim")
        return {}

    def search(self, x: Any, k: int, *, params: Any = None, D: Any = None, I: Any = None):
        """Returns ``(D, I)`` as faiss does (``-1`` ids where fewer than ``k`` results)."""
        distances, ids = self.index.search(x, k, **self._search_kwargs(params))
        if D is not None:
            D[...] = distances
        if I is not None:
            I[...] = ids
        return distances, ids

    def reset(self) -> None:
        self.index.reset()

    def remove_ids(self, ids: Any) -> int:
        """Remove by id (unknown ids are ignored) and, like faiss's flat indexes, renumber the
        remaining entries 0..ntotal-1 (IVF shims keep ids)."""
        removed = self.index.remove(np.asarray(ids, dtype=np.int64).reshape(-1), strict=False)
        if self._renumbers_on_remove:
            self.index._renumber()
        return removed

    def reconstruct(self, key: int) -> np.ndarray:
        return self.index.reconstruct(np.array([key], dtype=np.int64))[0]

    def reconstruct_n(self, i0: int = 0, ni: int = -1) -> np.ndarray:
        ni = self.ntotal - i0 if ni < 0 else ni
        return self.index.reconstruct(np.arange(i0, i0 + ni, dtype=np.int64))

    def __repr__(self) -> str:
        return f"<gpuann.compat.faiss.{type(self).__name__} wrapping {self.index!r}>"


class IndexFlat(_Shim):
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

    def __init__(self, d: int, metric: int = METRIC_L2, device: str | torch.device | None = None):
        self.metric_type = metric
        self.index = FlatIndex(d, _metric_name(metric), device=device)

    @property
    def d(self) -> int:
        return self.index.dim


class IndexFlatL2(IndexFlat):
    """faiss ``IndexFlatL2``: squared Euclidean distances."""

    def __init__(self, d: int, device: str | torch.device | None = None):
        super().__init__(d, METRIC_L2, device)


class IndexFlatIP(IndexFlat):
    """faiss ``IndexFlatIP``: inner products (larger is nearer)."""

    def __init__(self, d: int, device: str | torch.device | None = None):
        super().__init__(d, METRIC_INNER_PRODUCT, device)


class IndexIDMap:
    """faiss ``IndexIDMap``: user-supplied int64 ids over an empty flat index."""

    def __init__(self, index: IndexFlat):
        if not isinstance(index, IndexFlat):
            raise TypeError(
                f"index: expected an IndexFlat from gpuann.compat.faiss, got {type(index).__name__}"
            )
        if index.ntotal:
            raise ValueError("index: IndexIDMap needs an empty index (as in faiss)")
        self.index = index
        self.metric_type = index.metric_type

    @property
    def d(self) -> int:
        return self.index.d

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def is_trained(self) -> bool:
        return True

    def add(self, x: Any) -> None:
        raise RuntimeError("add: IndexIDMap needs ids, call add_with_ids (as in faiss)")

    def add_with_ids(self, x: Any, ids: Any) -> None:
        self.index.index.add(x, ids=ids)

    def search(self, x: Any, k: int, *, params: Any = None, D: Any = None, I: Any = None):
        return self.index.search(x, k, params=params, D=D, I=I)

    def remove_ids(self, ids: Any) -> int:
        """Remove by id (unknown ids are ignored); other ids are kept, as faiss does."""
        return self.index.index.remove(np.asarray(ids, dtype=np.int64).reshape(-1), strict=False)

    def reset(self) -> None:
        self.index.reset()

    def reconstruct(self, key: int) -> np.ndarray:
        raise RuntimeError(
            "reconstruct: not supported by IndexIDMap (as in faiss); use IndexIDMap2"
        )


class IndexIDMap2(IndexIDMap):
    """faiss ``IndexIDMap2``: ``IndexIDMap`` that can also reconstruct by id."""

    def reconstruct(self, key: int) -> np.ndarray:
        return self.index.index.reconstruct(np.array([key], dtype=np.int64))[0]


def knn(xq: Any, xb: Any, k: int, metric: int = METRIC_L2):
    """faiss ``knn``: exact ``(D, I)`` of ``xq`` against ``xb`` without building an index."""
    return tuple(_knn(xq, xb, k, metric=_metric_name(metric)))


def normalize_L2(x: np.ndarray | torch.Tensor) -> None:
    """Normalise the rows of ``x`` in place, as faiss does."""
    if isinstance(x, np.ndarray):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        np.divide(x, np.maximum(norms, 1e-12), out=x)
    else:
        x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12))


def _native(index: Any) -> Any:
    """The gpuann index behind a shim (``IndexIDMap`` wraps a shim that wraps it)."""
    return index.index.index if isinstance(index, IndexIDMap) else index.index


def write_index(index: Any, path: str | os.PathLike) -> None:
    """Save any index of this module in gpuann's file format (not faiss's)."""
    _native(index).save(path)


def read_index(path: str | os.PathLike) -> Any:
    """Load a file written by :func:`write_index` (or by any gpuann index's ``save``).

    A flat index whose ids are 0..ntotal-1 comes back as an ``IndexFlat``, one with other ids
    as an ``IndexIDMap2`` over it (ids are preserved either way); IVF, binary and LSH indexes
    come back as their shims here.
    """
    loaded = _load(path)
    kind = type(loaded).__name__
    if kind == "FlatIndex":
        shell = IndexFlat.__new__(IndexFlat)
        shell.metric_type = METRIC_L2 if loaded.metric.value == "l2" else METRIC_INNER_PRODUCT
        shell.index = loaded
        if torch.equal(loaded.ids.cpu(), torch.arange(len(loaded))):
            return shell
        wrapper = IndexIDMap2.__new__(IndexIDMap2)
        wrapper.index, wrapper.metric_type = shell, shell.metric_type
        return wrapper
    shells = {
        "IVFFlatIndex": IndexIVFFlat,
        "IVFPQIndex": IndexIVFPQ,
        "BinaryFlatIndex": IndexBinaryFlat,
        "LSHIndex": IndexLSH,
    }
    if kind not in shells:
        raise ValueError(f"path: {str(path)!r} holds a {kind}, which has no faiss shim")
    shell = shells[kind].__new__(shells[kind])
    shell.index = loaded
    if kind.startswith("IVF"):
        shell.metric_type = METRIC_L2 if loaded.metric.value == "l2" else METRIC_INNER_PRODUCT
    if kind == "LSHIndex":
        shell.rotate_data = loaded._projection_kind != "identity"
        shell.train_thresholds = loaded._train_thresholds
    return shell


# ---------------------------------------------------------------- IVF indexes (gpuann.ivf)
__all__ += ["IndexIVFFlat", "IndexIVFPQ", "index_factory"]


class _IndexIVF(_Shim):
    """What faiss's ``IndexIVF`` shims share (the gpuann index is :attr:`index`)."""

    metric_type: int
    _renumbers_on_remove = False

    @staticmethod
    def _check_quantizer(quantizer: Any, d: int) -> None:
        if quantizer is not None and getattr(quantizer, "d", d) != d:
            raise ValueError(f"quantizer: has d={quantizer.d}, the index d={d}")

    @property
    def d(self) -> int:
        return self.index.dim

    @property
    def nlist(self) -> int:
        return self.index.nlist

    @property
    def nprobe(self) -> int:
        """Lists visited per query (faiss's default is 1; so is this shim's)."""
        return self.index.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.index.nprobe = value

    def train(self, x: Any) -> None:
        self.index.train(x)

    def add_with_ids(self, x: Any, ids: Any) -> None:
        self.index.add(x, ids=ids)

    def _search_kwargs(self, params: Any) -> dict[str, Any]:
        if params is None:
            return {}
        if not hasattr(params, "nprobe"):
            raise NotImplementedError("params: only IVF search parameters (nprobe) are supported")
        return {"nprobe": int(params.nprobe)}

    def reset(self) -> None:
        """Remove every vector; the training is kept, as in faiss."""
        self.index.remove(self.index.ids, strict=False)


class IndexIVFFlat(_IndexIVF):
    """faiss ``IndexIVFFlat(quantizer, d, nlist, metric)`` over :class:`gpuann.IVFFlatIndex`.

    ``quantizer`` is only checked for its dimension: gpuann builds faiss's quantizer itself.
    """

    def __init__(
        self,
        quantizer: Any,
        d: int,
        nlist: int,
        metric: int = METRIC_L2,
        device: str | torch.device | None = None,
    ):
        from gpuann.ivf.ivf_flat import IVFFlatIndex

        self._check_quantizer(quantizer, d)
        self.metric_type = metric
        self.index = IVFFlatIndex(d, nlist, _metric_name(metric), device, nprobe=1)


class IndexIVFPQ(_IndexIVF):
    """faiss ``IndexIVFPQ(quantizer, d, nlist, M, nbits, metric)`` over :class:`gpuann.IVFPQIndex`.

    ``k_factor`` > 1 (set it, or build with ``index_factory(..., "…,RFlat")``) re-ranks
    ``k_factor · k`` candidates exactly, as faiss's ``IndexRefineFlat`` does.
    """

    def __init__(
        self,
        quantizer: Any,
        d: int,
        nlist: int,
        M: int,
        nbits: int = 8,
        metric: int = METRIC_L2,
        device: str | torch.device | None = None,
        *,
        refine: bool = False,
    ):
        from gpuann.ivf.ivf_pq import IVFPQIndex

        self._check_quantizer(quantizer, d)
        self.metric_type = metric
        self.index = IVFPQIndex(
            d, nlist, M, nbits, _metric_name(metric), device, refine, refine_factor=1, nprobe=1
        )

    @property
    def k_factor(self) -> int:
        """Re-ranked candidates per result (1 without refine)."""
        return self.index.refine_factor

    @k_factor.setter
    def k_factor(self, value: int) -> None:
        if not self.index.refine:
            raise ValueError("k_factor: this index keeps no full-precision vectors (no RFlat)")
        self.index.refine_factor = int(value)


def index_factory(
    d: int, description: str, metric: int = METRIC_L2, device: str | torch.device | None = None
) -> IndexFlat | IndexIVFFlat | IndexIVFPQ:
    """faiss ``index_factory`` for ``"Flat"``, ``"IVFn,Flat"``, ``"IVFn,PQm[xb]"`` and
    ``"IVFn,PQm[xb],RFlat"`` (see :func:`gpuann.index_factory`)."""
    from gpuann.ivf.factory import parse_description

    spec = parse_description(description)
    if spec["kind"] == "Flat":
        return IndexFlat(d, metric, device)
    if spec["kind"] == "IVFFlat":
        return IndexIVFFlat(None, d, spec["nlist"], metric, device)
    index = IndexIVFPQ(
        None, d, spec["nlist"], spec["m"], spec["nbits"], metric, device, refine=spec["refine"]
    )
    if spec["refine"]:
        index.k_factor = 4
    return index


# ---------------------------------------------------------------------------- binary codes, LSH
__all__ += ["IndexBinaryFlat", "IndexLSH"]


class IndexBinaryFlat(_Shim):
    """faiss ``IndexBinaryFlat``: exact Hamming search over uint8 codes of ``d`` bits.

    Distances are int32 Hamming distances, as in faiss (``2**31 - 1`` beyond ``ntotal``).
    """

    def __init__(self, d: int, device: str | torch.device | None = None):
        from gpuann.binary import BinaryFlatIndex

        self.index = BinaryFlatIndex(d, device)

    @property
    def d(self) -> int:
        return self.index.nbits

    @property
    def code_size(self) -> int:
        return self.index.nbits // 8


class IndexLSH(_Shim):
    """faiss ``IndexLSH``: sign bits of a random rotation (or of the first ``nbits``
    coordinates), optionally against trained median thresholds; Hamming search.

    Parameters
    ----------
    d, nbits : int
    rotate_data : bool
        A random orthogonal projection (faiss's default, ``True``) or the first ``nbits``
        coordinates (``False``, needs ``nbits <= d``; then codes equal faiss's).
    train_thresholds : bool
        Learn a median per bit in :meth:`train` (the index is untrained until then).
    device : str or torch.device, optional

    Distances are Hamming distances as float32, as in faiss. The random rotation is gpuann's
    (seeded), not faiss's: codes differ from faiss's unless ``rotate_data=False``.
    """

    def __init__(
        self,
        d: int,
        nbits: int,
        rotate_data: bool = True,
        train_thresholds: bool = False,
        device: str | torch.device | None = None,
    ):
        from gpuann.binary import LSHIndex

        self.rotate_data = bool(rotate_data)
        self.train_thresholds = bool(train_thresholds)
        projection = "orthogonal" if rotate_data else "identity"
        self.index = LSHIndex(
            d, nbits, "l2", device, projection=projection,
            train_thresholds=train_thresholds, keep_vectors=False,
        )  # fmt: skip

    @property
    def d(self) -> int:
        return self.index.dim

    @property
    def nbits(self) -> int:
        return self.index.nbits

    @property
    def code_size(self) -> int:
        return (self.index.nbits + 7) // 8

    def train(self, x: Any) -> None:
        """Learn the thresholds (``train_thresholds=True``); otherwise nothing to train."""
        if self.train_thresholds:
            self.index.train(x)
