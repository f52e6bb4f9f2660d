"""Distance metrics and their conventions (order, sentinel for missing results)."""

from __future__ import annotations

import enum

import torch

__all__ = ["Metric", "as_metric", "squared_norms"]


class Metric(str, enum.Enum):
    """A similarity metric.

    ``L2`` is the squared Euclidean distance (smaller is nearer, as in faiss); ``IP`` the inner
    product and ``COSINE`` the cosine similarity (larger is nearer).

    >>> Metric("l2").descending, Metric.IP.missing_distance
    (False, -inf)
    """

    L2 = "l2"
    IP = "ip"
    COSINE = "cosine"

    @property
    def descending(self) -> bool:
        """True when larger values mean nearer neighbours."""
        return self is not Metric.L2

    @property
    def scoring(self) -> Metric:
        """What the exact engine scores with: ``L2``, or ``IP`` for ``IP`` and ``COSINE``
        (cosine vectors are normalised on the way in).

        >>> Metric.COSINE.scoring
        <Metric.IP: 'ip'>
        """
        return Metric.L2 if self is Metric.L2 else Metric.IP

    @property
    def missing_distance(self) -> float:
        """The distance reported next to id ``-1`` for a missing result."""
        return float("-inf") if self.descending else float("inf")

    def __str__(self) -> str:
        return self.value


def as_metric(metric: str | Metric) -> Metric:
    """Parse ``metric`` (``"l2"``, ``"ip"``, ``"cosine"`` or a :class:`Metric`).

    >>> as_metric("cosine")
    <Metric.COSINE: 'cosine'>
    """
    if isinstance(metric, Metric):
        return metric
    aliases = {"l2": "l2", "euclidean": "l2", "ip": "ip", "inner_product": "ip", "dot": "ip"}
    key = aliases.get(str(metric).lower(), str(metric).lower())
    try:
        return Metric(key)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in Metric)
        raise ValueError(f"metric: expected one of {choices}, got {metric!r}") from None


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row of ``x``, accumulated in float32 (an l2 index's ``sqnorms``).

    >>> squared_norms(torch.tensor([[3.0, 4.0]], dtype=torch.float16))
    tensor([25.])
    """
    xf = x.float().contiguous()  # a strided input sums rows in other orders (found by review)
    return (xf * xf).sum(dim=1)
