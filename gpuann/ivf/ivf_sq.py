"""``IVFSQIndex``: faiss's IVF with scalar-quantised codes (SQ8: one byte per dimension)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch  # noqa: F401  (the docstring examples use it)

from gpuann.ivf import _faiss
from gpuann.ivf.base import IVFIndexBase

__all__ = ["SQ_TYPES", "IVFSQIndex"]

#: faiss ``ScalarQuantizer`` types by their factory names, and bytes per dimension.
SQ_TYPES = {"SQ8": ("QT_8bit", 1.0), "SQ4": ("QT_4bit", 0.5), "SQfp16": ("QT_fp16", 2.0)}


class IVFSQIndex(IVFIndexBase):
    """Inverted-file index with scalar-quantised vectors, through faiss (``"IVF…,SQ8"``).

    Each dimension is stored in one byte (``SQ8``, the default; ``SQ4``: half a byte,
    ``SQfp16``: two), its range learned per dimension by :meth:`train` — a quarter of float32's
    memory for a small loss in recall, which ``refine=True`` wins back by re-scoring
    ``refine_factor · k`` candidates against kept float32 vectors.

    Parameters
    ----------
    dim, nlist : int
    sq : {"SQ8", "SQ4", "SQfp16"}
        faiss's scalar quantiser type.
    metric, device, dtype, memory_budget, seed, nprobe, max_train_points, refine, refine_factor
        As for :class:`~gpuann.IVFPQIndex`.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2000, 16, generator=g)
    >>> index = IVFSQIndex(16, 8, device="cpu")
    >>> index.train(x)
    >>> index.add(x)
    >>> index.search(x[:2], k=1, nprobe=8).ids.flatten().tolist()
    [0, 1]
    """

    _own_config_keys: ClassVar[tuple[str, ...]] = ("sq",)

    def __init__(
        self,
        dim: int,
        nlist: int,
        *,
        sq: str = "SQ8",
        **options: Any,
    ) -> None:
        if sq not in SQ_TYPES:
            raise ValueError(f"sq: expected one of {sorted(SQ_TYPES)}, got {sq!r}")
        self._sq = sq
        super().__init__(dim, nlist, **options)

    @property
    def sq(self) -> str:
        """The scalar quantiser type (``"SQ8"``…)."""
        return self._sq

    def _specific_config(self) -> dict[str, Any]:
        return {"sq": self._sq}

    def _display_extra(self) -> dict[str, Any]:
        return {"sq": self._sq}

    def _code_size(self) -> int:
        return int(self._dim * SQ_TYPES[self._sq][1] + 0.5)

    def _trained_nbytes(self) -> int:
        return 2 * self._dim * 4  # per-dimension minimum and range

    def _new_faiss_index(self) -> Any:
        faiss = _faiss.import_faiss()
        metric = self._faiss_metric()
        quantizer = faiss.IndexFlat(self._dim, metric)
        kind = getattr(faiss.ScalarQuantizer, SQ_TYPES[self._sq][0])
        index = faiss.IndexIVFScalarQuantizer(quantizer, self._dim, self._nlist, kind, metric)
        index.cp.seed = self._seed
        return index
