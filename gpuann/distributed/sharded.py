"""Indexes spread over a process group: sharded (exact global top-k) and replicated."""

from __future__ import annotations

from typing import Any

import torch

from gpuann.distributed._comm import all_gather_equal, all_gather_varying, group_info
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult
from gpuann.topk import topk_by_id

__all__ = ["ReplicatedIndex", "ShardedIndex"]

#: Search arguments with one entry (row) per query: they travel with the queries.
_PER_QUERY = ("exclude_ids", "exclude_labels")


def _metric_of(index: Any) -> Metric:
    return as_metric(index.metric)


class ShardedIndex:
    """An index whose vectors are split across the ranks of a process group.

    Each rank wraps its own shard (a ``FlatIndex``, a ``MemoryBank`` or any index with
    ``search(queries, k, **options) -> (distances, ids)`` and a ``metric``), added with
    global ids. ``search`` is collective: every rank calls it with its own queries (any
    number, possibly zero) and gets the exact top-k of its queries over the union of all
    shards, identical to one index holding everything: global ids, ties by lower id.

    How: the queries are all-gathered, every rank searches its shard for all of them, the
    per-shard top-k lists are all-gathered and each rank merges its own queries' lists with
    :func:`gpuann.topk.topk_by_id`. Traffic per search: (all queries) × d, and
    world × (all queries) × k distances and ids.

    Parameters
    ----------
    local_index : index
        This rank's shard.
    group : torch.distributed.ProcessGroup, optional
        Default: the whole world.
    """

    def __init__(self, local_index: Any, group: Any = None) -> None:
        self.local_index = local_index
        self.group = group

    @property
    def metric(self) -> Metric:
        """The shards' metric."""
        return _metric_of(self.local_index)

    def add(self, x: Any, ids: Any) -> None:
        """Add vectors to this rank's shard; ``ids`` are global and unique across ranks."""
        if ids is None:
            raise ValueError("ids: a shard needs explicit global ids (unique across ranks)")
        self.local_index.add(x, ids=ids)

    def search(self, queries: torch.Tensor, k: int, **options: Any) -> SearchResult:
        """Exact global top-k of this rank's queries (collective: every rank must call it).

        Parameters
        ----------
        queries : torch.Tensor, shape (Q, d)
            This rank's queries, on the shard's device (Q may differ by rank).
        k : int
        **options
            Passed to the shard's ``search``; per-query ``exclude_ids`` (Q, m) (the same m on
            every rank) and ``exclude_labels`` (Q,) travel with the queries, others (e.g.
            ``allow_ids``) must be the same on every rank. Every rank must pass the same
            option names.

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k), global ids, ``-1`` / ±inf for missing results.
        """
        if options.get("differentiable"):
            raise ValueError("differentiable=True is not supported across ranks")
        rank, world = group_info(self.group)
        parts = all_gather_varying(queries, self.group)
        sizes = [p.shape[0] for p in parts]
        local_options = dict(options)
        for name in _PER_QUERY:
            if options.get(name) is not None:
                value = torch.as_tensor(options[name], device=queries.device)
                local_options[name] = torch.cat(all_gather_varying(value, self.group))
        D, I = self.local_index.search(torch.cat(parts), k, **local_options)
        start = sum(sizes[:rank])
        mine = slice(start, start + sizes[rank])
        all_D = all_gather_equal(D.contiguous(), self.group)
        all_I = all_gather_equal(I.contiguous(), self.group)
        sign = -1.0 if self.metric.descending else 1.0  # merge as "smaller is nearer"
        values, ids = topk_by_id(
            torch.cat([sign * d[mine] for d in all_D], dim=1),
            torch.cat([i[mine] for i in all_I], dim=1),
            k,
        )
        distances = torch.where(ids < 0, self.metric.missing_distance, sign * values)
        return SearchResult(distances, ids)


class ReplicatedIndex:
    """An index held whole by every rank: one query batch is split across ranks.

    ``search`` is collective: every rank passes the same queries; rank ``r`` searches the
    ``r``-th contiguous slice of them and the results are all-gathered, so every rank gets
    all of them.

    Parameters
    ----------
    index : index
        The full index (the same on every rank).
    group : torch.distributed.ProcessGroup, optional
    """

    def __init__(self, index: Any, group: Any = None) -> None:
        self.index = index
        self.group = group

    @property
    def metric(self) -> Metric:
        return _metric_of(self.index)

    def search(self, queries: torch.Tensor, k: int, **options: Any) -> SearchResult:
        """Search ``queries`` (the same on every rank), a slice per rank; all results back.

        Per-query options (``exclude_ids``, ``exclude_labels``) are sliced like the queries.
        """
        if options.get("differentiable"):
            raise ValueError("differentiable=True is not supported across ranks")
        rank, world = group_info(self.group)
        n = queries.shape[0]
        part = slice(n * rank // world, n * (rank + 1) // world)
        local_options = dict(options)
        for name in _PER_QUERY:
            if options.get(name) is not None:
                local_options[name] = torch.as_tensor(options[name], device=queries.device)[part]
        D, I = self.index.search(queries[part], k, **local_options)
        D, I = torch.as_tensor(D), torch.as_tensor(I)
        return SearchResult(
            torch.cat(all_gather_varying(D, self.group)),
            torch.cat(all_gather_varying(I, self.group)),
        )
