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
    """

    queries: torch.Tensor
    database: torch.Tensor
    k: int
    metric: Metric
    database_sqnorms: torch.Tensor | None
    column_scale: torch.Tensor | None
    memory_budget: int

    @property
    def device(self) -> torch.device:
        return self.database.device


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
