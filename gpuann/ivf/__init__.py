"""IVF-Flat and IVF-PQ indexes through faiss, on torch tensors (GPU when faiss-gpu can).

Importing this package does not import faiss: faiss is imported when an index is created.
"""

from gpuann.ivf.factory import index_factory, parse_description
from gpuann.ivf.ivf_flat import IVFFlatIndex
from gpuann.ivf.ivf_pq import IVFPQIndex
from gpuann.ivf.tuning import IVFParams, NprobeTuning, suggest_ivf_params, tune_nprobe

__all__ = [
    "IVFFlatIndex",
    "IVFPQIndex",
    "IVFParams",
    "NprobeTuning",
    "index_factory",
    "parse_description",
    "suggest_ivf_params",
    "tune_nprobe",
]
