"""Launcher of the fused distance + top-k kernel (``gpuann._kernels.fused_knn``).

``plan_fused_knn`` decides everything about a launch from shapes, dtypes and flags alone
(tiles, splits, constexprs, the merge that follows): ``fused_knn`` runs that plan on tensors,
and the ahead-of-time checks (``gpuann._triton.aot``) compile the very same plans for sm_90 and
sm_80 on a machine without a GPU.
"""

from __future__ import annotations

import dataclasses

import torch

from gpuann._triton import MAX_K, cdiv, interpreter_enabled, log2, next_power_of_2
from gpuann._triton.aot import KernelLaunch
from gpuann._triton.config import (
    TileConfig,
    choose_splits,
    device_guard,
    knn_candidates,
    knn_default,
    multiprocessors,
    pick_config,
    shape_bucket,
)
from gpuann._triton.topk import FINISH_L2, FINISH_NEGATE, merge_partial, plan_merge

__all__ = ["FusedKnnPlan", "fused_knn", "partial_bytes", "plan_fused_knn"]

_NO_FILTERS = (False, False, False, False)


def partial_bytes(n_queries: int, k: int, splits: int) -> int:
    """Bytes of the partial top-k lists of ``n_queries`` queries over ``splits`` splits."""
    return n_queries * splits * next_power_of_2(k) * 8


@dataclasses.dataclass(frozen=True)
class FusedKnnPlan:
    """Every decision of one fused k-NN call, made before any tensor is touched.

    Attributes
    ----------
    config : TileConfig
    k_found : int
        ``min(k, N)``: results that exist (the rest is padding).
    k_pad : int
        Power of two the kernel selects (``K``).
    query_dtype : torch.dtype
        dtype the queries are passed in (float32 for float32 storage or split queries).
    ieee, split_queries : bool
    n_splits : int
        Programs sharing one query block's database.
    partial : KernelLaunch
        The fused kernel's launch; ``merge``: the merge of the partial lists.
    """

    config: TileConfig
    k_found: int
    k_pad: int
    query_dtype: torch.dtype
    ieee: bool
    split_queries: bool
    n_splits: int
    partial: KernelLaunch
    merge: KernelLaunch


def plan_fused_knn(
    n_queries: int,
    n_rows: int,
    dim: int,
    k: int,
    *,
    storage_dtype: torch.dtype,
    query_dtype: torch.dtype,
    l2: bool,
    has_sqnorms: bool = False,
    has_scale: bool = False,
    filters: tuple[bool, bool, bool, bool] = _NO_FILTERS,
    n_exclude: int = 0,
    stride_x: int | None = None,
    sm_count: int | None = None,
    interpreted: bool = False,
    config: TileConfig | None = None,
    splits: int | None = None,
    max_splits: int | None = None,
) -> FusedKnnPlan:
    """The launches ``fused_knn`` makes for these shapes (``n_queries, n_rows >= 1``).

    Parameters
    ----------
    n_queries, n_rows, dim, k : int
    storage_dtype, query_dtype : torch.dtype
        The database's and the queries' dtypes as given to ``fused_knn``.
    l2, has_sqnorms, has_scale : bool
    filters : tuple of 4 bool
        (excluded rows, allowed rows, labels, row rank) given.
    n_exclude : int
        Columns of ``excluded_rows`` (its row stride too: it is made contiguous).
    stride_x : int, optional
        Row stride of the database (default ``dim``).
    sm_count : int, optional
        Multiprocessors of the device (None: not CUDA, e.g. the interpreter).
    interpreted : bool
        The Triton interpreter runs the kernels (small tiles, ``UPCAST`` for bfloat16).
    config, splits, max_splits
        As in :func:`fused_knn`; ``config`` None means the fixed default.
    """
    k_found = min(k, n_rows)
    k_pad = next_power_of_2(k_found)
    ieee = storage_dtype == torch.float32
    split_queries = not ieee and query_dtype != storage_dtype
    q_dtype = torch.float32 if ieee or split_queries else query_dtype
    if config is None:
        config = knn_default(
            n_queries, dim, k_pad, storage_dtype, interpreted, split_queries=split_queries
        )
    has_exclude, has_allowed, has_labels, has_rank = filters
    n_blocks = cdiv(n_queries, config.block_m)
    n_tiles = cdiv(n_rows, config.block_n)
    n_split = splits or choose_splits(n_blocks, n_tiles, sm_count)
    n_split = max(1, min(n_split, max_splits or n_split))
    per_split = cdiv(cdiv(n_rows, n_split), config.block_n) * config.block_n
    n_split = cdiv(n_rows, per_split)
    placeholder = q_dtype
    partial = KernelLaunch.make(
        "fused_knn:fused_knn_kernel",
        (n_blocks, n_split),
        {
            "q_ptr": q_dtype,
            "x_ptr": storage_dtype,
            "sqnorm_ptr": torch.float32 if l2 and has_sqnorms else placeholder,
            "scale_ptr": torch.float32 if not l2 and has_scale else placeholder,
            "partial_ptr": torch.int64,
            "exclude_ptr": torch.int64 if has_exclude else placeholder,
            "allowed_ptr": torch.uint8 if has_allowed else placeholder,
            "row_label_ptr": torch.int64 if has_labels else placeholder,
            "query_label_ptr": torch.int64 if has_labels else placeholder,
            "rank_ptr": torch.int64 if has_rank else placeholder,
            "n_queries": n_queries,
            "n_rows": n_rows,
            "dim": dim,
            "rows_per_split": per_split,
            "n_splits": n_split,
            "stride_q": dim,
            "stride_x": dim if stride_x is None else stride_x,
            "n_exclude": n_exclude if has_exclude else 0,
            "stride_exclude": n_exclude if has_exclude else 0,
        },
        {
            "L2": l2,
            "HAS_SQNORMS": l2 and has_sqnorms,
            "HAS_SCALE": not l2 and has_scale,
            "HAS_EXCLUDE": has_exclude,
            "HAS_ALLOWED": has_allowed,
            "HAS_LABELS": has_labels,
            "HAS_RANK": has_rank,
            "SPLIT_QUERIES": split_queries,
            "IEEE": ieee,
            "SINGLE_D": dim <= config.block_d,
            "UPCAST": interpreted and storage_dtype == torch.bfloat16,
            "BM": config.block_m,
            "BN": config.block_n,
            "LOG_BN": log2(config.block_n),
            "BD": config.block_d,
            "K": k_pad,
            "LOG_K": log2(k_pad),
        },
        config.num_warps,
        config.num_stages,
    )
    merge = plan_merge(n_queries, n_split, k_pad, k_found, k, FINISH_L2 if l2 else FINISH_NEGATE)
    return FusedKnnPlan(
        config, k_found, k_pad, q_dtype, ieee, split_queries, n_split, partial, merge
    )


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
    padded with ``-1`` / ``±inf``. Kernels launch on the database's device (made current
    for the call); autotuning never runs inside a CUDA graph capture.

    Returns
    -------
    distances : torch.Tensor, shape (Q, k), float32, nearest first (``±inf`` when missing)
    positions : torch.Tensor, shape (Q, k), int64 (``-1`` when missing)
    """
    n_queries, dim = queries.shape
    n_rows = database.shape[0]
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k: the fused kernel takes 1 <= k <= {MAX_K}, got {k}")
    device = database.device
    missing = float("inf") if l2 else float("-inf")
    if n_queries == 0 or n_rows == 0:
        return (
            torch.full((n_queries, k), missing, device=device),
            torch.full((n_queries, k), -1, dtype=torch.int64, device=device),
        )
    with device_guard(device):
        return _fused_knn(
            queries,
            database,
            k,
            l2,
            database_sqnorms,
            column_scale,
            max_splits,
            splits,
            config,
            _FilterArgs.of(excluded_rows, allowed_rows, row_labels, query_labels, row_rank),
        )


def _fused_knn(
    queries, database, k, l2, database_sqnorms, column_scale, max_splits, splits, config, filters
):
    from gpuann._kernels.fused_knn import fused_knn_kernel

    n_queries, dim = queries.shape
    n_rows = database.shape[0]
    device = database.device
    missing = float("inf") if l2 else float("-inf")
    if database.stride(1) != 1:
        database = database.contiguous()
    sqnorms = (
        database_sqnorms.float().contiguous() if (l2 and database_sqnorms is not None) else None
    )
    scale = column_scale.float().contiguous() if (not l2 and column_scale is not None) else None
    interpreted = interpreter_enabled()
    sm_count = multiprocessors(device)

    def plan(cfg: TileConfig | None) -> FusedKnnPlan:
        return plan_fused_knn(
            n_queries,
            n_rows,
            dim,
            k,
            storage_dtype=database.dtype,
            query_dtype=queries.dtype,
            l2=l2,
            has_sqnorms=sqnorms is not None,
            has_scale=scale is not None,
            filters=filters.flags,
            n_exclude=filters.exclude.shape[1] if filters.has_exclude else 0,
            stride_x=database.stride(0),
            sm_count=sm_count,
            interpreted=interpreted,
            config=cfg,
            splits=splits,
            max_splits=max_splits,
        )

    default = plan(config)
    q = queries.to(default.query_dtype).contiguous()
    query_sqnorms = (q.float() * q.float()).sum(dim=1) if l2 else None
    k_found = default.k_found
    if k > k_found:
        distances = torch.full((n_queries, k), missing, device=device)
        positions = torch.full((n_queries, k), -1, dtype=torch.int64, device=device)
    else:
        distances = torch.empty((n_queries, k), device=device)
        positions = torch.empty((n_queries, k), dtype=torch.int64, device=device)

    def run_plan(p: FusedKnnPlan) -> tuple[torch.Tensor, torch.Tensor]:
        partial = torch.empty((n_queries, p.n_splits, p.k_pad), dtype=torch.int64, device=device)
        p.partial.launch(
            fused_knn_kernel,
            {
                "q_ptr": q,
                "x_ptr": database,
                "sqnorm_ptr": sqnorms if sqnorms is not None else q,
                "scale_ptr": scale if scale is not None else q,
                "partial_ptr": partial,
                "exclude_ptr": filters.exclude if filters.has_exclude else q,
                "allowed_ptr": filters.allowed if filters.has_allowed else q,
                "row_label_ptr": filters.row_labels if filters.has_labels else q,
                "query_label_ptr": filters.query_labels if filters.has_labels else q,
                "rank_ptr": filters.rank if filters.has_rank else q,
            },
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

    if config is not None:
        return run_plan(default)
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
        default.k_pad,
    )
    chosen = pick_config(
        key,
        default.config,
        knn_candidates(n_queries, dim, default.k_pad, database.dtype),
        lambda cfg: run_plan(plan(cfg)),
    )
    return run_plan(default if chosen == default.config else plan(chosen))


@dataclasses.dataclass(frozen=True)
class _FilterArgs:
    """Kernel arguments of the optional filters (None where absent)."""

    exclude: torch.Tensor | None
    allowed: torch.Tensor | None
    row_labels: torch.Tensor | None
    query_labels: torch.Tensor | None
    rank: torch.Tensor | None
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
    def of(cls, excluded_rows, allowed_rows, row_labels, query_labels, row_rank):
        def prepared(t, dtype):
            return None if t is None else t.to(dtype).contiguous()

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
