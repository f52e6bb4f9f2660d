"""Launchers: batched top-k of a float matrix, and the merge of partial top-k key lists.

As in ``gpuann._triton.knn``, ``plan_topk`` and ``plan_merge`` decide each launch from shapes
alone (so the ahead-of-time checks compile what runs), and the launchers execute the plans.
"""

from __future__ import annotations

import torch

from gpuann._triton import TOPK_MAX_K, cdiv, interpreter_enabled, log2, next_power_of_2
from gpuann._triton.config import (
    TileConfig,
    choose_splits,
    device_guard,
    multiprocessors,
    pick_config,
    shape_bucket,
    topk_candidates,
    topk_default,
)
from gpuann._triton.launch import KernelLaunch

__all__ = [
    "FINISH_L2",
    "FINISH_NEGATE",
    "FINISH_PLAIN",
    "merge_partial",
    "plan_merge",
    "plan_topk",
    "triton_topk",
]

FINISH_PLAIN, FINISH_NEGATE, FINISH_L2 = 0, 1, 2


def plan_merge(
    n_rows: int, n_splits: int, k_pad: int, k: int, stride_out: int, finish: int
) -> KernelLaunch:
    """The launch of ``merge_keys_kernel`` over (n_rows, n_splits, k_pad) partial lists.

    ``k`` columns are written into outputs of row stride ``stride_out``; FINISH_L2 reads
    float32 squared norms (the other modes get the float32 values tensor as a placeholder).
    """
    block = max(1, min(16, 4096 // k_pad))
    return KernelLaunch.make(
        "topk:merge_keys_kernel",
        (cdiv(n_rows, block),),
        {
            "partial_ptr": torch.int64,
            "sqnorm_ptr": torch.float32,
            "values_ptr": torch.float32,
            "positions_ptr": torch.int64,
            "n_rows": n_rows,
            "n_splits": n_splits,
            "k": k,
            "stride_out": stride_out,
            "missing_value": 0.0,  # a float argument: its value never specialises
        },
        {"FINISH": finish, "BR": block, "K": k_pad, "LOG_K": log2(k_pad)},
        4 if block * k_pad <= 4096 else 8,
        3,
    )


def plan_topk(
    n_rows: int,
    n_cols: int,
    k: int,
    *,
    dtype: torch.dtype,
    largest: bool = False,
    stride_row: int | None = None,
    sm_count: int | None = None,
    interpreted: bool = False,
    config: TileConfig | None = None,
    splits: int | None = None,
) -> tuple[KernelLaunch, KernelLaunch]:
    """The launches of ``triton_topk``: the partial top-k kernel, then the merge."""
    k_pad = next_power_of_2(k)
    cfg = config or topk_default(k_pad, interpreted)
    n_blocks = cdiv(n_rows, cfg.block_m)
    n_tiles = cdiv(n_cols, cfg.block_n)
    n_split = splits or choose_splits(n_blocks, n_tiles, sm_count)
    per_split = cdiv(cdiv(n_cols, n_split), cfg.block_n) * cfg.block_n
    n_split = cdiv(n_cols, per_split)
    partial = KernelLaunch.make(
        "topk:topk_partial_kernel",
        (n_blocks, n_split),
        {
            "x_ptr": dtype,
            "partial_ptr": torch.int64,
            "n_rows": n_rows,
            "n_cols": n_cols,
            "cols_per_split": per_split,
            "n_splits": n_split,
            "stride_row": n_cols if stride_row is None else stride_row,
        },
        {
            "LARGEST": largest,
            "BR": cfg.block_m,
            "BN": cfg.block_n,
            "LOG_BN": log2(cfg.block_n),
            "K": k_pad,
            "LOG_K": log2(k_pad),
        },
        cfg.num_warps,
        cfg.num_stages,
    )
    merge = plan_merge(n_rows, n_split, k_pad, k, k, FINISH_NEGATE if largest else FINISH_PLAIN)
    return partial, merge


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
    launch = plan_merge(n_rows, n_splits, k_pad, k, values.shape[1], finish)
    with device_guard(partial.device):
        launch.launch(
            merge_keys_kernel,
            {
                "partial_ptr": partial,
                "sqnorm_ptr": sqnorms.float() if sqnorms is not None else values,
                "values_ptr": values,
                "positions_ptr": positions,
            },
            missing_value=missing_value,
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
        ``1 <= k <= min(n, TOPK_MAX_K)``.
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
    if not 1 <= k <= min(n_cols, TOPK_MAX_K):
        limit = min(n_cols, TOPK_MAX_K)
        raise ValueError(f"k: expected 1 <= k <= min(n, {TOPK_MAX_K}) = {limit}, got {k}")
    if x.stride(1) != 1:
        x = x.contiguous()
    k_pad = next_power_of_2(k)
    interpreted = interpreter_enabled()
    sm_count = multiprocessors(x.device)

    def run(cfg: TileConfig) -> tuple[torch.Tensor, torch.Tensor]:
        launch, _ = plan_topk(
            n_rows,
            n_cols,
            k,
            dtype=x.dtype,
            largest=largest,
            stride_row=x.stride(0),
            sm_count=sm_count,
            interpreted=interpreted,
            config=cfg,
            splits=splits,
        )
        n_split = launch.grid[1]
        partial = torch.empty((n_rows, n_split, k_pad), dtype=torch.int64, device=x.device)
        launch.launch(topk_partial_kernel, {"x_ptr": x, "partial_ptr": partial})
        missing = float("-inf") if largest else float("inf")
        return merge_partial(partial, k, FINISH_NEGATE if largest else FINISH_PLAIN, missing)

    with device_guard(x.device):
        return _tuned_topk(x, k_pad, largest, interpreted, config, run)


def _tuned_topk(x, k_pad, largest, interpreted, config, run):
    n_rows, n_cols = x.shape
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
