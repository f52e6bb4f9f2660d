"""``batched_topk``: the k smallest (or largest) entries of each row, ties to the lower column.

On CUDA tensors it runs the Triton batched top-k kernel (``gpuann._triton.topk``) when triton
is installed; elsewhere (and for k beyond the kernel's ``MAX_K``) the tie-aware torch
selection of ``gpuann.topk``. Both give the same values and indices: among equal values the
lower column wins, and NaN ranks after every number whichever direction is asked (unlike
``torch.topk``, which treats NaN as the largest value).

The Triton path is the custom op ``gpuann::triton_topk`` (``torch.library.custom_op`` with a
fake implementation), so ``torch.compile(fullgraph=True)`` keeps it as one opaque node.
``custom_op`` rather than ``triton_op``/``wrap_triton``: the launcher is host code around two
kernels (tuning cache, split count, merge), and under the Triton interpreter ``wrap_triton``
returns the raw kernel, which breaks ``opcheck`` and ``torch.compile`` (see KERNELS.md); one
registration that works on CUDA and under the interpreter is the one CI can test. Inductor
then cannot fuse into the kernel, which costs nothing here: the op reads a whole matrix.
"""

from __future__ import annotations

import torch

from gpuann._triton import MAX_K, interpreter_enabled, triton_installed
from gpuann.topk import topk_lex

__all__ = ["batched_topk"]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "triton", "torch")


def _triton_topk_impl(x: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if k > MAX_K:
        return _torch_topk(x, k, largest)
    from gpuann._triton.topk import triton_topk

    return triton_topk(x, k, largest)


_triton_topk_op = torch.library.custom_op("gpuann::triton_topk", _triton_topk_impl, mutates_args=())


@_triton_topk_op.register_fake
def _triton_topk_fake(x, k, largest):
    shape = (x.shape[0], k)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


def _torch_topk(x: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _, indices = topk_lex(-x.float() if largest else x, k)
    return x.gather(1, indices), indices


def _triton_reasons(x: torch.Tensor) -> list[str]:
    """Why the Triton kernel cannot take ``x``; empty when it can."""
    reasons = []
    if not triton_installed():
        reasons.append("triton is not installed")
    if x.device.type == "cpu" and not interpreter_enabled():
        reasons.append("CPU tensors: only under TRITON_INTERPRET=1")
    elif x.device.type not in ("cpu", "cuda"):
        reasons.append(f"{x.device.type} tensors: Triton runs on CUDA tensors only")
    if x.dtype not in _TRITON_DTYPES:
        reasons.append(f"dtype {x.dtype}: expected float32, float16 or bfloat16")
    return reasons


def batched_topk(
    x: torch.Tensor, k: int, largest: bool = False, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest (or largest) entries of each row, best first, ties to the lower column.

    Parameters
    ----------
    x : torch.Tensor, shape (R, n) or (n,), floating
    k : int
        ``1 <= k <= n``.
    largest : bool
        Select the largest entries instead of the smallest. NaN always ranks last.
    backend : {"auto", "triton", "torch"}
        ``"auto"``: Triton for CUDA tensors when installed, torch otherwise. ``"triton"``
        forces the kernel (CUDA, or the CPU under ``TRITON_INTERPRET=1``) and raises with the
        reasons when it cannot run.

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
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= x.shape[-1]:
        raise ValueError(f"k: expected an int in [1, {x.shape[-1]}], got {k!r}")
    if x.ndim == 1:
        values, indices = batched_topk(x[None], k, largest, backend=backend)
        return values[0], indices[0]
    if backend == "auto":
        use_triton = x.device.type == "cuda" and not _triton_reasons(x)
    elif backend == "triton":
        reasons = _triton_reasons(x)
        if reasons:
            raise ValueError("backend='triton' cannot run this top-k: " + "; ".join(reasons))
        use_triton = True
    else:
        use_triton = False
    if not use_triton:
        return _torch_topk(x, k, largest)
    if torch.compiler.is_compiling():
        return _triton_topk_op(x, k, largest)
    # Eager calls skip the op's dispatcher (as gpuann.exact does): same code, no dynamo import.
    return _triton_topk_impl(x, k, largest)
