"""``IVFFlatIndex``: faiss's IVF-Flat (exact distances within the visited lists)."""

from __future__ import annotations

from typing import Any

import torch

from gpuann.ivf import _faiss
from gpuann.ivf.base import IVFIndexBase
from gpuann.metrics import Metric
from gpuann.result import SearchResult
from gpuann.serialization import register_index_kind

__all__ = ["IVFFlatIndex"]


class IVFFlatIndex(IVFIndexBase):
    """Inverted-file index with uncompressed vectors, through faiss (GPU when present).

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
    nprobe : int, optional
        Lists visited per query by default; ``max(1, nlist // 16)`` if not given.
    seed : int
        Seed of the training sample and of faiss's k-means (``cp.seed``; faiss's default).
    max_train_points : int, optional
        Train on a seeded sample of at most this many vectors; default ``256 · nlist`` (what
        faiss's k-means would use anyway).
    memory_budget : int, optional
        Bytes of working memory for gpuann's own tiled steps.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2000, 16, generator=g)
    >>> index = IVFFlatIndex(16, nlist=16, device="cpu")
    >>> index.train(x)
    >>> index.add(x, ids=torch.arange(2000) * 10)
    >>> D, I = index.search(x[:2], k=3, nprobe=16)
    >>> I[:, 0].tolist(), len(index)
    ([0, 10], 2000)
    """

    _kind = "IVFFlatIndex"

    def __init__(
        self,
        dim: int,
        nlist: int,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        *,
        nprobe: int | None = None,
        seed: int = 1234,
        max_train_points: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        super().__init__(
            dim,
            nlist,
            metric,
            device,
            nprobe=nprobe,
            seed=seed,
            max_train_points=max_train_points,
            memory_budget=memory_budget,
            keep_vectors=False,
        )

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

    def _config(self) -> dict[str, Any]:
        return {
            "dim": self._dim,
            "nlist": self._nlist,
            "metric": self._metric.value,
            "seed": self._seed,
            "max_train_points": self._max_train,
        }

    def search(
        self, queries: Any, k: int, nprobe: int | None = None, *, check_finite: bool = True
    ) -> SearchResult:
        """The ``k`` nearest stored vectors of each query among ``nprobe`` lists.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
            Any float dtype; moved to the index device. Results come back where the queries
            were (numpy in, numpy out).
        k : int
            Any positive int (above 2048 a GPU index searches a host copy).
        nprobe : int, optional
            Lists to visit, 1 to ``nlist``; default :attr:`nprobe`.
        check_finite : bool
            Raise on NaN or infinity in ``queries``.

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k): float32 and int64. Equal distances ordered by
            lower id; id ``-1`` with ±inf where fewer than ``k`` results were found.
        """
        return self._search(queries, k, nprobe, None, check_finite)


def _load(meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> IVFFlatIndex:
    from gpuann.ivf._persist import load_ivf

    return load_ivf(IVFFlatIndex, meta, arrays, device)


register_index_kind(IVFFlatIndex._kind, _load)
