"""Launcher of the fused distance + top-k kernel (``gpuann._kernels.fused_knn``).

``fused_knn`` runs on tensors the plan :func:`~gpuann._triton.knn_plan.plan_fused_knn` makes
from their shapes alone (see :mod:`gpuann._triton.knn_plan`, re-exported here), autotuning
among candidate plans when allowed, and turns the optional row filters into kernel arguments.
"""

from __future__ import annotations

import dataclasses

import torch

from gpuann._triton import MAX_K, interpreter_enabled
from gpuann._triton.config import (
    TileConfig,
    compute_capability,
    device_guard,
    knn_candidates,
    multiprocessors,
    pick_config,
    shape_bucket,
)
from gpuann._triton.final_rescore import rescore_winners
from gpuann._triton.knn_plan import FusedKnnPlan, partial_bytes, plan_fused_knn
from gpuann._triton.topk import FINISH_L2, FINISH_NEGATE, merge_partial
from gpuann.engine.eligibility import RowFilters

__all__ = ["FusedKnnPlan", "fused_knn", "partial_bytes", "plan_fused_knn", "score_of_key"]

#: An empty slot of a list or buffer (``gpuann._kernels.bitonic.SENTINEL``).
SENTINEL = torch.iinfo(torch.int64).max


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
    filters: RowFilters | None = None,
    query_scale: torch.Tensor | None = None,
    preset: bool | tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of ``queries`` in ``database`` with one fused kernel and a merge.

    The torch backend's rules: L2 scores ``‖x‖² − 2⟨q, x⟩`` (``‖q‖²`` added to the winners,
    clamped at 0), IP scores ``−⟨q, x⟩·scale``, ties to the lower row, NaN last; the float32
    scores' last bits are the kernel's, not cuBLAS's.
    Float32 storage is scored on the tensor cores (three TF32 products, ``GPUANN_TRITON_FP32``)
    and its winners re-scored exactly in float64, rounded to float32
    (:mod:`gpuann._triton.final_rescore`).

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
    filters : RowFilters, optional
        Rows skipped (excluded rows, an allow-mask, labels) and the tie order, which the
        kernel packs in place of the row; per-query tensors have ``Q`` rows.
    query_scale : torch.Tensor, shape (Q,), float32, optional
        int8 storage: int8 ``queries`` whose exact int32 dots are multiplied by this power of
        two per query (L2 needs ``database_sqnorms``); the scores equal the torch backend's.
    preset : bool or (stride, k_seed), optional
        Preset thresholds from a sample pass (large k; see ``gpuann._kernels.fused_knn``):
        None chooses (:func:`~gpuann._triton.knn_plan.preset_sample`,
        ``GPUANN_TRITON_PRESET``), True forces, False turns off. The results are the same
        either way.

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
            _FilterArgs.of(filters if filters is not None else RowFilters()),
            query_scale,
            preset,
        )


def _fused_knn(
    queries,
    database,
    k,
    l2,
    database_sqnorms,
    column_scale,
    max_splits,
    splits,
    config,
    filters,
    query_scale,
    preset,
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
    int8 = database.dtype == torch.int8
    if int8 and (query_scale is None or queries.dtype != torch.int8):
        raise ValueError("int8 storage: int8 queries and a query_scale are needed")
    qscale = query_scale.float().contiguous() if int8 else None
    interpreted = interpreter_enabled()
    sm_count = multiprocessors(device)
    # TF32 tensor cores start with sm_80: before, TF32X3 would only be slower FMA dots.
    capability = compute_capability(device)
    fp32_dot = "ieee" if capability is not None and capability < (8, 0) else None

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
            fp32_dot=fp32_dot,
            preset=preset,
        )

    default = plan(config)
    tf32x3 = bool(dict(default.partial.constexprs)["TF32X3"])
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
        lists = torch.full((p.n_slots, p.n_splits, p.k_pad), SENTINEL, device=device)
        buffers = torch.full((p.n_slots, p.n_splits, p.cap), SENTINEL, device=device)
        tensors = {
            "q_ptr": q,
            "x_ptr": database,
            "sqnorm_ptr": sqnorms if sqnorms is not None else q,
            "scale_ptr": scale if scale is not None else q,
            "qscale_ptr": qscale if qscale is not None else q,
            "partial_ptr": lists,
            "buffer_ptr": buffers,
            "exclude_ptr": filters.exclude if filters.has_exclude else q,
            "allowed_ptr": filters.allowed if filters.has_allowed else q,
            "row_label_ptr": filters.row_labels if filters.has_labels else q,
            "query_label_ptr": filters.query_labels if filters.has_labels else q,
            "rank_ptr": filters.rank if filters.has_rank else q,
            "thr_ptr": q,
            "flag_ptr": q,
        }
        if p.preset is None:
            p.partial.launch(fused_knn_kernel, tensors)
        else:
            _run_with_presets(p, tensors, n_queries, preset_thresholds(p, tensors, filters))
        values, chosen = merge_partial(
            lists[:n_queries],
            k_found,
            FINISH_L2 if l2 else FINISH_NEGATE,
            missing,
            query_sqnorms,
            values=distances,
            positions=positions,
        )
        if filters.has_rank:  # the kernel packed ranks: back to rows
            chosen = torch.where(chosen >= 0, filters.row_of_rank[chosen.clamp(min=0)], -1)
        if tf32x3:  # exact values of the tensor cores' winners
            tie = filters.rank if filters.has_rank else None
            values, chosen = rescore_winners(q, database, values, chosen, l2, scale, tie)
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
        tf32x3,  # the float32 dot mode changes the candidates (GPUANN_TRITON_FP32)
    )
    chosen = pick_config(
        key,
        default.config,
        knn_candidates(n_queries, dim, default.k_pad, database.dtype, tf32x3=tf32x3),
        lambda cfg: run_plan(plan(cfg)),
    )
    return run_plan(default if chosen == default.config else plan(chosen))


def preset_thresholds(
    plan: FusedKnnPlan, tensors: dict[str, torch.Tensor], filters: _FilterArgs
) -> torch.Tensor:
    """Each query's preset threshold (``plan.n_slots``,) float32: the ``plan.preset_k``-th
    best kernel score of the sample pass (every ``plan.preset_stride``-th row, the same
    excluded rows, allowed rows and labels; NaN where the sample holds fewer eligible rows).

    No host synchronisation: the sample pass, a ``kthvalue`` over its partial lists and the
    decoding of the key's high word all stay on the device.
    """
    from gpuann._kernels.fused_knn import fused_knn_kernel

    seed, stride = plan.preset, plan.preset_stride
    q, database = tensors["q_ptr"], tensors["x_ptr"]
    device = database.device

    def sampled(name: str, present: bool) -> torch.Tensor:
        return tensors[name][::stride].contiguous() if present else q

    consts = dict(seed.partial.constexprs)
    lists = torch.full((seed.n_slots, seed.n_splits, seed.k_pad), SENTINEL, device=device)
    seed.partial.launch(
        fused_knn_kernel,
        {
            **tensors,
            "x_ptr": database[::stride],
            "sqnorm_ptr": sampled("sqnorm_ptr", consts["HAS_SQNORMS"]),
            "scale_ptr": sampled("scale_ptr", consts["HAS_SCALE"]),
            "partial_ptr": lists,
            "buffer_ptr": torch.full(
                (seed.n_slots, seed.n_splits, seed.cap), SENTINEL, device=device
            ),
            "exclude_ptr": _sampled_rows(filters.exclude, stride) if filters.has_exclude else q,
            "allowed_ptr": sampled("allowed_ptr", filters.has_allowed),
            "row_label_ptr": sampled("row_label_ptr", filters.has_labels),
            "rank_ptr": q,
        },
    )
    n_queries = q.shape[0]
    keys = lists[:n_queries].reshape(n_queries, -1)
    kth = keys.kthvalue(plan.preset_k, dim=1).values
    thr = torch.full((plan.n_slots,), float("nan"), dtype=torch.float32, device=device)
    thr[:n_queries] = score_of_key(kth)
    return thr


def _sampled_rows(rows: torch.Tensor, stride: int) -> torch.Tensor:
    """Rows (int64, ``-1`` pads) as rows of ``database[::stride]`` (``-1`` for those it skips).

    >>> _sampled_rows(torch.tensor([[0, 3, 6, -1]]), 3).tolist()
    [[0, 1, 2, -1]]
    >>> _sampled_rows(torch.tensor([[4, 9, -1]]), 2).tolist()
    [[2, -1, -1]]
    """
    return torch.where((rows >= 0) & (rows % stride == 0), rows // stride, -1)


def score_of_key(keys: torch.Tensor) -> torch.Tensor:
    """The float32 score in the high word of int64 keys (``gpuann._kernels.bitonic``'s order;
    NaN for an empty or missing slot).

    >>> score_of_key(torch.tensor([(0x3F800000 << 32) | 7, SENTINEL])).tolist()
    [1.0, nan]
    """
    hi = (keys >> 32).to(torch.int32)
    return torch.where(hi < 0, hi ^ 0x7FFFFFFF, hi).view(torch.float32)


def _run_with_presets(
    plan: FusedKnnPlan, tensors: dict[str, torch.Tensor], n_queries: int, thr: torch.Tensor
) -> None:
    """The fused kernel with preset thresholds, then once more, without them, for the blocks
    where a query's presets admitted fewer than ``k_found`` scores over all its splits (an
    estimate too low; the second launch's other programs return at once)."""
    from gpuann._kernels.fused_knn import fused_knn_kernel

    lists = tensors["partial_ptr"]
    device = lists.device
    every = torch.ones(plan.n_slots, dtype=torch.uint8, device=device)
    plan.partial.launch(fused_knn_kernel, {**tensors, "thr_ptr": thr, "flag_ptr": every})
    admitted = admitted_keys(lists, plan.k_found)
    # Short of k: a preset too low, or fewer eligible rows than k (then only an open, NaN,
    # threshold is exact already).
    short = (admitted < plan.k_found) & ~thr.isnan()
    short[n_queries:] = False
    block_m = dict(plan.partial.constexprs)["BM"]
    redo = short.view(-1, block_m).any(dim=1).repeat_interleave(block_m)
    lists.masked_fill_(redo[:, None, None], SENTINEL)
    thr.fill_(float("nan"))
    plan.partial.launch(
        fused_knn_kernel, {**tensors, "thr_ptr": thr, "flag_ptr": redo.to(torch.uint8)}
    )


def admitted_keys(lists: torch.Tensor, k_found: int) -> torch.Tensor:
    """Keys the splits' lists hold per query, each split's counted up to ``k_found``.

    ``lists`` (n_slots, n_splits, K) int64, each row ascending with ``SENTINEL``s last: a
    binary search per list finds its length, reading about ``log2(K)`` keys of it.

    >>> S = SENTINEL
    >>> admitted_keys(torch.tensor([[[1, 5, S, S], [2, 3, 4, S]], [[S, S, S, S], [7, S, S, S]]]), 3)
    tensor([5, 1])
    """
    n_slots, n_splits, k_pad = lists.shape
    rows = lists.reshape(n_slots * n_splits, k_pad)
    end = torch.full((rows.shape[0], 1), SENTINEL, dtype=torch.int64, device=lists.device)
    lengths = torch.searchsorted(rows, end).clamp_(max=k_found)
    return lengths.view(n_slots, n_splits).sum(dim=1)


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
    def of(cls, filters: RowFilters) -> _FilterArgs:
        def prepared(t, dtype):
            return None if t is None else t.to(dtype).contiguous()

        labels = filters.labelled
        row_rank = filters.row_rank
        row_of_rank = None
        if row_rank is not None:
            row_of_rank = torch.empty_like(row_rank)
            row_of_rank.scatter_(
                0, row_rank, torch.arange(row_rank.shape[0], device=row_rank.device)
            )
        return cls(
            exclude=prepared(filters.excluded_rows, torch.int64),
            allowed=prepared(filters.allowed_rows, torch.uint8),
            row_labels=prepared(filters.row_labels if labels else None, torch.int64),
            query_labels=prepared(filters.query_labels if labels else None, torch.int64),
            rank=prepared(row_rank, torch.int64),
            row_of_rank=row_of_rank,
            flags=(
                filters.excluded_rows is not None,
                filters.allowed_rows is not None,
                labels,
                row_rank is not None,
            ),
        )
