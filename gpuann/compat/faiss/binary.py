"""faiss's binary indexes: ``IndexBinaryFlat`` over :class:`gpuann.BinaryFlatIndex` and
``IndexLSH`` over :class:`gpuann.LSHIndex`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann.compat.faiss._base import Index
from gpuann.compat.faiss._common import INT32_MAX, METRIC_L2, as_codes

__all__ = ["IndexBinary", "IndexBinaryFlat", "IndexLSH"]


class IndexBinary(Index):
    """What faiss's binary indexes share (for ``isinstance`` checks, as faiss's
    ``IndexBinary``)."""


class IndexBinaryFlat(IndexBinary):
    """faiss ``IndexBinaryFlat``: exact Hamming search over uint8 codes of ``d`` bits.

    Distances are int32 Hamming distances, as in faiss (``2**31 - 1`` beyond ``ntotal``).
    """

    _filters = False

    def __init__(self, d: int, device: str | torch.device | None = None) -> None:
        from gpuann.binary import BinaryFlatIndex

        self.index = BinaryFlatIndex(d, device=device)

    @classmethod
    def from_native(cls, native: Any) -> IndexBinaryFlat:
        """The shim over an existing ``BinaryFlatIndex`` (renumbered ``0..n-1``)."""
        shim = cls(native.nbits, native.device)
        shim.index = native
        native.renumber()
        return shim

    @property
    def d(self) -> int:
        return self.index.nbits

    @property
    def code_size(self) -> int:
        return self.index.code_size

    def _convert(self, x: Any, what: str = "x") -> Any:
        return as_codes(x, self.code_size, what)

    def _missing(self) -> float:
        return INT32_MAX

    def range_search(self, x: Any, thresh: float, *, params: Any = None):
        """As faiss's: Hamming distances below ``thresh``, as float32 (faiss's range results
        hold floats; ``search`` gives int32)."""
        lims, distances, ids = super().range_search(x, thresh, params=params)
        if isinstance(distances, np.ndarray):
            return lims, distances.astype(np.float32), ids
        return lims, distances.float(), ids


class IndexLSH(Index):
    """faiss ``IndexLSH``: sign bits of a random rotation (or of the first ``nbits``
    coordinates), optionally against trained median thresholds; Hamming search.

    Parameters
    ----------
    d, nbits : int
    rotate_data : bool
        A random orthogonal projection (``True``, faiss's default) or the first ``nbits``
        coordinates (``False``, needs ``nbits <= d``; then codes equal faiss's).
    train_thresholds : bool
        Learn a median per bit in :meth:`train` (the index is untrained until then).
    device : str or torch.device, optional

    Distances are Hamming distances as float32, as in faiss. The random rotation is gpuann's
    (seeded), not faiss's: codes differ from faiss's unless ``rotate_data=False``.
    """

    metric_type = METRIC_L2
    _filters = False

    def __init__(
        self,
        d: int,
        nbits: int,
        rotate_data: bool = True,
        train_thresholds: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        from gpuann.binary import LSHIndex

        self.index = LSHIndex(
            d,
            nbits,
            metric="l2",
            device=device,
            projection="orthogonal" if rotate_data else "identity",
            train_thresholds=bool(train_thresholds),
        )

    @classmethod
    def from_native(cls, native: Any) -> IndexLSH:
        """The shim over an existing ``LSHIndex`` (renumbered ``0..n-1``)."""
        shim = cls(
            native.dim,
            native.nbits,
            rotate_data=native.projection != "identity",
            train_thresholds=native.train_thresholds,
            device=native.device,
        )
        shim.index = native
        native.renumber()
        return shim

    @property
    def rotate_data(self) -> bool:
        return self.index.projection != "identity"

    @property
    def train_thresholds(self) -> bool:
        return self.index.train_thresholds

    @property
    def nbits(self) -> int:
        return self.index.nbits

    @property
    def code_size(self) -> int:
        return self.index.code_size

    def _missing(self) -> float:
        return float(INT32_MAX)

    def train(self, x: Any) -> None:
        """Learn the thresholds (``train_thresholds=True``); otherwise nothing to train."""
        x = self._convert(x)
        if self.train_thresholds:
            self.index.train(x)
