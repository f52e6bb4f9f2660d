"""Choosing an exact-search backend: the first in priority order that supports the request.

A forced choice (``backend="triton"``) that cannot run raises with the reasons; ``"auto"``
that finds nothing raises listing every backend and its reasons.

A backend may run CPU tensors only through an emulator (Triton's interpreter, for tests): it
declares ``auto_on_cpu = False``, and ``"auto"`` then skips it for CPU tensors while
``backend="triton"`` can still force it.
"""

from __future__ import annotations

import importlib

from gpuann.backends.base import ExactBackend, SearchRequest

__all__ = ["BackendUnavailableError", "available_backends", "get_backend", "select_backend"]

#: Priority order, fastest first, as (name, module, class). Modules are imported on first use.
_REGISTRY: tuple[tuple[str, str, str], ...] = (
    ("triton", "gpuann.backends.triton_backend", "TritonBackend"),
    ("torch", "gpuann.backends.torch_backend", "TorchBackend"),
)
_instances: dict[str, ExactBackend] = {}


class BackendUnavailableError(ValueError):
    """No backend (or not the one asked for) can run a search."""


def available_backends() -> list[str]:
    """Names accepted by ``backend=``, in priority order.

    >>> available_backends()
    ['triton', 'torch']
    """
    return [name for name, _, _ in _REGISTRY]


def get_backend(name: str) -> ExactBackend:
    """The backend instance called ``name``."""
    if name not in _instances:
        for entry_name, module, cls in _REGISTRY:
            if entry_name == name:
                _instances[name] = getattr(importlib.import_module(module), cls)()
                break
        else:
            choices = ", ".join(repr(n) for n in ["auto", *available_backends()])
            raise ValueError(f"backend: expected one of {choices}, got {name!r}")
    return _instances[name]


def select_backend(request: SearchRequest, backend: str = "auto") -> ExactBackend:
    """The backend to run ``request``: ``backend`` if given, else the first that supports it."""
    if backend != "auto":
        chosen = get_backend(backend)
        reasons = chosen.not_supported_reasons(request)
        if reasons:
            raise BackendUnavailableError(
                f"backend={backend!r} cannot run this search: " + "; ".join(reasons)
            )
        return chosen
    report = []
    for name in available_backends():
        candidate = get_backend(name)
        if request.device.type == "cpu" and not candidate.auto_on_cpu:
            report.append(
                f"  {name}: not picked automatically for CPU tensors (emulated there, far "
                f"slower than torch); pass backend={name!r} to force it"
            )
            continue
        reasons = candidate.not_supported_reasons(request)
        if not reasons:
            return candidate
        report.append(f"  {name}: " + "; ".join(reasons))
    raise BackendUnavailableError("no backend can run this search:\n" + "\n".join(report))
