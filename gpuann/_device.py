"""Device facts read once per device: properties, and a guard for launches on it.

Reading device properties costs a driver call; every launcher and check goes through
:func:`device_properties`, which caches them per device for the life of the process.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["device_properties"]


@functools.cache
def _properties(index: int) -> Any:
    return torch.cuda.get_device_properties(index)


def device_properties(device: torch.device) -> Any:
    """``torch.cuda.get_device_properties`` of a CUDA ``device``, cached per device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _properties(index)
