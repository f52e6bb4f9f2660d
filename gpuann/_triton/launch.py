"""One kernel launch described without tensors: :class:`KernelLaunch`.

The launchers (``gpuann._triton.knn``, ``gpuann._triton.topk``) plan each launch as a
:class:`KernelLaunch` (kernel, grid, runtime arguments with pointers as dtypes, constexprs,
``num_warps``/``num_stages``) and run it with :meth:`KernelLaunch.launch`; the ahead-of-time
checks (``gpuann._triton.aot``) compile the very same objects, keyed by
:meth:`KernelLaunch.compile_key`, so they check what the launchers run, not a copy of their
logic.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["KernelLaunch"]


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch, without tensors: what decides how the kernel compiles.

    Attributes
    ----------
    kernel : str
        ``"<module>:<function>"`` of a kernel in ``gpuann._kernels`` (e.g.
        ``"fused_knn:fused_knn_kernel"``).
    grid : tuple of int
    args : tuple of (name, value)
        The runtime (non-constexpr) arguments: ints and floats as passed, pointers as the
        ``torch.dtype`` of the tensor passed.
    constexprs : tuple of (name, value)
    num_warps, num_stages : int
    """

    kernel: str
    grid: tuple[int, ...]
    args: tuple[tuple[str, Any], ...]
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int
    num_stages: int

    @classmethod
    def make(
        cls,
        kernel: str,
        grid: Sequence[int],
        args: Mapping[str, Any],
        constexprs: Mapping[str, Any],
        num_warps: int,
        num_stages: int,
    ) -> KernelLaunch:
        """Build from mappings (kept in the given order)."""
        return cls(
            kernel,
            tuple(int(g) for g in grid),
            tuple(args.items()),
            tuple(constexprs.items()),
            int(num_warps),
            int(num_stages),
        )

    def kwargs(self) -> dict[str, Any]:
        """Scalar arguments, constexprs and launch options as keyword arguments of a launch."""
        out = {n: v for n, v in self.args if not isinstance(v, torch.dtype)}
        out.update(self.constexprs)
        out["num_warps"] = self.num_warps
        out["num_stages"] = self.num_stages
        return out

    def pointer_dtypes(self) -> dict[str, torch.dtype]:
        """Pointer arguments and the dtype of the tensor each receives."""
        return {n: v for n, v in self.args if isinstance(v, torch.dtype)}

    def launch(self, fn: Any, tensors: Mapping[str, torch.Tensor], **floats: float) -> None:
        """Launch ``fn`` (the jit function named by ``kernel``) with these tensors.

        ``floats`` replace float arguments of the plan (their values never specialise a
        compilation, so plans hold a placeholder).
        """
        expected = self.pointer_dtypes()
        if set(tensors) != set(expected):
            raise ValueError(f"{self.kernel}: tensors {sorted(tensors)} != {sorted(expected)}")
        for name, tensor in tensors.items():
            if tensor.dtype != expected[name]:
                raise ValueError(
                    f"{self.kernel}: {name} is {tensor.dtype}, planned {expected[name]}"
                )
        kwargs = self.kwargs()
        for name, value in floats.items():
            if not isinstance(kwargs.get(name), float):
                raise ValueError(f"{self.kernel}: {name} is not a float argument")
            kwargs[name] = float(value)
        fn[self.grid](**tensors, **kwargs)

    def compile_key(self) -> str:
        """What the compiled code depends on (the grid does not enter)."""
        args = [
            (n, str(v) if isinstance(v, torch.dtype) else _spec_of_int(v)) for n, v in self.args
        ]
        return json.dumps(
            [
                self.kernel,
                args,
                [list(c) for c in self.constexprs],
                self.num_warps,
                self.num_stages,
            ],
            default=str,
        )

    def label(self) -> str:
        """Short human-readable description: constexprs that are not flags, and options."""
        parts = [f"{n}={v}" for n, v in self.constexprs if not isinstance(v, bool)]
        flags = [n for n, v in self.constexprs if v is True]
        text = " ".join([*parts, f"w{self.num_warps}", f"s{self.num_stages}"])
        return text + (" [" + ",".join(flags) + "]" if flags else "")


def _spec_of_int(value: Any) -> str:
    """How triton's binder specialises a scalar: 1 → constexpr, %16 → 'D', width."""
    if isinstance(value, bool) or not isinstance(value, int):
        return repr(value)
    width = "i32" if -(2**31) <= value < 2**31 else "i64"
    if value == 1:
        return "one"
    return width + ("D" if value % 16 == 0 else "")
