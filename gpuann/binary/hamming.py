"""Hamming k-nearest-neighbour search on packed codes: the public op over the dispatcher.

Every backend (see :mod:`gpuann.backends.hamming`) returns the same thing: for each query the
``k`` rows of the database with the smallest Hamming distance, equal distances ordered by
lower row, ``-1`` rows with distance ``INT32_MAX`` (faiss's sentinel) when the database holds
fewer than ``k`` rows. The backend is chosen by :func:`gpuann.backends.select_backend` (op
``"hamming_search"``): the Triton kernel for CUDA tensors when it can run the request (``k``
up to its declared limit); for CPU tensors faiss's popcount + heap scan when faiss is installed
(:mod:`gpuann.backends.faiss_hamming`, imported on first use), the torch loop otherwise.

The whole search is the custom op ``gpuann::hamming_topk`` so ``torch.compile`` sees one node.
"""

from __future__ import annotations

import numpy as np
import torch

from gpuann.backends.dispatch import select_backend
from gpuann.backends.hamming import HammingRequest
from gpuann.budget import check_budget

__all__ = ["MISSING_DISTANCE", "hamming_topk", "select_hamming_backend"]

#: Distance reported next to row ``-1`` (as faiss's binary indexes do).
MISSING_DISTANCE = 2**31 - 1
_LOW32 = 0xFFFFFFFF
#: Results decoded by numpy on the CPU up to this many keys (its per-op cost is lower).
_NUMPY_DECODE_MAX = 1 << 16


def select_hamming_backend(backend: str, device: torch.device, k: int) -> str:
    """The name of the backend that would run a Hamming search of ``k`` on ``device``.

    ``"auto"`` picks the first registered backend that can (Triton for CUDA tensors; faiss,
    when installed, then torch for CPU tensors); a forced backend that cannot run raises
    :class:`~gpuann.BackendUnavailableError` with the reasons.
    """
    probe = torch.empty((0, 1), dtype=torch.int32, device=device)
    return select_backend(HammingRequest(probe, probe, k), backend).name


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed keys (sorted) → (int32 distances, int64 rows with -1 for sentinels)."""
    if keys.device.type == "cpu" and keys.numel() <= _NUMPY_DECODE_MAX:
        # A few results on the CPU: numpy's per-op cost is a fraction of torch's.
        packed = keys.numpy()
        distances, rows = (packed >> 32).astype(np.int32), packed & _LOW32
        missing = distances >= MISSING_DISTANCE
        if missing.any():
            rows[missing], distances[missing] = -1, MISSING_DISTANCE
        return torch.from_numpy(distances), torch.from_numpy(rows)
    distances = (keys >> 32).to(torch.int32)
    rows = keys & _LOW32
    missing = distances >= MISSING_DISTANCE
    rows = torch.where(missing, torch.full_like(rows, -1), rows)
    distances = torch.where(missing, torch.full_like(distances, MISSING_DISTANCE), distances)
    return distances, rows


def _pad_result(distances, rows, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    short = k - distances.shape[1]
    if short > 0:
        distances = torch.nn.functional.pad(distances, (0, short), value=MISSING_DISTANCE)
        rows = torch.nn.functional.pad(rows, (0, short), value=-1)
    return distances, rows


def _hamming_topk_impl(
    queries: torch.Tensor, database: torch.Tensor, k: int, backend: str, memory_budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    device = database.device
    request = HammingRequest(queries, database, k, check_budget(memory_budget or None, device))
    chosen = select_backend(request, backend)
    n_queries = queries.shape[0]
    if database.shape[0] == 0 or n_queries == 0:
        return (
            torch.full((n_queries, k), MISSING_DISTANCE, dtype=torch.int32, device=device),
            torch.full((n_queries, k), -1, dtype=torch.int64, device=device),
        )
    return _pad_result(*_decode(chosen.search(request)), k)


_hamming_topk_op = torch.library.custom_op(
    "gpuann::hamming_topk", _hamming_topk_impl, mutates_args=()
)


@_hamming_topk_op.register_fake
def _hamming_topk_fake(queries, database, k, backend, memory_budget):
    shape = (queries.shape[0], k)
    return queries.new_empty(shape, dtype=torch.int32), queries.new_empty(shape, dtype=torch.int64)


def hamming_topk(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    *,
    backend: str = "auto",
    memory_budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest database rows of each query by Hamming distance.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, W), int32
        Packed codes as 32-bit words (see :func:`gpuann.binary.codes.to_words`), on
        ``database.device``.
    database : torch.Tensor, shape (N, W), int32, row-major with unit column stride
    k : int
    backend : {"auto", "triton", "faiss", "torch"}
        Any name registered for op ``"hamming_search"``; see ``gpuann.backends.explain``.
    memory_budget : int, optional
        Bytes of working memory for the torch backend's tiles.

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), int32
        Ascending; ``2**31 - 1`` where fewer than ``k`` rows exist.
    rows : torch.Tensor, shape (Q, k), int64
        Equal distances ordered by lower row; ``-1`` for missing results.
    """
    if database.dtype != torch.int32 or queries.dtype != torch.int32:
        raise TypeError(f"codes: expected int32 words, got {queries.dtype} and {database.dtype}")
    if database.shape[0] >= 2**32:
        raise ValueError(f"database: at most 2**32 - 1 rows, got {database.shape[0]}")
    if memory_budget is not None:
        check_budget(memory_budget, database.device)
    args = (queries, database, k, backend, memory_budget or 0)
    if torch.compiler.is_compiling():
        return _hamming_topk_op(*args)
    return _hamming_topk_impl(*args)
