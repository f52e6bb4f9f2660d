"""Exact search with plain torch ops: tiled matrix multiply and a running tie-aware top-k.

Runs on every device torch runs on. Scores are computed in float32 as a "smaller is nearer"
value: ``‖x‖² − 2⟨q, x⟩`` for L2 (``‖q‖²`` is added to the k winners only) and ``−⟨q, x⟩ · s``
for inner product. Tiles are visited in row order, so ties go to the lower row for free.

After the first ``k`` rows, each CPU tile is filtered against every query's current k-th best
score: only the few entries that beat it are gathered and merged, so most scores cost one
comparison rather than a top-k pass. On CUDA the same filter would need a host sync per tile,
so there every tile goes through ``topk_lex`` (this backend is CUDA's fallback; the Triton
backend is its fast path).

Filters (excluded rows per query, an allowed-row mask, label exclusion) and a per-row tie
order (``row_rank``) are applied to each tile before selection: ineligible entries get the
"missing" key, which ranks after every real score (NaN included), so they are never
returned and short rows are padded with ``-1``. Such requests select on packed int64 keys
(value, then rank) rather than on floats; the CPU filter still compares floats first and
checks eligibility only for the few entries that pass it.
"""

from __future__ import annotations

import torch

from gpuann.backends.base import ExactBackend, SearchRequest
from gpuann.budget import TilePlan, plan_tiles
from gpuann.metrics import Metric
from gpuann.topk import merge_topk, ordered_key, topk_lex

__all__ = ["TileScorer", "TorchBackend", "plan_torch_tiles", "torch_exact_search"]

#: Database rows per tile: cache-sized on CPU, larger on GPU.
_CPU_DATABASE_BLOCK = 4096
_CUDA_DATABASE_BLOCK = 65536
#: Temporary bytes per score: the score, plus the filter mask (CPU) or packed keys (CUDA).
_CPU_BYTES_PER_SCORE = 6
_CUDA_BYTES_PER_SCORE = 28
#: Columns per group in the CPU filter's first pass.
_GROUP = 64
#: High word of the key of an ineligible or missing entry: after every score, NaN included.
_MISSING_HI = 0x7FFFFFFF
#: Temporary bytes per score of a selection on packed keys (the key and its temporaries).
_KEY_BYTES_PER_SCORE = 32
#: Scores per CPU tile: small query blocks get taller database tiles (fewer, larger ops).
_CPU_TILE_SCORES = 1 << 22
_CPU_MAX_DATABASE_BLOCK = 1 << 20
#: Query blocks at least this tall fold ‖x‖² into the matrix product as one more column
#: instead of a broadcast bias, which costs a write and a re-read of the whole score tile.
_AUGMENT_MIN_QUERIES = 32


def plan_torch_tiles(
    n_queries: int, n_database: int, dim: int, k: int, memory_budget: int, device: torch.device
) -> TilePlan:
    """The tiles this backend uses (out-of-core streaming reuses them, to give equal bits).

    >>> plan_torch_tiles(100, 10**6, 128, 10, 256 << 20, torch.device("cpu")).database_block
    41920
    """
    if device.type == "cpu":
        shape = (n_queries, n_database, dim, k, memory_budget, _CPU_BYTES_PER_SCORE)
        plan = plan_tiles(*shape, _CPU_DATABASE_BLOCK)
        # Few queries: taller database tiles mean fewer, larger ops — unless the budget would
        # then take queries out of the block.
        rows = _CPU_TILE_SCORES // max(1, plan.query_block)
        taller = min(_CPU_MAX_DATABASE_BLOCK, rows) // _GROUP * _GROUP
        if taller > plan.database_block:
            tall = plan_tiles(*shape, taller)
            plan = tall if tall.query_block >= plan.query_block else plan
        return plan
    return plan_tiles(
        n_queries, n_database, dim, k, memory_budget, _CUDA_BYTES_PER_SCORE, _CUDA_DATABASE_BLOCK
    )


class TileScorer:
    """Float32 "smaller is nearer" scores of one block of queries against database tiles.

    L2: ``‖x‖² − 2⟨q, x⟩`` (``‖q‖²`` is added to the winners by :meth:`finish`); inner
    product: ``−⟨q, x⟩ · scale``. For L2, a block of at least ``_AUGMENT_MIN_QUERIES`` queries
    computes the scores as one product of ``[−2q, 1]`` with ``[x, ‖x‖²]`` (no broadcast bias
    written into and re-read from the whole tile) when that copy of the tile is cheaper than the
    bias: the tile is converted anyway (16-bit storage), or the block has more queries than
    ``x`` has columns.

    Parameters
    ----------
    queries : torch.Tensor, shape (B, d), floating
    l2 : bool
    max_rows : int
        The tallest database tile that will be scored.
    """

    def __init__(self, queries: torch.Tensor, l2: bool, max_rows: int) -> None:
        q = queries.float()
        self.l2 = l2
        self.query_sqnorms = (q * q).sum(dim=1, keepdim=True) if l2 else None
        self.q = q if l2 else -q
        self._augmented = None
        if l2 and q.shape[0] >= _AUGMENT_MIN_QUERIES:
            ones = torch.ones((q.shape[0], 1), device=q.device)
            self._augmented = torch.cat([q * -2.0, ones], dim=1)
            self._rows = torch.empty((max_rows, q.shape[1] + 1), device=q.device)
        self._augment_float32 = q.shape[0] > q.shape[1]

    def __call__(
        self,
        x: torch.Tensor,
        sqnorms: torch.Tensor | None,
        scale: torch.Tensor | None,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """Scores (B, n) of a database tile ``x`` (n, d) into ``out``; ``sqnorms`` (n,) for
        L2, ``scale`` (n,) or None for inner product."""
        if self._augmented is not None and (x.dtype != torch.float32 or self._augment_float32):
            rows = self._rows[: x.shape[0]]
            rows[:, :-1].copy_(x)
            rows[:, -1].copy_(sqnorms)
            return torch.mm(self._augmented, rows.T, out=out)
        x = x if x.dtype == torch.float32 else x.float()
        if self.l2:
            return torch.addmm(sqnorms, self.q, x.T, alpha=-2.0, out=out)
        torch.mm(self.q, x.T, out=out)
        return out if scale is None else out.mul_(scale)

    def finish(self, top_values: torch.Tensor) -> torch.Tensor:
        """Scores of the winners → distances (squared L2, clamped at 0) or similarities."""
        if self.l2:
            return (top_values + self.query_sqnorms).clamp_(min=0.0)
        return -top_values


class TorchBackend(ExactBackend):
    """Tiled ``mm`` + top-k in torch; supports every input (the fallback of last resort)."""

    name = "torch"

    def not_supported_reasons(self, request: SearchRequest) -> list[str]:
        return []

    def search(self, request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
        return torch_exact_search(request)


def torch_exact_search(request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``request`` (see :class:`~gpuann.backends.base.ExactBackend` for the contract)."""
    queries, database, k = request.queries, request.database, request.k
    n_queries, n_database, dim = queries.shape[0], database.shape[0], database.shape[1]
    device = database.device
    on_cpu = device.type == "cpu"
    plan = plan_torch_tiles(n_queries, n_database, dim, k, request.memory_budget, device)
    k_found = min(k, n_database)
    distances = torch.full((n_queries, k), request.metric.missing_distance, device=device)
    positions = torch.full((n_queries, k), -1, dtype=torch.int64, device=device)
    if n_database == 0 or n_queries == 0:
        return distances, positions
    l2 = request.metric is Metric.L2
    sqnorms = request.database_sqnorms
    if l2 and sqnorms is None:
        sqnorms = _row_sqnorms(database, plan.database_block)
    scale = request.column_scale
    keyed = request.filtered or request.row_rank is not None
    # Rows per keyed selection of a whole tile (the first tile on CPU, every tile on CUDA).
    key_rows = max(1, request.memory_budget // (4 * _KEY_BYTES_PER_SCORE * plan.database_block))
    score_buffer = torch.empty(plan.query_block * plan.database_block, device=device)
    for q0 in range(0, n_queries, plan.query_block):
        q = queries[q0 : q0 + plan.query_block]
        scorer = TileScorer(q, l2, plan.database_block)
        top_values = torch.empty((q.shape[0], 0), device=device)
        top_positions = torch.empty((q.shape[0], 0), dtype=torch.int64, device=device)
        for r0 in range(0, n_database, plan.database_block):
            x = database[r0 : r0 + plan.database_block]
            tile = slice(r0, r0 + x.shape[0])
            scores = score_buffer[: q.shape[0] * x.shape[0]].view(q.shape[0], x.shape[0])
            scorer(
                x,
                sqnorms[tile] if l2 else None,
                scale[tile] if scale is not None else None,
                out=scores,
            )
            if on_cpu and top_values.shape[1] == k_found:
                top_values, top_positions = _merge_filtered(
                    top_values, top_positions, scores, r0, request, q0
                )
            elif keyed:
                ok = _eligible_tile(request, q0, q.shape[0], r0, x.shape[0])
                values, cols = _topk_keyed(scores, ok, r0, request.row_rank, k_found, key_rows)
                top_values, top_positions = _merge_keyed(
                    top_values, top_positions, values, cols, k_found, request.row_rank
                )
            else:
                values, cols = topk_lex(scores, k_found)
                top_values, top_positions = merge_topk(
                    top_values, top_positions, values, cols + r0, k_found
                )
        if keyed:  # ineligible rows left in the lists become padding
            top_values = top_values.masked_fill(top_positions < 0, float("inf"))
        distances[q0 : q0 + q.shape[0], :k_found] = scorer.finish(top_values)
        positions[q0 : q0 + q.shape[0], :k_found] = top_positions
    return distances, positions


def _row_sqnorms(database: torch.Tensor, block: int) -> torch.Tensor:
    """Squared row norms in float32, computed block by block."""
    out = torch.empty(database.shape[0], device=database.device)
    for r0 in range(0, database.shape[0], block):
        x = database[r0 : r0 + block].float()
        out[r0 : r0 + x.shape[0]] = (x * x).sum(dim=1)
    return out


def _eligible_tile(
    request: SearchRequest, q0: int, n_q: int, r0: int, n_x: int
) -> torch.Tensor | None:
    """Bool (n_q, n_x): which entries of the tile at (q0, r0) may be returned (None: all)."""
    if not request.filtered:
        return None
    device = request.device
    ok = torch.ones((n_q, n_x + 1), dtype=torch.bool, device=device)
    if request.excluded_rows is not None:
        excluded = request.excluded_rows[q0 : q0 + n_q]
        local = excluded - r0
        inside = (excluded >= 0) & (local >= 0) & (local < n_x)
        # Excluded rows outside the tile land in the spare last column (same value written).
        ok.scatter_(1, torch.where(inside, local, n_x), False)
    ok = ok[:, :n_x]
    if request.allowed_rows is not None:
        ok &= request.allowed_rows[r0 : r0 + n_x][None, :]
    if request.row_labels is not None and request.query_labels is not None:
        row_labels = request.row_labels[r0 : r0 + n_x][None, :]
        query_labels = request.query_labels[q0 : q0 + n_q][:, None]
        ok &= (row_labels != query_labels) | (row_labels < 0)
    return ok


def _eligible_pairs(
    request: SearchRequest, query_rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Bool (n,): whether database row ``positions[i]`` may be returned for query
    ``query_rows[i]`` (absolute indices)."""
    ok = torch.ones_like(positions, dtype=torch.bool)
    if request.excluded_rows is not None:
        ok &= ~(request.excluded_rows[query_rows] == positions[:, None]).any(dim=1)
    if request.allowed_rows is not None:
        ok &= request.allowed_rows[positions]
    if request.row_labels is not None and request.query_labels is not None:
        row_labels = request.row_labels[positions]
        ok &= (row_labels != request.query_labels[query_rows]) | (row_labels < 0)
    return ok


def _keys(values: torch.Tensor, positions: torch.Tensor, rank: torch.Tensor | None) -> torch.Tensor:
    """Int64 keys ordered by (value, tie order); missing entries (position -1) last."""
    valid = positions >= 0
    tie = positions.clamp(min=0) if rank is None else rank[positions.clamp(min=0)]
    hi = ordered_key(values).masked_fill_(~valid, _MISSING_HI)
    return (hi << 32) | tie.masked_fill(~valid, 0)


def _topk_keyed(
    scores: torch.Tensor,
    ok: torch.Tensor | None,
    r0: int,
    rank: torch.Tensor | None,
    k: int,
    max_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best eligible entries of each row of a tile, by (score, tie order).

    Returns values (R, min(k, W)) and absolute positions, ``-1`` where ineligible.

    On CPU a float ``topk`` (ineligible entries as NaN) picks the set first; only rows where
    that set is ambiguous (a NaN selected, or a tie across the k-th place) are selected again
    on packed keys. Elsewhere every row is selected on packed keys (no host sync).
    """
    n_rows, width = scores.shape
    kk = min(k, width)
    if scores.device.type == "cpu" and kk < width:
        masked = scores if ok is None else scores.masked_fill(~ok, float("nan"))
        values, cols = torch.topk(masked, kk + 1, dim=1, largest=False, sorted=True)
        ambiguous = torch.isnan(values[:, kk - 1]) | (values[:, kk - 1] == values[:, kk])
        values, cols = values[:, :kk], cols[:, :kk] + r0
        rows = ambiguous.nonzero().flatten()
        if rows.numel():
            sub_ok = None if ok is None else ok[rows]
            exact = _topk_keyed_exact(scores[rows], sub_ok, r0, rank, kk, max_rows)
            values = values.index_copy(0, rows, exact[0])
            cols = cols.index_copy(0, rows, exact[1])
        order = torch.argsort(_keys(values, cols, rank), dim=1)
        return values.gather(1, order), cols.gather(1, order)
    return _topk_keyed_exact(scores, ok, r0, rank, k, max_rows)


def _topk_keyed_exact(
    scores: torch.Tensor,
    ok: torch.Tensor | None,
    r0: int,
    rank: torch.Tensor | None,
    k: int,
    max_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_topk_keyed` on packed keys of every entry."""
    n_rows, width = scores.shape
    kk = min(k, width)
    positions = torch.arange(r0, r0 + width, device=scores.device).expand(n_rows, width)
    values = torch.empty((n_rows, kk), device=scores.device)
    chosen = torch.empty((n_rows, kk), dtype=torch.int64, device=scores.device)
    for s0 in range(0, n_rows, max_rows):  # bounded temporaries: keys are 8 bytes a score
        part = slice(s0, s0 + max_rows)
        pos = positions[part] if ok is None else positions[part].masked_fill(~ok[part], -1)
        _, order = torch.topk(_keys(scores[part], pos, rank), kk, dim=1, largest=False)
        values[part] = scores[part].gather(1, order)
        chosen[part] = pos.gather(1, order)
    return values, chosen


def _merge_keyed(
    run_values: torch.Tensor,
    run_positions: torch.Tensor,
    new_values: torch.Tensor,
    new_positions: torch.Tensor,
    k: int,
    rank: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of two candidate lists by (value, tie order), position -1 last."""
    values = torch.cat([run_values, new_values], dim=1)
    positions = torch.cat([run_positions, new_positions], dim=1)
    kk = min(k, values.shape[1])
    _, order = torch.topk(_keys(values, positions, rank), kk, dim=1, largest=False)
    return values.gather(1, order), positions.gather(1, order)


def _merge_filtered(
    top_values: torch.Tensor,
    top_positions: torch.Tensor,
    scores: torch.Tensor,
    r0: int,
    request: SearchRequest,
    q0: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the entries of ``scores`` that beat each row's current k-th best (CPU path).

    Without a tie order an entry equal to the k-th best loses the tie (every running entry
    has a lower row); with ``row_rank`` equal entries are candidates too. A row whose k-th
    place is empty (-1) or NaN takes every eligible entry (every non-NaN one) as a
    candidate. Eligibility is checked only for candidates.
    """
    rank = request.row_rank
    kth = top_values[:, -1:]
    special = (top_positions[:, -1:] < 0) | torch.isnan(kth)
    # Nothing compares true against NaN: special rows get their candidates below.
    threshold = kth.masked_fill(special, float("nan"))
    beats = torch.Tensor.__lt__ if rank is None else torch.Tensor.__le__
    n_rows, width = scores.shape
    if width % _GROUP == 0:
        # A min over groups of columns is one cheap pass; only groups whose min beats the
        # threshold are looked at element by element.
        groups = scores.view(n_rows, width // _GROUP, _GROUP)
        group_rows, group_ids = torch.nonzero(beats(groups.amin(dim=2), threshold), as_tuple=True)
        hits = beats(groups[group_rows, group_ids], threshold[group_rows])
        hit_groups, hit_cols = torch.nonzero(hits, as_tuple=True)
        rows = group_rows[hit_groups]
        cols = group_ids[hit_groups] * _GROUP + hit_cols
    else:
        rows, cols = torch.nonzero(beats(scores, threshold), as_tuple=True)
    if bool(special.any()):
        special_rows = special.flatten().nonzero().flatten()
        sub = scores[special_rows]
        if rank is None:
            take = ~torch.isnan(sub) | (top_positions[special_rows, -1:] < 0)
        else:  # with a tie order even a NaN may beat a NaN k-th: the merge decides
            take = torch.ones_like(sub, dtype=torch.bool)
        sub_rows, sub_cols = torch.nonzero(take, as_tuple=True)
        rows = torch.cat([rows, special_rows[sub_rows]])
        cols = torch.cat([cols, sub_cols])
        order = torch.argsort(rows * width + cols)  # row-major, as nonzero gives
        rows, cols = rows[order], cols[order]
    if request.filtered and rows.numel():
        keep = _eligible_pairs(request, rows + q0, cols + r0)
        rows, cols = rows[keep], cols[keep]
    if rows.numel() == 0:
        return top_values, top_positions
    counts = torch.bincount(rows, minlength=scores.shape[0])
    active = counts.nonzero().flatten()
    rank_of_row = torch.cumsum(counts > 0, dim=0) - 1  # row -> index among active rows
    start = torch.cumsum(counts, dim=0) - counts  # first survivor of each row
    slot = torch.arange(rows.numel(), device=rows.device) - start[rows]
    width = int(counts.max())
    cand_values = torch.full((active.numel(), width), float("nan"), device=scores.device)
    cand_positions = torch.full(
        (active.numel(), width), -1, dtype=torch.int64, device=scores.device
    )
    cand_values[rank_of_row[rows], slot] = scores[rows, cols]
    cand_positions[rank_of_row[rows], slot] = cols + r0
    merged_values, merged_positions = _merge_keyed(
        top_values[active],
        top_positions[active],
        cand_values,
        cand_positions,
        top_values.shape[1],
        rank,
    )
    top_values = top_values.index_copy(0, active, merged_values)
    top_positions = top_positions.index_copy(0, active, merged_positions)
    return top_values, top_positions
