"""faiss-compatible names over gpuann indexes: change ``import faiss`` and keep your code.

>>> import numpy as np
>>> import gpuann.compat.faiss as faiss
>>> data = np.random.default_rng(0).random((1000, 16), dtype="float32")
>>> index = faiss.IndexFlatL2(16)
>>> index.add(data)
>>> D, I = index.search(data[:2], 3)
>>> I[:, 0].tolist(), index.ntotal
([0, 1], 1000)

It behaves as faiss to the letter where it can (results, ``-1`` ids with ``±3.4028235e38``
distances, error classes, files faiss reads), with these additions: numpy or torch tensors
(on any device) are accepted and returned in kind; the index lives on the GPU when one is
present; equal distances are ordered by lower id; searches are safe from several threads.
It can stand in for faiss in code that imports faiss itself
(``sys.modules["faiss"] = gpuann.compat.faiss``); faiss-cpu, when installed, is still used
for IVF and for faiss's file format. Importing this module does not import faiss.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from gpuann.compat.faiss import _common, selectors
from gpuann.compat.faiss._base import Index
from gpuann.compat.faiss._common import *  # noqa: F403  (faiss's names: _common.FAISS_NAMES)
from gpuann.compat.faiss._common import (
    FLT_MAX,
    METRIC_L2,
    as_vectors,
    check_k,
    fill_missing,
    metric_name,
)
from gpuann.compat.faiss.binary import IndexBinary, IndexBinaryFlat, IndexLSH
from gpuann.compat.faiss.flat import (
    IndexFlat,
    IndexFlatIP,
    IndexFlatL2,
    IndexIDMap,
    IndexIDMap2,
    Int64Vector,
    vector_to_array,
)
from gpuann.compat.faiss.hnsw import IndexHNSW, IndexHNSWFlat, SearchParametersHNSW
from gpuann.compat.faiss.io import (
    deserialize_index,
    deserialize_index_binary,
    read_index,
    read_index_binary,
    serialize_index,
    serialize_index_binary,
    write_index,
    write_index_binary,
)
from gpuann.compat.faiss.ivf import (
    FAISS_SEED,
    DirectMap,
    IndexIVF,
    IndexIVFFlat,
    IndexIVFPQ,
    index_factory,
)
from gpuann.compat.faiss.refine import IndexRefineFlat, IndexRefineSearchParameters
from gpuann.compat.faiss.selectors import *  # noqa: F403  (every id selector, its __all__)
from gpuann.exact import knn as _knn

#: faiss's names: those of :mod:`._common` and :mod:`.selectors`, and the ones listed here.
__all__ = [
    *_common.FAISS_NAMES,
    *selectors.__all__,
    "FAISS_SEED",
    "DirectMap",
    "Index",
    "IndexBinary",
    "IndexBinaryFlat",
    "IndexFlat",
    "IndexFlatIP",
    "IndexFlatL2",
    "IndexHNSW",
    "IndexHNSWFlat",
    "IndexIDMap",
    "IndexIDMap2",
    "IndexIVF",
    "IndexIVFFlat",
    "IndexIVFPQ",
    "IndexLSH",
    "IndexRefineFlat",
    "IndexRefineSearchParameters",
    "Int64Vector",
    "ParameterSpace",
    "SearchParametersHNSW",
    "__version__",
    "clone_index",
    "deserialize_index",
    "deserialize_index_binary",
    "downcast_index",
    "extract_index_ivf",
    "get_num_gpus",
    "index_factory",
    "knn",
    "normalize_L2",
    "omp_get_max_threads",
    "omp_set_num_threads",
    "read_index",
    "read_index_binary",
    "serialize_index",
    "serialize_index_binary",
    "vector_to_array",
    "write_index",
    "write_index_binary",
]


#: The faiss release whose Python API this module follows: its parity tests run against it.
__version__ = "1.15.1"


def get_num_gpus() -> int:
    """0: the shim offers none of faiss's GPU classes (``index_cpu_to_gpu``…); its indexes
    live on the GPU by themselves when torch sees one."""
    return 0


def extract_index_ivf(index: Index) -> IndexIVF:
    """The ``IndexIVF`` inside ``index`` (itself, or under ``IndexRefineFlat``/``IndexIDMap``),
    as faiss's; ``RuntimeError`` when there is none."""
    inner = index
    while not isinstance(inner, IndexIVF):
        inner = getattr(inner, "base_index", None) or getattr(inner, "index", None)
        if not isinstance(inner, Index):
            raise _common.FaissRuntimeError(
                f"extract_index_ivf: {type(index).__name__} holds no IndexIVF"
            )
    return inner


class ParameterSpace:
    """faiss's ``ParameterSpace`` for setting search parameters by name: ``nprobe`` (IVF),
    ``efSearch`` (HNSW), ``k_factor_rf`` (``IndexRefineFlat``), through the wrappers that hold
    them; an unknown name or an index without it raises ``RuntimeError`` as faiss's."""

    def set_index_parameters(self, index: Index, description: str) -> None:
        """``description``: ``"name=value,name=value"``."""
        for part in str(description).split(","):
            name, sep, value = part.partition("=")
            if not sep:
                raise _common.FaissRuntimeError(f"ParameterSpace: cannot parse {part!r}")
            self.set_index_parameter(index, name.strip(), float(value))

    def set_index_parameter(self, index: Index, name: str, value: float) -> None:
        if name == "k_factor_rf" and isinstance(index, IndexRefineFlat):
            index.k_factor = float(int(value))  # faiss stores int(value)
            return
        if name == "nprobe" and isinstance(index, IndexIVF):
            index.nprobe = int(value)
            return
        if name == "efSearch" and isinstance(index, IndexHNSW):
            index.hnsw.efSearch = int(value)
            return
        inner = getattr(index, "base_index", None) or getattr(index, "index", None)
        if isinstance(inner, Index):
            self.set_index_parameter(inner, name, value)
            return
        raise _common.FaissRuntimeError(
            f"ParameterSpace: could not set parameter {name} on {type(index).__name__}"
        )


def knn(xq: Any, xb: Any, k: int, metric: int = METRIC_L2) -> tuple[Any, Any]:
    """faiss ``knn``: exact ``(D, I)`` of ``xq`` against ``xb`` without building an index."""
    d = np.shape(xb)[1] if np.ndim(xb) == 2 else -1
    xq, xb, k = as_vectors(xq, d, "xq"), as_vectors(xb, d, "xb"), check_k(k)
    distances, ids = _knn(xq, xb, k, metric=metric_name(metric))
    missing = FLT_MAX if metric == METRIC_L2 else -FLT_MAX
    return fill_missing(distances, ids, missing), ids


def normalize_L2(x: np.ndarray | torch.Tensor) -> None:
    """Normalise the rows of ``x`` in place, as faiss does (zero rows stay zero)."""
    if isinstance(x, np.ndarray):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        np.divide(x, np.maximum(norms, 1e-12), out=x)
    else:
        x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12))


def omp_set_num_threads(num_threads: int) -> None:
    """Threads of gpuann's CPU search (torch's) and, when installed, of faiss's OpenMP."""
    torch.set_num_threads(int(num_threads))
    from gpuann.compat.faiss.io import _real_faiss

    real = _real_faiss()
    if real is not None:
        real.omp_set_num_threads(int(num_threads))


def omp_get_max_threads() -> int:
    """Threads of gpuann's CPU search (torch's)."""
    return torch.get_num_threads()


def downcast_index(index: Index) -> Index:
    """``index`` itself: the shim's classes are already the most derived ones."""
    return index


def clone_index(index: Index) -> Index:
    """An independent copy of ``index`` (through gpuann's safe serialisation)."""
    return copy.deepcopy(index)
