"""IVF indexes in gpuann's file format (see :mod:`gpuann.serialization`).

A file holds the faiss index as ``faiss.serialize_index`` bytes (a ``uint8`` array, always of a
CPU index: a GPU index is copied to the host first, tombstoned ids removed), the sorted ids, the
full-precision vectors when the index keeps them, and a JSON ``meta`` with the constructor's
arguments. The file's checksums catch corruption before faiss reads a byte; loading then checks
that the faiss index agrees with the meta (type, dim, nlist, metric, size, ids).
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann._validate import resolve_device
from gpuann.ivf import _faiss
from gpuann.ivf._store import IdStore
from gpuann.serialization import IndexFileError, write_index_file

__all__ = ["load_ivf", "save_ivf"]

#: Version of the IVF part of the file (inside gpuann's FORMAT_VERSION 1).
IVF_LAYOUT = 1


def save_ivf(index: Any, path: Any) -> None:
    """Write ``index`` (an ``IVFIndexBase``; read lock held by the caller) to ``path``."""
    faiss = _faiss.import_faiss()
    host = index._compacted_host_copy()
    blob = torch.from_numpy(faiss.serialize_index(host))
    meta = {
        "config": index._config(),
        "next_id": index._next_id,
        "nprobe": index.nprobe,
        "ivf_layout": IVF_LAYOUT,
        "faiss_version": faiss.__version__,
    }
    arrays = {"faiss_index": blob, "ids": index._store.ids}
    if index._store.vectors is not None:
        arrays["vectors"] = index._store.vectors
    write_index_file(path, index._kind, meta, arrays)


def load_ivf(cls: type, meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> Any:
    """Rebuild an index of class ``cls`` from a file's ``meta`` and ``arrays``."""
    faiss = _faiss.import_faiss()
    if meta.get("ivf_layout") != IVF_LAYOUT:
        raise IndexFileError(f"unsupported IVF layout {meta.get('ivf_layout')!r}")
    device = resolve_device(device)  # a bad device is the caller's error, not the file's
    try:
        index = cls(**meta["config"], device=device)
        index.nprobe = meta["nprobe"]
    except ValueError as err:
        raise IndexFileError(f"the header's parameters are invalid: {err}") from None
    blob = arrays["faiss_index"]
    if blob.dtype != torch.uint8 or blob.ndim != 1:
        raise IndexFileError("faiss_index is not a byte array")
    try:
        host = faiss.deserialize_index(blob.numpy())
    except RuntimeError as err:
        raise IndexFileError(f"faiss cannot read the stored index: {err}") from None
    _check_matches(index, host)
    ids = arrays["ids"]
    if ids.dtype != torch.int64 or ids.ndim != 1 or ids.shape[0] != host.ntotal:
        raise IndexFileError("ids do not match the faiss index's size")
    if ids.shape[0] > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise IndexFileError("ids are not strictly ascending")
    vectors = arrays.get("vectors")
    if (vectors is None) != (index._store.vectors is None):
        raise IndexFileError("full-precision vectors are missing or unexpected")
    if vectors is not None:
        if vectors.dtype != torch.float32 or tuple(vectors.shape) != (ids.shape[0], index.dim):
            raise IndexFileError("vectors do not match the ids and dim")
        store = IdStore(ids, vectors, (vectors * vectors).sum(dim=1))
    else:
        store = IdStore(ids)
    index._install(host, store, int(meta["next_id"]))
    return index


def _check_matches(index: Any, host: Any) -> None:
    faiss = _faiss.import_faiss()
    expected = type(index._new_faiss_index())
    host = faiss.downcast_index(host)
    problems = []
    if type(host) is not expected:
        problems.append(f"type {type(host).__name__} (expected {expected.__name__})")
    if host.d != index.dim:
        problems.append(f"dim {host.d} (expected {index.dim})")
    if getattr(host, "nlist", None) != index.nlist:
        problems.append(f"nlist {getattr(host, 'nlist', None)} (expected {index.nlist})")
    if host.metric_type != index._faiss_metric():
        problems.append("metric")
    if hasattr(index, "m") and (host.pq.M, host.pq.nbits) != (index.m, index.nbits):
        problems.append(f"PQ m={host.pq.M}, nbits={host.pq.nbits}")
    if problems:
        raise IndexFileError(
            "the stored faiss index does not match the header: " + ", ".join(problems)
        )
