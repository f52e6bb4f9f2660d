"""The collectives gpuann uses: all-gather of tensors of equal or varying first dimension."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_equal", "all_gather_varying", "group_info"]


def group_info(group: Any = None) -> tuple[int, int]:
    """(rank, world size) of this process in ``group`` (default: the whole world)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gpuann.distributed: call torch.distributed.init_process_group first "
            "(backend 'nccl' for CUDA tensors, 'gloo' for CPU tensors)"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_equal(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (all of the same shape), in rank order. No host sync."""
    _, world = group_info(group)
    tensor = tensor.contiguous()
    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor, group=group)
    return out


def all_gather_varying(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's ``tensor``, whose first dimension may differ by rank, in rank order.

    The sizes are exchanged first (one small all-gather and a host sync), then tensors padded
    to the largest size are gathered and trimmed.
    """
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [int(s) for s in all_gather_equal(size, group)]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return [part[:n] for part, n in zip(all_gather_equal(padded, group), sizes, strict=True)]
