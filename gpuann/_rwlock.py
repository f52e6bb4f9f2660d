"""A readers-writer lock: concurrent searches, exclusive mutations (writers go first)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["ReadWriteLock"]


class ReadWriteLock:
    """Many readers or one writer. A waiting writer blocks new readers, so it cannot starve.

    Under ``torch.compile`` tracing the lock is skipped (Dynamo cannot trace it); compiled
    code must not race with mutations of the same index.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def read(self) -> contextlib.AbstractContextManager[None]:
        """The read side: ``with lock.read(): ...`` (a plain context object, not a generator:
        a search of a few queries pays for the lock on every call)."""
        return _Reading(self)

    def _acquire_read(self) -> bool:
        if torch.compiler.is_compiling():
            return False
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        return True

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        if torch.compiler.is_compiling():
            yield
            return
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Reading:
    """``ReadWriteLock.read()``'s context: takes a read slot on entry (unless ``torch.compile``
    is tracing), gives back what it took on exit."""

    __slots__ = ("_held", "_lock")

    def __init__(self, lock: ReadWriteLock) -> None:
        self._lock = lock
        self._held = False

    def __enter__(self) -> None:
        self._held = self._lock._acquire_read()

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            self._lock._release_read()
