"""HNSW indexes in gpuann's file format (see :mod:`gpuann.serialization`).

A file holds what :class:`gpuann.Index` saves for every index (the constructor's arguments,
``next_id`` and the ids with their faiss labels), the number of tombstones, the HNSW layout
version and the faiss version that wrote it, then ``label_to_id`` (int64) and the faiss
index as ``faiss.serialize_index`` bytes (a ``uint8`` array ``faiss_index``, last, so that
the wider arrays before it stay aligned in the payload). Loading checks that the graph, the
label map and the ids agree before anything is installed.
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann import _hnsw_faiss as hf
from gpuann.serialization import IndexFileError

__all__ = ["read_graph", "save_arrays", "save_meta"]


def save_meta(meta: dict[str, Any], tombstones: int) -> dict[str, Any]:
    """The base's ``meta`` plus the tombstones, the HNSW layout and the faiss version."""
    faiss = hf.import_faiss()
    meta = {**meta, "tombstones": tombstones}
    return {**meta, "hnsw_layout": hf.HNSW_LAYOUT, "faiss_version": faiss.__version__}


def save_arrays(
    arrays: dict[str, torch.Tensor], label_to_id: torch.Tensor, graph: Any
) -> dict[str, torch.Tensor]:
    """The base's ``arrays`` plus the label map and the serialised graph (the byte array last)."""
    return {**arrays, "label_to_id": label_to_id, "faiss_index": hf.serialize(graph)}


def read_graph(
    meta: dict, arrays: dict[str, torch.Tensor], expected: tuple[str, int, int, int]
) -> tuple[Any, torch.Tensor, int]:
    """The saved faiss graph, its label map and how many labels are live, all checked.

    ``expected`` is :func:`gpuann._hnsw_faiss.describe` of the graph the header implies.
    Raises :class:`~gpuann.serialization.IndexFileError` when the layout is unknown, an array
    is missing or malformed, faiss cannot read the graph, or the graph, the label map and the
    ids' labels disagree.
    """
    if meta.get("hnsw_layout") != hf.HNSW_LAYOUT:
        raise IndexFileError(f"unsupported HNSW layout {meta.get('hnsw_layout')!r}")
    blob, label_map = arrays.get("faiss_index"), arrays.get("label_to_id")
    if blob is None or blob.dtype != torch.uint8 or blob.ndim != 1:
        raise IndexFileError("faiss_index is missing or not a byte array")
    if label_map is None or label_map.dtype != torch.int64 or label_map.ndim != 1:
        raise IndexFileError("label_to_id is missing or not a 1-D int64 array")
    try:
        host = hf.deserialize(blob)
    except RuntimeError as err:
        raise IndexFileError(f"faiss cannot read the stored index: {err}") from None
    if hf.describe(host) != expected:
        raise IndexFileError(f"the faiss index is {hf.describe(host)}, the header {expected}")
    if label_map.shape[0] != host.ntotal:
        raise IndexFileError("label_to_id does not match the faiss index's size")
    labels, ids = arrays.get("label"), arrays.get("ids")
    if labels is not None and ids is not None and labels.shape == ids.shape and labels.numel():
        if int(labels.min()) < 0 or int(labels.max()) >= host.ntotal:
            raise IndexFileError("labels are outside the faiss index")
        if not torch.equal(label_map[labels], ids):
            raise IndexFileError("label_to_id does not agree with the ids' labels")
    live = int((label_map >= 0).sum())
    if labels is None or live != labels.shape[0]:
        raise IndexFileError("label_to_id's live entries do not match the ids")
    return host, label_map, live
