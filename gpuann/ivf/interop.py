"""gpuann IVF indexes from faiss's own: ``gpuann.ivf.from_faiss(index)``.

For code that has a faiss ``IndexIVFFlat``/``IndexIVFPQ``/``IndexIVFScalarQuantizer`` (read
from a faiss file, or built by faiss) and wants the gpuann index over the same content: the
faiss index is copied (``serialize_index``), its stored labels become the gpuann ids, and the
copy is loaded through the same checks as a gpuann file (type, dimension, nlist, metric, PQ
shape, size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann.index import DEFAULT_SEED
from gpuann.ivf import _faiss
from gpuann.ivf._persist import IVF_LAYOUT
from gpuann.serialization import IndexFileError, index_from_bytes, index_to_bytes

__all__ = ["from_faiss", "stored_labels"]


def stored_labels(index: Any) -> np.ndarray:
    """Every label held in a faiss IVF index's inverted lists (int64, list order)."""
    faiss = _faiss.import_faiss()
    lists, chunks = index.invlists, []
    for i in range(index.nlist):
        size = lists.list_size(i)
        if size:
            chunks.append(faiss.rev_swig_ptr(lists.get_ids(i), size).copy())
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def from_faiss(
    index: Any, *, device: str | torch.device | None = None, seed: int = DEFAULT_SEED
) -> Any:
    """The gpuann index (IVFFlat, IVFPQ or IVFSQ) holding what faiss CPU ``index`` holds.

    Parameters
    ----------
    index : faiss.IndexIVFFlat, faiss.IndexIVFPQ or faiss.IndexIVFScalarQuantizer
        With a flat coarse quantizer, the L2 or inner-product metric, and unique non-negative
        labels (gpuann holds one vector per id).
    device : str or torch.device, optional
    seed : int
        Recorded as the index's seed (it trains nothing).

    Raises
    ------
    IndexFileError
        The index has no gpuann counterpart, or its content does not check out.
    """
    from gpuann.ivf.ivf_flat import IVFFlatIndex
    from gpuann.ivf.ivf_pq import IVFPQIndex
    from gpuann.ivf.ivf_sq import SQ_TYPES, IVFSQIndex

    faiss = _faiss.import_faiss()
    host = faiss.downcast_index(index)
    if not isinstance(host, faiss.IndexIVF):
        raise IndexFileError(f"index: expected a faiss IVF index, got {type(host).__name__}")
    quantizer = faiss.downcast_index(host.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat):
        raise IndexFileError(
            f"an IVF index with a {type(quantizer).__name__} quantizer has no gpuann counterpart"
        )
    if host.metric_type not in (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT):
        raise IndexFileError("only the L2 and inner-product metrics have gpuann counterparts")
    ids = np.sort(stored_labels(host))
    if ids.size and (ids[0] < 0 or (ids[1:] == ids[:-1]).any()):
        raise IndexFileError("the IVF index's ids are not unique and non-negative")
    meta: dict[str, Any] = {
        "dim": host.d,
        "nlist": host.nlist,
        "metric": "l2" if host.metric_type == faiss.METRIC_L2 else "ip",
        "dtype": "float32",
        "memory_budget": None,
        "seed": int(seed),
        "nprobe": min(max(1, host.nprobe), host.nlist),
        "max_train_points": None,
        "next_id": int(ids[-1]) + 1 if ids.size else 0,
        "ivf_layout": IVF_LAYOUT,
        "faiss_version": faiss.__version__,
        "refine": False,
        "refine_factor": 4,
    }
    if isinstance(host, faiss.IndexIVFPQ):
        cls = IVFPQIndex
        meta.update(m=host.pq.M, nbits=host.pq.nbits)
    elif isinstance(host, faiss.IndexIVFScalarQuantizer):
        cls = IVFSQIndex
        names = {getattr(faiss.ScalarQuantizer, qt): name for name, (qt, _) in SQ_TYPES.items()}
        if host.sq.qtype not in names:
            raise IndexFileError("this scalar quantizer type has no gpuann counterpart")
        meta["sq"] = names[host.sq.qtype]
    elif isinstance(host, faiss.IndexIVFFlat):
        cls = IVFFlatIndex
    else:
        raise IndexFileError(f"{type(host).__name__} has no gpuann counterpart")
    arrays = {
        "ids": torch.from_numpy(ids),
        "faiss_index": torch.from_numpy(faiss.serialize_index(host)),
    }
    native = index_from_bytes(index_to_bytes(cls.kind, meta, arrays))
    return native if device is None else native.to(device)
