"""IVF-Flat, IVF-PQ and IVF-SQ indexes through faiss, on torch tensors (GPU when faiss-gpu can).

Importing this package does not import faiss: faiss is imported when an index is created.
"""

from gpuann.ivf._faiss import FaissUnavailableError, import_faiss
from gpuann.ivf.factory import index_factory, parse_description
from gpuann.ivf.interop import from_faiss
from gpuann.ivf.ivf_flat import IVFFlatIndex
from gpuann.ivf.ivf_pq import IVFPQIndex
from gpuann.ivf.ivf_sq import IVFSQIndex
from gpuann.ivf.tuning import IVFParams, NprobeTuning, suggest_ivf_params, tune_nprobe

__all__ = [
    "FaissUnavailableError",
    "IVFFlatIndex",
    "IVFPQIndex",
    "IVFParams",
    "IVFSQIndex",
    "NprobeTuning",
    "from_faiss",
    "import_faiss",
    "index_factory",
    "parse_description",
    "suggest_ivf_params",
    "tune_nprobe",
]
