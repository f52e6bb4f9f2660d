"""The ids an IVF index holds, sorted, with their full-precision vectors when it keeps them.

faiss stores the user's int64 ids itself (``add_with_ids``, on CPU and GPU), but cannot tell
whether an id is present without a search. gpuann keeps the ids sorted on the index device to
reject duplicates, check ``remove``/``reconstruct`` arguments, and (for re-ranking) find each
candidate's exact vector by binary search. Stores are immutable: every change builds a new one,
so a failed call can leave the index exactly as it was.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["IdStore"]


@dataclasses.dataclass(frozen=True)
class IdStore:
    """Sorted ids and, optionally, the vectors aligned with them.

    Attributes
    ----------
    ids : torch.Tensor, shape (n,), int64, strictly ascending
    vectors : torch.Tensor or None, shape (n, dim), float32
        Row ``i`` is the vector of ``ids[i]`` (normalised for cosine).
    sqnorms : torch.Tensor or None, shape (n,), float32
        Squared norms of ``vectors``.
    """

    ids: torch.Tensor
    vectors: torch.Tensor | None = None
    sqnorms: torch.Tensor | None = None
    #: ``ids[0]`` when the ids are consecutive (the usual case: automatic ids), else None; then
    #: an id's row is ``id - ids[0]``, with no binary search.
    dense_start: int | None = dataclasses.field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        if n and int(self.ids[-1]) - int(self.ids[0]) == n - 1:
            object.__setattr__(self, "dense_start", int(self.ids[0]))

    @classmethod
    def empty(cls, dim: int, device: torch.device, keep_vectors: bool) -> IdStore:
        ids = torch.empty(0, dtype=torch.int64, device=device)
        if not keep_vectors:
            return cls(ids)
        return cls(ids, torch.empty((0, dim), device=device), torch.empty(0, device=device))

    def __len__(self) -> int:
        return self.ids.shape[0]

    def positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``ids`` (clamped into range) and whether each id is present."""
        n = len(self)
        if n == 0:
            return torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        if self.dense_start is not None:
            pos = ids - self.dense_start
            found = (pos >= 0) & (pos < n)
            return pos.clamp_(0, n - 1), found
        pos = torch.searchsorted(self.ids, ids).clamp_(max=n - 1)
        return pos, self.ids[pos] == ids

    def require(self, ids: torch.Tensor, name: str = "ids") -> torch.Tensor:
        """Rows of ``ids``; raises ``ValueError`` naming ``name`` if any id is absent."""
        pos, found = self.positions(ids)
        if not bool(found.all()):
            missing = ids[~found]
            more = "…" if missing.numel() > 10 else ""
            raise ValueError(
                f"{name}: {missing.numel()} id(s) not in the index: {missing[:10].tolist()}{more}"
            )
        return pos

    def with_added(self, ids: torch.Tensor, vectors: torch.Tensor | None) -> IdStore:
        """A store that also holds ``ids`` (unique, none present) and their ``vectors``."""
        order = torch.argsort(ids)
        ids = ids[order]
        n, m = len(self), ids.shape[0]
        old_rows = torch.arange(n, device=ids.device) + torch.searchsorted(ids, self.ids)
        new_rows = torch.arange(m, device=ids.device) + torch.searchsorted(self.ids, ids)
        merged = torch.empty(n + m, dtype=torch.int64, device=ids.device)
        merged[old_rows], merged[new_rows] = self.ids, ids
        if self.vectors is None:
            return IdStore(merged)
        vectors = vectors[order].float()
        data = torch.empty((n + m, self.vectors.shape[1]), device=ids.device)
        data[old_rows], data[new_rows] = self.vectors, vectors
        norms = torch.empty(n + m, device=ids.device)
        norms[old_rows], norms[new_rows] = self.sqnorms, (vectors * vectors).sum(dim=1)
        return IdStore(merged, data, norms)

    def without(self, rows: torch.Tensor) -> IdStore:
        """A store without the given rows."""
        keep = torch.ones(len(self), dtype=torch.bool, device=self.ids.device)
        keep[rows] = False
        if self.vectors is None:
            return IdStore(self.ids[keep])
        return IdStore(self.ids[keep], self.vectors[keep], self.sqnorms[keep])

    def to(self, device: torch.device) -> IdStore:
        """This store on ``device``."""
        if self.vectors is None:
            return IdStore(self.ids.to(device))
        return IdStore(self.ids.to(device), self.vectors.to(device), self.sqnorms.to(device))
