"""Index files: faiss's format through faiss-cpu when it is installed, gpuann's otherwise.

- :func:`write_index` / :func:`serialize_index` write what faiss's ``read_index`` reads (flat,
  ``IndexIDMap``/``IndexIDMap2`` over flat or HNSW, IVF-Flat, IVF-PQ, ``IndexRefineFlat``,
  ``IndexHNSWFlat``, binary flat), converted with faiss-cpu. ``IndexLSH`` (whose rotation is
  gpuann's), and every index when faiss is not installed, are written in gpuann's safe native
  format instead.
- :func:`read_index` / :func:`deserialize_index` read both: a gpuann file (recognised by its
  magic bytes) through :func:`gpuann.load`; anything else through faiss's reader, then
  converted to the gpuann index behind the matching shim. What is checked: faiss parses the
  whole file (its type, sizes and every array); then the type must be one listed above with a
  flat coarse quantizer, the metric L2 or inner product, and the ids of an IVF index unique
  and non-negative (gpuann's IVF indexes hold one vector per id); an IVF index is rebuilt
  through gpuann's own loader, which checks it against its parameters; an HNSW graph is kept
  as faiss read it, its vectors checked as ``add`` checks them (finite).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import gpuann
from gpuann.compat.faiss._base import Index
from gpuann.compat.faiss._common import (
    METRIC_INNER_PRODUCT,
    METRIC_L2,
    IndexFileError,
    MissingFileError,
    metric_type_of,
)
from gpuann.compat.faiss.binary import IndexBinaryFlat, IndexLSH
from gpuann.compat.faiss.flat import IndexFlat, IndexFlatIP, IndexFlatL2, IndexIDMap, IndexIDMap2
from gpuann.compat.faiss.hnsw import FAISS_HNSW_SEED, IndexHNSWFlat
from gpuann.compat.faiss.ivf import FAISS_SEED, IndexIVF
from gpuann.compat.faiss.refine import IndexRefineFlat
from gpuann.serialization import MAGIC, index_from_bytes

__all__ = [
    "deserialize_index",
    "deserialize_index_binary",
    "from_native",
    "read_index",
    "read_index_binary",
    "serialize_index",
    "serialize_index_binary",
    "write_index",
    "write_index_binary",
]


def _real_faiss() -> Any:
    """faiss-cpu (the real module, even when ``sys.modules["faiss"]`` is this shim), or None."""
    from gpuann.ivf import FaissUnavailableError, import_faiss

    try:
        return import_faiss()
    except FaissUnavailableError:
        return None


# ---------------------------------------------------------------- gpuann → shim
def from_native(native: gpuann.Index) -> Index:
    """The shim over a gpuann index (a ``FlatIndex`` with other ids than ``0..n-1`` comes back
    as an ``IndexIDMap2`` holding them)."""
    from gpuann.binary import BinaryFlatIndex, LSHIndex
    from gpuann.ivf import IVFFlatIndex, IVFPQIndex

    if isinstance(native, gpuann.FlatIndex):
        ids = native.ids.cpu().numpy()
        if np.array_equal(ids, np.arange(ids.size)):
            return IndexFlat.from_native(native)
        shim = IndexIDMap2(IndexFlat(native.dim, metric_type_of(native.metric), native.device))
        shim.index = IndexFlat.from_native(native)
        shim.id_map.extend(ids)
        return shim
    if isinstance(native, (IVFFlatIndex, IVFPQIndex)):
        return IndexIVF.from_native(native)
    if isinstance(native, gpuann.HNSWIndex):
        try:
            return IndexHNSWFlat.from_native(native)
        except TypeError as err:
            raise IndexFileError(f"this HNSWIndex has no faiss shim: {err}") from err
    if isinstance(native, BinaryFlatIndex):
        return IndexBinaryFlat.from_native(native)
    if isinstance(native, LSHIndex):
        return IndexLSH.from_native(native)
    raise IndexFileError(f"a gpuann {type(native).__name__} has no faiss shim")


def _native_for_file(index: Index) -> gpuann.Index:
    """The gpuann index that a native file of ``index`` holds (an ``IndexIDMap``'s ids as the
    ``FlatIndex``'s ids, which must then be unique)."""
    if isinstance(index, IndexIDMap):
        inner = index.index.index
        copy = gpuann.FlatIndex(inner.dim, metric=inner.metric, device=inner.device)
        if index.ntotal:
            try:
                copy.add(inner.reconstruct(inner.ids), ids=index.id_map.numpy().copy())
            except ValueError as err:
                raise IndexFileError(f"gpuann's format needs unique ids: {err}") from err
        return copy
    if isinstance(index, IndexRefineFlat):
        raise IndexFileError("IndexRefineFlat can be saved in faiss's format only")
    return index.index


# ---------------------------------------------------------------- faiss ↔ shim
def _flat_vectors(shim: Any) -> np.ndarray:
    native = shim.index
    return np.ascontiguousarray(native.reconstruct(native.ids).cpu().numpy(), dtype=np.float32)


def _to_faiss(real: Any, index: Index) -> Any:
    """A faiss-cpu index equal to ``index``, or None when faiss has no counterpart."""
    if isinstance(index, IndexIDMap):
        kind = real.IndexIDMap2 if isinstance(index, IndexIDMap2) else real.IndexIDMap
        if isinstance(index.index, IndexHNSWFlat):
            # faiss wraps empty indexes only: the map is made over a stand-in, then given the
            # graph (kept alive by the caller's reference to ``out`` until it is written)
            graph = _to_faiss(real, index.index)
            out = kind(real.IndexHNSWFlat(index.d, 2, index.metric_type))
            out.index, out.ntotal = graph, graph.ntotal
            out.referenced_objects = [graph]
            real.copy_array_to_vector(index.id_map.numpy().copy(), out.id_map)
            if isinstance(index, IndexIDMap2):
                out.construct_rev_map()
            return out
        out = kind(real.IndexFlat(index.d, index.metric_type))
        if index.ntotal:
            out.add_with_ids(_flat_vectors(index.index), index.id_map.numpy().copy())
        return out
    if isinstance(index, IndexFlat):
        out = (real.IndexFlatL2 if index.metric_type == METRIC_L2 else real.IndexFlatIP)(index.d)
        if index.ntotal:
            out.add(_flat_vectors(index))
        return out
    if isinstance(index, IndexIVF):
        from gpuann.ivf.interop import stored_labels

        host = index.index.faiss_index
        host = real.index_gpu_to_cpu(host) if hasattr(host, "getDevice") else real.clone_index(host)
        if host.ntotal != index.ntotal:  # GPU tombstones: drop the ids gpuann removed
            labels = stored_labels(host)
            keep = index.index.ids.cpu().numpy()
            host.remove_ids(real.IDSelectorBatch(labels[~np.isin(labels, keep)]))
        host.nprobe = index.nprobe
        return host
    if isinstance(index, IndexRefineFlat):
        base = _to_faiss(real, index.base_index)
        if base is None:
            return None
        vectors = _flat_vectors(index.refine_index)  # alive while faiss copies it
        out = real.IndexRefineFlat(base, real.swig_ptr(vectors))
        out.k_factor = index.k_factor
        return out
    if isinstance(index, IndexHNSWFlat):
        native = index.index
        labels = native.label_to_id.numpy()
        if not np.array_equal(labels, np.arange(labels.size)):  # faiss's positions: label = id
            native = copy.deepcopy(native)
            native.renumber()
            native.compact(reorder=True)
        out = real.clone_index(native.faiss_index)
        out.hnsw.efSearch = native.ef_search
        return out
    if isinstance(index, IndexBinaryFlat):
        out = real.IndexBinaryFlat(index.d)
        if index.ntotal:
            native = index.index
            out.add(np.ascontiguousarray(native.reconstruct(native.ids).cpu().numpy()))
        return out
    return None


def _ivf_from_faiss(real: Any, host: Any) -> Index:
    from gpuann.ivf import from_faiss

    try:
        native = from_faiss(host, seed=FAISS_SEED)
    except gpuann.IndexFileError as err:
        raise IndexFileError(str(err)) from err
    shim = IndexIVF.from_native(native)
    shim.nprobe = host.nprobe  # faiss's, above nlist too (the native one is clamped)
    return shim


def _from_faiss(real: Any, index: Any) -> Index:
    """The shim holding a copy of a faiss-cpu index."""
    binary = isinstance(index, real.IndexBinary)
    index = real.downcast_IndexBinary(index) if binary else real.downcast_index(index)
    kind = type(index).__name__
    if kind in ("IndexFlat", "IndexFlatL2", "IndexFlatIP"):
        if index.metric_type not in (METRIC_L2, METRIC_INNER_PRODUCT):
            raise IndexFileError(f"metric {index.metric_type} has no gpuann counterpart")
        shim = (IndexFlatL2 if index.metric_type == METRIC_L2 else IndexFlatIP)(index.d)
        if index.ntotal:
            shim.add(index.reconstruct_n(0, index.ntotal))
        return shim
    if kind in ("IndexIDMap", "IndexIDMap2"):
        inner = _from_faiss(real, index.index)
        if type(inner) not in (IndexFlatL2, IndexFlatIP, IndexHNSWFlat):
            raise IndexFileError(f"an {kind} over {type(inner).__name__} has no gpuann shim")
        stand_in = IndexFlat(index.d, inner.metric_type)  # replaced by ``inner`` below
        shim = (IndexIDMap2 if kind == "IndexIDMap2" else IndexIDMap)(stand_in)
        shim.index = inner
        shim.id_map.extend(real.vector_to_array(index.id_map))
        return shim
    if kind in ("IndexIVFFlat", "IndexIVFPQ"):
        return _ivf_from_faiss(real, index)
    if kind == "IndexHNSWFlat":
        if index.metric_type not in (METRIC_L2, METRIC_INNER_PRODUCT):
            raise IndexFileError(f"metric {index.metric_type} has no gpuann counterpart")
        try:
            native = gpuann.HNSWIndex.from_faiss(index, device="cpu", seed=FAISS_HNSW_SEED)
        except ValueError as err:  # the vectors' or the settings' checks
            raise IndexFileError(f"the HNSW index: {err}") from err
        return IndexHNSWFlat.from_native(native)
    if kind == "IndexRefineFlat":
        base = _from_faiss(real, index.base_index)
        refine = _from_faiss(real, index.refine_index)
        shim = IndexRefineFlat(type(refine)(index.d))
        shim.base_index, shim.refine_index, shim.k_factor = base, refine, index.k_factor
        return shim
    if kind == "IndexBinaryFlat":
        shim = IndexBinaryFlat(index.d)
        if index.ntotal:
            codes = real.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)
            shim.add(codes)
        return shim
    raise IndexFileError(f"faiss's {kind} has no gpuann counterpart")


# ---------------------------------------------------------------- public functions
def _is_native(head: bytes) -> bool:
    return head[: len(MAGIC)] == MAGIC


def _read_bytes(data: bytes, binary: bool | None) -> Index:
    if _is_native(data):
        try:
            return from_native(index_from_bytes(data))
        except gpuann.IndexFileError as err:
            raise IndexFileError(str(err)) from err
    real = _real_faiss()
    if real is None:
        raise IndexFileError("not a gpuann index file, and faiss (to read faiss's) is missing")
    binary = data[:2] == b"IB" if binary is None else binary
    try:
        array = np.frombuffer(data, dtype=np.uint8)
        index = real.deserialize_index_binary(array) if binary else real.deserialize_index(array)
    except RuntimeError as err:
        raise IndexFileError(f"faiss cannot read the index: {err}") from err
    return _from_faiss(real, index)


def read_index(fname: str | os.PathLike, io_flags: int = 0) -> Index:
    """Read an index written by faiss or by this module (or any gpuann index's ``save``).

    ``io_flags`` (``IO_FLAG_MMAP``…) are accepted and ignored: the file is read into memory.
    """
    path = Path(os.fspath(fname))
    if not path.is_file():
        raise MissingFileError(f"could not open {path} for reading: No such file or directory")
    return _read_bytes(path.read_bytes(), None)


def read_index_binary(fname: str | os.PathLike, io_flags: int = 0) -> Index:
    """Read a binary index (``IndexBinaryFlat``) written by faiss or by this module."""
    return read_index(fname, io_flags)


def deserialize_index(data: Any, io_flags: int = 0) -> Index:
    """The index from :func:`serialize_index`'s (or faiss's) bytes."""
    return _read_bytes(np.ascontiguousarray(data, dtype=np.uint8).tobytes(), None)


def deserialize_index_binary(data: Any, io_flags: int = 0) -> Index:
    """The binary index from :func:`serialize_index_binary`'s (or faiss's) bytes."""
    return deserialize_index(data, io_flags)


def _faiss_form(index: Index) -> tuple[Any, Any]:
    if not isinstance(index, Index):
        raise TypeError(f"index: expected an index of gpuann.compat.faiss, got {type(index)}")
    real = _real_faiss()
    return real, (None if real is None else _to_faiss(real, index))


def write_index(index: Index, fname: str | os.PathLike) -> None:
    """Write ``index`` in faiss's format (gpuann's when faiss is missing or has no
    counterpart: ``IndexLSH``)."""
    real, converted = _faiss_form(index)
    if converted is None:
        _native_for_file(index).save(fname)
    elif isinstance(converted, real.IndexBinary):
        real.write_index_binary(converted, os.fspath(fname))
    else:
        real.write_index(converted, os.fspath(fname))


def write_index_binary(index: Index, fname: str | os.PathLike) -> None:
    """Write a binary index (see :func:`write_index`)."""
    write_index(index, fname)


def serialize_index(index: Index) -> np.ndarray:
    """The bytes :func:`write_index` would write, as a uint8 array (as faiss returns them)."""
    real, converted = _faiss_form(index)
    if converted is None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "index"
            _native_for_file(index).save(path)
            return np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()
    if isinstance(converted, real.IndexBinary):
        return real.serialize_index_binary(converted)
    return real.serialize_index(converted)


def serialize_index_binary(index: Index) -> np.ndarray:
    """The bytes of a binary index (see :func:`serialize_index`)."""
    return serialize_index(index)
