"""``IVFFlatIndex``: faiss's IVF-Flat (exact distances within the visited lists)."""

from __future__ import annotations

from typing import Any

import torch  # noqa: F401  (the docstring examples use it)

from gpuann.ivf import _faiss
from gpuann.ivf.base import IVFIndexBase

__all__ = ["IVFFlatIndex"]


class IVFFlatIndex(IVFIndexBase):
    """Inverted-file index with uncompressed vectors, through faiss (GPU when present).

    Distances within the visited lists are exact, so there is nothing to re-rank (no
    ``refine``).

    Parameters
    ----------
    dim : int
        Vector dimension.
    nlist : int
        Number of k-means cells (see :func:`gpuann.suggest_ivf_params`).
    metric : {"l2", "ip", "cosine"}
        Cosine normalises vectors at ``add`` and queries at ``search`` (inner product in faiss).
    device : str or torch.device, optional
        Default CUDA when available, else CPU. A CUDA index needs faiss-gpu.
    dtype : torch.dtype or str
        float32 only (faiss's storage); accepted for the shared vocabulary.
    memory_budget : int, optional
        Bytes of working memory for gpuann's own steps.
    seed : int
        Seed of the training sample and of faiss's k-means (``cp.seed``); default 0.
    nprobe : int, optional
        Lists visited per query by default; ``max(1, nlist // 16)`` if not given.
    max_train_points : int, optional
        Train on a seeded sample of at most this many vectors; default ``256 · nlist`` (what
        faiss's k-means would use anyway). At least ``nlist``: faiss's k-means needs a
        vector per list.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2000, 16, generator=g)
    >>> index = IVFFlatIndex(16, 16, device="cpu")
    >>> index.train(x)
    >>> index.add(x, ids=torch.arange(2000) * 10)
    >>> D, I = index.search(x[:2], k=3, nprobe=16)
    >>> I[:, 0].tolist(), len(index)
    ([0, 10], 2000)
    """

    _can_refine = False

    def _code_size(self) -> int:
        return self._dim * 4  # float32 vectors, uncompressed

    def _new_faiss_index(self) -> Any:
        faiss = _faiss.import_faiss()
        metric = self._faiss_metric()
        index = faiss.IndexIVFFlat(
            faiss.IndexFlat(self._dim, metric), self._dim, self._nlist, metric
        )
        index.cp.seed = self._seed
        return index
