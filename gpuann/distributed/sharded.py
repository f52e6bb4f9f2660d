"""Indexes spread over a process group: sharded (exact global top-k) and replicated.

Both only search their local index, so they take any :class:`gpuann.index.Searchable` with a
``metric``. Every search starts with one small all-gather of each rank's query shape, dtype,
``k`` and per-query options (see :mod:`gpuann.distributed._comm`), so a rank's bad input makes
every rank raise the same error instead of aborting the others inside the backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann._tiebreak import topk_by_id
from gpuann._validate import check_k
from gpuann.distributed._comm import (
    agree_batch,
    all_gather_equal,
    all_gather_sized,
    group_info,
)
from gpuann.index import Searchable
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult

__all__ = ["ReplicatedIndex", "ShardedIndex"]

#: Search arguments with one entry (row) per query: they travel with the queries, and the
#: dimensions each may have.
_PER_QUERY = {"exclude_ids": (1, 2), "exclude_labels": (1,)}


def _agreed_queries(
    index: Searchable, queries: Any, k: Any, options: dict[str, Any], group: Any
) -> tuple[torch.Tensor, int, list[int], dict[str, torch.Tensor]]:
    """Agree with every rank on the queries' shapes, ``k`` and the per-query options.

    Returns this rank's queries in the common dtype on the index's device, ``k``, every
    rank's number of queries, and this rank's per-query options as int64 tensors. Raises the
    same error on every rank when any rank's input is bad.
    """
    if options.get("differentiable"):
        raise ValueError("differentiable=True is not supported across ranks")
    try:
        k_value = check_k(k)
    except (TypeError, ValueError):
        k_value = 0
    per_query = {name: options.get(name) for name in _PER_QUERY}
    batch = agree_batch(
        queries,
        index.dim,
        "queries",
        per_query,
        index.device,
        group,
        ndims=_PER_QUERY,
        extra=[k_value],
    )
    ks = batch.extra(0)
    if min(ks) <= 0:
        raise ValueError(f"k: rank {ks.index(min(ks))} passed no positive int k")
    if len(set(ks)) > 1:
        raise ValueError(f"k: ranks passed different k {ks}; every rank must pass the same")
    batch.check_ints("(Q, ...) with one row per query of that rank")
    extras = {name: t.to(index.device) for name, t in batch.ints.items() if t is not None}
    return batch.x.to(index.device, batch.dtype), ks[0], batch.sizes, extras


def _output(D: torch.Tensor, I: torch.Tensor, queries: Any) -> SearchResult:
    if isinstance(queries, np.ndarray):
        return SearchResult(D.cpu().numpy(), I.cpu().numpy())
    return SearchResult(D.to(queries.device), I.to(queries.device))


class ShardedIndex:
    """An index whose vectors are split across the ranks of a process group.

    Each rank wraps its own shard (a ``FlatIndex``, a ``MemoryBank`` or any
    :class:`~gpuann.index.Searchable` with a ``metric``), added with global ids. ``search``
    is collective: every rank calls it with its own queries (any number, possibly zero) and
    gets the exact top-k of its queries over the union of all shards, identical to one index
    holding everything: global ids, ties by lower id.

    How: one small all-gather agrees on shapes (a bad input on any rank raises the same error
    on every rank), the queries are all-gathered, every rank searches its shard for all of
    them, the per-shard top-k lists are all-gathered and each rank merges its own queries'
    lists with :func:`gpuann._tiebreak.topk_by_id`. Traffic per search: (all queries) × d, and
    world × (all queries) × k distances and ids.

    Parameters
    ----------
    local_index : Searchable
        This rank's shard.
    group : torch.distributed.ProcessGroup, optional
        Default: the whole world.
    """

    def __init__(self, local_index: Searchable, group: Any = None) -> None:
        self.local_index = local_index
        self.group = group

    @property
    def metric(self) -> Metric:
        """The shards' metric."""
        return as_metric(self.local_index.metric)

    def add(self, x: Any, ids: Any) -> None:
        """Add vectors to this rank's shard; ``ids`` are global and unique across ranks."""
        if ids is None:
            raise ValueError("ids: a shard needs explicit global ids (unique across ranks)")
        self.local_index.add(x, ids=ids)

    def search(self, queries: Any, k: int, **options: Any) -> SearchResult:
        """Exact global top-k of this rank's queries (collective: every rank must call it).

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, d), floating
            This rank's queries (Q may differ by rank; dtypes are promoted to a common one).
        k : int
            The same on every rank.
        **options
            Passed to the shard's ``search``; per-query ``exclude_ids`` (Q, m) (the same m on
            every rank) and ``exclude_labels`` (Q,) travel with the queries, others (e.g.
            ``allow_ids``) must be the same on every rank. Every rank must pass the same
            option names.

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k), global ids, ``-1`` / ±inf for missing results;
            numpy when ``queries`` is numpy, else on the queries' device.
        """
        rank, _ = group_info(self.group)
        q, k, sizes, extras = _agreed_queries(self.local_index, queries, k, options, self.group)
        if not sum(sizes):  # every rank agrees: nothing to search
            D = torch.full((0, k), self.metric.missing_distance, device=q.device)
            return _output(D, torch.full((0, k), -1, device=q.device), queries)
        local_options = dict(options)
        for name, value in extras.items():
            local_options[name] = torch.cat(all_gather_sized(value, sizes, self.group))
        parts = all_gather_sized(q, sizes, self.group)
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
        return _output(distances, ids, queries)


class ReplicatedIndex:
    """An index held whole by every rank: one query batch is split across ranks.

    ``search`` is collective: every rank passes the same queries; rank ``r`` searches the
    ``r``-th contiguous slice of them and the results are all-gathered, so every rank gets
    all of them.

    Parameters
    ----------
    index : Searchable
        The full index (the same on every rank), with a ``metric``.
    group : torch.distributed.ProcessGroup, optional
    """

    def __init__(self, index: Searchable, group: Any = None) -> None:
        self.index = index
        self.group = group

    @property
    def metric(self) -> Metric:
        return as_metric(self.index.metric)

    def search(self, queries: Any, k: int, **options: Any) -> SearchResult:
        """Search ``queries`` (the same on every rank), a slice per rank; all results back.

        Per-query options (``exclude_ids``, ``exclude_labels``) are sliced like the queries.
        numpy in, numpy out.
        """
        rank, world = group_info(self.group)
        q, k, sizes, extras = _agreed_queries(self.index, queries, k, options, self.group)
        if len(set(sizes)) > 1:
            raise ValueError(
                f"queries: ranks passed {sizes} rows; every rank must pass the same queries"
            )
        n = sizes[0]
        bounds = [n * r // world for r in range(world + 1)]
        part = slice(bounds[rank], bounds[rank + 1])
        local_options = dict(options)
        for name, value in extras.items():
            local_options[name] = value[part]
        D, I = self.index.search(q[part], k, **local_options)
        counts = [bounds[r + 1] - bounds[r] for r in range(world)]
        return _output(
            torch.cat(all_gather_sized(torch.as_tensor(D), counts, self.group)),
            torch.cat(all_gather_sized(torch.as_tensor(I), counts, self.group)),
            queries,
        )
