"""The faiss calls behind :class:`gpuann.HNSWIndex`: building, searching, (de)serialising,
and ordering faiss's results into gpuann's (:func:`order_results`).

faiss is imported on first use, never when gpuann is imported. Every faiss HNSW index here is
a CPU index (faiss-gpu has no HNSW); tensors reach it as numpy views of CPU memory, without a
copy when they already are contiguous float32 on the CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from gpuann.metrics import Metric

__all__ = [
    "HNSW_LAYOUT",
    "as_numpy",
    "cagra_unavailable_reasons",
    "describe",
    "deserialize",
    "import_faiss",
    "new_hnsw",
    "order_results",
    "reseed",
    "search",
    "search_host",
    "serialize",
]

#: Version of the HNSW part of an index file (inside gpuann's FORMAT_VERSION 1).
HNSW_LAYOUT = 1
_INT64_MAX = 2**63 - 1


def import_faiss() -> Any:
    """The real ``faiss`` module, imported on first use (also when ``sys.modules["faiss"]``
    is gpuann's compat shim: see :func:`gpuann.ivf._faiss.import_faiss`).

    Raises
    ------
    FaissUnavailableError
        faiss is not installed.
    """
    from gpuann.ivf._faiss import FaissUnavailableError
    from gpuann.ivf._faiss import import_faiss as _import

    try:
        return _import()
    except FaissUnavailableError as err:
        raise FaissUnavailableError(
            "gpuann.HNSWIndex needs faiss: pip install gpuann[faiss] (faiss-cpu)"
        ) from err


def cagra_unavailable_reasons() -> list[str]:
    """Why a CAGRA graph cannot be built on a GPU here (empty when it can).

    CAGRA needs faiss-gpu built with cuVS (``faiss.GpuIndexCagra``) and a visible GPU.
    """
    reasons = []
    try:
        faiss = import_faiss()
    except ImportError as err:
        return [str(err)]
    if not hasattr(faiss, "GpuIndexCagra"):
        reasons.append(
            f"faiss {faiss.__version__} has no GpuIndexCagra (needs faiss-gpu built with cuVS)"
        )
    if not torch.cuda.is_available():
        reasons.append("no CUDA device")
    elif hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() == 0:
        reasons.append("faiss sees no GPU")
    return reasons


def _faiss_metric(metric: Metric) -> int:
    faiss = import_faiss()
    return faiss.METRIC_L2 if metric is Metric.L2 else faiss.METRIC_INNER_PRODUCT


def new_hnsw(dim: int, m: int, ef_construction: int, metric: Metric, sq8: bool, seed: int) -> Any:
    """An empty ``IndexHNSWFlat`` (``IndexHNSWSQ`` with 8-bit codes when ``sq8``).

    Cosine is the inner product of normalised vectors. The level generator is seeded with
    ``seed`` (faiss's own default is 12345), so a single-threaded build is reproducible.
    """
    faiss = import_faiss()
    if sq8:
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, m, _faiss_metric(metric))
    else:
        index = faiss.IndexHNSWFlat(dim, m, _faiss_metric(metric))
    index.hnsw.efConstruction = ef_construction
    reseed(index, seed)
    return index


def reseed(index: Any, seed: int) -> None:
    """Seed the generator that draws the levels of the vectors added next."""
    index.hnsw.rng = import_faiss().RandomGenerator(int(seed) % 2**63)


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A contiguous float32 CPU numpy view (a copy only when needed)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        x = x.to("cpu", torch.float32)
    return x.detach().contiguous().numpy()


def search(
    index: Any, q: torch.Tensor, k: int, ef_search: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """faiss's ``(distances, labels)`` for ``k`` neighbours, visiting ``ef_search`` candidates.

    ``allowed``: a bitmap of the labels that may be returned (``IDSelectorBitmap``), or None.
    """
    if allowed is None:
        return search_host(index, as_numpy(q), k, ef_search)
    faiss = import_faiss()
    params = faiss.SearchParametersHNSW()
    params.efSearch = ef_search
    selector = faiss.IDSelectorBitmap(index.ntotal, faiss.swig_ptr(allowed))
    params.sel = selector
    distances, labels = index.search(as_numpy(q), k, params=params)
    del selector  # the selector (and its bitmap) must outlive the search, not the params
    return distances, labels


def range_search(
    index: Any, q: torch.Tensor, radius: float, ef_search: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss's ``(lims, distances, labels)`` of the labels within ``radius`` that a graph
    search visiting ``ef_search`` candidates finds (L2: ``< radius``; IP: ``> radius``)."""
    return index.range_search(as_numpy(q), float(radius), params=_params(ef_search))


def search_host(index: Any, x: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` of a C-contiguous float32 numpy matrix, without a selector.

    faiss's C++ search itself, on preallocated outputs: ``k``, the shape and dtype are checked
    already (the Python wrapper's checks and conversions cost more than a search of one query).
    """
    distances = np.empty((x.shape[0], k), dtype=np.float32)
    labels = np.empty((x.shape[0], k), dtype=np.int64)
    ptr = _swig_ptr()
    index.search_c(x.shape[0], ptr(x), k, ptr(distances), ptr(labels), _params(ef_search))
    return distances, labels


def order_results(
    d: np.ndarray,
    labels: np.ndarray,
    label_to_id: np.ndarray,
    k: int,
    metric: Metric,
    tombstones: int,
) -> tuple[np.ndarray, np.ndarray]:
    """User ids, and the first ``k`` live results per row by (distance, id), missing last.

    ``d`` and ``labels`` are faiss's (Q, fetched) results; ``label_to_id`` maps a label to its
    id, ``-1`` for a tombstone (``tombstones`` of them). Missing results are ``-1`` with the
    metric's missing distance. In numpy: on these small (Q, k) arrays it costs microseconds,
    where torch's per-op dispatch would cost more than faiss's own search of a few queries.
    """
    missing = metric.missing_distance
    if tombstones or (labels.size and labels.min() < 0):  # removed or missing results
        ids = np.where(labels >= 0, label_to_id[labels], -1)  # label -1 reads the last: masked
        gone = ids < 0
        d = np.where(gone, np.float32(missing), d)
    else:
        ids = label_to_id.take(labels)
        gone = None
    if tombstones or bool((d[:, 1:] == d[:, :-1]).any()):  # drop removed, order ties
        if gone is None:
            gone = np.zeros(ids.shape, dtype=bool)
        key = np.where(gone, np.inf, -d if metric.descending else d)
        order = np.lexsort((np.where(gone, _INT64_MAX, ids), key))[:, :k]
        d, ids = np.take_along_axis(d, order, 1), np.take_along_axis(ids, order, 1)
    elif d.shape[1] == k:  # as faiss returned them (contiguous): no copies, no more ops
        return d, ids
    else:
        d, ids = d[:, :k], ids[:, :k]
    if d.shape[1] < k:
        pad = ((0, 0), (0, k - d.shape[1]))
        d = np.pad(d, pad, constant_values=np.float32(missing))
        ids = np.pad(ids, pad, constant_values=-1)
    return np.ascontiguousarray(d, dtype=np.float32), np.ascontiguousarray(ids)


@functools.cache
def _swig_ptr() -> Any:
    """``faiss.swig_ptr`` (looked up once: a search of one query pays for every lookup)."""
    return import_faiss().swig_ptr


@functools.lru_cache(maxsize=64)
def _params(ef_search: int) -> Any:
    """``SearchParametersHNSW(efSearch=ef_search)``, made once (faiss only reads it)."""
    params = import_faiss().SearchParametersHNSW()
    params.efSearch = ef_search
    return params


def serialize(index: Any) -> torch.Tensor:
    """``faiss.serialize_index`` bytes as a uint8 tensor."""
    return torch.from_numpy(import_faiss().serialize_index(index))


def deserialize(blob: torch.Tensor) -> Any:
    """The faiss index held in a uint8 tensor (raises RuntimeError when faiss cannot read it)."""
    faiss = import_faiss()
    return faiss.deserialize_index(np.ascontiguousarray(blob.numpy()))


def describe(index: Any) -> tuple[str, int, int, int]:
    """``(class name, dim, metric, M)`` of a deserialised faiss HNSW index."""
    faiss = import_faiss()
    index = faiss.downcast_index(index)
    m = int(index.hnsw.nb_neighbors(1)) if isinstance(index, faiss.IndexHNSW) else -1
    return type(index).__name__, int(index.d), int(index.metric_type), m
