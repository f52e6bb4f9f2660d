"""``batched_topk``: the k smallest (or largest) entries of each row, ties to the lower column.

The backend is chosen by the dispatcher (op ``"batched_topk"``, see
:mod:`gpuann.backends.row_selection`): the Triton batched top-k kernel for CUDA tensors when
triton is installed and ``k`` is within the kernel's declared limit, the tie-aware torch
selection of :mod:`gpuann._tiebreak` otherwise. Both give the same values and indices: among
equal values the lower column wins, and NaN ranks after every number whichever direction is
asked (unlike ``torch.topk``, which treats NaN as the largest value).

The Triton path is the custom op ``gpuann::triton_topk`` (``torch.library.custom_op`` with a
fake implementation), so ``torch.compile(fullgraph=True)`` keeps it as one opaque node.
``custom_op`` rather than ``triton_op``/``wrap_triton``: the launcher is host code around two
kernels (tuning cache, split count, merge), and under the Triton interpreter ``wrap_triton``
returns the raw kernel, which breaks ``opcheck`` and ``torch.compile`` (see KERNELS.md); one
registration that works on CUDA and under the interpreter is the one CI can test. Inductor
then cannot fuse into the kernel, which costs nothing here: the op reads a whole matrix.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from gpuann.backends.dispatch import get_backend, select_backend
from gpuann.backends.row_selection import RowSelectionRequest

__all__ = ["batched_topk"]


def _triton_topk_impl(x: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return get_backend("triton", "batched_topk").search(RowSelectionRequest(x, k, largest))


_triton_topk_op = torch.library.custom_op("gpuann::triton_topk", _triton_topk_impl, mutates_args=())


@_triton_topk_op.register_fake
def _triton_topk_fake(x, k, largest):
    shape = (x.shape[0], k)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


def _check_k(k: Any, n: int) -> int:
    """``k`` as a Python int in ``[1, n]``: any integer (numpy's too), never a bool or a float."""
    if isinstance(k, bool):
        raise TypeError(f"k: expected an int in [1, {n}], got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k: expected an int in [1, {n}], got {type(k).__name__} {k!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"k: expected an int in [1, {n}], got {k}")
    return k


def batched_topk(
    x: torch.Tensor, k: int, largest: bool = False, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest (or largest) entries of each row, best first, ties to the lower column.

    Parameters
    ----------
    x : torch.Tensor, shape (R, n) or (n,), floating
    k : int
        ``1 <= k <= n``; any integer type (numpy integers too).
    largest : bool
        Select the largest entries instead of the smallest. NaN always ranks last.
    backend : {"auto", "triton", "torch"}
        ``"auto"``: the first registered backend that can run (Triton for CUDA tensors when
        installed and ``k`` is within its limit, torch otherwise). A forced backend that
        cannot run raises :class:`~gpuann.BackendUnavailableError` with the reasons.

    Returns
    -------
    values : torch.Tensor, shape (R, k) or (k,), ``x.dtype``
    indices : torch.Tensor, shape (R, k) or (k,), int64

    Examples
    --------
    >>> batched_topk(torch.tensor([[3.0, 1.0, 1.0, float("nan"), 0.0]]), 3, backend="torch")
    (tensor([[0., 1., 1.]]), tensor([[4, 1, 2]]))
    >>> batched_topk(torch.tensor([2.0, float("nan"), 5.0, 5.0]), 2, largest=True, backend="torch")
    (tensor([5., 5.]), tensor([2, 3]))
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (1, 2):
        raise TypeError("x: expected a floating (R, n) or (n,) torch.Tensor")
    k = _check_k(k, x.shape[-1])
    if x.ndim == 1:
        values, indices = batched_topk(x[None], k, largest, backend=backend)
        return values[0], indices[0]
    request = RowSelectionRequest(x, k, largest)
    chosen = select_backend(request, backend)
    if chosen.name != "triton":
        return chosen.search(request)
    if torch.compiler.is_compiling():
        return _triton_topk_op(x, k, largest)
    # Eager calls skip the op's dispatcher (as gpuann.exact does): same code, no dynamo import.
    return _triton_topk_impl(x, k, largest)
