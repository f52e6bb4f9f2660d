"""Out-of-core exact search: the database streams through the device one chunk at a time.

This module does the I/O only; the search itself is the dispatcher's. For every chunk of
queries the database is visited once, in row order, one transfer (``chunk_rows`` rows, a whole
number of tiles) at a time, and each transfer is handed on:

* to the tiled engine of :mod:`gpuann.engine` when the dispatcher picks the torch backend —
  the very loop that backend runs in memory, on the same tiles (:func:`plan_stream` asks for
  the tiles ``knn`` uses), so the results are those of :func:`gpuann.knn` bit for bit; on
  the CPU, where ``knn`` runs the verified OpenBLAS passes
  (:mod:`gpuann.engine.verified_cpu`), the same passes run over the chunks (the candidates
  re-scored from :meth:`~gpuann.batch.inputs.MatrixSource.take`), and their answer, the
  top-k by pairwise score, is ``knn``'s too, for any cut into chunks;
* otherwise (the Triton kernel on CUDA) to the chosen backend, chunk by chunk, and the
  chunk's lists are merged into the running ones (ties to the lower row). The ids and
  distances are those ``knn`` gives on that backend for the same chunk of queries (the
  kernel's tile shapes, hence its float sums, depend on the number of queries), except that
  L2 distances which round or clamp to the same value in different chunks tie by lower row.

A self-join excludes each query's own row through the same row filter as ``exclude_ids``.

How the rows travel to the device (slices, a reader thread, pinned buffers and a side CUDA
stream) is :mod:`gpuann.batch.transfers`, the base of :class:`StreamingExactSearch`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from gpuann._validate import check_finite as _require_finite
from gpuann.backends.base import SearchRequest
from gpuann.backends.dispatch import select_backend
from gpuann.backends.torch_backend import TorchBackend
from gpuann.batch.inputs import MatrixSource, stored_bytes
from gpuann.batch.transfers import DatabaseStream
from gpuann.budget import DEFAULT_CPU_BUDGET, TilePlan
from gpuann.engine.eligibility import RowFilters
from gpuann.engine.running import merge_keyed
from gpuann.engine.search import Chunk, TiledSearch
from gpuann.engine.tiles import plan_score_tiles
from gpuann.engine.verified_cpu import verified_applies, verified_search
from gpuann.inputs import cosine_columns, unit_rows
from gpuann.metrics import Metric

__all__ = ["StreamPlan", "StreamingExactSearch", "plan_stream", "stream_step_bytes"]


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """Tile shapes of a streamed search (stored in the checkpoint, reused on resume).

    Attributes
    ----------
    query_tile : int
        Queries scored together; query chunks hold whole tiles.
    database_tile : int
        Database rows per score tile; transfers hold whole tiles.
    """

    query_tile: int
    database_tile: int


def plan_stream(
    n_queries: int, n_database: int, dim: int, k: int, device: torch.device, memory_budget: int
) -> StreamPlan:
    """The tiles the in-memory torch backend (``knn``) would use for the same search.

    >>> plan_stream(100, 10_000, 64, 10, torch.device("cpu"), 256 << 20)
    StreamPlan(query_tile=100, database_tile=10000)
    """
    plan = plan_score_tiles(n_queries, n_database, dim, k, memory_budget, device)
    return StreamPlan(plan.query_block, plan.database_block)


def stream_step_bytes(
    n_queries: int, n_database: int, dim: int, k: int, device: torch.device, memory_budget: int
) -> int:
    """Working bytes of one score step of :func:`plan_stream`'s tiles (at most the budget)."""
    plan = plan_score_tiles(n_queries, n_database, dim, k, memory_budget, device)
    return int(plan.bytes_per_step)


class StreamingExactSearch(DatabaseStream):
    """Exact k-NN of query chunks against a database streamed through ``device``.

    Parameters
    ----------
    source : MatrixSource
        The database, shape (N, d).
    k : int
    metric : Metric
    device : torch.device
        Where scores are computed.
    plan : StreamPlan
    chunk_rows : int
        Database rows per transfer, a multiple of ``plan.database_tile``.
    check_finite : bool
        Raise on NaN or infinity in the database (checked during the first pass) and queries.
    backend : str
        ``"auto"`` or the name of an exact-search backend (see ``gpuann.backends``).
    memory_budget : int
        Bytes of working memory of the search (as in ``knn``).
    query_name : str
        The queries' argument name in error messages (``x`` for a self-join); the database's is
        ``source.name``.
    """

    def __init__(
        self,
        source: MatrixSource,
        k: int,
        metric: Metric,
        device: torch.device,
        plan: StreamPlan,
        chunk_rows: int,
        *,
        check_finite: bool = True,
        backend: str = "auto",
        memory_budget: int = DEFAULT_CPU_BUDGET,
        query_name: str = "queries",
    ) -> None:
        self.k, self.metric, self.query_name = k, metric, query_name
        #: Hash the database during the first complete pass (for the checkpoint of a job).
        self.hash_database = False
        #: SHA-256 of the rows as they streamed in that pass, once it completed.
        self.database_sha256: str | None = None
        self._database_digest = None
        self.check_finite, self.backend, self.memory_budget = check_finite, backend, memory_budget
        self._checked_rows = 0
        #: Queries of the whole job (the verified CPU passes choose by it, as ``knn`` does for
        #: all of them at once); None: each chunk's own.
        self.job_queries: int | None = None
        super().__init__(source, device, plan, chunk_rows)

    # ------------------------------------------------------------------ search
    def search(
        self, queries: torch.Tensor, first_row: int = 0, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """One pass over the database for a chunk of queries.

        Parameters
        ----------
        queries : torch.Tensor, shape (B, d), floating
            Query rows ``first_row : first_row + B`` of the job; ``first_row`` is a multiple
            of ``plan.query_tile``.
        first_row : int
        exclude_self : bool
            Self-join: query row ``i`` of the job never matches database row ``i``.

        Returns
        -------
        distances : numpy.ndarray, shape (B, k), float32
        ids : numpy.ndarray, shape (B, k), int64
        """
        k, metric, device = self.k, self.metric, self.device
        n_database, n_queries = self.source.shape[0], queries.shape[0]
        distances = np.full((n_queries, k), metric.missing_distance, dtype=np.float32)
        ids = np.full((n_queries, k), -1, dtype=np.int64)
        if n_queries == 0 or n_database == 0:
            return distances, ids
        if self.check_finite:
            _require_finite(queries, self.query_name, row_offset=first_row)
        queries = queries.to(device)
        if metric is Metric.COSINE:
            queries = unit_rows(queries)  # scale-safe, as knn and the indexes
        excluded = None
        if exclude_self:
            own = torch.arange(first_row, first_row + n_queries, device=device)
            excluded = own[:, None]
        backend = self._choose_backend(queries, excluded)
        k_found = min(k, n_database)
        if isinstance(backend, TorchBackend):
            top_values, top_rows = self._engine_pass(queries, k_found, excluded)
        else:
            top_values, top_rows = self._backend_pass(backend, queries, k_found, excluded)
        distances[:, :k_found] = top_values.cpu().numpy()
        ids[:, :k_found] = top_rows.cpu().numpy()
        return distances, ids

    def _checked(self) -> Iterator[tuple[int, torch.Tensor]]:
        """:meth:`chunks`, with the finiteness check of each chunk's first pass, and the
        database's hash (``hash_database``) over the first pass that completes."""
        n = self.source.shape[0]
        for start, rows in self.chunks():
            if self.check_finite and start >= self._checked_rows:
                _require_finite(rows, self.source.name, row_offset=start)
                self._checked_rows = start + rows.shape[0]
            if self.hash_database and self.database_sha256 is None:
                if start == 0:  # a pass cut short (out of memory) starts the hash over
                    self._database_digest = hashlib.sha256()
                self._database_digest.update(stored_bytes(rows))
                if start + rows.shape[0] == n:
                    self.database_sha256 = self._database_digest.hexdigest()
            yield start, rows

    def _choose_backend(self, queries: torch.Tensor, excluded: torch.Tensor | None):
        """The backend the dispatcher picks for a search like this one."""
        dim = self.source.shape[1]
        probe = SearchRequest(
            queries=queries,
            database=torch.empty((0, dim), dtype=self.source.stream_dtype(), device=self.device),
            k=self.k,
            metric=Metric.L2 if self.metric is Metric.L2 else Metric.IP,
            database_sqnorms=None,
            column_scale=None,
            memory_budget=self.memory_budget,
            excluded_rows=excluded,
        )
        return select_backend(probe, self.backend)

    def _engine_pass(
        self, queries: torch.Tensor, k: int, excluded: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch backend's search over the streamed chunks: its verified CPU passes
        where ``knn`` runs those (:mod:`gpuann.engine.verified_cpu`), else its tile loop."""
        n_database, l2 = self.source.shape[0], self.metric is Metric.L2
        job_queries = self.job_queries or queries.shape[0]
        if self.metric is not Metric.COSINE and verified_applies(
            self.device,
            self.source.stream_dtype(),
            excluded is not None,
            n_database,
            job_queries,
            l2,
        ):
            return verified_search(
                queries.float(),
                k,
                self.metric is Metric.L2,
                n_database,
                lambda: ((start, rows, None) for start, rows in self._checked()),
                self.source.take,
                self.memory_budget,
            )
        plan = TilePlan(self.plan.query_tile, self.plan.database_tile, 0)
        search = TiledSearch(
            queries,
            k,
            self.metric is Metric.L2,
            plan,
            filters=RowFilters(excluded_rows=excluded),
            memory_budget=self.memory_budget,
        )
        for start, rows in self._checked():
            scale = None
            if self.metric is Metric.COSINE:  # scale-safe, as knn
                rows, scale = cosine_columns(rows)
            search.add(Chunk(start, rows, None, scale))
        return search.result()

    def _backend_pass(
        self, backend, queries: torch.Tensor, k: int, excluded: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Another backend searches each chunk; the chunks' lists merge into running ones."""
        l2, device = self.metric is Metric.L2, self.device
        top_values = torch.empty((queries.shape[0], 0), device=device)
        top_rows = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=device)
        for start, rows in self._checked():
            scale = None
            if self.metric is Metric.COSINE:  # scale-safe, as knn
                rows, scale = cosine_columns(rows)
            local = None
            if excluded is not None:
                shifted = excluded - start
                local = torch.where((shifted >= 0) & (shifted < rows.shape[0]), shifted, -1)
            request = SearchRequest(
                queries=queries,
                database=rows,
                k=k,
                metric=Metric.L2 if l2 else Metric.IP,
                database_sqnorms=None,
                column_scale=scale,
                memory_budget=self.memory_budget,
                excluded_rows=local,
            )
            values, positions = backend.search(request)
            values = values if l2 else -values  # smaller is nearer
            positions = torch.where(positions >= 0, positions + start, -1)
            top_values, top_rows = merge_keyed(top_values, top_rows, values, positions, k)
        top_values = top_values.masked_fill(top_rows < 0, float("inf"))
        return (top_values if l2 else -top_values), top_rows
