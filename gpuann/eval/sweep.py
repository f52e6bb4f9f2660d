"""``sweep``: recall, QPS, latency, build time and memory of an index over search parameters."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from gpuann._validate import as_float_matrix
from gpuann.eval.recall import DEFAULT_EPSILON, GroundTruth, recall_at_k
from gpuann.eval.timing import synchronize, time_call

__all__ = ["index_nbytes", "sweep"]

#: The columns every sweep row has besides the swept parameters.
METRIC_COLUMNS = ("k", "recall", "qps", "batch_ms", "latency_ms", "build_s", "index_bytes")


def index_nbytes(index: Any) -> int | None:
    """Bytes an index holds: its ``nbytes`` (every gpuann index has one, computed from sizes
    without reading the device or serialising anything); None for an object without one.

    >>> import gpuann
    >>> index = gpuann.FlatIndex(4, device="cpu")
    >>> index_nbytes(index) == index.nbytes, index_nbytes(object())
    (True, None)
    """
    nbytes = getattr(index, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, int) else None


def _grid(params: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(params)
    values = [v if isinstance(v, (list, tuple, range)) else [v] for v in params.values()]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def _device_of(index: Any) -> torch.device:
    device = getattr(index, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def sweep(
    index: Any,
    queries: Any,
    ground_truth: GroundTruth,
    *,
    k: int | None = None,
    name: str | None = None,
    build_s: float | None = None,
    repeats: int = 3,
    warmup: int = 1,
    latency_queries: int = 20,
    epsilon: float = DEFAULT_EPSILON,
    **params: Any,
) -> Any:
    """Search ``queries`` with every combination of ``params`` and measure each.

    Parameters
    ----------
    index : index, or callable returning one
        Anything with ``search(queries, k, **params)`` returning ``(distances, ids)``. A
        callable without ``search`` is called once to build the index, and timed.
    queries : torch.Tensor or numpy.ndarray, shape (Q, dim)
        Moved to the index's device before timing (the copy is not timed).
    ground_truth : GroundTruth
        From :func:`gpuann.eval.ground_truth` over the same queries.
    k : int, optional
        Default ``ground_truth.k``.
    name : str, optional
        The ``index`` column; default the index's type name.
    build_s : float, optional
        Build time to report when ``index`` is already built.
    repeats, warmup : int
        Timed and untimed runs of each batch search (the median is reported).
    latency_queries : int
        Single-query searches timed for ``latency_ms`` (0 skips them: NaN).
    epsilon : float
        ε of the recall rule (see :func:`gpuann.eval.recall_by_distance`).
    **params : value or list of values
        Search keyword arguments to sweep, e.g. ``nprobe=[1, 4, 16]``.

    Returns
    -------
    pandas.DataFrame
        One row per combination: ``index``, the parameters, ``k``, ``recall``, ``qps``
        (queries per second of the batch search), ``batch_ms`` (median time of the batch),
        ``latency_ms`` (median time of a single-query search), ``build_s``,
        ``index_bytes``. ``df.attrs`` holds the device and the torch version.

    >>> import gpuann
    >>> db, q = torch.randn(500, 8), torch.randn(20, 8)
    >>> truth = gpuann.eval.ground_truth(q, db, k=5)
    >>> def build():
    ...     index = gpuann.FlatIndex(8, device="cpu")
    ...     index.add(db)
    ...     return index
    >>> df = sweep(build, q, truth, backend=["torch"], latency_queries=2)
    >>> row = df.iloc[0]
    >>> row["index"], row["backend"], float(row["recall"])
    ('FlatIndex', 'torch', 1.0)
    """
    import pandas as pd

    if not callable(getattr(index, "search", None)):
        if not callable(index):
            raise TypeError("index: expected an index or a callable that builds one")
        builder: Callable[[], Any] = index
        start = time.perf_counter()
        index = builder()
        synchronize(_device_of(index))
        build_s = time.perf_counter() - start
    k = ground_truth.k if k is None else int(k)
    device = _device_of(index)
    queries, _ = as_float_matrix(queries, "queries")
    queries = queries.to(device)
    nq = queries.shape[0]
    nbytes = index_nbytes(index)
    rows = []
    for combo in _grid(params):
        seconds, result = time_call(
            lambda combo=combo: index.search(queries, k, **combo),
            device,
            repeats=repeats,
            warmup=warmup,
        )
        latency = math.nan
        if latency_queries > 0 and nq:
            singles = [
                time_call(
                    lambda i=i, combo=combo: index.search(queries[i : i + 1], k, **combo),
                    device,
                    repeats=1,
                    warmup=0,
                )[0]
                for i in range(min(latency_queries, nq))
            ]
            latency = sorted(singles)[len(singles) // 2] * 1e3
        rows.append(
            {
                "index": name or type(index).__name__,
                **combo,
                "k": k,
                "recall": recall_at_k(result, ground_truth, k, epsilon=epsilon),
                "qps": nq / seconds if seconds > 0 else math.inf,
                "batch_ms": seconds * 1e3,
                "latency_ms": latency,
                "build_s": math.nan if build_s is None else float(build_s),
                "index_bytes": math.nan if nbytes is None else nbytes,
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs.update(device=str(device), torch=torch.__version__, queries=nq)
    return frame
