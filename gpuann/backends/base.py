"""What a backend is: the support it declares, and the exact-search request it receives.

Every op gpuann dispatches (exact search, Hamming search, batched top-k) has backends that
subclass :class:`Backend` and declare, as class attributes, what they can run: device types,
dtypes, the largest ``k`` of their kernel, whether they apply filters, whether ``"auto"`` may
pick them for CPU tensors. :meth:`Backend.not_supported_reasons` turns that declaration (plus
any :meth:`Backend.extra_reasons`) into sentences, which the dispatcher shows when it passes a
backend over (see :mod:`gpuann.backends.dispatch`). A request is any object with ``device``,
``dtype``, ``k`` and ``filtered`` (see :class:`Request`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Protocol

import torch

from gpuann.engine.eligibility import RowFilters
from gpuann.metrics import Metric

__all__ = [
    "Backend",
    "DatabaseRequest",
    "ExactBackend",
    "Request",
    "SearchRequest",
    "triton_runtime_reasons",
]


class Request(Protocol):
    """What the generic support checks read from a request of any op."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def k(self) -> int: ...

    @property
    def filtered(self) -> bool: ...


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def triton_runtime_reasons(device: torch.device) -> list[str]:
    """Why Triton kernels cannot run on ``device`` at all (empty when they can).

    CPU tensors run only under the Triton interpreter, a test tool (``TRITON_INTERPRET=1``).
    """
    from gpuann._env import interpreter_enabled
    from gpuann._triton import triton_installed

    reasons = []
    if not triton_installed():
        reasons.append("triton is not installed (pip install 'gpuann[gpu]')")
    if device.type == "cpu" and not interpreter_enabled():
        reasons.append(
            "CPU tensors: only under TRITON_INTERPRET=1 (the Triton interpreter, set before "
            "triton is imported; for tests)"
        )
    return reasons


class Backend(abc.ABC):
    """A way to run one op; subclasses declare what they support and say why not.

    Class attributes
    ----------------
    name : str
        Used by ``backend=`` arguments.
    op : str
        The op it runs (``"exact_search"``, ``"hamming_search"``, ``"batched_topk"``).
    device_types : tuple of str
        Device types it runs on.
    dtypes : tuple of torch.dtype or None
        The data dtypes it accepts (None: any).
    max_k : int or None
        The largest ``k`` its kernel selects (None: no limit).
    supports_filters : bool
        Whether it applies row filters (excluded rows, allow-lists, labels).
    auto_on_cpu : bool
        Whether ``backend="auto"`` may pick it for CPU tensors (a backend that runs there only
        through an emulator, like Triton's interpreter, says False).
    priority : int
        Place in the op's list, lower first (fused kernels 10, the torch fallbacks 100).
    """

    name: ClassVar[str]
    op: ClassVar[str]
    device_types: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    dtypes: ClassVar[tuple[torch.dtype, ...] | None] = None
    max_k: ClassVar[int | None] = None
    supports_filters: ClassVar[bool] = True
    auto_on_cpu: ClassVar[bool] = True
    priority: ClassVar[int] = 50

    def not_supported_reasons(self, request: Request) -> list[str]:
        """Why this backend cannot run ``request``; empty when it can."""
        reasons = []
        device = request.device
        if device.type not in self.device_types:
            reasons.append(
                f"{device.type} tensors: runs on {'/'.join(self.device_types)} tensors only"
            )
        if self.dtypes is not None and request.dtype not in self.dtypes:
            reasons.append(f"dtype {request.dtype}: expected {_dtype_names(self.dtypes)}")
        if self.max_k is not None and request.k > self.max_k:
            reasons.append(f"k={request.k} is above the kernel's limit of {self.max_k}")
        if request.filtered and not self.supports_filters:
            reasons.append("filters (excluded/allowed rows, labels) are not supported")
        return reasons + self.extra_reasons(request)

    def extra_reasons(self, request: Request) -> list[str]:
        """Reasons beyond the declared support (installation, compute capability…)."""
        return []

    @abc.abstractmethod
    def search(self, request):
        """Run ``request`` (each op's base class states the result's contract)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.op}:{self.name}>"


class DatabaseRequest:
    """Base of the requests that search a ``database`` tensor: its device and dtype are theirs.

    Subclasses are dataclasses with a ``database`` field.
    """

    database: torch.Tensor

    @property
    def device(self) -> torch.device:
        """The database's device (where the search runs)."""
        return self.database.device

    @property
    def dtype(self) -> torch.dtype:
        """The database's storage dtype."""
        return self.database.dtype


@dataclasses.dataclass(frozen=True)
class SearchRequest(DatabaseRequest, RowFilters):
    """One exact k-nearest-neighbour search, already validated.

    Attributes
    ----------
    queries : torch.Tensor, shape (Q, d), floating, on ``database.device``
        For cosine, already normalised.
    database : torch.Tensor, shape (N, d), float32 / float16 / bfloat16, or int8 codes
    k : int
        Results per query (may exceed N: the rest is padded).
    metric : Metric
        ``L2`` or ``IP``. Cosine arrives as ``IP`` with ``column_scale`` (or pre-normalised rows).
    database_sqnorms : torch.Tensor or None, shape (N,), float32
        Squared norms of the database rows: L2 scores add them (computed per tile when
        ``None``); inner-product searches may pass them too, which only the CPU's verified
        passes read (their bound on every row's norm).
    column_scale : torch.Tensor or None, shape (N,), float32
        Multiplies each row's inner product (``1 / ‖x‖`` for a cosine search over raw rows).
    memory_budget : int
        Bytes of working memory the search may use.
    query_scale : torch.Tensor or None, shape (Q,), float32
        int8 storage only: ``queries`` are int8 too, and each query's exact integer dots are
        multiplied by this power of two (scores ``‖x‖² − 2·s·⟨q, c⟩`` or ``−s·⟨q, c⟩``, with
        ``database_sqnorms`` required for L2).
    excluded_rows, allowed_rows, row_labels, query_labels, row_rank : torch.Tensor or None
        The row filters and tie order, keyword-only (the fields of
        :class:`~gpuann.engine.eligibility.RowFilters`, whose ``filtered`` and
        :meth:`~gpuann.engine.eligibility.RowFilters.row_filters` a request has too).

    Filters are applied inside the search: an ineligible row is never returned, and a query
    with fewer than ``k`` eligible rows gets ``-1`` (with ±inf) in the remaining places.
    """

    op: ClassVar[str] = "exact_search"

    queries: torch.Tensor
    database: torch.Tensor
    k: int
    metric: Metric
    database_sqnorms: torch.Tensor | None
    column_scale: torch.Tensor | None
    memory_budget: int
    query_scale: torch.Tensor | None = None


class ExactBackend(Backend):
    """An exact-search backend.

    ``search`` returns ``(distances, positions)``: float32 ``(Q, k)`` metric values (squared
    L2, or inner product) sorted nearest first with ties broken by lower position (or
    ``row_rank``), and int64 ``(Q, k)`` row positions in ``database``, ``-1`` (with ±inf)
    where fewer than ``k`` exist.
    """

    op: ClassVar[str] = "exact_search"

    def not_supported_reasons(self, request: SearchRequest) -> list[str]:
        return super().not_supported_reasons(request)

    @abc.abstractmethod
    def search(self, request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the search (see the class docstring for the result's contract)."""
