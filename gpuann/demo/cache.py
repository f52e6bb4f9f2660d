"""An on-disk cache for the demo's embeddings, keyed by model and corpus."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = ["cache_dir", "cache_key", "cached_tensors"]

_FORMAT = 1


def cache_dir() -> Path:
    """``$GPUANN_CACHE``, else ``$XDG_CACHE_HOME/gpuann``, else ``~/.cache/gpuann``."""
    if os.environ.get("GPUANN_CACHE"):
        return Path(os.environ["GPUANN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpuann"


def cache_key(model: str, texts: Sequence[str]) -> str:
    """A hex digest of the model name, the cache format and every text (in order).

    >>> cache_key("m", ["a", "b"]) == cache_key("m", ["a", "b"]) != cache_key("m", ["ab"])
    True
    """
    digest = hashlib.sha256(json.dumps([_FORMAT, model, list(texts)]).encode())
    return digest.hexdigest()[:32]


def cached_tensors(
    key: str,
    compute: Callable[[], dict[str, torch.Tensor]],
    device: torch.device,
    *,
    enabled: bool = True,
) -> tuple[dict[str, torch.Tensor], Path | None, bool]:
    """``compute()``'s tensors, loaded from the cache when present, else computed and saved.

    Parameters
    ----------
    key : str
        From :func:`cache_key`.
    compute : callable returning a dict of tensors
    device : torch.device
        Where the returned tensors are.
    enabled : bool
        False: always compute, never read or write the cache.

    Returns
    -------
    tensors : dict of str to torch.Tensor, on ``device``
    path : Path or None
        The cache file read from or written to (None when ``enabled`` is False).
    hit : bool
        Whether the tensors were read from the cache.
    """
    if not enabled:
        return compute(), None, False
    path = cache_dir() / f"embeddings-{key}.pt"
    if path.exists():
        try:
            loaded = torch.load(path, map_location=device, weights_only=True)
            return {name: t.to(device) for name, t in loaded.items()}, path, True
        except (OSError, RuntimeError, EOFError):
            pass  # a damaged file: compute again and overwrite it
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({name: t.cpu() for name, t in tensors.items()}, tmp)
    os.replace(tmp, path)
    return tensors, path, False
