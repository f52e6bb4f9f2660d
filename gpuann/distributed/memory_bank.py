"""A ``MemoryBank`` shared by every rank: each ``add`` enqueues the step's batches of all ranks."""

from __future__ import annotations

from typing import Any

import torch

from gpuann.distributed._comm import (
    agree,
    all_gather_sized,
    check_ints,
    check_matrices,
    group_info,
    int_info,
    matrix_info,
)
from gpuann.memory_bank import MemoryBank
from gpuann.metrics import Metric

__all__ = ["DistributedMemoryBank"]


class DistributedMemoryBank(MemoryBank):
    """A ``MemoryBank`` whose ``add`` all-gathers the embeddings (labels, ids) of every rank.

    Every rank then holds the same bank (rank 0's batch first, then rank 1's, ...), so the
    negatives of a step come from the global batch, as in single-process training with a
    world-size-times larger batch. ``add`` is collective; ``search`` is local.

    Parameters
    ----------
    capacity, dim, metric, device, dtype, memory_budget
        As for :class:`gpuann.MemoryBank`.
    group : torch.distributed.ProcessGroup, optional
        Default: the whole world.
    same_batch_size : bool
        True (default): every rank must add the same number of rows each step (DDP with
        ``drop_last``); a rank that does not makes every rank raise. False: batch sizes may
        differ by rank (the gathered batches are padded to the largest).
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        metric: str | Metric = "cosine",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        memory_budget: int | None = None,
        group: Any = None,
        same_batch_size: bool = True,
    ) -> None:
        super().__init__(
            capacity, dim, metric=metric, device=device, dtype=dtype, memory_budget=memory_budget
        )
        self.group = group
        self.same_batch_size = same_batch_size

    @torch.no_grad()
    def add(
        self,
        x: Any,
        ids: Any = None,
        *,
        labels: Any = None,
        check_finite: bool = True,
        replace: bool = False,
    ) -> None:
        """Gather every rank's batch and enqueue them all (collective).

        Every rank must pass labels (and ids) or none must. The ranks first agree on the
        batches' shapes, dtypes and arguments (one small all-gather and a host sync), so a
        bad input on any rank raises the same error on every rank and nothing is added;
        embeddings of different float dtypes are promoted to a common one. See
        :meth:`gpuann.MemoryBank.add`.
        """
        group_info(self.group)  # a clear error when no process group exists
        x, described = matrix_info(x, self.dim)
        rows = described[1]
        labels, info = int_info(labels, rows)
        described += info
        ids, info = int_info(ids, rows)
        described += info
        table = agree(described, self.device, self.group)
        dtype = check_matrices(table, "x", self.dim)
        sizes = [row[1] for row in table]
        if self.same_batch_size and len(set(sizes)) > 1:
            raise ValueError(
                f"x: ranks added batches of {sizes} rows; with same_batch_size=True every rank "
                "must add as many (or construct the bank with same_batch_size=False)"
            )
        has_labels = check_ints(table, 4, "labels", "(B,), one per row of x")
        has_ids = check_ints(table, 8, "ids", "(B,), one per row of x")

        def gather(t: torch.Tensor) -> torch.Tensor:
            return torch.cat(all_gather_sized(t.to(self.device), sizes, self.group))

        super().add(
            gather(x.detach().to(dtype)),
            gather(ids) if has_ids else None,
            labels=gather(labels) if has_labels else None,
            check_finite=check_finite,
            replace=replace,
        )
