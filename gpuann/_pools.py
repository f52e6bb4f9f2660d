"""Small, long-lived thread pools for CPU work split across threads (products, heaps, scans).

One pool per (name, worker count), created on first use and kept: the workers of CPU searches
are reused from call to call. A forked child starts with none (the parent's threads do not
exist there).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["worker_pool"]

_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pools.clear)


def worker_pool(
    name: str, workers: int, initializer: Callable[[], None] | None = None
) -> ThreadPoolExecutor:
    """The pool ``name`` of ``workers`` threads (named ``gpuann-<name>_<i>``).

    ``initializer`` runs once in each worker (for per-thread settings); a pool's name fixes it.

    >>> worker_pool("doctest", 1).submit(lambda: 2 + 2).result()
    4
    """
    key = (name, workers)
    with _lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(
                workers, thread_name_prefix=f"gpuann-{name}", initializer=initializer
            )
        return _pools[key]
