"""``batch_search`` and ``self_join``: long offline searches, checkpointed chunk by chunk."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpuann._validate import check_k, resolve_device
from gpuann.batch.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    read_checkpoint,
    verify_job,
    write_checkpoint,
)
from gpuann.batch.inputs import MatrixSource, as_matrix_source
from gpuann.batch.outputs import IDS_NAME, ResultSink
from gpuann.batch.progress import make_progress
from gpuann.batch.sizing import BatchSizer, auto_batch_rows, auto_chunk_rows, is_out_of_memory
from gpuann.batch.streaming import StreamingExactSearch, StreamPlan, plan_stream
from gpuann.budget import check_budget
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult

__all__ = ["ChunkInfo", "batch_search", "self_join"]


@dataclasses.dataclass(frozen=True)
class ChunkInfo:
    """What ``on_chunk`` hears after each completed (and checkpointed) chunk.

    Attributes
    ----------
    chunks_done : int
        Chunks completed over every run of the job, this one included.
    start, stop : int
        The chunk's query rows.
    n_queries : int
        Rows in the whole job.
    batch_rows, retries : int
        The current chunk size and how many out-of-memory retries shrank it so far.
    """

    chunks_done: int
    start: int
    stop: int
    n_queries: int
    batch_rows: int
    retries: int


@dataclasses.dataclass
class _Job:
    """Everything the chunk loop needs, resolved from the user's arguments."""

    queries: MatrixSource
    k: int
    metric: Metric
    description: dict[str, Any]
    plan: StreamPlan
    sizer: BatchSizer
    compute: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    set_chunk_rows: Callable[[int], None]

    def use_plan(self, plan: StreamPlan) -> None:
        """Adopt ``plan`` (a resumed job's): chunks of whole tiles of its sizes."""
        self.plan = plan
        sizer = self.sizer
        sizer.unit, sizer.chunk_unit = max(1, plan.query_tile), max(1, plan.database_tile)
        sizer.batch_rows = max(sizer.unit, sizer.batch_rows // sizer.unit * sizer.unit)
        sizer.chunk_rows = max(
            sizer.chunk_unit, sizer.chunk_rows // sizer.chunk_unit * sizer.chunk_unit
        )
        self.set_chunk_rows(sizer.chunk_rows)


def batch_search(
    queries: Any,
    index_or_database: Any,
    k: int,
    out: str | os.PathLike | None = None,
    batch_size: int | str = "auto",
    progress: bool = True,
    resume: bool = False,
    metric: str | Metric | None = None,
    *,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
    database_chunk_rows: int | None = None,
    check_finite: bool = True,
    overwrite: bool = False,
    on_chunk: Callable[[ChunkInfo], None] | None = None,
) -> SearchResult:
    """Search many queries, in checkpointed chunks, against an index or an out-of-core database.

    Parameters
    ----------
    queries : torch.Tensor, numpy.ndarray, numpy.memmap, str or os.PathLike
        Shape (Q, d), floating; a path names a ``.npy`` file, opened memory-mapped.
    index_or_database : index, torch.Tensor, numpy.ndarray, str or os.PathLike
        Any gpuann index (anything with ``.search(queries, k)``, or the path of a saved
        ``.gpuann`` index file), or a database (N, d) for exact search: a tensor (on the
        device, or in host memory, pinned or not), a numpy array, a memory-mapped ``.npy`` or
        its path. Databases are streamed through the device a chunk at a time, so they may
        exceed device memory (and, memory-mapped, host memory); the results are those of
        :func:`gpuann.knn` bit for bit.
    k : int
        Neighbours per query.
    out : str or os.PathLike, optional
        Folder receiving ``ids.npy`` (int64) and ``distances.npy`` (float32), both (Q, k),
        and ``checkpoint.json``; created if needed. Without it results stay in memory and
        nothing can be resumed.
    batch_size : int or "auto"
        Queries per chunk (the unit of work and of checkpointing). ``"auto"`` sizes chunks
        from free device memory and the memory budget. For exact search chunks hold whole
        query tiles, so the size is rounded down to a multiple of the tile (a size below one
        tile makes the tile that small).
    progress : bool
        Show a ``tqdm.auto`` bar with the throughput (queries/s).
    resume : bool
        Continue the job checkpointed in ``out`` where its last completed chunk ended, after
        checking that it is the same job (queries, database or index, ``k``, metric, device
        type); raises :class:`~gpuann.batch.checkpoint.CheckpointMismatchError` otherwise. No
        checkpoint in ``out``: starts from the beginning.
    metric : {"l2", "ip", "cosine"}, optional
        Databases: default ``"l2"``. Indexes search with their own metric; giving another
        one raises.
    device : str or torch.device, optional
        Where exact search computes; default: the database's CUDA device, else CUDA when
        available, else CPU.
    memory_budget : int, optional
        Bytes of score-tile workspace, as in :func:`gpuann.knn` (same default).
    database_chunk_rows : int, optional
        Database rows per transfer (rounded down to whole tiles); default about 256 MiB on
        CUDA, 64 MiB on the CPU.
    check_finite : bool
        Raise on NaN or infinity in queries and database.
    overwrite : bool
        Start over even if ``out`` already holds results (otherwise that raises, so hours of
        work are not lost to a missing ``resume=True``).
    on_chunk : callable, optional
        Called with a :class:`ChunkInfo` after each chunk is written and checkpointed.

    Returns
    -------
    SearchResult
        ``(distances, ids)``, each (Q, k): read-only ``numpy.memmap`` of the files when
        ``out`` is given; else tensors (CPU) for tensor queries and numpy arrays otherwise.
        Ids are database rows (or the index's ids), ties by lower id, ``-1`` when missing.

    Examples
    --------
    >>> db = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    >>> D, I = batch_search(db[:5], db, k=3, progress=False)
    >>> I[:, 0].tolist()
    [0, 1, 2, 3, 4]
    """
    query_source = as_matrix_source(queries, "queries")
    target = _resolve_target(index_or_database, device)
    if isinstance(target, MatrixSource):
        job = _exact_job(
            query_source, target, k, metric, device, memory_budget, batch_size,
            database_chunk_rows, check_finite, exclude_self=False,
        )  # fmt: skip
    else:
        job = _index_job(query_source, target, k, metric, batch_size)
    return _run(job, out, progress, resume, overwrite, on_chunk, isinstance(queries, torch.Tensor))


def self_join(
    x: Any,
    k: int,
    out: str | os.PathLike | None = None,
    batch_size: int | str = "auto",
    progress: bool = True,
    resume: bool = False,
    metric: str | Metric = "l2",
    *,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
    database_chunk_rows: int | None = None,
    check_finite: bool = True,
    overwrite: bool = False,
    on_chunk: Callable[[ChunkInfo], None] | None = None,
) -> SearchResult:
    """The ``k`` nearest other rows of every row of ``x``: a kNN graph, or candidate duplicates.

    Exact, out-of-core and resumable like :func:`batch_search` (same parameters). Each row
    is excluded from its own list by position, so exact duplicates of a row are found (at
    distance 0, or similarity 1 for cosine) while the row itself never is.

    Parameters
    ----------
    x : torch.Tensor, numpy.ndarray, numpy.memmap, str or os.PathLike
        Shape (N, d), floating.
    k : int
        Neighbours per row; past ``N - 1`` the lists are padded with id ``-1``.

    Returns
    -------
    SearchResult
        ``(distances, ids)`` of shape (N, k); ids are row numbers of ``x``.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    >>> self_join(x, k=2, progress=False).ids.tolist()
    [[1, 2], [0, 2], [0, 1]]
    """
    source = as_matrix_source(x, "x")
    job = _exact_job(
        source, source, k, metric, device, memory_budget, batch_size, database_chunk_rows,
        check_finite, exclude_self=True,
    )  # fmt: skip
    return _run(job, out, progress, resume, overwrite, on_chunk, isinstance(x, torch.Tensor))


# ---------------------------------------------------------------------- job setup
def _resolve_target(target: Any, device: Any) -> Any:
    """A :class:`MatrixSource` for databases, the index object for indexes."""
    if isinstance(target, (str, os.PathLike)) and Path(target).suffix != ".npy":
        from gpuann.serialization import MAGIC, load

        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"index_or_database: no such file {str(path)!r}")
        with open(path, "rb") as f:
            is_index = f.read(len(MAGIC)) == MAGIC
        if is_index:
            return load(path, device)
    if isinstance(target, (torch.Tensor, np.ndarray, str, os.PathLike)):
        return as_matrix_source(target, "database")
    if callable(getattr(target, "search", None)):
        return target
    raise TypeError(
        "index_or_database: expected a gpuann index (with .search), a tensor, a numpy array or "
        f"a .npy / .gpuann path, got {type(target).__name__}"
    )


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size == "auto":
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size: expected a positive int or 'auto', got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive int or 'auto', got {batch_size}")
    return int(batch_size)


def _exact_job(
    queries: MatrixSource,
    database: MatrixSource,
    k: Any,
    metric: Any,
    device: Any,
    memory_budget: int | None,
    batch_size: Any,
    chunk_rows: int | None,
    check_finite: bool,
    *,
    exclude_self: bool,
) -> _Job:
    k = check_k(k)
    metric = as_metric(metric if metric is not None else "l2")
    n, dim = database.shape
    if queries.shape[1] != dim:
        raise ValueError(
            f"queries: expected {dim} columns (the database's), got {queries.shape[1]}"
        )
    if device is None and database.device.type == "cuda":
        device = database.device
    device = resolve_device(device)
    budget = check_budget(memory_budget, device)
    requested = _check_batch_size(batch_size)
    plan = plan_stream(queries.shape[0], n, dim, k, device, budget)
    if requested is not None and requested < plan.query_tile:
        plan = StreamPlan(requested, plan.database_tile)
    row_bytes = dim * database.stream_dtype().itemsize
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(n, row_bytes, plan.database_tile, device)
    engine = StreamingExactSearch(
        database, k, metric, device, plan, chunk_rows, check_finite=check_finite
    )
    unit = plan.query_tile
    if requested is None:
        rows = auto_batch_rows(
            queries.shape[0], dim, k, unit, device, budget, engine.transfer_buffer_bytes()
        )
    else:
        rows = max(unit, requested // unit * unit)
    description = {
        "kind": "self_join" if exclude_self else "batch_search",
        "queries": queries.fingerprint(),
        "database": database.fingerprint(),
        "k": k,
        "metric": metric.value,
        "device_type": device.type,
    }

    def compute(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return engine.search(queries.rows(start, stop), start, exclude_self)

    def set_chunk_rows(rows: int) -> None:
        engine.plan = job.plan
        engine.set_chunk_rows(rows)

    job = _Job(
        queries, k, metric, description, plan,
        BatchSizer(rows, unit, engine.chunk_rows, plan.database_tile),
        compute, set_chunk_rows,
    )  # fmt: skip
    return job


def _index_job(queries: MatrixSource, index: Any, k: Any, metric: Any, batch_size: Any) -> _Job:
    k = check_k(k)
    index_metric = getattr(index, "metric", None)
    if metric is not None and index_metric is not None and as_metric(metric) != index_metric:
        raise ValueError(
            f"metric: the index searches with {str(index_metric)!r}, got metric={metric!r}"
        )
    resolved = as_metric(index_metric if index_metric is not None else (metric or "l2"))
    dim = getattr(index, "dim", None)
    if dim is not None and queries.shape[1] != dim:
        raise ValueError(
            f"queries: expected {dim} columns (the index's dim), got {queries.shape[1]}"
        )
    index_device = getattr(index, "device", torch.device("cpu"))
    requested = _check_batch_size(batch_size)
    if requested is None:
        budget = check_budget(getattr(index, "memory_budget", None), index_device)
        requested = auto_batch_rows(queries.shape[0], queries.shape[1], k, 1, index_device, budget)
    description = {
        "kind": "batch_search",
        "queries": queries.fingerprint(),
        "index": {
            "type": type(index).__name__,
            "size": len(index) if hasattr(index, "__len__") else None,
            "dim": dim,
        },
        "k": k,
        "metric": resolved.value,
        "device_type": torch.device(index_device).type,
    }

    def compute(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        distances, ids = index.search(queries.rows(start, stop), k)
        return _as_numpy(distances, np.float32), _as_numpy(ids, np.int64)

    return _Job(
        queries, k, resolved, description, StreamPlan(1, 0), BatchSizer(requested, 1),
        compute, lambda rows: None,
    )  # fmt: skip


def _as_numpy(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# ---------------------------------------------------------------------- the chunk loop
def _open_output(
    job: _Job, out: Any, resume: bool, overwrite: bool
) -> tuple[ResultSink, Checkpoint, Path | None]:
    n_queries = job.queries.shape[0]
    fresh = Checkpoint(job.description, dataclasses.asdict(job.plan), 0, 0)
    if out is None:
        if resume:
            raise ValueError("resume: needs out, the folder holding the job's checkpoint")
        return ResultSink(n_queries, job.k, job.metric), fresh, None
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"out: {str(folder)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    existing = read_checkpoint(path)
    if resume and existing is not None:
        verify_job(existing, job.description, str(path))
        return ResultSink(n_queries, job.k, job.metric, folder, reopen=True), existing, path
    has_results = existing is not None or (folder / IDS_NAME).exists()
    if has_results and not (resume or overwrite):
        raise FileExistsError(
            f"out: {str(folder)!r} already holds results; pass resume=True to continue that "
            "job or overwrite=True to start over"
        )
    sink = ResultSink(n_queries, job.k, job.metric, folder)
    write_checkpoint(path, fresh)
    return sink, fresh, path


def _run(
    job: _Job,
    out: Any,
    progress: bool,
    resume: bool,
    overwrite: bool,
    on_chunk: Callable[[ChunkInfo], None] | None,
    as_tensors: bool,
) -> SearchResult:
    sink, checkpoint, path = _open_output(job, out, resume, overwrite)
    if path is not None:  # a resumed job keeps the tiles it started with
        job.plan = StreamPlan(**checkpoint.plan)
        job.sizer.unit = job.plan.query_tile
        job.sizer.batch_rows = max(
            job.plan.query_tile, job.sizer.batch_rows // job.plan.query_tile * job.plan.query_tile
        )
    n_queries = job.queries.shape[0]
    rows_done, chunks_done = checkpoint.rows_done, checkpoint.chunks_done
    bar = make_progress(progress, n_queries, rows_done, job.description["kind"])
    try:
        while rows_done < n_queries:
            stop = min(n_queries, rows_done + job.sizer.batch_rows)
            try:
                distances, ids = job.compute(rows_done, stop)
            except Exception as error:
                if not is_out_of_memory(error) or not job.sizer.shrink():
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                job.set_chunk_rows(job.sizer.chunk_rows)
                continue
            sink.write(rows_done, distances, ids)
            sink.flush()
            chunks_done += 1
            info = ChunkInfo(
                chunks_done, rows_done, stop, n_queries, job.sizer.batch_rows, job.sizer.retries
            )
            rows_done = stop
            if path is not None:
                checkpoint = dataclasses.replace(
                    checkpoint, rows_done=rows_done, chunks_done=chunks_done,
                    complete=rows_done == n_queries,
                )  # fmt: skip
                write_checkpoint(path, checkpoint)
            bar.update(stop - info.start)
            if on_chunk is not None:
                on_chunk(info)
    finally:
        bar.close()
    if path is not None and not checkpoint.complete:  # an empty job, or resumed when done
        write_checkpoint(path, dataclasses.replace(checkpoint, complete=True))
    distances, ids = sink.reopen_read_only()
    if path is None and as_tensors:
        return SearchResult(torch.from_numpy(distances), torch.from_numpy(ids))
    return SearchResult(distances, ids)
