"""Id filters of an IVF search (``allow_ids``, ``exclude_ids``) as the faiss labels they hide.

faiss's labels are the stored user ids, so a filter is the set of stored ids a search may
return (``allowed``; faiss applies it as an id selector on the CPU) and, per query, the ids it
must not (``excluded``; faiss selectors are per search, so those are over-fetched and dropped).
Validation is :meth:`gpuann.FlatIndex.search`'s (:mod:`gpuann.filters`): ids not in the index
are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gpuann.filters import as_allow_ids, as_exclude_ids, lookup_rows, row_mask

__all__ = ["LabelFilter", "label_filter"]


@dataclasses.dataclass(frozen=True)
class LabelFilter:
    """Which live faiss labels a search may return (built by the IVF index's ``search``).

    Attributes
    ----------
    allowed : torch.Tensor or None, shape (a,), int64, ascending, unique, on the device
        The only stored ids that may be returned (None: every one); never empty (an empty
        allow set is answered without searching).
    hidden : int
        Stored ids outside ``allowed`` (0 when ``allowed`` is None): what a search without a
        selector must over-fetch.
    excluded : torch.Tensor or None, shape (Q, m), int64, ``m >= 1``
        Per query, ids never returned; ``-1`` pads (ids not stored match nothing).
    """

    allowed: torch.Tensor | None = None
    hidden: int = 0
    excluded: torch.Tensor | None = None

    @property
    def width(self) -> int:
        """Exclusions per query (``m``), what every search over-fetches for them."""
        return 0 if self.excluded is None else self.excluded.shape[1]

    def for_queries(self, queries: slice | torch.Tensor) -> LabelFilter:
        """The filter of the queries ``queries`` (a slice or row numbers) alone."""
        if self.excluded is None:
            return self
        return dataclasses.replace(self, excluded=self.excluded[queries])

    def dropped(self, labels: torch.Tensor, selected: bool) -> torch.Tensor | None:
        """Bool like ``labels`` (Q, w): entries this filter removes (None: none). With
        ``selected``, faiss applied ``allowed`` already."""
        drop = None
        if self.allowed is not None and not selected:
            allowed = self.allowed
            pos = torch.searchsorted(allowed, labels).clamp_(max=allowed.numel() - 1)
            drop = allowed[pos] != labels
        if self.excluded is not None:
            excluded = self.excluded.sort(dim=1).values
            pos = torch.searchsorted(excluded, labels).clamp_(max=excluded.shape[1] - 1)
            hit = excluded.gather(1, pos) == labels
            drop = hit if drop is None else drop | hit
        return drop


def label_filter(
    stored_ids: torch.Tensor,
    exclude_ids: Any,
    allow_ids: Any,
    n_queries: int,
    device: torch.device,
) -> LabelFilter | None:
    """The validated filters of a search of ``n_queries`` over ``stored_ids`` (ascending,
    int64), None when they filter nothing.

    >>> f = label_filter(torch.arange(5), None, torch.tensor([1, 3, 9]), 2, torch.device("cpu"))
    >>> f.allowed.tolist(), f.hidden
    ([1, 3], 3)
    """
    excluded = allowed = None
    hidden = 0
    if exclude_ids is not None:
        excluded = as_exclude_ids(exclude_ids, n_queries, device)
        if excluded.shape[1] == 0:
            excluded = None
    if allow_ids is not None:
        ids = as_allow_ids(allow_ids, device)
        mask = row_mask(lookup_rows(stored_ids, ids), stored_ids.shape[0])
        allowed = stored_ids[mask]  # ascending and unique, as the store
        hidden = stored_ids.shape[0] - allowed.shape[0]
        if hidden == 0:
            allowed = None  # every stored id is allowed: nothing to filter
    if excluded is None and allowed is None and hidden == 0:
        return None
    return LabelFilter(allowed=allowed, hidden=hidden, excluded=excluded)
