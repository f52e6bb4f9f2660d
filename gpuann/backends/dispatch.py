"""The one dispatcher: backends register per op, and the first that supports a request runs it.

Each op (``"exact_search"``, ``"hamming_search"``, ``"batched_topk"``) has a list ordered by
each backend's declared ``priority`` (fastest first), filled by :func:`register_backend`: the
backend modules of :mod:`gpuann.backends` register theirs when the package is imported, and a
new backend registers the same way, from anywhere. :func:`select_backend` walks that list:

- ``backend="auto"`` takes the first backend with no reason against the request, passing over
  those that run CPU tensors only through an emulator (``auto_on_cpu = False``);
- a forced ``backend="name"`` that cannot run raises :class:`BackendUnavailableError` with its
  reasons; ``"auto"`` that finds nothing raises listing every backend and its reasons.

:func:`explain` writes the same walk as a report: which backend was chosen and why each other
one was passed over (a ``k`` above a kernel's limit, a dtype, a device, a missing install).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuann.backends.base import Backend, Request

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "explain",
    "get_backend",
    "register_backend",
    "register_request",
    "registered_backends",
    "select_backend",
]

_backends: dict[str, list[Backend]] = {}
_request_builders: dict[str, Callable[..., Request]] = {}


class BackendUnavailableError(ValueError):
    """No backend (or not the one asked for) can run a request; the message says why."""


def register_backend(op: str, backend: Backend) -> Backend:
    """Add ``backend`` to ``op``'s list, ordered by ``backend.priority`` (lower first; equal
    priorities in registration order).

    A backend of the same name already registered for ``op`` is replaced.
    """
    entries = [b for b in _backends.get(op, []) if b.name != backend.name]
    entries.append(backend)
    entries.sort(key=lambda b: b.priority)  # stable
    _backends[op] = entries
    return backend


def register_request(op: str, build: Callable[..., Request]) -> None:
    """Say how :func:`explain` turns user-level arguments into a request of ``op``."""
    _request_builders[op] = build


def registered_backends(op: str = "exact_search") -> list[Backend]:
    """``op``'s backends in priority order."""
    if op not in _backends:
        raise ValueError(f"op: expected one of {sorted(_backends)}, got {op!r}")
    return list(_backends[op])


def available_backends(op: str = "exact_search") -> list[str]:
    """Names accepted by ``backend=`` for ``op``, in priority order.

    >>> available_backends()
    ['triton', 'torch']
    """
    return [b.name for b in registered_backends(op)]


def get_backend(name: str, op: str = "exact_search") -> Backend:
    """``op``'s backend called ``name``."""
    for candidate in registered_backends(op):
        if candidate.name == name:
            return candidate
    choices = ", ".join(repr(n) for n in ["auto", *available_backends(op)])
    raise ValueError(f"backend: expected one of {choices}, got {name!r}")


def _walk(request: Request, backend: str) -> tuple[Backend | None, list[tuple[str, list[str]]]]:
    """The chosen backend (None if none) and ``(name, reasons)`` for every backend looked at."""
    op = type(request).op
    if backend != "auto":
        chosen = get_backend(backend, op)
        reasons = chosen.not_supported_reasons(request)
        return (None if reasons else chosen), [(chosen.name, reasons)]
    report = []
    for candidate in registered_backends(op):
        if request.device.type == "cpu" and not candidate.auto_on_cpu:
            report.append(
                (
                    candidate.name,
                    [
                        "not picked automatically for CPU tensors (emulated there, far slower "
                        f"than torch); pass backend={candidate.name!r} to force it"
                    ],
                )
            )
            continue
        reasons = candidate.not_supported_reasons(request)
        report.append((candidate.name, reasons))
        if not reasons:
            return candidate, report
    return None, report


def select_backend(request: Request, backend: str = "auto") -> Backend:
    """The backend to run ``request`` (its op is ``type(request).op``).

    ``backend`` names one (raises :class:`BackendUnavailableError` with the reasons when it
    cannot run), or ``"auto"``: the first in priority order that can.
    """
    chosen, report = _walk(request, backend)
    if chosen is not None:
        return chosen
    if backend != "auto":
        raise BackendUnavailableError(
            f"backend={backend!r} cannot run this search: " + "; ".join(report[0][1])
        )
    lines = [f"  {name}: " + "; ".join(reasons) for name, reasons in report]
    raise BackendUnavailableError("no backend can run this search:\n" + "\n".join(lines))


def explain(op: str, *args: Any, backend: str = "auto", **kwargs: Any) -> str:
    """A readable report of which backend would run a request, and why the others would not.

    Parameters
    ----------
    op : {"exact_search", "hamming_search", "batched_topk"}
    *args, **kwargs
        The op's arguments, as its public function takes them (``knn(queries, database, k,
        metric, ...)``, ``hamming_topk(queries, database, k)``, ``batched_topk(x, k)``), or a
        single ready request object.
    backend : str
        ``"auto"`` or a backend's name (the report then says whether it can run).

    Returns
    -------
    str
        One line per backend: ``chosen``, ``passed over: <reasons>`` or ``not reached``.

    Examples
    --------
    >>> import torch
    >>> print(explain("batched_topk", torch.zeros(2, 5000), 3000))
    batched_topk on cpu, dtype float32, k=3000:
      triton: passed over: not picked automatically for CPU tensors (emulated there, far slower than torch); pass backend='triton' to force it
      torch: chosen
    """  # noqa: E501
    if len(args) == 1 and not kwargs and hasattr(type(args[0]), "op"):
        request = args[0]
    else:
        if op not in _request_builders:
            raise ValueError(f"op: expected one of {sorted(_request_builders)}, got {op!r}")
        request = _request_builders[op](*args, **kwargs)
    chosen, report = _walk(request, backend)
    seen = dict(report)
    dtype = str(request.dtype).removeprefix("torch.")
    lines = [f"{op} on {request.device.type}, dtype {dtype}, k={request.k}:"]
    names = [backend] if backend != "auto" else available_backends(op)
    for name in names:
        if chosen is not None and name == chosen.name:
            lines.append(f"  {name}: chosen")
        elif name in seen:
            lines.append(f"  {name}: passed over: " + "; ".join(seen[name]))
        else:
            lines.append(f"  {name}: not reached (an earlier backend was chosen)")
    if chosen is None:
        lines.append("  -> no backend can run it")
    return "\n".join(lines)
