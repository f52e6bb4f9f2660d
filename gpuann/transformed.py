"""``TransformedIndex``: any gpuann index behind a pre-transform (PCA, OPQ).

Vectors and queries go through the transform first; the inner index stores transformed
vectors. It keeps the shared API (``train``, ``add``, ``search``, ``range_search``, ``remove``,
``merge_from``, ``save``/``load``, the HTML repr…) and saves to one file (the transform's arrays,
then the inner index's, in gpuann's format).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch

from gpuann._validate import resolve_device
from gpuann.display import Bytes, html_repr
from gpuann.errors import NotTrainedError
from gpuann.range_search import RangeResult
from gpuann.result import SearchResult
from gpuann.transforms import Transform

__all__ = ["TransformedIndex"]


def _index_class(kind: str) -> Any:
    """The index class saved under ``kind`` (importing the modules that define index classes)."""
    import importlib

    from gpuann.index import Index

    def find() -> Any:
        stack = list(Index.__subclasses__())
        while stack:
            cls = stack.pop()
            if cls.kind == kind:
                return cls
            stack.extend(cls.__subclasses__())
        return None

    found = find()
    for module in ("gpuann.flat", "gpuann.hnsw", "gpuann.ivf", "gpuann.binary", "gpuann.kdtree"):
        if found is not None:
            break
        importlib.import_module(module)
        found = find()
    return found


class TransformedIndex:
    """An index searched through a transform: vectors and queries are transformed first.

    Parameters
    ----------
    transform : Transform
        A :class:`PCA` or :class:`OPQ` (trained, or trained by :meth:`train`); its ``d_out``
        must be the index's ``dim``.
    index : gpuann index
        Any index on gpuann's :class:`~gpuann.index.Index` base (``FlatIndex``, ``HNSWIndex``,
        the IVF indexes…). It stores transformed vectors: ``reconstruct`` returns those
        (``original_space=True`` maps them back with ``transform.reverse``).

    Every other method has the index's meaning and arguments, with vectors of ``d_in`` columns.
    Distances are those between transformed vectors.

    Examples
    --------
    >>> from gpuann.flat import FlatIndex
    >>> from gpuann.transforms import PCA
    >>> x = torch.randn(500, 16)
    >>> index = TransformedIndex(PCA(16, 8, device="cpu"), FlatIndex(8, device="cpu"))
    >>> index.train(x)
    >>> index.add(x)
    >>> index.search(x[:2], 1).ids.tolist()
    [[0], [1]]
    """

    kind: ClassVar[str] = "TransformedIndex"

    def __init__(self, transform: Transform, index: Any) -> None:
        if not isinstance(transform, Transform):
            raise TypeError(f"transform: expected a PCA or OPQ, got {type(transform).__name__}")
        for member in ("add", "search", "dim"):
            if not hasattr(index, member):
                raise TypeError(f"index: expected a gpuann index, got {type(index).__name__}")
        if transform.d_out != index.dim:
            raise ValueError(
                f"index: its dim ({index.dim}) must be the transform's d_out ({transform.d_out})"
            )
        if transform.device != index.device:
            transform = transform.to(index.device)
        self.transform = transform
        self.index = index

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Dimension of the vectors this index takes (the transform's ``d_in``)."""
        return self.transform.d_in

    @property
    def device(self) -> torch.device:
        """The inner index's device."""
        return self.index.device

    @property
    def metric(self) -> Any:
        """The inner index's metric (applied to transformed vectors)."""
        return self.index.metric

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending."""
        return self.index.ids

    @property
    def is_trained(self) -> bool:
        """Whether both the transform and the index are trained."""
        return self.transform.is_trained and bool(getattr(self.index, "is_trained", True))

    @property
    def nbytes(self) -> int:
        """The index's bytes plus the transform's matrices."""
        t = self.transform
        return int(getattr(self.index, "nbytes", 0)) + 4 * (2 * t.d_out * t.d_in + t.d_in)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"TransformedIndex({self.transform!r}, {self.index!r})"

    def _display_fields(self) -> dict[str, Any]:
        """What Jupyter shows: the sizes and both parts' own reprs (no sync)."""
        return {
            "n": len(self),
            "dim": self.dim,
            "transform": repr(self.transform),
            "index": repr(self.index),
            "memory": Bytes(self.nbytes),
        }

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- training, mutations
    def train(self, x: Any, **options: Any) -> None:
        """Train the transform (unless trained), then the index on ``transform(x)`` if it
        needs training.

        All or nothing: the transform is trained as a twin and takes the twin's map only once
        the index has trained, so a failed call (too few vectors for the index…) leaves both
        as they were, and a retry trains the transform on the retry's ``x``.
        """
        transform = self.transform
        if not transform.is_trained:
            transform = transform._trained_twin(x)
        train = getattr(self.index, "train", None)
        if train is not None and not getattr(self.index, "is_trained", True):
            train(transform.apply(x), **options)
        if transform is not self.transform:
            self.transform._adopt(transform)  # the caller's transform object, now trained

    def _forward(self, x: Any, name: str = "x") -> Any:
        if not self.transform.is_trained:
            raise NotTrainedError("TransformedIndex: call train(x) first (the transform is not)")
        return self.transform.apply(x, name=name)

    def add(self, x: Any, ids: Any = None, **options: Any) -> None:
        """Add ``x`` (n, d_in), transformed; ``ids`` and options as the index's ``add``."""
        self.index.add(self._forward(x), ids, **options)

    def update(self, ids: Any, x: Any, **options: Any) -> None:
        """Replace the vectors of ``ids`` by ``x`` (n, d_in), transformed."""
        self.index.update(ids, self._forward(x), **options)

    def remove(self, ids: Any, **options: Any) -> int:
        """Remove ids (as the index's ``remove``); returns how many were removed."""
        return self.index.remove(ids, **options)

    def reset(self) -> None:
        """Remove every vector (the transform stays trained)."""
        self.index.reset()

    def reconstruct(self, ids: Any, *, original_space: bool = False) -> Any:
        """The stored (transformed, d_out) vectors of ``ids``; with ``original_space``, mapped
        back to d_in dimensions by ``transform.reverse`` (exact only when nothing was cut)."""
        out = self.index.reconstruct(ids)
        return self.transform.reverse(out) if original_space else out

    # ---------------------------------------------------------------- search
    def search(self, queries: Any, k: int, **options: Any) -> SearchResult:
        """The ``k`` nearest neighbours of ``transform(queries)`` in the index.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, d_in)
        k : int
        **options
            The index's search options (``ef_search``, ``nprobe``…).
        """
        return self.index.search(self._forward(queries, "queries"), k, **options)

    def range_search(self, queries: Any, radius: float, **options: Any) -> RangeResult:
        """Every stored vector within ``radius`` of ``transform(queries)`` (the index's
        ``range_search``, its options and result layout).

        ``radius`` applies in the transformed space, to the distances the index returns. These
        are the original vectors' distances only for an orthonormal map that keeps every
        dimension (``OPQ`` with ``d_out == d_in``; for ``"l2"`` also an unwhitened ``PCA`` with
        ``d_out == d_in``); after a dimension reduction or whitening, a radius in the original
        space neither includes nor excludes exactly what it would there.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, d_in)
        radius : float
        **options
            The index's options (``max_results``, ``nprobe``…).
        """
        return self.index.range_search(self._forward(queries, "queries"), radius, **options)

    def merge_from(self, other: TransformedIndex) -> None:
        """Move ``other``'s vectors into this index (the index's ``merge_from``).

        ``other`` must be a :class:`TransformedIndex` whose transform is this one's: the same
        kind, options and learned map, bit for bit (one loaded from this index's file, or
        trained on the same data), since its stored vectors are in that map's space; and its
        index must be one this index's accepts. On any error neither index changes.
        """
        if not isinstance(other, TransformedIndex):
            raise TypeError(f"other: expected a TransformedIndex, got {type(other).__name__}")
        if other is self:
            raise ValueError("other: cannot merge an index into itself")
        for index, name in ((self, "this index"), (other, "other")):
            if not index.transform.is_trained:
                raise NotTrainedError(f"merge_from: {name}'s transform is not trained")
        if not _same_transform(self.transform, other.transform):
            raise ValueError(
                "other: its transform differs from this index's (trained on other data, or "
                "other options), so its stored vectors are in another space"
            )
        self.index.merge_from(other.index)

    # ---------------------------------------------------------------- moving and saving
    def to(self, device: str | torch.device) -> TransformedIndex:
        """This index on ``device``: ``self`` if already there, else a copy."""
        device = resolve_device(device)
        if device == self.device:
            return self
        return TransformedIndex(self.transform.to(device), self.index.to(device))

    def save(self, path: str | os.PathLike) -> None:
        """Write the transform and the index to one file (atomically; no pickle)."""
        from gpuann.serialization import write_index_file

        inner = self.index
        if not all(hasattr(inner, h) for h in ("_lock", "_save_meta", "_save_arrays", "kind")):
            raise TypeError(f"index: a {type(inner).__name__} cannot be saved inside one file")
        t_meta, t_arrays = self.transform.state()
        with inner._lock.read():
            meta = {"transform": t_meta, "index_kind": inner.kind, "index": inner._save_meta()}
            i_arrays = inner._save_arrays()
        named = [(f"transform.{k}", v) for k, v in t_arrays.items()]
        named += [(f"index.{k}", v) for k, v in i_arrays.items()]
        # widest elements first: every array then starts aligned to its element size
        named.sort(key=lambda item: -item[1].element_size())
        arrays = dict(named)
        write_index_file(path, self.kind, meta, arrays)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> TransformedIndex:
        """Load a :class:`TransformedIndex` saved with :meth:`save`."""
        from gpuann.serialization import load

        return load(path, device, kind=cls.kind)

    @classmethod
    def _from_file(
        cls, meta: dict, arrays: dict[str, torch.Tensor], device: Any
    ) -> TransformedIndex:
        from gpuann.serialization import IndexFileError

        device = resolve_device(device)
        part = {
            k.removeprefix("transform."): v for k, v in arrays.items() if k[:10] == "transform."
        }
        try:
            transform = Transform.from_state(meta["transform"], part, device)
        except ValueError as err:
            raise IndexFileError(f"the transform is inconsistent: {err}") from None
        inner_cls = _index_class(meta["index_kind"])
        if inner_cls is None:
            raise IndexFileError(f"unknown inner index kind {meta['index_kind']!r}")
        inner_arrays = {k[6:]: v for k, v in arrays.items() if k.startswith("index.")}
        inner = inner_cls._from_file(meta["index"], inner_arrays, device)
        return cls(transform, inner)


def _same_transform(a: Transform, b: Transform) -> bool:
    """Whether two trained transforms are the same map (kind, options and arrays)."""
    (meta_a, arrays_a), (meta_b, arrays_b) = a.state(), b.state()
    if meta_a != meta_b or arrays_a.keys() != arrays_b.keys():
        return False
    return all(
        arrays_a[k].shape == arrays_b[k].shape
        and torch.equal(arrays_a[k], arrays_b[k].to(a.device))
        for k in arrays_a
    )


def _register() -> None:
    from gpuann.serialization import register_index_kind

    register_index_kind(TransformedIndex.kind, TransformedIndex._from_file)


_register()
