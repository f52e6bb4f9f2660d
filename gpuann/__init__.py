"""gpuann: similarity search on torch tensors, on the GPU when there is one.

Importing gpuann imports torch and numpy only: no faiss, no triton, no CUDA initialisation.
"""

from gpuann._version import __version__
from gpuann.backends.dispatch import BackendUnavailableError, available_backends
from gpuann.exact import knn
from gpuann.metrics import Metric
from gpuann.result import SearchResult

__all__ = [
    "BackendUnavailableError",
    "Metric",
    "SearchResult",
    "__version__",
    "available_backends",
    "knn",
]
