"""Launcher of the fused distance + top-k kernel (``gpuann._kernels.fused_knn``)."""

from __future__ import annotations

import dataclasses

import torch

from gpuann._triton import MAX_K, cdiv, interpreter_enabled, log2, next_power_of_2
from gpuann._triton.config import (
    TileConfig,
    choose_splits,
    knn_candidates,
    knn_default,
    pick_config,
    shape_bucket,
)
from gpuann._triton.topk import FINISH_L2, FINISH_NEGATE, merge_partial

__all__ = ["fused_knn", "partial_bytes"]


def partial_bytes(n_queries: int, k: int, splits: int) -> int:
    """Bytes of the partial top-k lists of ``n_queries`` queries over ``splits`` splits."""
    return n_queries * splits * next_power_of_2(k) * 8


def fused_knn(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    l2: bool,
    database_sqnorms: torch.Tensor | None = None,
    column_scale: torch.Tensor | None = None,
    *,
    max_splits: int | None = None,
    splits: int | None = None,
    config: TileConfig | None = None,
    excluded_rows: torch.Tensor | None = None,
    allowed_rows: torch.Tensor | None = None,
    row_labels: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    row_rank: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of ``queries`` in ``database`` with one fused kernel and a merge.

    Same results as the torch backend: L2 scores ``‖x‖² − 2⟨q, x⟩`` (``‖q‖²`` added to the
    winners, clamped at 0), IP scores ``−⟨q, x⟩·scale``, ties to the lower row, NaN last.

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), floating, on ``database.device``
    database : torch.Tensor, shape (N, d), float32 / float16 / bfloat16, ``N < 2**32``
    k : int
        ``1 <= k <= MAX_K``; beyond ``N`` the results are padded.
    l2 : bool
        Squared L2 when True, inner product otherwise.
    database_sqnorms : torch.Tensor, shape (N,), float32, optional
        Computed per tile by the kernel when absent (L2 only).
    column_scale : torch.Tensor, shape (N,), float32, optional
        Multiplies each inner product (IP only).
    max_splits, splits : int, optional
        Cap on / forced number of programs sharing one query block's database.
    config : TileConfig, optional
        Force a tile configuration.
    excluded_rows : torch.Tensor, shape (Q, m), int64, optional
        Rows skipped per query (``-1`` pads).
    allowed_rows : torch.Tensor, shape (N,), bool, optional
        Only these rows may be returned.
    row_labels, query_labels : torch.Tensor, shapes (N,), (Q,), int64, optional
        A row is skipped for a query with the same non-negative label.
    row_rank : torch.Tensor, shape (N,), int64, optional
        Tie order (a permutation of ``range(N)``): packed in place of the row.

    Ineligible rows are never returned; queries with fewer than ``k`` eligible rows are
    padded with ``-1`` / ``±inf``.

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32, nearest first (``±inf`` when missing)
    positions : torch.Tensor, shape (Q, k), int64 (``-1`` when missing)
    """
    from gpuann._kernels.fused_knn import fused_knn_kernel

    n_queries, dim = queries.shape
    n_rows = database.shape[0]
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k: the fused kernel takes 1 <= k <= {MAX_K}, got {k}")
    device = database.device
    missing = float("inf") if l2 else float("-inf")
    k_found = min(k, n_rows)
    if n_queries == 0 or n_rows == 0:
        return (
            torch.full((n_queries, k), missing, device=device),
            torch.full((n_queries, k), -1, dtype=torch.int64, device=device),
        )
    if database.stride(1) != 1:
        database = database.contiguous()
    ieee = database.dtype == torch.float32
    split_queries = not ieee and queries.dtype != database.dtype
    q = queries.float().contiguous() if ieee or split_queries else queries.contiguous()
    query_sqnorms = (q.float() * q.float()).sum(dim=1) if l2 else None
    sqnorms = (
        database_sqnorms.float().contiguous() if (l2 and database_sqnorms is not None) else None
    )
    scale = column_scale.float().contiguous() if (not l2 and column_scale is not None) else None
    k_pad = next_power_of_2(k_found)
    interpreted = interpreter_enabled()
    filters = _FilterArgs.of(excluded_rows, allowed_rows, row_labels, query_labels, row_rank, q)
    if k > k_found:
        distances = torch.full((n_queries, k), missing, device=device)
        positions = torch.full((n_queries, k), -1, dtype=torch.int64, device=device)
    else:
        distances = torch.empty((n_queries, k), device=device)
        positions = torch.empty((n_queries, k), dtype=torch.int64, device=device)

    def run(cfg: TileConfig) -> tuple[torch.Tensor, torch.Tensor]:
        n_blocks = cdiv(n_queries, cfg.block_m)
        n_tiles = cdiv(n_rows, cfg.block_n)
        n_split = splits or choose_splits(n_blocks, n_tiles, device)
        n_split = max(1, min(n_split, max_splits or n_split))
        per_split = cdiv(cdiv(n_rows, n_split), cfg.block_n) * cfg.block_n
        n_split = cdiv(n_rows, per_split)
        partial = torch.empty((n_queries, n_split, k_pad), dtype=torch.int64, device=device)
        fused_knn_kernel[(n_blocks, n_split)](
            q,
            database,
            sqnorms if sqnorms is not None else q,
            scale if scale is not None else q,
            partial,
            filters.exclude,
            filters.allowed,
            filters.row_labels,
            filters.query_labels,
            filters.rank,
            n_queries,
            n_rows,
            dim,
            per_split,
            n_split,
            q.stride(0),
            database.stride(0),
            filters.exclude.shape[1] if filters.has_exclude else 0,
            filters.exclude.stride(0) if filters.has_exclude else 0,
            L2=l2,
            HAS_SQNORMS=sqnorms is not None,
            HAS_SCALE=scale is not None,
            HAS_EXCLUDE=filters.has_exclude,
            HAS_ALLOWED=filters.has_allowed,
            HAS_LABELS=filters.has_labels,
            HAS_RANK=filters.has_rank,
            SPLIT_QUERIES=split_queries,
            IEEE=ieee,
            SINGLE_D=dim <= cfg.block_d,
            UPCAST=interpreted and database.dtype == torch.bfloat16,
            BM=cfg.block_m,
            BN=cfg.block_n,
            LOG_BN=log2(cfg.block_n),
            BD=cfg.block_d,
            K=k_pad,
            LOG_K=log2(k_pad),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        values, chosen = merge_partial(
            partial,
            k_found,
            FINISH_L2 if l2 else FINISH_NEGATE,
            missing,
            query_sqnorms,
            values=distances,
            positions=positions,
        )
        if filters.has_rank:  # the kernel packed ranks: back to rows
            chosen = torch.where(chosen >= 0, filters.row_of_rank[chosen.clamp(min=0)], -1)
        return values, chosen

    if config is None:
        key = (
            "knn",
            str(device),
            database.dtype,
            q.dtype,
            l2,
            sqnorms is not None,
            scale is not None,
            filters.flags,
            shape_bucket(n_queries),
            shape_bucket(n_rows),
            dim,
            k_pad,
        )
        config = pick_config(
            key,
            knn_default(n_queries, dim, k_pad, database.dtype, interpreted),
            knn_candidates(n_queries, dim, k_pad, database.dtype),
            run,
        )
    return run(config)


@dataclasses.dataclass(frozen=True)
class _FilterArgs:
    """Kernel arguments of the optional filters (a placeholder pointer where absent)."""

    exclude: torch.Tensor
    allowed: torch.Tensor
    row_labels: torch.Tensor
    query_labels: torch.Tensor
    rank: torch.Tensor
    row_of_rank: torch.Tensor | None
    flags: tuple[bool, bool, bool, bool]

    @property
    def has_exclude(self) -> bool:
        return self.flags[0]

    @property
    def has_allowed(self) -> bool:
        return self.flags[1]

    @property
    def has_labels(self) -> bool:
        return self.flags[2]

    @property
    def has_rank(self) -> bool:
        return self.flags[3]

    @classmethod
    def of(cls, excluded_rows, allowed_rows, row_labels, query_labels, row_rank, placeholder):
        def prepared(t, dtype):
            return placeholder if t is None else t.to(dtype).contiguous()

        labels = row_labels is not None and query_labels is not None
        row_of_rank = None
        if row_rank is not None:
            row_of_rank = torch.empty_like(row_rank)
            row_of_rank.scatter_(
                0, row_rank, torch.arange(row_rank.shape[0], device=row_rank.device)
            )
        return cls(
            exclude=prepared(excluded_rows, torch.int64),
            allowed=prepared(allowed_rows, torch.uint8),
            row_labels=prepared(row_labels if labels else None, torch.int64),
            query_labels=prepared(query_labels if labels else None, torch.int64),
            rank=prepared(row_rank, torch.int64),
            row_of_rank=row_of_rank,
            flags=(
                excluded_rows is not None,
                allowed_rows is not None,
                labels,
                row_rank is not None,
            ),
        )
