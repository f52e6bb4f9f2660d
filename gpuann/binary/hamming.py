"""Hamming k-nearest-neighbour search on packed codes: Triton launcher, torch fallback, custom op.

Both backends return the same thing: for each query the ``k`` rows of the database with the
smallest Hamming distance, equal distances ordered by lower row, ``-1`` rows with distance
``INT32_MAX`` (faiss's sentinel) when the database holds fewer than ``k`` rows.

- ``"triton"``: ``gpuann._kernels.hamming`` (popcount of XORed int32 words, running top-k on
  packed ``distance << 32 | row`` keys). Used for CUDA tensors; on the CPU only when asked for
  and the Triton interpreter is on (``TRITON_INTERPRET=1``), which is how CI checks it.
- ``"torch"``: tiles of distances (CPU: ``numpy.bitwise_count``; elsewhere: ±1 matrices and a
  float32 matmul, exact below 2**24 bits) and a top-k on the same packed keys.

The whole search is the custom op ``gpuann::hamming_topk`` so ``torch.compile`` sees one node.
Environment: ``GPUANN_AUTOTUNE=0`` uses fixed tile configs instead of ``triton.autotune``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch

from gpuann.backends.dispatch import BackendUnavailableError
from gpuann.budget import check_budget

__all__ = ["BACKENDS", "MISSING_DISTANCE", "TRITON_MAX_K", "hamming_topk", "select_hamming_backend"]

BACKENDS = ("auto", "triton", "torch")
#: Distance reported next to row ``-1`` (as faiss's binary indexes do).
MISSING_DISTANCE = 2**31 - 1
#: Largest ``k`` the Triton kernel takes (its accumulator lives in registers).
TRITON_MAX_K = 1024
_LOW32 = 0xFFFFFFFF
#: Temporary bytes per (query, row) pair in the torch fallback: distances, keys, XOR words.
_TORCH_BYTES_PER_PAIR = 24


# ---------------------------------------------------------------------------- backend choice
def _triton_reasons(device: torch.device, k: int) -> list[str]:
    reasons = []
    if importlib.util.find_spec("triton") is None:
        reasons.append("triton is not installed")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        reasons.append("CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1)")
    elif device.type not in ("cpu", "cuda"):
        reasons.append(f"device {device.type} is not supported")
    if k > TRITON_MAX_K:
        reasons.append(f"k={k} is above the kernel's maximum {TRITON_MAX_K}")
    return reasons


def select_hamming_backend(backend: str, device: torch.device, k: int) -> str:
    """``"triton"`` or ``"torch"``: the one asked for, or for ``"auto"`` the best that runs.

    ``"auto"`` picks Triton for CUDA tensors (when it can) and torch everywhere else; a forced
    backend that cannot run raises :class:`~gpuann.BackendUnavailableError` with the reasons.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"backend: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    if backend == "torch":
        return "torch"
    reasons = _triton_reasons(device, k)
    if backend == "triton" and reasons:
        raise BackendUnavailableError(
            "backend='triton' cannot run this search: " + "; ".join(reasons)
        )
    if backend == "auto" and (device.type != "cuda" or reasons):
        return "torch"
    return "triton"


# ---------------------------------------------------------------------------- result decoding
def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed keys (sorted) → (int32 distances, int64 rows with -1 for sentinels)."""
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


# ---------------------------------------------------------------------------- triton
def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _fixed_config(device: torch.device, k_pad: int) -> dict[str, int]:
    """Tile sizes used when autotuning is off (and always under the interpreter)."""
    if device.type == "cpu":  # interpreter: small tiles keep each numpy op cheap
        return {"BLOCK_Q": 16, "BLOCK_N": 32, "num_warps": 1}
    block_q = max(1, min(32, 4096 // k_pad))
    return {"BLOCK_Q": block_q, "BLOCK_N": 128, "num_warps": 4}


@functools.cache
def _autotuned_kernel():
    import triton

    from gpuann._kernels.hamming import hamming_topk_kernel

    configs = [
        triton.Config({"BLOCK_Q": bq, "BLOCK_N": bn}, num_warps=w)
        for bq, bn, w in ((16, 128, 4), (32, 128, 4), (32, 64, 4), (64, 64, 8), (16, 256, 8))
    ]

    def prune(configs, named_args, **kwargs):
        # The accumulator (BLOCK_Q × K_PAD int64) lives in registers: keep it small.
        k_pad = kwargs.get("K_PAD", named_args.get("K_PAD", 1))
        fits = [c for c in configs if c.kwargs["BLOCK_Q"] * k_pad <= 8192]
        return fits or [min(configs, key=lambda c: c.kwargs["BLOCK_Q"])]

    return triton.autotune(
        configs, key=["n_words", "K_PAD"], prune_configs_by={"early_config_prune": prune}
    )(hamming_topk_kernel)


def _n_splits(device: torch.device, n_query_blocks: int, n_database: int, block_n: int) -> int:
    """Database splits, so that small query batches still fill the GPU."""
    tiles = max(1, -(-n_database // block_n))
    if device.type == "cpu":
        return min(2, tiles)  # exercises the cross-split merge in CI at no real cost
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, -(-4 * sms // n_query_blocks)))


def _triton_hamming_topk(q_words: torch.Tensor, db_words: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted packed keys, shape (Q, min(k, N)) — the kernel plus a cross-split merge."""
    from gpuann._kernels.hamming import hamming_topk_kernel

    n_queries, n_words = q_words.shape
    n_database = db_words.shape[0]
    k_pad = _next_pow2(k)
    device = db_words.device
    autotune = os.environ.get("GPUANN_AUTOTUNE", "1") != "0" and device.type == "cuda"
    config = _fixed_config(device, k_pad)
    block_q, block_n = (16, 128) if autotune else (config["BLOCK_Q"], config["BLOCK_N"])
    n_query_blocks = -(-n_queries // block_q)
    splits = _n_splits(device, n_query_blocks, n_database, block_n)
    rows_per_split = -(-n_database // splits)
    out = torch.empty((splits, n_queries, k_pad), dtype=torch.int64, device=device)
    args = (
        q_words,
        db_words,
        out,
        n_queries,
        n_database,
        n_words,
        rows_per_split,
        q_words.stride(0),
        db_words.stride(0),
        out.stride(0),
        out.stride(1),
    )
    use_popc = device.type == "cuda" and torch.version.hip is None
    if autotune:
        kernel = _autotuned_kernel()
        grid = lambda meta: (-(-n_queries // meta["BLOCK_Q"]), splits)  # noqa: E731
        kernel[grid](*args, K=k, K_PAD=k_pad, USE_POPC=use_popc)
    else:
        grid = (n_query_blocks, splits)
        hamming_topk_kernel[grid](*args, K=k, K_PAD=k_pad, USE_POPC=use_popc, **config)
    keys = out[:, :, :k].permute(1, 0, 2).reshape(n_queries, splits * k)
    return torch.topk(keys, min(k, n_database), dim=1, largest=False, sorted=True).values


# ---------------------------------------------------------------------------- torch
def _popcount_tile_numpy(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.zeros((q.shape[0], x.shape[0]), dtype=np.int32)
    for w in range(q.shape[1]):
        out += np.bitwise_count(q[:, w, None] ^ x[None, :, w])
    return out


def _signs(words: torch.Tensor) -> torch.Tensor:
    """int32 words → ±1 float32 matrix of their bits (any fixed bit order)."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = (words[:, :, None] >> shifts) & 1
    return bits.reshape(words.shape[0], -1).float().mul_(2).sub_(1)


def _torch_hamming_topk(
    q_words: torch.Tensor, db_words: torch.Tensor, k: int, budget: int
) -> torch.Tensor:
    """Sorted packed keys, shape (Q, min(k, N)), tile by tile."""
    n_queries, n_words = q_words.shape
    n_database = db_words.shape[0]
    device = db_words.device
    use_numpy = device.type == "cpu" and hasattr(np, "bitwise_count")
    q_block = min(n_queries, 1024)
    db_block = max(
        256, budget // (_TORCH_BYTES_PER_PAIR * max(q_block, 1) * (1 if use_numpy else 2))
    )
    kk = min(k, n_database)
    results = []
    for q0 in range(0, n_queries, q_block):
        q = q_words[q0 : q0 + q_block]
        q_np = q.numpy().view(np.uint32) if use_numpy else None
        q_signs = None if use_numpy else _signs(q)
        best = torch.empty((q.shape[0], 0), dtype=torch.int64, device=device)
        for r0 in range(0, n_database, db_block):
            x = db_words[r0 : r0 + db_block]
            if use_numpy:
                dist = torch.from_numpy(_popcount_tile_numpy(q_np, x.numpy().view(np.uint32)))
            else:
                dot = q_signs @ _signs(x).T
                dist = ((32 * n_words - dot) * 0.5).round_().to(torch.int32)
            rows = torch.arange(r0, r0 + x.shape[0], device=device)
            keys = torch.cat([best, (dist.to(torch.int64) << 32) | rows], dim=1)
            best = torch.topk(
                keys, min(kk, keys.shape[1]), dim=1, largest=False, sorted=True
            ).values
        results.append(best)
    return torch.cat(results) if results else torch.empty((0, kk), dtype=torch.int64, device=device)


# ---------------------------------------------------------------------------- the op
def _hamming_topk_impl(
    queries: torch.Tensor, database: torch.Tensor, k: int, backend: str, memory_budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    device = database.device
    n_queries = queries.shape[0]
    if database.shape[0] == 0 or n_queries == 0:
        return (
            torch.full((n_queries, k), MISSING_DISTANCE, dtype=torch.int32, device=device),
            torch.full((n_queries, k), -1, dtype=torch.int64, device=device),
        )
    if select_hamming_backend(backend, device, k) == "triton":
        keys = _triton_hamming_topk(queries.contiguous(), database, k)
    else:
        budget = check_budget(memory_budget or None, device)
        keys = _torch_hamming_topk(queries, database, k, budget)
    return _pad_result(*_decode(keys), k)


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
    backend : {"auto", "triton", "torch"}
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
