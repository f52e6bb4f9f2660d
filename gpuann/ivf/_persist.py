"""IVF indexes in gpuann's file format (see :mod:`gpuann.serialization`).

A file holds what :class:`gpuann.Index` saves for every index (the constructor's arguments
and ``next_id`` in the JSON meta; the id store's arrays: the ids and, with ``refine``, the
full-precision vectors), plus the faiss index as ``faiss.serialize_index`` bytes (a ``uint8``
array ``faiss_index``, always of a CPU index: a GPU index is copied to the host first,
tombstoned ids removed). The file's checksums catch corruption before faiss reads a byte;
loading then checks that the faiss index agrees with the meta (type, dim, nlist, metric, PQ
shape, size).
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann._validate import resolve_device
from gpuann.ivf import _faiss
from gpuann.serialization import IndexFileError

__all__ = [
    "IVF_LAYOUT",
    "IVFPersistence",
    "faiss_blob",
    "merge_into",
    "new_from_meta",
    "read_faiss_index",
    "save_meta",
]

#: Version of the IVF part of the file (inside gpuann's FORMAT_VERSION 1).
IVF_LAYOUT = 2


def save_meta(index: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The base's ``meta`` plus the IVF layout and the faiss version that wrote the file."""
    return {**meta, "ivf_layout": IVF_LAYOUT, "faiss_version": _faiss.import_faiss().__version__}


def faiss_blob(index: Any) -> torch.Tensor:
    """``faiss.serialize_index`` of a compacted CPU copy of ``index``'s faiss index (uint8)."""
    faiss = _faiss.import_faiss()
    return torch.from_numpy(faiss.serialize_index(index._faiss.compacted_host_copy()))


def new_from_meta(cls: type, meta: dict, device: Any) -> Any:
    """An empty index of class ``cls`` built from a file's meta on ``device``."""
    if meta.get("ivf_layout") != IVF_LAYOUT:
        raise IndexFileError(f"unsupported IVF layout {meta.get('ivf_layout')!r}")
    device = resolve_device(device)  # a bad device is the caller's error, not the file's
    config = {key: meta[key] for key in cls._config_keys}
    try:
        return cls(**config, device=device)
    except ValueError as err:
        raise IndexFileError(f"the header's parameters are invalid: {err}") from None


def read_faiss_index(index: Any, meta: dict, arrays: dict[str, torch.Tensor]) -> Any:
    """The file's faiss CPU index, checked against ``index`` (built from the same meta)."""
    faiss = _faiss.import_faiss()
    meta["next_id"]  # required: a KeyError is reported as an inconsistent header
    blob = arrays["faiss_index"]
    if blob.dtype != torch.uint8 or blob.ndim != 1:
        raise IndexFileError("faiss_index is not a byte array")
    try:
        host = faiss.deserialize_index(blob.numpy())
    except RuntimeError as err:
        raise IndexFileError(f"faiss cannot read the stored index: {err}") from None
    _check_matches(index, host)
    ids = arrays["ids"]
    if ids.ndim != 1 or ids.shape[0] != host.ntotal:
        raise IndexFileError("ids do not match the faiss index's size")
    return host


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


def merge_into(index: Any, other: Any) -> None:
    """Move ``other``'s content into ``index``: faiss's ``merge_from`` on host copies (without
    the id -> entry maps that ``reconstruct`` builds, which faiss cannot merge), installed
    once the rows are in (both write locks held). Both must share their training (the same
    centroids and codebooks). On any error neither index has changed."""
    index._require_trained("merge_from")
    other._require_trained("merge_from")
    ids = other._rows.stored_ids.to(index.device)
    _, present = index._rows.positions(ids)
    if bool(present.any()):
        dup = ids[present]
        raise ValueError(f"other: {dup.numel()} id(s) already in this index: {dup[:10].tolist()}")
    host, theirs = index._faiss.compacted_host_copy(), other._faiss.compacted_host_copy()
    if not _faiss.same_training(host, theirs):
        raise ValueError(
            "other: trained on other data (its centroids or codebooks differ); faiss can "
            "only merge IVF indexes that share their training"
        )
    host.merge_from(theirs, 0)
    merged = _faiss.index_to_device(host, index.device)  # before the rows: it may fail too
    if ids.numel():
        columns = {name: other._rows.view(name).to(index.device) for name in other._rows.data}
        index._rows.insert(ids, columns)
    index._rows.next_id = max(index._rows.next_id, other._rows.next_id)
    index._faiss.adopt(merged)


class IVFPersistence:
    """Merging, copying, saving and loading of an IVF index (the first base of
    :class:`~gpuann.ivf.base.IVFIndexBase`; ``super()`` reaches :class:`gpuann.Index`)."""

    # ---------------------------------------------------------------- merging
    def _merge_rows(self, other: Any) -> None:
        """faiss's ``merge_from`` (see :func:`gpuann.ivf._persist.merge_into`)."""
        assert isinstance(other, IVFPersistence)
        merge_into(self, other)

    # ---------------------------------------------------------------- moving and saving
    def _copy_from(self, source: Any) -> None:
        assert isinstance(source, IVFPersistence)
        self._faiss.install(source._faiss.compacted_host_copy())
        self._nprobe = source._nprobe
        super()._copy_from(source)

    def _save_meta(self) -> dict[str, Any]:
        return save_meta(self, super()._save_meta())

    def _save_arrays(self) -> dict[str, torch.Tensor]:
        return {**super()._save_arrays(), "faiss_index": faiss_blob(self)}

    @classmethod
    def _from_file(cls, meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> Any:
        index = new_from_meta(cls, meta, device)
        index._restore(meta, arrays)
        return index

    def _restore(self, meta: dict, arrays: dict[str, torch.Tensor]) -> None:
        host = read_faiss_index(self, meta, arrays)
        super()._restore(meta, arrays)
        self._faiss.install(host)
