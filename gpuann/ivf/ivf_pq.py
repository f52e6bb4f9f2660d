"""``IVFPQIndex``: faiss's IVF-PQ, with optional exact re-ranking on the index device."""

from __future__ import annotations

from typing import Any, ClassVar

import torch  # noqa: F401  (the docstring examples use it)

from gpuann._validate import positive_int
from gpuann.ivf import _faiss
from gpuann.ivf.base import IVFIndexBase
from gpuann.ivf.training import MAX_POINTS_PER_LIST, TrainingMinimum, training_minimum

__all__ = ["IVFPQIndex"]


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
    metric, device, dtype, memory_budget, seed, nprobe
        As for :class:`~gpuann.IVFFlatIndex`.
    max_train_points : int, optional
        Default ``256 · max(nlist, 2**nbits)``, what faiss's k-means would use for the larger
        of the coarse quantizer and the PQ codebooks; at least ``max(nlist, 2**nbits)``, the
        fewest faiss trains on (as for the vectors given to :meth:`train`).
    refine : bool
        Also keep the full-precision vectors (float32, on the device) and re-rank
        ``refine_factor · k`` PQ candidates exactly (faiss's ``IndexRefineFlat``), with
        :func:`gpuann.refine.rerank_rows`.
    refine_factor : int
        Default re-ranking factor of :meth:`search` (with ``refine``).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(3000, 16, generator=g)
    >>> index = IVFPQIndex(16, 8, 4, nbits=6, device="cpu", refine=True)
    >>> index.train(x)
    >>> index.add(x)
    >>> D, I = index.search(x[:2], k=3, nprobe=8, refine_factor=8)
    >>> I[:, 0].tolist()
    [0, 1]
    """

    _own_config_keys: ClassVar[tuple[str, ...]] = ("m", "nbits")

    def __init__(
        self,
        dim: int,
        nlist: int,
        m: int,
        *,
        nbits: int = 8,
        **options: Any,
    ) -> None:
        self._m = positive_int(m, "m")
        self._nbits = positive_int(nbits, "nbits")
        if positive_int(dim, "dim") % self._m:
            raise ValueError(f"m: must divide dim={dim}, got m={m}")
        if self._nbits > 16:
            raise ValueError(f"nbits: expected 1 to 16, got {nbits}")
        super().__init__(dim, nlist, **options)

    @property
    def m(self) -> int:
        """Number of sub-quantizers."""
        return self._m

    @property
    def nbits(self) -> int:
        """Bits per sub-quantizer code."""
        return self._nbits

    def _specific_config(self) -> dict[str, Any]:
        return {"m": self._m, "nbits": self._nbits}

    def _default_max_train(self) -> int:
        return MAX_POINTS_PER_LIST * max(self._nlist, 2**self._nbits)

    def _training_minimum(self) -> TrainingMinimum:
        return training_minimum(self._nlist, self._nbits)

    def _display_extra(self) -> dict[str, Any]:
        return {"m": self._m, "nbits": self._nbits}

    def _code_size(self) -> int:
        return (self._m * self._nbits + 7) // 8  # faiss's ``pq.code_size``

    def _trained_nbytes(self) -> int:
        """PQ codebooks, ``m · 2**nbits · (dim / m)`` float32, and faiss's precomputed L2
        term tables when it built them (CPU: ``nlist · m · 2**nbits`` float32; gpuann's GPU
        copies are made without them)."""
        codebooks = self._m * 2**self._nbits * (self._dim // self._m) * 4
        table = getattr(self._faiss.index, "precomputed_table", None)
        return codebooks + (int(table.size()) * 4 if table is not None else 0)

    def _new_faiss_index(self) -> Any:
        faiss = _faiss.import_faiss()
        metric = self._faiss_metric()
        quantizer = faiss.IndexFlat(self._dim, metric)
        index = faiss.IndexIVFPQ(quantizer, self._dim, self._nlist, self._m, self._nbits, metric)
        index.cp.seed = self._seed
        index.pq.cp.seed = self._seed
        return index
