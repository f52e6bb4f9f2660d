"""The running top-k of one block of queries, fed one score tile at a time.

Tiles arrive in row order, so ties between a running entry and a new one go to the running
one (lower row) for free. Each tile is selected one of two ways, fixed by the request:
plain float selection with ties to the lower column (:func:`~gpuann._tiebreak.topk_lex`), or,
when filters or a tie order are set, selection on packed int64 keys (score, tie order) in
which an ineligible entry gets the "missing" key, after every real score (NaN included).

On the CPU, once the lists are full, a tile goes through the threshold filter instead: each
score is compared with its query's current k-th best and only the few that beat it are
gathered (eligibility is checked for those only) and merged. On CUDA that filter would need a
host sync per tile, so every tile is selected in full there.
"""

from __future__ import annotations

import torch

from gpuann._tiebreak import merge_topk, ordered_key, topk_lex
from gpuann.engine.eligibility import RowFilters
from gpuann.engine.tiles import GROUP

__all__ = ["RunningTopK", "merge_keyed"]

#: High word of the key of an ineligible or missing entry: after every score, NaN included.
_MISSING_HI = 0x7FFFFFFF
#: Temporary bytes per score of a selection on packed keys (the key and its temporaries).
_KEY_BYTES_PER_SCORE = 32


def _keys(values: torch.Tensor, positions: torch.Tensor, rank: torch.Tensor | None) -> torch.Tensor:
    """Int64 keys ordered by (value, tie order); missing entries (position -1) last."""
    valid = positions >= 0
    tie = positions.clamp(min=0) if rank is None else rank[positions.clamp(min=0)]
    hi = ordered_key(values).masked_fill_(~valid, _MISSING_HI)
    return (hi << 32) | tie.masked_fill(~valid, 0)


def merge_keyed(
    run_values: torch.Tensor,
    run_positions: torch.Tensor,
    new_values: torch.Tensor,
    new_positions: torch.Tensor,
    k: int,
    rank: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of two candidate lists by (value, tie order), position ``-1`` last.

    Parameters
    ----------
    run_values, new_values : torch.Tensor, shapes (R, a) and (R, b), float32
        "Smaller is nearer" values.
    run_positions, new_positions : torch.Tensor, int64, ``-1`` for missing entries
    k : int
    rank : torch.Tensor or None, shape (N,), int64
        Tie order of the rows (default: the row itself).

    Returns
    -------
    values, positions : torch.Tensor, shape (R, min(k, a + b)), sorted
    """
    values = torch.cat([run_values, new_values], dim=1)
    positions = torch.cat([run_positions, new_positions], dim=1)
    kk = min(k, values.shape[1])
    _, order = torch.topk(_keys(values, positions, rank), kk, dim=1, largest=False)
    return values.gather(1, order), positions.gather(1, order)


class RunningTopK:
    """The best ``k`` (score, row) pairs so far of queries ``q0 : q0 + n_rows``.

    Parameters
    ----------
    n_rows : int
        Queries in the block.
    k : int
        Entries kept per query (``min(k, N)``).
    q0 : int
        The block's first query (indexes the per-query filters).
    filters : RowFilters
    device : torch.device
    memory_budget : int
        Bounds the temporaries of a keyed selection.
    """

    def __init__(
        self,
        n_rows: int,
        k: int,
        q0: int,
        filters: RowFilters,
        device: torch.device,
        memory_budget: int,
    ) -> None:
        self.k, self.q0, self.filters, self.budget = k, q0, filters, memory_budget
        self.values = torch.empty((n_rows, 0), device=device)
        self.positions = torch.empty((n_rows, 0), dtype=torch.int64, device=device)
        self._threshold = device.type == "cpu"

    def add(self, scores: torch.Tensor, r0: int) -> None:
        """Merge a tile of scores (B, n) of rows ``r0 : r0 + n`` (after every earlier row)."""
        if self._threshold and self.values.shape[1] == self.k:
            self._merge_beating(scores, r0)
            return
        if self.filters.keyed:
            ok = self.filters.tile(self.q0, scores.shape[0], r0, scores.shape[1])
            values, cols = self._topk_keyed(scores, ok, r0)
            self.values, self.positions = merge_keyed(
                self.values, self.positions, values, cols, self.k, self.filters.row_rank
            )
        else:
            values, cols = topk_lex(scores, self.k)
            if self.values.shape[1] == 0:  # the first tile: its list is the running list
                self.values, self.positions = values, cols + r0
            else:
                self.values, self.positions = merge_topk(
                    self.values, self.positions, values, cols + r0, self.k
                )

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, positions)``, (B, k): sorted scores and rows, ``-1`` (+inf) for none."""
        if self.filters.keyed:  # ineligible rows left in the lists become padding
            return self.values.masked_fill(self.positions < 0, float("inf")), self.positions
        return self.values, self.positions

    def _merge_beating(self, scores: torch.Tensor, r0: int) -> None:
        """Merge the entries of ``scores`` that beat each row's current k-th best.

        Without a tie order an entry equal to the k-th best loses the tie (every running
        entry has a lower row); with ``row_rank`` equal entries are candidates too. A row
        whose k-th place is empty (-1) or NaN takes every eligible entry (every non-NaN one)
        as a candidate. Eligibility is checked only for candidates.
        """
        top_values, top_positions, rank = self.values, self.positions, self.filters.row_rank
        kth = top_values[:, -1:]
        special = (top_positions[:, -1:] < 0) | torch.isnan(kth)
        # Nothing compares true against NaN: special rows get their candidates below.
        threshold = kth.masked_fill(special, float("nan"))
        beats = torch.Tensor.__lt__ if rank is None else torch.Tensor.__le__
        n_rows, width = scores.shape
        if width % GROUP == 0:
            # A min over groups of columns is one cheap pass; only groups whose min beats the
            # threshold are looked at element by element.
            groups = scores.view(n_rows, width // GROUP, GROUP)
            least = groups.amin(dim=2)
            # A NaN score makes its group's min NaN, which beats nothing: such groups are looked
            # at element by element too (else a winner sharing a group with a NaN is lost).
            candidate = beats(least, threshold) | (torch.isnan(least) & ~special)
            group_rows, group_ids = torch.nonzero(candidate, as_tuple=True)
            hits = beats(groups[group_rows, group_ids], threshold[group_rows])
            hit_groups, hit_cols = torch.nonzero(hits, as_tuple=True)
            rows = group_rows[hit_groups]
            cols = group_ids[hit_groups] * GROUP + hit_cols
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
        if self.filters.filtered and rows.numel():
            keep = self.filters.pairs(rows + self.q0, cols + r0)
            rows, cols = rows[keep], cols[keep]
        if rows.numel() == 0:
            return
        counts = torch.bincount(rows, minlength=n_rows)
        active = counts.nonzero().flatten()
        rank_of_row = torch.cumsum(counts > 0, dim=0) - 1  # row -> index among active rows
        start = torch.cumsum(counts, dim=0) - counts  # first survivor of each row
        slot = torch.arange(rows.numel(), device=rows.device) - start[rows]
        most = int(counts.max())
        cand_values = torch.full((active.numel(), most), float("nan"), device=scores.device)
        cand_positions = torch.full(
            (active.numel(), most), -1, dtype=torch.int64, device=scores.device
        )
        cand_values[rank_of_row[rows], slot] = scores[rows, cols]
        cand_positions[rank_of_row[rows], slot] = cols + r0
        merged_values, merged_positions = merge_keyed(
            top_values[active], top_positions[active], cand_values, cand_positions, self.k, rank
        )
        self.values = top_values.index_copy(0, active, merged_values)
        self.positions = top_positions.index_copy(0, active, merged_positions)

    def _topk_keyed(
        self, scores: torch.Tensor, ok: torch.Tensor | None, r0: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best eligible entries of each row of a tile, by (score, tie order).

        Returns values (R, min(k, W)) and absolute positions, ``-1`` where ineligible.

        On CPU a float ``topk`` (ineligible entries as NaN) picks the set first; only rows
        where that set is ambiguous (a NaN selected, or a tie across the k-th place) are
        selected again on packed keys. Elsewhere every row is selected on packed keys (no host
        sync).
        """
        width = scores.shape[1]
        kk = min(self.k, width)
        if scores.device.type != "cpu" or kk == width:
            return self._topk_on_keys(scores, ok, r0)
        masked = scores if ok is None else scores.masked_fill(~ok, float("nan"))
        values, cols = torch.topk(masked, kk + 1, dim=1, largest=False, sorted=True)
        ambiguous = torch.isnan(values[:, kk - 1]) | (values[:, kk - 1] == values[:, kk])
        values, cols = values[:, :kk], cols[:, :kk] + r0
        rows = ambiguous.nonzero().flatten()
        if rows.numel():
            exact = self._topk_on_keys(scores[rows], None if ok is None else ok[rows], r0)
            values = values.index_copy(0, rows, exact[0])
            cols = cols.index_copy(0, rows, exact[1])
        order = torch.argsort(_keys(values, cols, self.filters.row_rank), dim=1)
        return values.gather(1, order), cols.gather(1, order)

    def _topk_on_keys(
        self, scores: torch.Tensor, ok: torch.Tensor | None, r0: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_topk_keyed` on packed keys of every entry, a bounded block of rows at a
        time (keys and their temporaries: :data:`_KEY_BYTES_PER_SCORE` bytes a score)."""
        n_rows, width = scores.shape
        kk = min(self.k, width)
        max_rows = max(1, self.budget // (4 * _KEY_BYTES_PER_SCORE * width))
        positions = torch.arange(r0, r0 + width, device=scores.device).expand(n_rows, width)
        values = torch.empty((n_rows, kk), device=scores.device)
        chosen = torch.empty((n_rows, kk), dtype=torch.int64, device=scores.device)
        for s0 in range(0, n_rows, max_rows):
            part = slice(s0, s0 + max_rows)
            pos = positions[part] if ok is None else positions[part].masked_fill(~ok[part], -1)
            _, order = torch.topk(
                _keys(scores[part], pos, self.filters.row_rank), kk, dim=1, largest=False
            )
            values[part] = scores[part].gather(1, order)
            chosen[part] = pos.gather(1, order)
        return values, chosen
