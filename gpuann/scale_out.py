"""Scale-out search over a Ray Dataset: ``pip install gpuann[ray]``.

:func:`ray_search` maps a pool of actors over a dataset's batches. Each actor loads the index
(or receives the database) once, when it starts, and then answers batch after batch; with
GPUs in the cluster each actor holds one. Ray is imported only when the function is called.

How the index reaches the actors:

* a path (``.gpuann`` index file or ``.npy`` database) is opened by each actor: every node
  must see it (a shared file system);
* an index object is saved to bytes once and put in Ray's object store, so it works on any
  cluster;
* a database array / tensor is put in the object store as a numpy array (shared, zero-copy,
  by the actors of a node) and searched exactly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ray_search"]


def _index_payload(index_or_database: Any) -> tuple[str, Any]:
    """``(kind, value)`` that can travel to an actor: a path, index bytes or an array."""
    import torch

    if isinstance(index_or_database, (str, os.PathLike)):
        return "path", str(index_or_database)
    if isinstance(index_or_database, torch.Tensor):
        return "array", index_or_database.detach().cpu().numpy()
    if isinstance(index_or_database, np.ndarray):
        return "array", np.ascontiguousarray(index_or_database)
    if callable(getattr(index_or_database, "save", None)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.gpuann"
            index_or_database.save(path)
            return "index_bytes", path.read_bytes()
    raise TypeError(
        "index_or_database: expected a saveable gpuann index, a tensor, an array or a path, "
        f"got {type(index_or_database).__name__}"
    )


class _SearchActor:
    """Loads the index once; then searches every batch it is given (a Ray callable class)."""

    def __init__(
        self,
        kind: str,
        payload: Any,
        k: int,
        column: str,
        metric: str | None,
        device: str,
    ) -> None:
        import ray

        import gpuann

        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        self.k, self.column, self.metric, self.device = k, column, metric, device
        if kind == "index_bytes":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "index.gpuann"
                path.write_bytes(payload)
                self.target = gpuann.load(path, device)
        elif kind == "path" and Path(payload).suffix != ".npy":
            self.target = gpuann.load(payload, device)
        else:  # a database: an array from the object store, or a .npy path
            self.target = payload

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from gpuann.batch import batch_search

        queries = batch[self.column]
        if queries.dtype == object:  # ragged storage: one array per row
            queries = np.stack(list(queries))
        distances, ids = batch_search(
            np.ascontiguousarray(queries),
            self.target,
            self.k,
            progress=False,
            metric=self.metric,
            device=self.device,
        )
        return {**batch, "ids": np.asarray(ids), "distances": np.asarray(distances)}


def ray_search(
    dataset: Any,
    index_or_database: Any,
    k: int,
    *,
    column: str = "data",
    metric: str | None = None,
    batch_size: int = 4096,
    concurrency: int = 1,
    num_gpus: float | None = None,
) -> Any:
    """Search every row of a Ray Dataset with a pool of actors; lazily, like any Ray transform.

    Parameters
    ----------
    dataset : ray.data.Dataset
        Holds the queries in ``column``: one (d,) float vector per row (``ray.data.from_numpy``
        names its column ``"data"``).
    index_or_database : index, torch.Tensor, numpy.ndarray, str or os.PathLike
        As for :func:`gpuann.batch_search`: any saveable gpuann index, a database for exact
        search, or the path of a ``.gpuann`` / ``.npy`` file visible to every node.
    k : int
        Neighbours per query.
    column : str
        The column holding the query vectors.
    metric : {"l2", "ip", "cosine"}, optional
        For databases (default ``"l2"``); indexes use their own.
    batch_size : int
        Rows per batch handed to an actor.
    concurrency : int
        Number of actors (each loads the index once).
    num_gpus : float, optional
        GPUs per actor; default 1 when the cluster has GPUs, else 0 (actors search on CPU).

    Returns
    -------
    ray.data.Dataset
        The input columns plus ``ids`` (int64, (k,) per row) and ``distances`` (float32),
        as :func:`gpuann.batch_search` computes them for each batch.
    """
    import ray

    from gpuann._validate import check_k

    k = check_k(k)
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    kind, payload = _index_payload(index_or_database)
    if kind != "path":
        payload = ray.put(payload)  # stored once, fetched once per actor
    return dataset.map_batches(
        _SearchActor,
        fn_constructor_kwargs={
            "kind": kind,
            "payload": payload,
            "k": k,
            "column": column,
            "metric": metric,
            "device": "cuda" if num_gpus > 0 else "cpu",
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=num_gpus,
    )
