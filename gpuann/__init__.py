"""gpuann: similarity search on torch tensors, on the GPU when there is one.

Importing gpuann imports torch and numpy only: no faiss, no triton, no CUDA initialisation.
"""

from gpuann._version import __version__
from gpuann.backends import explain, register_backend
from gpuann.backends.dispatch import BackendUnavailableError, available_backends
from gpuann.differentiable import differentiable_distances
from gpuann.errors import NotTrainedError, UnknownIdError
from gpuann.exact import knn
from gpuann.flat import FlatIndex
from gpuann.index import Index, Searchable
from gpuann.memory_bank import MemoryBank
from gpuann.metrics import Metric
from gpuann.result import SearchResult
from gpuann.selection import batched_topk
from gpuann.serialization import IndexFileError, load

__all__ = [
    "BackendUnavailableError",
    "FlatIndex",
    "Index",
    "IndexFileError",
    "MemoryBank",
    "Metric",
    "NotTrainedError",
    "SearchResult",
    "Searchable",
    "UnknownIdError",
    "__version__",
    "available_backends",
    "batched_topk",
    "differentiable_distances",
    "explain",
    "knn",
    "load",
    "register_backend",
]

#: Exported lazily (module-level ``__getattr__``), so ``import gpuann`` never imports faiss.
_LAZY = {
    "BinaryFlatIndex": "gpuann.binary",
    "batch_search": "gpuann.batch",
    "ray_search": "gpuann.scale_out",
    "self_join": "gpuann.batch",
    "Embedder": "gpuann.embed",
    "KDTreeIndex": "gpuann.kdtree",
    "LSHIndex": "gpuann.binary",
    "quantize_binary": "gpuann.binary",
    "HNSWIndex": "gpuann.hnsw",
    "OPQ": "gpuann.transforms",
    "PCA": "gpuann.transforms",
    "Transform": "gpuann.transforms",
    "TransformedIndex": "gpuann.transformed",
    "IVFFlatIndex": "gpuann.ivf.ivf_flat",
    "IVFPQIndex": "gpuann.ivf.ivf_pq",
    "IVFSQIndex": "gpuann.ivf.ivf_sq",
    "index_factory": "gpuann.ivf.factory",
    "suggest_ivf_params": "gpuann.ivf.tuning",
    "tune_nprobe": "gpuann.ivf.tuning",
}
__all__ += sorted(_LAZY)
#: Submodules imported on first access (``gpuann.eval`` imports pandas only when it needs it).
_LAZY_MODULES = ("distributed", "eval")
__all__ += _LAZY_MODULES


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"gpuann.{name}")
    raise AttributeError(f"module 'gpuann' has no attribute {name!r}")
