"""Launchers: batched top-k of a float matrix, and the merge of partial top-k key lists."""

from __future__ import annotations

import torch

from gpuann._triton import MAX_K, cdiv, interpreter_enabled, log2, next_power_of_2
from gpuann._triton.config import (
    TileConfig,
    choose_splits,
    pick_config,
    shape_bucket,
    topk_candidates,
    topk_default,
)

__all__ = ["FINISH_L2", "FINISH_NEGATE", "FINISH_PLAIN", "merge_partial", "triton_topk"]

FINISH_PLAIN, FINISH_NEGATE, FINISH_L2 = 0, 1, 2


def merge_partial(
    partial: torch.Tensor,
    k: int,
    finish: int,
    missing_value: float,
    sqnorms: torch.Tensor | None = None,
    *,
    values: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each row's sorted partial key lists into its ``k`` best (value, position).

    Parameters
    ----------
    partial : torch.Tensor, shape (R, S, K), int64, each list ascending, K a power of two
    k : int
        Columns written (at most K; further columns of given outputs are left as they are).
    finish : int
        ``FINISH_PLAIN`` (value as selected), ``FINISH_NEGATE`` or ``FINISH_L2``
        (``max(value + sqnorms[row], 0)``).
    missing_value : float
        Value written next to position ``-1``.
    sqnorms : torch.Tensor, shape (R,), float32, optional
        Required by ``FINISH_L2``.
    values, positions : torch.Tensor, optional, shape (R, k_out), float32 / int64, contiguous
        Outputs to write into (``k_out >= k``); allocated as (R, k) when not given.

    Returns
    -------
    values : torch.Tensor, shape (R, k_out), float32
    positions : torch.Tensor, shape (R, k_out), int64
    """
    from gpuann._kernels.topk import merge_keys_kernel

    n_rows, n_splits, k_pad = partial.shape
    if values is None or positions is None:
        values = torch.empty((n_rows, k), dtype=torch.float32, device=partial.device)
        positions = torch.empty((n_rows, k), dtype=torch.int64, device=partial.device)
    if n_rows == 0:
        return values, positions
    block = max(1, min(16, 4096 // k_pad))
    grid = (cdiv(n_rows, block),)
    merge_keys_kernel[grid](
        partial,
        sqnorms if sqnorms is not None else values,
        values,
        positions,
        n_rows,
        n_splits,
        k,
        values.shape[1],
        missing_value,
        FINISH=finish,
        BR=block,
        K=k_pad,
        LOG_K=log2(k_pad),
        num_warps=4 if block * k_pad <= 4096 else 8,
    )
    return values, positions


def triton_topk(
    x: torch.Tensor,
    k: int,
    largest: bool = False,
    *,
    splits: int | None = None,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest (or largest) entries of each row, ties broken by lower column.

    NaN ranks after every number in both directions (it is never preferred to a number).

    Parameters
    ----------
    x : torch.Tensor, shape (R, n), float32 / float16 / bfloat16
    k : int
        ``1 <= k <= min(n, MAX_K)``.
    largest : bool
        Select the largest values instead of the smallest.
    splits : int, optional
        Programs sharing one block of rows (default: enough to fill the device).
    config : TileConfig, optional
        Force a tile configuration (default: tuned or fixed, see ``gpuann._triton.config``).

    Returns
    -------
    values : torch.Tensor, shape (R, k), ``x.dtype``, best first
    indices : torch.Tensor, shape (R, k), int64
    """
    from gpuann._kernels.topk import topk_partial_kernel

    n_rows, n_cols = x.shape
    if not 1 <= k <= min(n_cols, MAX_K):
        raise ValueError(f"k: expected 1 <= k <= min(n, {MAX_K}) = {min(n_cols, MAX_K)}, got {k}")
    if x.stride(1) != 1:
        x = x.contiguous()
    k_pad = next_power_of_2(k)
    interpreted = interpreter_enabled()

    def run(cfg: TileConfig) -> tuple[torch.Tensor, torch.Tensor]:
        n_blocks = cdiv(n_rows, cfg.block_m)
        n_tiles = cdiv(n_cols, cfg.block_n)
        n_split = splits or choose_splits(n_blocks, n_tiles, x.device)
        per_split = cdiv(cdiv(n_cols, n_split), cfg.block_n) * cfg.block_n
        n_split = cdiv(n_cols, per_split)
        partial = torch.empty((n_rows, n_split, k_pad), dtype=torch.int64, device=x.device)
        topk_partial_kernel[(n_blocks, n_split)](
            x,
            partial,
            n_rows,
            n_cols,
            per_split,
            n_split,
            x.stride(0),
            LARGEST=largest,
            BR=cfg.block_m,
            BN=cfg.block_n,
            LOG_BN=log2(cfg.block_n),
            K=k_pad,
            LOG_K=log2(k_pad),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        missing = float("-inf") if largest else float("inf")
        return merge_partial(partial, k, FINISH_NEGATE if largest else FINISH_PLAIN, missing)

    if config is None:
        key = (
            "topk",
            str(x.device),
            x.dtype,
            shape_bucket(n_rows),
            shape_bucket(n_cols),
            k_pad,
            largest,
        )
        config = pick_config(key, topk_default(k_pad, interpreted), topk_candidates(k_pad), run)
    values, indices = run(config)
    return values.to(x.dtype), indices
