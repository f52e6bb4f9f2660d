"""Wall-clock timing that is honest on the GPU: synchronise before starting and stopping."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["synchronize", "time_call"]


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU).

    >>> synchronize("cpu")
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any],
    device: str | torch.device,
    *,
    repeats: int = 3,
    warmup: int = 1,
) -> tuple[float, Any]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones.

    The device is synchronised before the clock starts and before it stops, so queued GPU
    work is counted where it belongs.

    Parameters
    ----------
    fn : callable taking no arguments
    device : str or torch.device
        Where ``fn`` queues its work.
    repeats : int
        Timed runs (at least 1).
    warmup : int
        Untimed runs first (compilation, caches, allocator).

    Returns
    -------
    seconds : float
        The median.
    result : object
        What the last run returned.

    >>> seconds, value = time_call(lambda: sum(range(1000)), "cpu", repeats=3)
    >>> value, seconds >= 0
    (499500, True)
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected at least 1, got {repeats}")
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
