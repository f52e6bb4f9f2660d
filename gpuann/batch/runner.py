"""The chunk loop of a batch job: compute, write and checkpoint chunks in order, resumably.

:func:`run_job` drives a :class:`Job` (resolved by :mod:`gpuann.batch.search` from the user's
arguments): it opens or reopens the result files and the checkpoint, runs the job's chunks,
shrinks them on device out-of-memory errors (see :mod:`gpuann.batch.sizing`) and reports each
completed chunk to ``on_chunk`` as a :class:`ChunkInfo`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpuann.batch.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    read_checkpoint,
    verify_database,
    verify_job,
    verify_rows_done,
    write_checkpoint,
)
from gpuann.batch.inputs import MatrixSource
from gpuann.batch.outputs import IDS_NAME, ResultSink
from gpuann.batch.progress import make_progress
from gpuann.batch.sizing import BatchSizer, is_out_of_memory
from gpuann.batch.streaming import StreamPlan
from gpuann.metrics import Metric
from gpuann.result import SearchResult

__all__ = ["ChunkInfo", "Job", "JobOptions", "run_job"]


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
class Job:
    """Everything the chunk loop needs, resolved from the user's arguments.

    ``compute(start, rows)`` searches the query rows ``rows`` (read by the loop, which hashes
    them on the way) that are rows ``start : start + len(rows)`` of the job.
    """

    queries: MatrixSource
    k: int
    metric: Metric
    description: dict[str, Any]
    plan: StreamPlan
    sizer: BatchSizer
    compute: Callable[[int, torch.Tensor], tuple[np.ndarray, np.ndarray]]
    set_chunk_rows: Callable[[int], None]
    #: Exact jobs: ``(argument name, hash of the database once a pass completed, or None)``.
    database_digest: Callable[[], tuple[str, str | None]] | None = None
    #: Called when the job is checkpointed (so the database is worth hashing).
    enable_hashing: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """The job options ``batch_search`` and ``self_join`` share (documented there)."""

    out: str | os.PathLike | None = None
    batch_size: int | str = "auto"
    progress: bool = True
    resume: bool = False
    device: str | torch.device | None = None
    memory_budget: int | None = None
    database_chunk_rows: int | None = None
    check_finite: bool = True
    overwrite: bool = False
    on_chunk: Callable[[ChunkInfo], None] | None = None
    backend: str = "auto"


def _open_output(
    job: Job, out: Any, resume: bool, overwrite: bool
) -> tuple[ResultSink, Checkpoint, Path | None]:
    """The result sink, the checkpoint to continue from and its path (None without ``out``)."""
    n_queries = job.queries.shape[0]
    fresh = Checkpoint(
        job.description, dataclasses.asdict(job.plan), 0, 0,
        queries_sha256=hashlib.sha256().hexdigest(),
    )  # fmt: skip
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
    if existing is not None:  # overwrite: the old job's state goes before its results do
        path.unlink()
    sink = ResultSink(n_queries, job.k, job.metric, folder)
    write_checkpoint(path, fresh)
    return sink, fresh, path


def run_job(job: Job, options: JobOptions, as_tensors: bool) -> SearchResult:
    """Compute, write and checkpoint the job's chunks in order (retrying on out-of-memory)."""
    on_chunk = options.on_chunk
    sink, checkpoint, path = _open_output(job, options.out, options.resume, options.overwrite)
    if path is not None and job.enable_hashing is not None:
        job.enable_hashing()
    if path is not None:  # a resumed job keeps the tiles it started with
        job.plan = StreamPlan(**checkpoint.plan)
        job.sizer.unit = job.plan.query_tile
        job.sizer.batch_rows = max(
            job.plan.query_tile, job.sizer.batch_rows // job.plan.query_tile * job.plan.query_tile
        )
    n_queries = job.queries.shape[0]
    rows_done, chunks_done = checkpoint.rows_done, checkpoint.chunks_done
    digest = hashlib.sha256()  # of the stored bytes of query rows [0, rows_done)
    bar = make_progress(options.progress, n_queries, rows_done, job.description["kind"])
    try:
        if rows_done:  # resumed: the rows done must be those the checkpoint counts
            job.queries.hash_rows(digest, 0, rows_done)
            verify_rows_done(checkpoint, digest, str(path), job.queries.name)
        while rows_done < n_queries:
            stop = min(n_queries, rows_done + job.sizer.batch_rows)
            chunk_digest = digest.copy()  # a chunk retried after out-of-memory is hashed once
            try:
                distances, ids = job.compute(
                    rows_done, job.queries.rows(rows_done, stop, chunk_digest)
                )
            except Exception as error:
                if not is_out_of_memory(error) or not job.sizer.shrink():
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                job.set_chunk_rows(job.sizer.chunk_rows)
                continue
            digest = chunk_digest
            if path is not None and job.database_digest is not None:
                name, database_sha256 = job.database_digest()
                if database_sha256 is not None and checkpoint.database_sha256 != database_sha256:
                    verify_database(checkpoint, database_sha256, str(path), name)
                    checkpoint = dataclasses.replace(checkpoint, database_sha256=database_sha256)
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
                    complete=rows_done == n_queries, queries_sha256=digest.hexdigest(),
                )  # fmt: skip
                write_checkpoint(path, checkpoint)
            bar.update(stop - info.start)
            if on_chunk is not None:
                on_chunk(info)
    except BaseException:
        sink.close()
        raise
    finally:
        bar.close()
    if path is not None and not checkpoint.complete:  # an empty job, or resumed when done
        checkpoint = dataclasses.replace(
            checkpoint, complete=True, queries_sha256=digest.hexdigest()
        )
        write_checkpoint(path, checkpoint)
    distances, ids = sink.reopen_read_only()
    if path is None and as_tensors:
        return SearchResult(torch.from_numpy(distances), torch.from_numpy(ids))
    return SearchResult(distances, ids)
