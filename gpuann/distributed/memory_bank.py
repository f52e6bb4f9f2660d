"""A ``MemoryBank`` shared by every rank: each push enqueues the step's batches of all ranks."""

from __future__ import annotations

from typing import Any

import torch

from gpuann.distributed._comm import all_gather_equal, all_gather_varying, group_info
from gpuann.memory_bank import MemoryBank

__all__ = ["DistributedMemoryBank"]


class DistributedMemoryBank(MemoryBank):
    """A ``MemoryBank`` whose ``push`` all-gathers the embeddings (labels, ids) of every rank.

    Every rank then holds the same bank (rank 0's batch first, then rank 1's, ...), so the
    negatives of a step come from the global batch, as in single-process training with a
    world-size-times larger batch. ``push`` is collective; ``search`` is local.

    Parameters
    ----------
    capacity, dim, device, dtype, metric, memory_budget
        As for :class:`gpuann.MemoryBank`.
    group : torch.distributed.ProcessGroup, optional
        Default: the whole world.
    same_batch_size : bool
        True (default) when every rank pushes the same number of rows each step (DDP with
        ``drop_last``): one all-gather per tensor, no host sync. False exchanges the sizes
        first (one more small all-gather and a host sync).
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        metric: str = "cosine",
        *,
        memory_budget: int | None = None,
        group: Any = None,
        same_batch_size: bool = True,
    ) -> None:
        super().__init__(capacity, dim, device, dtype, metric, memory_budget=memory_budget)
        self.group = group
        self.same_batch_size = same_batch_size

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        gather = all_gather_equal if self.same_batch_size else all_gather_varying
        return torch.cat(gather(tensor.to(self.device), self.group))

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: Any = None, ids: Any = None) -> None:
        """Gather every rank's batch and enqueue them all (collective).

        Every rank must pass labels (and ids) or none must; embeddings are gathered in
        float32 or their own dtype. See :meth:`gpuann.MemoryBank.push`.
        """
        group_info(self.group)  # a clear error when no process group exists
        gathered = self._gather(embeddings.detach())
        gathered_labels = self._gather(torch.as_tensor(labels)) if labels is not None else None
        gathered_ids = self._gather(torch.as_tensor(ids)) if ids is not None else None
        super().push(gathered, labels=gathered_labels, ids=gathered_ids)
