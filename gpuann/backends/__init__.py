"""Exact-search backends and the dispatcher that chooses among them."""

from gpuann.backends.base import ExactBackend, SearchRequest
from gpuann.backends.dispatch import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    select_backend,
)

__all__ = [
    "BackendUnavailableError",
    "ExactBackend",
    "SearchRequest",
    "available_backends",
    "get_backend",
    "select_backend",
]
