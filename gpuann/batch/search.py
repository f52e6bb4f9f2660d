"""``batch_search`` and ``self_join``: long offline searches, checkpointed chunk by chunk."""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpuann._validate import check_k, resolve_device
from gpuann.batch.inputs import MatrixSource, as_matrix_source, stored_bytes
from gpuann.batch.runner import ChunkInfo, Job, JobOptions, run_job
from gpuann.batch.sizing import BatchSizer, auto_batch_rows, auto_chunk_rows, fit_transfer_rows
from gpuann.batch.streaming import (
    StreamingExactSearch,
    StreamPlan,
    plan_stream,
    stream_step_bytes,
)
from gpuann.budget import check_budget
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult

__all__ = ["batch_search", "self_join"]


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
    backend: str = "auto",
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
        :func:`gpuann.knn` bit for bit on the torch backend (on the Triton backend, see
        :mod:`gpuann.batch.streaming`).
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
        checkpoint in ``out``: starts from the beginning. Besides the job's parameters, every
        query row already done is re-read and compared with the checkpoint's hash of those
        rows (taken as they were read), so queries changed anywhere in that range are refused;
        rows not done yet may differ (they are computed from what is read now).
    metric : {"l2", "ip", "cosine"}, optional
        Databases: default ``"l2"``. Indexes search with their own metric; giving another
        one raises.
    device : str or torch.device, optional
        Where exact search computes; default: the database's CUDA device, else CUDA when
        available, else CPU.
    memory_budget : int, optional
        Bytes of working memory: the score tiles are those :func:`gpuann.knn` uses with this
        budget (same default), so the results are its bits. On the CPU the budget also covers
        the rest of an exact job's working set: the host buffers a database read from disk
        travels through and the chunk of queries with its lists (see
        :mod:`gpuann.batch.sizing`), unless ``batch_size`` / ``database_chunk_rows`` are given.
        On CUDA it bounds the tiles; chunks are sized from free device memory.
    database_chunk_rows : int, optional
        Database rows per transfer (rounded down to whole tiles); default about 256 MiB on
        CUDA, 64 MiB on the CPU (less when the memory budget leaves less room).
    check_finite : bool
        Raise on NaN or infinity in queries and database (the error names the argument:
        ``queries``, ``database``, or ``x`` for :func:`self_join`).
    overwrite : bool
        Start over even if ``out`` already holds results (otherwise that raises, so hours of
        work are not lost to a missing ``resume=True``).
    on_chunk : callable, optional
        Called with a :class:`ChunkInfo` after each chunk is written and checkpointed.
    backend : str
        Exact search: ``"auto"`` (what the dispatcher picks for ``knn`` on that device: the
        Triton kernel on CUDA, torch elsewhere) or a backend's name, as in ``knn``.

    Integer arguments (``k``, ``batch_size``, ``memory_budget``, ``database_chunk_rows``) take
    any integer type, numpy's included; bools and floats raise ``TypeError`` naming them.

    Returns
    -------
    SearchResult
        ``(distances, ids)``, each (Q, k): read-only ``numpy.memmap`` of the files when
        ``out`` is given; else tensors (CPU) for tensor queries and numpy arrays otherwise.
        Ids are database rows (or the index's ids), ties by lower id, ``-1`` when missing.

    Raises
    ------
    OSError
        ``out`` cannot hold the results (a full disk: ``ENOSPC``): raised before any chunk is
        computed, as the files' space is reserved up front, or when a checkpoint cannot be
        written, in which case the previous checkpoint stays and the job can be resumed.

    Examples
    --------
    >>> db = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    >>> D, I = batch_search(db[:5], db, k=3, progress=False)
    >>> I[:, 0].tolist()
    [0, 1, 2, 3, 4]
    """
    options = _job_options(
        out, batch_size, progress, resume, device, memory_budget, database_chunk_rows,
        check_finite, overwrite, on_chunk, backend,
    )  # fmt: skip
    query_source = as_matrix_source(queries, "queries")
    target = _resolve_target(index_or_database, device)
    if isinstance(target, MatrixSource):
        job = _exact_job(query_source, target, k, metric, options, exclude_self=False)
    else:
        job = _index_job(query_source, target, k, metric, options.batch_size)
    return run_job(job, options, isinstance(queries, torch.Tensor))


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
    backend: str = "auto",
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
    options = _job_options(
        out, batch_size, progress, resume, device, memory_budget, database_chunk_rows,
        check_finite, overwrite, on_chunk, backend,
    )  # fmt: skip
    source = as_matrix_source(x, "x")
    job = _exact_job(source, source, k, metric, options, exclude_self=True)
    return run_job(job, options, isinstance(x, torch.Tensor))


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


def _optional_int(value: Any, name: str, what: str = "a positive int") -> int | None:
    """``None`` stays ``None``; any integer (numpy's too, never a bool) becomes a Python int."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected {what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}") from None


def _check_batch_size(batch_size: Any) -> int | None:
    if isinstance(batch_size, str) and batch_size == "auto":
        return None
    if isinstance(batch_size, str):
        raise TypeError(f"batch_size: expected a positive int or 'auto', got {batch_size!r}")
    batch_size = _optional_int(batch_size, "batch_size", "a positive int or 'auto'")
    if batch_size is None or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive int or 'auto', got {batch_size}")
    return batch_size


def _job_options(
    out: Any, batch_size: Any, progress: bool, resume: bool, device: Any, memory_budget: Any,
    database_chunk_rows: Any, check_finite: bool, overwrite: bool, on_chunk: Any, backend: str,
) -> JobOptions:  # fmt: skip
    """Validate the integer options (numpy integers accepted) and bundle them."""
    _check_batch_size(batch_size)
    memory_budget = _optional_int(memory_budget, "memory_budget", "an int (bytes)")
    chunk_rows = _optional_int(database_chunk_rows, "database_chunk_rows")
    if chunk_rows is not None and chunk_rows <= 0:
        raise ValueError(f"database_chunk_rows: expected a positive int, got {chunk_rows}")
    if not isinstance(batch_size, str):
        batch_size = operator.index(batch_size)
    return JobOptions(
        out, batch_size, progress, resume, device, memory_budget, chunk_rows,
        check_finite, overwrite, on_chunk, backend,
    )  # fmt: skip


def _exact_job(
    queries: MatrixSource,
    database: MatrixSource,
    k: Any,
    metric: Any,
    options: JobOptions,
    *,
    exclude_self: bool,
) -> Job:
    k = check_k(k)
    metric = as_metric(metric if metric is not None else "l2")
    n, dim = database.shape
    if queries.shape[1] != dim:
        raise ValueError(
            f"queries: expected {dim} columns (the database's), got {queries.shape[1]}"
        )
    device = options.device
    if device is None and database.device.type == "cuda":
        device = database.device
    device = resolve_device(device)
    budget = check_budget(options.memory_budget, device)
    requested = _check_batch_size(options.batch_size)
    chunk_rows = options.database_chunk_rows
    plan = plan_stream(queries.shape[0], n, dim, k, device, budget)
    if requested is not None and requested < plan.query_tile:
        plan = StreamPlan(requested, plan.database_tile)
    row_bytes = dim * database.stream_dtype().itemsize
    step_bytes = stream_step_bytes(queries.shape[0], n, dim, k, device, budget)
    auto_chunks = chunk_rows is None
    if auto_chunks:
        chunk_rows = auto_chunk_rows(n, row_bytes, plan.database_tile, device)
    engine = StreamingExactSearch(
        database, k, metric, device, plan, chunk_rows,
        check_finite=options.check_finite, backend=options.backend, memory_budget=budget,
        query_name=queries.name,
    )  # fmt: skip
    engine.job_queries = queries.shape[0]
    if auto_chunks and device.type != "cuda" and engine.streams:
        # Rows copied into host buffers (read from disk): the buffers count against the budget.
        engine.set_chunk_rows(
            fit_transfer_rows(engine.chunk_rows, budget, step_bytes, row_bytes, plan.database_tile)
        )
    unit = plan.query_tile
    if requested is None:
        reserved = engine.transfer_buffer_bytes()
        if device.type != "cuda":
            reserved = step_bytes + engine.host_buffer_bytes()
        rows = auto_batch_rows(queries.shape[0], dim, k, unit, device, budget, reserved)
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

    def compute(start: int, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return engine.search(rows, start, exclude_self)

    def set_chunk_rows(rows: int) -> None:
        engine.plan = job.plan
        engine.set_chunk_rows(rows)

    job = Job(
        queries, k, metric, description, plan,
        BatchSizer(rows, unit, engine.chunk_rows, plan.database_tile),
        compute, set_chunk_rows,
        lambda: (database.name, engine.database_sha256),
        lambda: setattr(engine, "hash_database", True),
    )  # fmt: skip
    return job


def _index_fingerprint(index: Any, dim: int | None) -> dict[str, Any]:
    """Type, size, dim and a hash of evenly spaced stored ids and their vectors (through the
    public ``ids`` and ``reconstruct``, where the index has them): another index of the same
    class and size is told apart, as a changed database is (found by review: resume mixed two
    indexes' results). Indexes without ``ids`` or ``reconstruct`` hash what they have; an IVF
    index without ``refine``, its ids only (two IVF indexes holding the same ids are told
    apart by size and type alone)."""
    digest = hashlib.sha256()
    ids = getattr(index, "ids", None)
    if isinstance(ids, torch.Tensor) and ids.numel():
        picks = np.unique(np.linspace(0, ids.numel() - 1, num=min(ids.numel(), 64)))
        sampled = ids.reshape(-1)[torch.from_numpy(picks.astype(np.int64)).to(ids.device)]
        digest.update(stored_bytes(sampled))
        reconstruct = getattr(index, "reconstruct", None)
        # not an IVF index's faiss codes: reconstruct would attach faiss's id map to it for
        # good (and on CUDA copy it to the host); its ids alone are hashed (found by review)
        if getattr(index, "nlist", None) is not None and not getattr(index, "refine", False):
            reconstruct = None
        if callable(reconstruct):
            try:
                vectors = reconstruct(sampled)
            except (NotImplementedError, RuntimeError, TypeError, ValueError):
                vectors = None  # an index that cannot reconstruct: its ids alone
            if isinstance(vectors, torch.Tensor):
                digest.update(stored_bytes(vectors.float()))
    return {
        "type": type(index).__name__,
        "size": len(index) if hasattr(index, "__len__") else None,
        "dim": dim,
        "sample_sha256": digest.hexdigest(),
    }


def _index_job(queries: MatrixSource, index: Any, k: Any, metric: Any, batch_size: Any) -> Job:
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
        requested = auto_batch_rows(
            queries.shape[0], queries.shape[1], k, 1, index_device, budget, None
        )
    description = {
        "kind": "batch_search",
        "queries": queries.fingerprint(),
        "index": _index_fingerprint(index, dim),
        "k": k,
        "metric": resolved.value,
        "device_type": torch.device(index_device).type,
    }

    def compute(start: int, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        distances, ids = index.search(rows, k)
        return _as_numpy(distances, np.float32), _as_numpy(ids, np.int64)

    return Job(
        queries, k, resolved, description, StreamPlan(1, 0), BatchSizer(requested, 1),
        compute, lambda rows: None,
    )  # fmt: skip


def _as_numpy(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)
