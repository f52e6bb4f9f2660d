"""CPU exact search by numpy's OpenBLAS in cache, its answers proven by exact re-scoring.

torch's CPU wheels multiply with MKL, measured 12-36% slower than numpy's OpenBLAS on this
project's AMD machines. OpenBLAS's matrix products cannot rank an exact search themselves:
they give *identical* database rows scores one rounding apart depending on their column
(:mod:`gpuann.engine.cpu_blas`), which would order duplicates by noise, not by lower id. Here
they only *propose*:

1. **Fast pass.** Pool workers each own a range of queries (or, for few queries, of database
   rows); for each cache-sized database tile a worker multiplies with OpenBLAS (one thread)
   and feeds the scores, still in cache, to faiss's heaps, which keep ``kc`` candidates.
2. **Exact re-scoring.** Every candidate that may still be among the k best (its fast score
   within twice the error bound below of the k-th best fast score: :func:`_worth_rescoring`;
   the others are treated as rows outside the candidates) is scored again on its own by torch
   elementwise ops, ``Σ (q − x)²`` or ``−Σ q·x`` in float32: the *pairwise score*, the same
   bits for the same pair wherever it sits, whatever the batch, tiling or thread count.
   Candidates are ordered by (pairwise score, row), NaN last.
3. **Proof.** A fast score is within ``eps`` of the pairwise one (the bound ``γ_d`` of any
   float32 dot product of length ``d``, doubled, with room, from the row's norm). A row
   outside a query's candidates has a fast score no better than its heap's worst, so a
   pairwise score at least that minus ``eps``, taken at the largest row norm (inner product)
   or, for L2, together with the triangle bound ``(‖x‖ − ‖q‖)²`` at the least favourable norm
   (:func:`_l2_outside_bound`); when this is still worse than the k-th candidate's (by more
   than a float32 rounding of it), no such row can be among the k best or tie with the k-th.
   An inner-product query that met a NaN or +inf fast score (an overflowing sum) is never
   proven. Queries not proven (near-equal scores at the boundary: duplicates;
   NaN/inf scores) run again with 4× and 16× the candidates; what is left is scored pairwise
   against every row (slow, exact).

The result is therefore canonical: **the top-k by pairwise score, ties by lower row** — the
same whatever batch a query is searched in (among searches that take these passes), in
memory or streamed in chunks (:mod:`gpuann.batch.streaming` runs the same passes over its
chunks, and chooses them by the whole job's query count). Used for unfiltered
float32 CPU searches over at least :data:`MIN_ROWS` rows of at least :data:`MIN_L2_QUERIES`
(L2) or :data:`MIN_IP_QUERIES` (inner product) queries when numpy's OpenBLAS is chosen
(:func:`~gpuann.engine.cpu_blas.numpy_blas_active`) and faiss's heaps are available;
``GPUANN_CPU_BLAS=torch`` or ``GPUANN_CPU_SELECT=torch`` keep the tiled search.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from concurrent.futures import wait
from typing import Any

import numpy as np
import torch

from gpuann._env import cpu_select_mode
from gpuann.engine import heap_select
from gpuann.engine.cpu_blas import numpy_blas_active, one_openblas_thread
from gpuann.engine.running import merge_keyed

__all__ = [
    "MIN_IP_QUERIES",
    "MIN_L2_QUERIES",
    "MIN_ROWS",
    "Passes",
    "candidates_for",
    "verified_applies",
    "verified_search",
]

#: Fewest database rows searched this way (below, the tiled search is as fast and a small
#: search need not import faiss). Independent of the number of queries, so that a query gets
#: the same answer alone, in any batch and streamed.
MIN_ROWS = 1 << 15
#: Smaller databases too, down to ``_MIN_ROWS_MANY`` rows, when the search holds at least
#: ``_MIN_SCORES`` scores (Q · N; e.g. 1000 queries against 20 000 rows of 384: products
#: dominate there as well).
_MIN_ROWS_MANY = 4096
_MIN_SCORES = 1 << 22
#: Fewest queries of an inner-product search run this way: its proof needs the row norms, one
#: more pass over every tile (2x a one-query product's time in cache, measured), which the
#: products of this many queries make small (measured at N = 10⁵, d = 128: 16 and 32 queries
#: slower than the tiled search, 64 faster); fewer keep the tiled search.
MIN_IP_QUERIES = 64
#: Fewest queries of an L2 search run this way: a lone query keeps numpy's matrix-vector
#: products in the tiled search (measured: ~1 ms less than these passes' fixed costs at
#: N = 10⁵, d = 128; beyond two queries these passes were faster).
MIN_L2_QUERIES = 2
#: Queries and database rows per product of the fast pass: the tile of rows, the queries and
#: the scores stay in cache (L3 on this project's 2-core AMD). Taller query blocks pack each
#: tile of rows for more queries: 512 × 1024 against 256 × 2048 (the same 2 MiB of scores),
#: A/B in one process, 2 threads, medians, 2026-12-07: 0.74× the time at Q = 1000, N = 10⁵,
#: d = 128, ip, k = 10; 0.94× at d = 384; 0.92× for l2, k = 100; 0.94× at Q = 10 000, l2;
#: 0.99× at N = 20 000, d = 384 (128 × 4096: 0.85× and 1.08×).
QUERY_BLOCK = 512
DATABASE_BLOCK = 1024
#: Scores per product: blocks of few queries take taller tiles of rows.
_TILE_SCORES = 1 << 19
#: Queries per worker below which workers split the database rows instead.
_MIN_PART_QUERIES = 8
#: Candidates per query of the retries, as multiples of the first pass's.
RETRY_FACTORS = (4, 16)
#: Bytes of the pairwise scoring's float32 temporaries per (query, row, dimension) element.
_PAIRWISE_BYTES = 12
#: Largest chunk of gathered candidates re-scored at once (bytes).
_PAIRWISE_CHUNK = 16 << 20
#: Bytes per (query, row) score of the last resort's blocks: the score, and merge_keyed's
#: concatenated values, rows and keys.
_MERGE_BYTES = 32
#: Fewest queries per group of :func:`verified_search` (each group is one or more passes).
_MIN_GROUP = 256
#: Queries scored together by the last resort.
_PAIRWISE_QUERIES = 16
_U = 2.0**-24  # unit roundoff of float32
#: Bisection steps of the L2 bound outside the candidates (brackets to 2⁻⁶⁰ of the norm).
_BISECTIONS = 60
_FLT_MAX = float(np.finfo(np.float32).max)

#: The database, pass after pass: each call yields ``(start, rows, sqnorms)`` chunks in row
#: order (float32 rows on the CPU; squared norms or None).
Passes = Callable[[], Iterable[tuple[int, torch.Tensor, torch.Tensor | None]]]


def candidates_for(k: int, n_database: int) -> int:
    """Candidates kept per query by the first fast pass for ``k`` results (at most ``N``).

    >>> candidates_for(10, 10**5), candidates_for(100, 10**5), candidates_for(10, 12)
    (26, 125, 12)
    """
    return min(n_database, k + max(16, k // 4))


def verified_applies(
    device: torch.device,
    dtype: torch.dtype,
    keyed: bool,
    n_database: int,
    n_queries: int,
    l2: bool,
    column_scale: torch.Tensor | None = None,
    query_scale: torch.Tensor | None = None,
) -> bool:
    """True when an exact search like this runs here (see the module): CPU, float32 storage,
    no row filter or tie order (``keyed``), no column or query scale, ``N >= MIN_ROWS`` (or
    ``N >= 4096`` with ``Q · N >= 2²²``), and
    at least :data:`MIN_L2_QUERIES` (L2) or :data:`MIN_IP_QUERIES` (inner product) queries
    (in the whole job, when it is streamed in chunks).

    >>> verified_applies(torch.device("meta"), torch.float32, False, 10**5, 100, True)
    False
    """
    if device.type != "cpu" or dtype != torch.float32 or keyed:
        return False
    many = n_database >= _MIN_ROWS_MANY and n_queries * n_database >= _MIN_SCORES
    if n_database < MIN_ROWS and not many:
        return False
    if n_queries < (MIN_L2_QUERIES if l2 else MIN_IP_QUERIES):
        return False
    if column_scale is not None or query_scale is not None:
        return False
    if cpu_select_mode() == "torch" or not numpy_blas_active():
        return False
    return heap_select._faiss() is not None


def verified_search(
    queries: torch.Tensor,
    k: int,
    l2: bool,
    n_database: int,
    passes: Passes,
    gather: Callable[[torch.Tensor], torch.Tensor],
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` of every query by pairwise score, ties by lower row (see the module).

    Parameters
    ----------
    queries : torch.Tensor, shape (Q, d), float32, CPU
    k : int
        At most ``n_database``.
    l2 : bool
        Squared L2 distances (else inner products).
    n_database : int
    passes : Passes
        The database rows, one call per pass.
    gather : callable
        ``gather(rows)``: the database rows ``rows`` (int64, shape (n,)) as a new float32
        tensor, shape (n, d) (it is overwritten).
    memory_budget : int
        Bounds the pairwise scoring's temporaries.

    Returns
    -------
    values : torch.Tensor, shape (Q, k), float32
        Squared distances (ascending) or inner products (descending).
    positions : torch.Tensor, shape (Q, k), int64
    """
    q = queries.detach().float().contiguous()
    values = torch.empty((q.shape[0], k))
    positions = torch.empty((q.shape[0], k), dtype=torch.int64)
    first = candidates_for(k, n_database)
    # Queries per group: their heaps and candidates (12 bytes per entry, twice) fit the budget.
    group = max(_MIN_GROUP, memory_budget // (2 * 12 * first))
    for g0 in range(0, q.shape[0], group):
        part = slice(g0, g0 + group)
        found = _search_group(q[part], k, l2, n_database, first, passes, gather, memory_budget)
        values[part], positions[part] = found
    return (values, positions) if l2 else (-values, positions)


def _search_group(
    q: torch.Tensor,
    k: int,
    l2: bool,
    n_database: int,
    first: int,
    passes: Passes,
    gather: Callable[[torch.Tensor], torch.Tensor],
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`verified_search` of a group of queries, "smaller is nearer" values."""
    values = torch.empty((q.shape[0], k))
    positions = torch.empty((q.shape[0], k), dtype=torch.int64)
    todo = torch.arange(q.shape[0])
    for factor in (1, *RETRY_FACTORS):
        kc = min(n_database, first * factor)
        if not todo.numel() or kc >= n_database:
            break
        left = []
        # the retries' candidate lists are longer: fewer queries per pass, same bytes
        step = max(1, memory_budget // (2 * 12 * kc))
        for part in todo.split(step):
            proven, found, rows = _attempt(q[part], k, kc, l2, passes, gather, memory_budget)
            values[part[proven]], positions[part[proven]] = found[proven], rows[proven]
            left.append(part[~proven])
        todo = torch.cat(left)
    if todo.numel():
        values[todo], positions[todo] = _pairwise_search(q[todo], k, l2, passes, memory_budget)
    return values, positions


def _attempt(
    q: torch.Tensor,
    k: int,
    kc: int,
    l2: bool,
    passes: Passes,
    gather: Callable[[torch.Tensor], torch.Tensor],
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fast pass, re-scoring and proof for ``q``: ``(proven, values, rows)``, values "smaller
    is nearer" (Q, k); the rows not ``proven`` hold garbage."""
    fast = _FastPass(q, kc, l2)
    for start, rows, sqnorms in passes():
        fast.add(start, rows, sqnorms)
    rows, worst, full, row_norm_max, fast_scores = fast.result()
    q_norm = torch.linalg.vector_norm(q.double(), dim=1)
    gamma = 4.0 * (q.shape[1] + 8) * _U
    rows = _worth_rescoring(rows, fast_scores, k, l2, q_norm, row_norm_max, gamma)
    exact = _pairwise(q, rows, l2, gather, memory_budget)
    exact, rows = merge_keyed(exact[:, :0], rows[:, :0], exact, rows, k)
    # A finite k-th (-inf above it is a true best: a row holding inf) and k real rows.
    proven = full & torch.isfinite(exact[:, k - 1]) & (rows >= 0).all(dim=1)
    # Every row outside the candidates scores (fast) >= worst: pairwise >= worst - eps.
    if l2:  # the fast pass leaves ‖q‖² out
        outside = _l2_outside_bound(worst + q_norm * q_norm, q_norm, row_norm_max, gamma)
    else:
        outside = worst - gamma * q_norm * row_norm_max
    kth = exact[:, k - 1].double()
    kth_up = kth + 2.0 * _U * kth.abs() + 1e-30  # past the float32 rounding of the k-th
    proven &= outside > kth_up
    return proven, exact, rows


def _worth_rescoring(
    rows: torch.Tensor,
    fast: torch.Tensor,
    k: int,
    l2: bool,
    q_norm: torch.Tensor,
    r_max: float,
    gamma: float,
) -> torch.Tensor:
    """The candidates that may still be among the ``k`` best: first in each row, ``-1`` after
    them, the columns cut to the most any query keeps (at least ``k``).

    A fast score is within ``eps`` of the pairwise one (the bound of :func:`_attempt`'s proof
    at the largest row norm). The ``k`` best fast scores then have pairwise scores at most
    ``f_k + eps`` (``f_k``: the k-th best fast score), so the pairwise k-th is too; a candidate
    whose fast score exceeds ``f_k + 2 eps`` plus the k-th's rounding margin has a pairwise
    score past that margin: it can be neither among the ``k`` best nor tie with the k-th,
    exactly as the rows outside the candidates, and is not re-scored. With no bound (an
    infinite norm: NaN or infinite limits) or a non-finite fast score among a query's
    candidates, every candidate of that query is kept.
    """
    if k >= rows.shape[1]:
        return rows
    f = fast.double()
    if l2:  # the fast pass leaves ‖q‖² out
        f = f + (q_norm * q_norm)[:, None]
        eps = gamma * (q_norm + r_max) ** 2
    else:
        eps = gamma * q_norm * r_max
    f_k = f.kthvalue(k, dim=1).values
    limit = f_k + 2.0 * eps + 2.0 * _U * (f_k.abs() + eps) + 1e-30
    # A fast sum that overflowed (L2's ‖x‖² − 2⟨q, x⟩ can reach -inf with valid inputs) is
    # not within eps of its pairwise score: such a query keeps every candidate (found by
    # review: a -inf candidate above a finite k-th pushed a nearer one out)
    overflowed = (~torch.isfinite(f) & (rows >= 0)).any(dim=1)
    limit = limit.masked_fill(overflowed, math.inf)
    skip = (f > limit[:, None]) | (rows < 0)  # NaN limit: kept
    order = torch.argsort(skip.to(torch.uint8), dim=1, stable=True)
    kept = rows.gather(1, order).masked_fill_(skip.gather(1, order), -1)
    return kept[:, : max(k, int((~skip).sum(dim=1).max()))]


def _l2_outside_bound(
    a: torch.Tensor, q_norm: torch.Tensor, r_max: float, gamma: float
) -> torch.Tensor:
    """A lower bound (Q,) of the pairwise L2 score of every row outside each query's
    candidates, float64.

    Such a row ``x``, of norm ``r <= r_max``, has a fast score no better than the heap's
    worst, so a pairwise score ``p >= a − γ(‖q‖ + r)²`` (``a``: the worst plus ``‖q‖²``); and
    ``p >= (1 − γ)(r − ‖q‖)²`` (triangle inequality). The first falls with ``r``, the second
    rises, so over ``[0, r_max]`` their maximum is least near their crossing: bisection
    brackets it, and ``min(near(hi), far(lo))`` bounds that maximum from below for every ``r``
    (``r <= hi`` or ``r >= lo``). One long row then no longer loosens every query's bound as
    ``a − γ(‖q‖ + r_max)²`` alone did (found by review: N = 32 768, one row ×300, every query
    went to the pairwise last resort).
    """
    if not math.isfinite(r_max):
        return torch.full_like(a, -math.inf)

    def near(r: torch.Tensor) -> torch.Tensor:
        return a - gamma * (q_norm + r) ** 2

    def far(r: torch.Tensor) -> torch.Tensor:
        return (1.0 - gamma) * (r - q_norm).clamp(min=0.0) ** 2

    top = torch.full_like(a, r_max)
    lo, hi = torch.zeros_like(a), top
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        before = near(mid) >= far(mid)
        lo, hi = torch.where(before, mid, lo), torch.where(before, hi, mid)
    return torch.maximum(near(top), torch.minimum(near(hi), far(lo)))


class _FastPass:
    """OpenBLAS products fed to faiss heaps by pool workers, chunk after chunk.

    With at least ``_MIN_PART_QUERIES`` queries per thread, each worker owns a range of
    queries and sees every row; otherwise each owns a share of every chunk's rows (its heaps
    hold the best of its share, the candidates are the union).
    """

    def __init__(self, q: torch.Tensor, kc: int, l2: bool) -> None:
        self.l2, self.kc = l2, kc
        # "smaller is nearer": ‖x‖² − 2⟨q, x⟩ or −⟨q, x⟩ (scaling by −2 or −1 is exact)
        self.qs = (q * (-2.0 if l2 else -1.0)).numpy()
        self.threads = max(1, torch.get_num_threads())
        n_queries = q.shape[0]
        by_queries = n_queries >= _MIN_PART_QUERIES * self.threads or self.threads == 1
        query_parts = self.threads if by_queries else 1
        self.row_parts = 1 if by_queries else self.threads
        bounds = [n_queries * i // query_parts for i in range(query_parts + 1)]
        self.jobs = [
            _Job(self.qs, lo, hi, kc, l2, measures_norms=(i == 0 or not by_queries))
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
            for _ in range(self.row_parts)
        ]

    def add(self, start: int, rows: torch.Tensor, sqnorms: torch.Tensor | None) -> None:
        x = rows.detach().float().contiguous().numpy()
        sq = None if sqnorms is None else sqnorms.detach().float().contiguous().numpy()
        n = x.shape[0]
        cuts = [n * i // self.row_parts for i in range(self.row_parts + 1)]
        pool = heap_select._pool(self.threads)
        if sq is None and self.row_parts == 1 and len(self.jobs) > 1:
            # Every job sees every row and needs the norms (L2's scores; an inner product's
            # bounds): measured once, shared out, instead of by each job (L2) or by the
            # first alone while the others wait (inner product).
            sq = _squared_norms(x, pool, len(self.jobs))
        with one_openblas_thread():
            futures = []
            for i, job in enumerate(self.jobs):
                part = i % self.row_parts
                futures.append(pool.submit(job.feed, x, sq, start, cuts[part], cuts[part + 1]))
            wait(futures)
            for f in futures:
                f.result()  # a worker's exception, once all are done

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor]:
        """Candidate rows (Q, row_parts · kc) (``-1`` for empty places), the worst fast score
        outside them per query (float64), whether every heap holds as many entries as it
        saw rows (a heap drops NaN and +inf), the largest finite row norm, and the
        candidates' fast scores (Q, row_parts · kc), float32."""
        rows, worst, full, scores = [], [], [], []
        for part in range(self.row_parts):
            jobs = self.jobs[part :: self.row_parts]
            rows.append(torch.cat([torch.from_numpy(j.heap_rows) for j in jobs]))
            scores.append(torch.cat([torch.from_numpy(j.heap_values) for j in jobs]))
            worst.append(torch.cat([torch.from_numpy(j.heap_values[:, 0]) for j in jobs]))
            full.append(torch.cat([torch.from_numpy(j.full()) for j in jobs]))
        norm2 = max(j.norm2_max for j in self.jobs)
        return (
            torch.cat(rows, dim=1),
            torch.stack(worst).double().amin(dim=0),
            torch.stack(full).all(dim=0),
            math.sqrt(norm2),
            torch.cat(scores, dim=1),
        )


class _Job:
    """The heaps of queries ``lo : hi`` over the rows a worker is given."""

    def __init__(
        self, qs: np.ndarray, lo: int, hi: int, kc: int, l2: bool, measures_norms: bool
    ) -> None:
        self.qs, self.lo, self.hi, self.l2 = qs, lo, hi, l2
        self.measures_norms = measures_norms
        self.heap_values = np.full((hi - lo, kc), _FLT_MAX, dtype=np.float32)
        self.heap_rows = np.full((hi - lo, kc), -1, dtype=np.int64)
        self.seen = 0
        #: Inner product: every fast score of the query was below FLT_MAX (a heap drops NaN
        #: and +inf, and an overflowing fast sum can hide a row whose pairwise sum is finite).
        self.finite = np.ones(hi - lo, dtype=bool)
        #: Inner product: each query's squared norm, float64 (NaN/inf for such queries).
        with np.errstate(all="ignore"):
            self.q_norm2 = None if l2 else np.square(qs[lo:hi], dtype=np.float64).sum(axis=1)
        self.norm2_max = 0.0
        # few queries: taller tiles (fewer calls), the same bytes of scores
        height = min(QUERY_BLOCK, hi - lo)
        self.tile_rows = max(DATABASE_BLOCK, _TILE_SCORES // height)
        self._buffer = np.empty(height * self.tile_rows, dtype=np.float32)

    def full(self) -> np.ndarray:
        """(hi - lo,) bool: the heap holds ``min(kc, rows seen)`` entries (and, for inner
        products, no fast score was NaN or +inf)."""
        held = (self.heap_rows >= 0).sum(axis=1) >= min(self.heap_rows.shape[1], self.seen)
        return held & self.finite

    def _bounded(self, i0: int, m: int, bound2: float) -> bool:
        """Inner product: no fast score of queries ``i0 : i0 + m`` against rows whose
        ``‖x‖²`` are at most ``bound2`` can reach FLT_MAX, so the scan for one is skipped.

        A float32 dot product of any order is within ``γ_d ‖q‖ ‖x‖`` of the exact one, its
        partial sums too (Cauchy–Schwarz), so ``|score| <= (1 + γ_d) ‖q‖ ‖x‖``: with
        ``‖q‖ ‖x‖ <= FLT_MAX / 2`` every score is finite and below FLT_MAX (NaN or infinite
        norms fail the test and are scanned).
        """
        q2 = float(self.q_norm2[i0 - self.lo : i0 - self.lo + m].max())
        return q2 * bound2 <= _FLT_MAX * _FLT_MAX / 4.0

    def feed(self, x: np.ndarray, sq: np.ndarray | None, start: int, a: int, b: int) -> None:
        """Rows ``a : b`` of a chunk ``x`` whose first row is database row ``start``."""
        faiss = heap_select._faiss()
        heaps = faiss.float_maxheap_array_t()
        heaps.nh, heaps.k = self.hi - self.lo, self.heap_values.shape[1]
        heaps.val = faiss.swig_ptr(self.heap_values)
        heaps.ids = faiss.swig_ptr(self.heap_rows)
        self.seen += b - a
        with np.errstate(all="ignore"):  # NaN/inf: left to the proof and the retries
            for j0 in range(a, b, self.tile_rows):
                tile = x[j0 : min(b, j0 + self.tile_rows)]
                n = tile.shape[0]
                tile_sq = None
                if sq is not None:
                    tile_sq = sq[j0 : j0 + n]
                elif self.l2 or self.measures_norms:
                    tile_sq = np.einsum("ij,ij->i", tile, tile)
                # an inner product's bound on every row's ‖x‖² (inf: none; NaN/inf rows,
                # left out of _norm2_bound, have unbounded scores)
                scan_bound = math.inf
                if tile_sq is not None and (self.measures_norms or not self.l2):
                    bound2 = _norm2_bound(tile, tile_sq)
                    if self.measures_norms:
                        self.norm2_max = max(self.norm2_max, bound2)
                    if not self.l2 and math.isfinite(float(tile_sq.max())):
                        scan_bound = bound2
                for i0 in range(self.lo, self.hi, QUERY_BLOCK):
                    m = min(QUERY_BLOCK, self.hi - i0)
                    scores = self._buffer[: m * n].reshape(m, n)
                    np.matmul(self.qs[i0 : i0 + m], tile.T, out=scores)
                    if self.l2:
                        np.add(scores, tile_sq, out=scores)
                    elif not self._bounded(i0, m, scan_bound) and not scores.max() < _FLT_MAX:
                        rows = slice(i0 - self.lo, i0 - self.lo + m)
                        self.finite[rows] &= scores.max(axis=1) < _FLT_MAX
                    heaps.addn(n, faiss.swig_ptr(scores), start + j0, i0 - self.lo, m)


def _squared_norms(x: np.ndarray, pool: Any, parts: int) -> np.ndarray:
    """Each row's float32 squared norm, shape (n,), the rows cut into ``parts`` shares
    measured on ``pool``'s workers."""
    out = np.empty(x.shape[0], dtype=np.float32)

    def share(a: int, b: int) -> None:
        with np.errstate(all="ignore"):
            np.einsum("ij,ij->i", x[a:b], x[a:b], out=out[a:b])

    cuts = [x.shape[0] * i // parts for i in range(parts + 1)]
    futures = [pool.submit(share, a, b) for a, b in itertools.pairwise(cuts)]
    wait(futures)
    for f in futures:
        f.result()
    return out


def _norm2_bound(tile: np.ndarray, sqnorms: np.ndarray) -> float:
    """An upper bound of ``‖x‖²`` over the rows of ``tile`` without NaN or inf, from their
    float32 squared norms (within ``γ_d`` of the truth); ``inf`` where a finite row's norm
    overflowed (no proof then)."""
    top = float(sqnorms.max())
    if not math.isfinite(top):
        odd = np.flatnonzero(~np.isfinite(sqnorms))
        if np.isfinite(tile[odd]).all(axis=1).any():
            return math.inf  # finite values whose squares overflow float32
        kept = sqnorms[np.isfinite(sqnorms)]
        top = float(kept.max()) if kept.size else 0.0
    return top * (1.0 + 2.0 * (tile.shape[1] + 2) * _U)


def _pairwise(
    q: torch.Tensor,
    rows: torch.Tensor,
    l2: bool,
    gather: Callable[[torch.Tensor], torch.Tensor],
    memory_budget: int,
) -> torch.Tensor:
    """Pairwise "smaller is nearer" scores (Q, C) of query i with row ``rows[i, j]``
    (``+inf`` where the row is -1), in query chunks of at most ``_PAIRWISE_CHUNK`` bytes and
    the budget (measured: 16 MiB chunks 4x faster than 256 MiB ones, 1000 × 125 × 128)."""
    n_queries, width = rows.shape
    dim = q.shape[1]
    out = torch.empty((n_queries, width))
    room = min(memory_budget // 4, _PAIRWISE_CHUNK)
    chunk = max(1, room // max(1, width * dim * _PAIRWISE_BYTES))
    columns = max(1, room // max(1, dim * _PAIRWISE_BYTES))  # one query's share, at least
    for c0 in range(0, n_queries, chunk):
        part = slice(c0, c0 + chunk)
        for w0 in range(0, width, columns):
            cols = slice(w0, w0 + columns)
            block = rows[part, cols]
            used = (block >= 0).any(dim=0).nonzero()
            if not used.numel():
                out[part, cols] = float("inf")
                continue
            block = block[:, : int(used[-1]) + 1]  # columns of -1 only: not gathered
            cols = slice(w0, w0 + block.shape[1])
            pairs = gather(block.clamp(min=0).reshape(-1)).view(*block.shape, dim)
            scores = torch.empty(block.shape)
            _score_pairs(q[part, None, :], pairs, l2, scores)
            out[part, cols] = scores
    return out.masked_fill_(rows < 0, float("inf"))


def _score_pairs(q: torch.Tensor, x: torch.Tensor, l2: bool, out: torch.Tensor) -> None:
    """``out = Σ_d (q − x)²`` or ``−Σ_d q·x`` over the last dimension, pair by pair (``x`` is
    overwritten)."""
    if out.numel() == 1:
        # torch splits a lone output's sum across threads past 32 768 elements (other bits
        # than the same pair among others, found by review): score it as one of two
        pair = torch.empty((1, 2))
        twice = x.reshape(1, 1, -1).expand(1, 2, -1).clone()
        _score_pairs(q.reshape(1, 1, -1), twice, l2, pair)
        out.view(1).copy_(pair[0, :1])
        return
    with torch.no_grad():
        if l2:
            x.sub_(q).square_()
            torch.sum(x, dim=-1, out=out)
        else:
            x.mul_(q)
            torch.sum(x, dim=-1, out=out).neg_()


def _pairwise_search(
    q: torch.Tensor, k: int, l2: bool, passes: Passes, memory_budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k by pairwise score against every row (the last resort), "smaller is nearer":
    ``_PAIRWISE_QUERIES`` queries at a time, rows in blocks under the budget."""
    n_queries, dim = q.shape
    values = torch.empty((n_queries, 0))
    rows = torch.empty((n_queries, 0), dtype=torch.int64)
    # rows per block: the pairs' temporaries, and the block's scores with their merge
    per_row = _PAIRWISE_QUERIES * dim * _PAIRWISE_BYTES + n_queries * _MERGE_BYTES
    block = max(1, memory_budget // per_row)
    for start, chunk, _ in passes():
        for r0 in range(0, chunk.shape[0], block):
            x = chunk[r0 : r0 + block].float()
            scores = torch.empty((n_queries, x.shape[0]))
            for q0 in range(0, n_queries, _PAIRWISE_QUERIES):
                part = slice(q0, q0 + _PAIRWISE_QUERIES)
                pairs = x.expand(scores[part].shape[0], -1, -1).clone()
                _score_pairs(q[part, None, :], pairs, l2, scores[part])
            cols = torch.arange(start + r0, start + r0 + x.shape[0]).expand(n_queries, -1)
            values, rows = merge_keyed(values, rows, scores, cols, k)
    return values, rows
