"""What an exact-search backend is: the request it receives and what it must say about it."""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import torch

from gpuann.metrics import Metric

__all__ = ["ExactBackend", "SearchRequest"]


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    """One exact k-nearest-neighbour search, already validated.

    Attributes
    ----------
    queries : torch.Tensor, shape (Q, d), floating, on ``database.device``
        For cosine, already normalised.
    database : torch.Tensor, shape (N, d), float32 / float16 / bfloat16
    k : int
        Results per query (may exceed N: the rest is padded).
    metric : Metric
        ``L2`` or ``IP``. Cosine arrives as ``IP`` with ``column_scale`` (or pre-normalised rows).
    database_sqnorms : torch.Tensor or None, shape (N,), float32
        Squared norms of the database rows (L2 only); computed per tile when ``None``.
    column_scale : torch.Tensor or None, shape (N,), float32
        Multiplies each row's inner product (``1 / ‖x‖`` for a cosine search over raw rows).
    memory_budget : int
        Bytes of working memory the search may use.
    excluded_rows : torch.Tensor or None, shape (Q, m), int64
        Per query, row positions that must not be returned; ``-1`` pads (any order, repeats
        allowed).
    allowed_rows : torch.Tensor or None, shape (N,), bool
        Only rows marked True may be returned (an allow-list, or the occupied slots of a
        fixed-size buffer).
    row_labels, query_labels : torch.Tensor or None, shapes (N,) and (Q,), int64
        Given together: a row is not returned for a query with the same label. Negative
        labels mean "no label" and never match.
    row_rank : torch.Tensor or None, shape (N,), int64
        Tie-break order of the rows: among equal scores the lower rank wins. A permutation of
        ``range(N)``. Default: the row itself (lower row wins).

    Filters are applied inside the search: an ineligible row is never returned, and a query
    with fewer than ``k`` eligible rows gets ``-1`` (with ±inf) in the remaining places.
    """

    queries: torch.Tensor
    database: torch.Tensor
    k: int
    metric: Metric
    database_sqnorms: torch.Tensor | None
    column_scale: torch.Tensor | None
    memory_budget: int
    excluded_rows: torch.Tensor | None = None
    allowed_rows: torch.Tensor | None = None
    row_labels: torch.Tensor | None = None
    query_labels: torch.Tensor | None = None
    row_rank: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.database.device

    @property
    def filtered(self) -> bool:
        """True when some rows may be ineligible (any filter is set)."""
        return (
            self.excluded_rows is not None
            or self.allowed_rows is not None
            or (self.row_labels is not None and self.query_labels is not None)
        )


class ExactBackend(abc.ABC):
    """A way to run exact search. Subclasses say what they support and why not.

    ``search`` returns ``(distances, positions)``: float32 ``(Q, k)`` metric values (squared
    L2, or inner product) sorted nearest first with ties broken by lower position, and int64
    ``(Q, k)`` row positions in ``database``, ``-1`` (with ±inf) where fewer than ``k`` exist.
    """

    #: Name used by ``backend=`` arguments.
    name: ClassVar[str]
    #: Whether ``backend="auto"`` may pick this backend for CPU tensors (the Triton backend
    #: runs on CPU only under the interpreter, which is far too slow to be chosen by default).
    auto_on_cpu: ClassVar[bool] = True

    @abc.abstractmethod
    def not_supported_reasons(self, request: SearchRequest) -> list[str]:
        """Why this backend cannot run ``request``; empty when it can."""

    @abc.abstractmethod
    def search(self, request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the search (see the class docstring for the result's contract)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
