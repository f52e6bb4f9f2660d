"""``IVFPQIndex``: faiss's IVF-PQ, with optional exact re-ranking on the index device."""

from __future__ import annotations

from typing import Any

import torch

from gpuann.ivf import _faiss
from gpuann.ivf.base import MAX_POINTS_PER_LIST, IVFIndexBase, _positive_int
from gpuann.metrics import Metric
from gpuann.result import SearchResult
from gpuann.serialization import register_index_kind

__all__ = ["DEFAULT_REFINE_FACTOR", "IVFPQIndex"]

#: Candidates re-ranked per result by default (``refine_factor · k``).
DEFAULT_REFINE_FACTOR = 4


class IVFPQIndex(IVFIndexBase):
    """Inverted-file index with product-quantised vectors, through faiss (GPU when present).

    Parameters
    ----------
    dim : int
        Vector dimension, a multiple of ``m``.
    nlist : int
        Number of k-means cells.
    m : int
        Sub-quantizers: each vector is stored in ``m · nbits / 8`` bytes.
    nbits : int
        Bits per sub-quantizer code (faiss-gpu supports at most 8).
    metric : {"l2", "ip", "cosine"}
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    refine : bool
        Also keep the full-precision vectors (float32, on the device) and re-rank
        ``refine_factor · k`` PQ candidates exactly (faiss's ``IndexRefineFlat``).
    refine_factor : int
        Default re-ranking factor of :meth:`search`.
    nprobe, seed, max_train_points, memory_budget
        As for :class:`~gpuann.IVFFlatIndex`; ``max_train_points`` defaults to
        ``256 · max(nlist, 2**nbits)``, what faiss's k-means would use for the larger of
        the coarse quantizer and the PQ codebooks.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(3000, 16, generator=g)
    >>> index = IVFPQIndex(16, nlist=8, m=4, nbits=6, refine=True, device="cpu")
    >>> index.train(x)
    >>> index.add(x)
    >>> D, I = index.search(x[:2], k=3, nprobe=8, refine_factor=8)
    >>> I[:, 0].tolist()
    [0, 1]
    """

    _kind = "IVFPQIndex"

    def __init__(
        self,
        dim: int,
        nlist: int,
        m: int,
        nbits: int = 8,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        refine: bool = False,
        *,
        refine_factor: int = DEFAULT_REFINE_FACTOR,
        nprobe: int | None = None,
        seed: int = 1234,
        max_train_points: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        self._m = _positive_int(m, "m")
        self._nbits = _positive_int(nbits, "nbits")
        if _positive_int(dim, "dim") % self._m:
            raise ValueError(f"m: must divide dim={dim}, got m={m}")
        if self._nbits > 16:
            raise ValueError(f"nbits: expected 1 to 16, got {nbits}")
        self._refine = bool(refine)
        self.refine_factor = _positive_int(refine_factor, "refine_factor")
        super().__init__(
            dim,
            nlist,
            metric,
            device,
            nprobe=nprobe,
            seed=seed,
            max_train_points=max_train_points,
            memory_budget=memory_budget,
            keep_vectors=self._refine,
        )

    @property
    def m(self) -> int:
        """Number of sub-quantizers."""
        return self._m

    @property
    def nbits(self) -> int:
        """Bits per sub-quantizer code."""
        return self._nbits

    @property
    def refine(self) -> bool:
        """Whether full-precision vectors are kept for exact re-ranking."""
        return self._refine

    def _default_max_train(self) -> int:
        return MAX_POINTS_PER_LIST * max(self._nlist, 2**self._nbits)

    def _specific_fields(self) -> dict[str, Any]:
        return {"m": self._m, "nbits": self._nbits, "refine": self._refine}

    def _code_size(self) -> int:
        return (self._m * self._nbits + 7) // 8  # faiss's ``pq.code_size``

    def _trained_nbytes(self) -> int:
        """PQ codebooks, ``m · 2**nbits · (dim / m)`` float32, and faiss's precomputed L2
        term tables when it built them (CPU: ``nlist · m · 2**nbits`` float32; gpuann's GPU
        copies are made without them)."""
        codebooks = self._m * 2**self._nbits * (self._dim // self._m) * 4
        table = getattr(self._faiss_index, "precomputed_table", None)
        return codebooks + (int(table.size()) * 4 if table is not None else 0)

    def _new_faiss_index(self) -> Any:
        faiss = _faiss.import_faiss()
        metric = self._faiss_metric()
        quantizer = faiss.IndexFlat(self._dim, metric)
        index = faiss.IndexIVFPQ(quantizer, self._dim, self._nlist, self._m, self._nbits, metric)
        index.cp.seed = self._seed
        index.pq.cp.seed = self._seed
        return index

    def _config(self) -> dict[str, Any]:
        return {
            "dim": self._dim,
            "nlist": self._nlist,
            "m": self._m,
            "nbits": self._nbits,
            "metric": self._metric.value,
            "refine": self._refine,
            "refine_factor": self.refine_factor,
            "seed": self._seed,
            "max_train_points": self._max_train,
        }

    def search(
        self,
        queries: Any,
        k: int,
        nprobe: int | None = None,
        *,
        refine_factor: int | None = None,
        check_finite: bool = True,
    ) -> SearchResult:
        """The ``k`` nearest stored vectors of each query among ``nprobe`` lists.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
            Any float dtype; results come back where the queries were (numpy in, numpy out).
        k : int
        nprobe : int, optional
            Lists to visit, 1 to ``nlist``; default :attr:`nprobe`.
        refine_factor : int, optional
            With ``refine=True``: re-rank ``refine_factor · k`` PQ candidates by exact
            distance (default :attr:`refine_factor`). Passing it to an index built without
            ``refine`` raises.
        check_finite : bool
            Raise on NaN or infinity in ``queries``.

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k): float32 and int64. Without refine the
            distances are faiss's PQ estimates; with refine, exact. Equal distances ordered
            by lower id; id ``-1`` with ±inf where fewer than ``k`` results were found.
        """
        if refine_factor is not None and not self._refine:
            raise ValueError("refine_factor: this index was built with refine=False")
        if self._refine:
            factor = self.refine_factor if refine_factor is None else refine_factor
            factor = _positive_int(factor, "refine_factor")
        else:
            factor = None
        return self._search(queries, k, nprobe, factor, check_finite)


def _load(meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> IVFPQIndex:
    from gpuann.ivf._persist import load_ivf

    return load_ivf(IVFPQIndex, meta, arrays, device)


register_index_kind(IVFPQIndex._kind, _load)
