"""``ScalarQuantizer``: int8 codes with per-dimension ranges (faiss's SQ8, in torch).

Each dimension ``j`` is mapped from its learned range ``[lo_j, hi_j]`` onto the codes
``-127..127``: ``code = round((x - mid) / step)`` with ``mid = (lo + hi) / 2`` and
``step = (hi - lo) / 254``, clipped to the range; decoding is ``mid + step · code``. Values
outside the learned range are clipped to its ends.

The ranges are learned from a sample by :meth:`train` (the minimum and maximum of each
dimension, as faiss's ``QT_8bit`` with its default ``RS_minmax``).
"""

from __future__ import annotations

import torch

__all__ = ["CODE_MAX", "ScalarQuantizer"]

#: Codes lie in ``[-CODE_MAX, CODE_MAX]`` (symmetric: -128 is never used).
CODE_MAX = 127
#: Smallest step: a dimension that never varies still decodes to its value.
_MIN_STEP = 1e-12


class ScalarQuantizer:
    """Per-dimension int8 quantisation of float vectors.

    Parameters
    ----------
    dim : int
    device : torch.device

    Examples
    --------
    >>> sq = ScalarQuantizer(2, torch.device("cpu"))
    >>> sq.train(torch.tensor([[0.0, -1.0], [1.0, 1.0]]))
    >>> codes = sq.encode(torch.tensor([[0.5, 1.0]]))
    >>> codes.tolist(), sq.decode(codes).tolist()
    ([[0, 127]], [[0.5, 1.0]])
    """

    def __init__(self, dim: int, device: torch.device) -> None:
        self.dim = dim
        self.device = device
        self.mid: torch.Tensor | None = None
        self.step: torch.Tensor | None = None

    @property
    def is_trained(self) -> bool:
        """Whether the ranges are known."""
        return self.mid is not None

    def train(self, x: torch.Tensor) -> None:
        """Learn each dimension's range from ``x`` (shape (n, dim), float, n ≥ 1)."""
        xf = x.float()
        lo, hi = xf.amin(dim=0), xf.amax(dim=0)
        self.set_state((lo + hi) / 2, ((hi - lo) / (2 * CODE_MAX)).clamp_(min=_MIN_STEP))

    def forget(self) -> None:
        """Back to untrained (a failed first ``add`` that learned the ranges undoes it)."""
        self.mid = self.step = None

    def set_state(self, mid: torch.Tensor, step: torch.Tensor) -> None:
        """Adopt learned ranges (``mid`` and ``step``, shape (dim,), float32)."""
        self.mid = mid.to(self.device, torch.float32).contiguous()
        self.step = step.to(self.device, torch.float32).contiguous()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """int8 codes of ``x`` (shape (n, dim)), clipped to the learned ranges."""
        codes = torch.round((x.float() - self.mid) / self.step)
        return codes.clamp_(-CODE_MAX, CODE_MAX).to(torch.int8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """float32 vectors of ``codes`` (shape (..., dim), int8)."""
        return self.mid + self.step * codes.float()

    def to(self, device: torch.device) -> ScalarQuantizer:
        """A copy on ``device``."""
        other = ScalarQuantizer(self.dim, device)
        if self.is_trained:
            other.set_state(self.mid, self.step)
        return other
