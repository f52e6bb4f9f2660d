"""The value every search returns."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["SearchResult"]


class SearchResult(NamedTuple):
    """Distances and ids of the ``k`` nearest neighbours of each query.

    A named tuple, so ``D, I = index.search(q, k)`` works as in faiss.

    Attributes
    ----------
    distances : torch.Tensor or numpy.ndarray, shape (Q, k), float32
        Squared Euclidean distance for ``"l2"`` (ascending), similarity for ``"ip"`` and
        ``"cosine"`` (descending). Missing results hold ``+inf`` (l2) or ``-inf`` (ip, cosine).
    ids : torch.Tensor or numpy.ndarray, shape (Q, k), int64
        Ids of the neighbours; ``-1`` where fewer than ``k`` results exist.
        Equal distances are ordered by lower id.

    Both are numpy arrays when the queries were numpy arrays, else torch tensors on the
    queries' device.
    """

    distances: Any
    ids: Any
