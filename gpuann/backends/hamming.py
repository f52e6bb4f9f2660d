"""Hamming-search backends: the Triton popcount kernel's launcher, and the torch tile loop.

Both return sorted packed keys ``distance << 32 | row``, shape (Q, min(k, N)); the public op
(:func:`gpuann.binary.hamming.hamming_topk`) decodes and pads them.

- ``"triton"``: ``gpuann._kernels.hamming`` (popcount of XORed int32 words, running top-k on
  packed keys in registers, so ``k`` is at most :attr:`TritonHamming.max_k`). CUDA tensors;
  CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1``), which is how CI
  checks it. Fixed tile configurations unless ``GPUANN_AUTOTUNE`` allows autotuning.
- ``"faiss"``: CPU tensors when faiss is installed: faiss's popcount + heap scan on the
  tensors' memory (:mod:`gpuann.backends.faiss_hamming`), the fastest CPU path measured.
- ``"torch"``: tiles of distances (CPU: ``numpy.bitwise_count``; elsewhere: ±1 matrices and
  a float32 matmul, exact below 2**24 bits) and a top-k on the same packed keys.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import numpy as np
import torch

from gpuann._env import autotune_enabled
from gpuann.backends.base import Backend, DatabaseRequest, triton_runtime_reasons
from gpuann.backends.dispatch import register_backend, register_request
from gpuann.backends.faiss_hamming import FaissHamming
from gpuann.budget import DEFAULT_CPU_BUDGET

__all__ = ["FaissHamming", "HammingRequest", "TorchHamming", "TritonHamming"]

#: Temporary bytes per (query, row) pair in the torch loop: distances, keys, XOR words.
_TORCH_BYTES_PER_PAIR = 64
#: Bytes per query and kept key: the running list, its concatenation with a tile, topk's copy.
_TORCH_BYTES_PER_KEPT = 32


@dataclasses.dataclass(frozen=True)
class HammingRequest(DatabaseRequest):
    """One Hamming k-NN search on packed codes, already validated.

    Attributes
    ----------
    queries : torch.Tensor, shape (Q, W), int32, on ``database.device``
    database : torch.Tensor, shape (N, W), int32, row-major with unit column stride
    k : int
    memory_budget : int
        Bytes of working memory for the torch loop's tiles.
    """

    op: ClassVar[str] = "hamming_search"
    filtered: ClassVar[bool] = False

    queries: torch.Tensor
    database: torch.Tensor
    k: int
    memory_budget: int = DEFAULT_CPU_BUDGET


class TritonHamming(Backend):
    """The Triton popcount + running top-k kernel."""

    priority: ClassVar[int] = 10
    name: ClassVar[str] = "triton"
    op: ClassVar[str] = "hamming_search"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.int32,)
    #: Largest ``k`` the kernel takes (its accumulator lives in registers).
    max_k: ClassVar[int] = 1024
    auto_on_cpu: ClassVar[bool] = False

    def extra_reasons(self, request: HammingRequest) -> list[str]:
        return triton_runtime_reasons(request.device)

    def search(self, request: HammingRequest) -> torch.Tensor:
        return _triton_hamming_topk(request.queries.contiguous(), request.database, request.k)


class TorchHamming(Backend):
    """Tiles of popcounts (numpy on the CPU, a ±1 matmul elsewhere) and a packed-key top-k."""

    priority: ClassVar[int] = 100
    name: ClassVar[str] = "torch"
    op: ClassVar[str] = "hamming_search"
    device_types: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "mps", "xpu")
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.int32,)

    def search(self, request: HammingRequest) -> torch.Tensor:
        return _torch_hamming_topk(
            request.queries, request.database, request.k, request.memory_budget
        )


# ---------------------------------------------------------------------------- triton
def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _fixed_config(device: torch.device, k_pad: int) -> dict[str, int]:
    """Tile sizes used when autotuning is off (and always under the interpreter)."""
    if device.type == "cpu":  # interpreter: small tiles keep each numpy op cheap
        return {"BLOCK_Q": 16, "BLOCK_N": 32, "num_warps": 1}
    # BLOCK_Q × K_PAD int64 keys live in registers: 2048 of them compile without a spill for
    # sm_90 and sm_80 (tests/kernels/test_aot_compile.py); 4096 spilled at K_PAD = 128.
    block_q = max(1, min(32, 2048 // k_pad))
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
        fits = [c for c in configs if c.kwargs["BLOCK_Q"] * k_pad <= 2048]
        return fits or [min(configs, key=lambda c: c.kwargs["BLOCK_Q"])]

    return triton.autotune(
        configs, key=["n_words", "K_PAD"], prune_configs_by={"early_config_prune": prune}
    )(hamming_topk_kernel)


def _n_splits(device: torch.device, n_query_blocks: int, n_database: int, block_n: int) -> int:
    """Database splits, so that small query batches still fill the GPU."""
    from gpuann._triton.config import multiprocessors

    tiles = max(1, -(-n_database // block_n))
    if device.type == "cpu":
        return min(2, tiles)  # exercises the cross-split merge in CI at no real cost
    sms = multiprocessors(device)  # read once per device
    return max(1, min(tiles, -(-4 * sms // n_query_blocks)))


def _triton_hamming_topk(q_words: torch.Tensor, db_words: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted packed keys, shape (Q, min(k, N)) — the kernel plus a cross-split merge."""
    from gpuann._kernels.hamming import hamming_topk_kernel

    n_queries, n_words = q_words.shape
    n_database = db_words.shape[0]
    k_pad = _next_pow2(k)
    device = db_words.device
    # Never tune inside a CUDA-graph capture: timing candidates there is impossible.
    autotune = (
        autotune_enabled()
        and device.type == "cuda"
        and not torch.cuda.is_current_stream_capturing()
    )
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
    from gpuann._triton.config import device_guard

    with device_guard(device):  # tensors on cuda:1 while cuda:0 is current must not fault
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
    kk = min(k, n_database)
    # Half the budget at most for the running lists (large k: fewer queries per block), the
    # rest for the tile: distances, XOR words, packed keys and topk's copies (measured: about
    # 57 bytes per pair with numpy's popcount).
    q_block = max(1, min(n_queries, 1024, budget // 2 // max(1, kk * _TORCH_BYTES_PER_KEPT)))
    tile_budget = budget - q_block * kk * _TORCH_BYTES_PER_KEPT
    per_pair = _TORCH_BYTES_PER_PAIR * (1 if use_numpy else 2)
    db_block = max(256, tile_budget // (per_pair * q_block))
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


def _request(
    queries: torch.Tensor, database: torch.Tensor, k: int, *, memory_budget: int | None = None
) -> HammingRequest:
    """The request :func:`gpuann.binary.hamming.hamming_topk` would make (for ``explain``)."""
    return HammingRequest(queries, database, k, memory_budget or DEFAULT_CPU_BUDGET)


register_backend("hamming_search", TritonHamming())
register_backend("hamming_search", FaissHamming())
register_backend("hamming_search", TorchHamming())
register_request("hamming_search", _request)
