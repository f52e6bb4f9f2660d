"""Batched row-selection backends (``batched_topk``): the Triton kernel and the torch path.

Both give the same values and indices: the ``k`` smallest (or largest) entries of each row,
ties to the lower column, NaN after every number whichever direction is asked.

- ``"triton"``: the batched top-k kernel (``gpuann._triton.topk``), for CUDA tensors (CPU
  tensors only under ``TRITON_INTERPRET=1``); ``k`` at most :attr:`TritonRowSelection.max_k`.
- ``"torch"``: the tie-aware torch selection of :mod:`gpuann._tiebreak`, any ``k``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from gpuann._tiebreak import topk_lex
from gpuann._triton import TOPK_MAX_K
from gpuann._validate import STORAGE_DTYPES
from gpuann.backends.base import Backend, triton_runtime_reasons
from gpuann.backends.dispatch import register_backend, register_request

__all__ = ["RowSelectionRequest", "TorchRowSelection", "TritonRowSelection"]


@dataclasses.dataclass(frozen=True)
class RowSelectionRequest:
    """Select the ``k`` best entries of every row of ``x``.

    Attributes
    ----------
    x : torch.Tensor, shape (R, n), floating
    k : int
        ``1 <= k <= n``.
    largest : bool
    """

    op: ClassVar[str] = "batched_topk"
    filtered: ClassVar[bool] = False

    x: torch.Tensor
    k: int
    largest: bool = False

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype


class TritonRowSelection(Backend):
    """The Triton batched top-k kernel (lists in registers, merged across column splits)."""

    priority: ClassVar[int] = 10
    name: ClassVar[str] = "triton"
    op: ClassVar[str] = "batched_topk"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = STORAGE_DTYPES
    max_k: ClassVar[int] = TOPK_MAX_K
    auto_on_cpu: ClassVar[bool] = False

    def extra_reasons(self, request: RowSelectionRequest) -> list[str]:
        return triton_runtime_reasons(request.device)

    def search(self, request: RowSelectionRequest) -> tuple[torch.Tensor, torch.Tensor]:
        from gpuann._triton.topk import triton_topk

        return triton_topk(request.x, request.k, request.largest)


class TorchRowSelection(Backend):
    """Tie-aware torch selection (packed keys where ties could cross the k-th place)."""

    priority: ClassVar[int] = 100
    name: ClassVar[str] = "torch"
    op: ClassVar[str] = "batched_topk"
    device_types: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "mps", "xpu")

    def search(self, request: RowSelectionRequest) -> tuple[torch.Tensor, torch.Tensor]:
        x = request.x
        _, indices = topk_lex(-x.float() if request.largest else x, request.k)
        return x.gather(1, indices), indices


def _request(x: torch.Tensor, k: int, largest: bool = False) -> RowSelectionRequest:
    """The request :func:`gpuann.batched_topk` would make (for ``explain``)."""
    return RowSelectionRequest(x, k, largest)


register_backend("batched_topk", TritonRowSelection())
register_backend("batched_topk", TorchRowSelection())
register_request("batched_topk", _request)
