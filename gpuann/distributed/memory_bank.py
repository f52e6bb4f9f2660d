"""A ``MemoryBank`` shared by every rank: each ``add`` enqueues the step's batches of all ranks."""

from __future__ import annotations

from typing import Any

import torch

from gpuann.distributed._comm import agree_batch, all_gather_sized
from gpuann.memory_bank import MemoryBank

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

    Notes
    -----
    ``add`` gathers every rank's batch and enqueues them all (see
    :meth:`gpuann.MemoryBank.add`). Every rank must pass labels (and ids) or none must. The
    ranks first agree on the batches' shapes, dtypes and arguments (one small all-gather and a
    host sync), so a bad input on any rank raises the same error on every rank and nothing is
    added; embeddings of different float dtypes are promoted to a common one.
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        group: Any = None,
        same_batch_size: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(capacity, dim, **options)
        self.group = group
        self.same_batch_size = same_batch_size

    def _collect(self, x: Any, ids: Any, labels: Any) -> tuple[Any, Any, Any]:
        """Every rank's batch, rank 0's first: the ranks first agree on the batches' shapes,
        dtypes and arguments (one small all-gather and a host sync)."""
        batch = agree_batch(
            x, self.dim, "x", {"labels": labels, "ids": ids}, self.device, self.group
        )
        sizes = batch.sizes
        if self.same_batch_size and len(set(sizes)) > 1:
            raise ValueError(
                f"x: ranks added batches of {sizes} rows; with same_batch_size=True every rank "
                "must add as many (or construct the bank with same_batch_size=False)"
            )
        given = batch.check_ints("(B,), one per row of x")

        def gather(t: torch.Tensor) -> torch.Tensor:
            return torch.cat(all_gather_sized(t.to(self.device), sizes, self.group))

        x = gather(batch.x.detach().to(batch.dtype))
        ids, labels = (gather(batch.ints[n]) if given[n] else None for n in ("ids", "labels"))
        return x, ids, labels
