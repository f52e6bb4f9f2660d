"""``LSHIndex``: locality-sensitive hashing to binary codes, Hamming search, optional rescoring.

Vectors are hashed to ``nbits`` sign bits (see :mod:`gpuann.binary.projection`) and the packed
codes are searched by Hamming distance on the device (:func:`gpuann.binary.hamming.hamming_topk`).
With ``rescore=R`` the ``R`` best codes of each query are re-ranked by their exact distance to
the stored full-precision vectors, which turns a coarse filter into a good ANN index.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from gpuann._rwlock import ReadWriteLock
from gpuann._validate import as_float_matrix, as_ids, check_k, resolve_device, storage_dtype
from gpuann._validate import check_finite as _require_finite
from gpuann.binary._store import IdSortedRows
from gpuann.binary.binary_flat import check_nbits, check_sorted_ids
from gpuann.binary.codes import code_bytes, pack_bits
from gpuann.binary.hamming import MISSING_DISTANCE, hamming_topk
from gpuann.binary.projection import (
    PROJECTIONS,
    itq_projection,
    median_thresholds,
    random_projection,
)
from gpuann.binary.rescore import rescore_candidates
from gpuann.budget import check_budget
from gpuann.display import Bytes, html_repr, text_repr
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult
from gpuann.serialization import (
    IndexFileError,
    load,
    register_index_kind,
    write_index_file,
)

__all__ = ["LSHIndex"]


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return int(value)


class LSHIndex:
    """Binary-hash index: sign random projections, Hamming search, optional exact rescoring.

    Parameters
    ----------
    dim : int
        Vector dimension.
    nbits : int
        Bits per code (any positive int; codes take ``ceil(nbits / 8)`` bytes).
    metric : {"cosine", "l2", "ip"}
        Used for hashing (cosine vectors are normalised first) and for rescoring.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    rescore : int
        Default number of Hamming candidates re-ranked exactly per query (``0``: results are
        ranked by Hamming distance alone). Overridable per search.
    projection : {"gaussian", "orthogonal", "identity", "itq"}
        See :mod:`gpuann.binary.projection`. ``"itq"`` is learned and needs :meth:`train`.
    train_thresholds : bool
        Learn a median threshold per bit in :meth:`train` (faiss's ``train_thresholds``).
    seed : int
        Seeds the random projection.
    keep_vectors : bool, optional
        Store the full-precision vectors (needed to rescore); default ``rescore > 0``.
    dtype : torch.dtype
        Storage dtype of the kept vectors.
    memory_budget : int, optional
        Bytes of working memory per search.

    Notes
    -----
    Distances: without rescoring, the **Hamming distance as float32** (ascending, as faiss's
    ``IndexLSH``), ``+inf`` for missing results; with rescoring, the metric's value (squared
    L2 ascending, or similarity descending). Equal distances are ordered by lower id.

    Examples
    --------
    >>> x = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    >>> index = LSHIndex(32, 256, device="cpu", rescore=50)
    >>> index.add(x)
    >>> D, I = index.search(x[:3], k=1)
    >>> I.flatten().tolist()
    [0, 1, 2]
    """

    def __init__(
        self,
        dim: int,
        nbits: int,
        metric: str | Metric = "cosine",
        device: str | torch.device | None = None,
        rescore: int = 0,
        *,
        projection: str = "gaussian",
        train_thresholds: bool = False,
        seed: int = 0,
        keep_vectors: bool | None = None,
        dtype: torch.dtype = torch.float32,
        memory_budget: int | None = None,
    ) -> None:
        self._dim = check_nbits(dim, "dim", multiple_of_8=False)
        self._nbits = check_nbits(nbits, multiple_of_8=False)
        self._metric = as_metric(metric)
        self._device = resolve_device(device)
        self.rescore = _check_count(rescore, "rescore")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection: expected one of {PROJECTIONS}, got {projection!r}")
        if projection in ("identity", "itq") and self._nbits > self._dim:
            raise ValueError(
                f"nbits: projection={projection!r} needs nbits <= dim={self._dim}, "
                f"got {self._nbits}"
            )
        self._projection_kind = projection
        self._train_thresholds = bool(train_thresholds)
        self._seed = int(seed)
        self._keep_vectors = self.rescore > 0 if keep_vectors is None else bool(keep_vectors)
        self._dtype = storage_dtype(dtype)
        self.memory_budget = memory_budget
        self._lock = ReadWriteLock()
        self._nbytes = code_bytes(self._nbits)
        self._padded_bytes = -(-self._nbytes // 4) * 4
        self._matrix: torch.Tensor | None = None
        self._thresholds: torch.Tensor | None = None
        self._is_trained = projection != "itq" and not self._train_thresholds
        if projection != "itq":
            matrix = random_projection(projection, self._dim, self._nbits, self._seed)
            self._matrix = matrix.to(self._device) if matrix is not None else None
        self._rows = IdSortedRows(self._device, self._columns())

    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        columns = {"codes": ((self._padded_bytes,), torch.uint8)}
        if self._keep_vectors:
            columns["vectors"] = ((self._dim,), self._dtype)
            if self._metric is Metric.L2:
                columns["sqnorms"] = ((), torch.float32)
        return columns

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def nbits(self) -> int:
        """Bits per code."""
        return self._nbits

    @property
    def metric(self) -> Metric:
        """The metric used for hashing and rescoring."""
        return self._metric

    @property
    def device(self) -> torch.device:
        """Where codes (and kept vectors) live and searches run."""
        return self._device

    @property
    def is_trained(self) -> bool:
        """False until :meth:`train` for ``projection="itq"`` or ``train_thresholds=True``."""
        return self._is_trained

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy)."""
        with self._lock.read():
            return self._rows.stored_ids.clone()

    @property
    def nbytes(self) -> int:
        """Bytes of device memory held: the stored rows (codes, ids, kept vectors and norms,
        spare capacity included) and the projection matrix and thresholds."""
        extra = (t for t in (self._matrix, self._thresholds) if t is not None)
        return self._rows.nbytes + sum(t.numel() * t.element_size() for t in extra)

    def __len__(self) -> int:
        return self._rows.n

    def _display_fields(self) -> dict[str, Any]:
        """What ``repr`` and Jupyter show: Python ints and tensor metadata only (no sync)."""
        return {
            "n": len(self),
            "dim": self._dim,
            "nbits": self._nbits,
            "metric": self._metric,
            "projection": self._projection_kind,
            "rescore": self.rescore,
            "keep_vectors": self._keep_vectors,
            "trained": self._is_trained,
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- hashing
    def _vectors(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool]:
        x, was_numpy = as_float_matrix(x, name, dim=self._dim)
        if check_finite and not torch.compiler.is_compiling():
            _require_finite(x, name)
        x = x.to(self._device).float()
        if self._metric is Metric.COSINE:
            x = torch.nn.functional.normalize(x, dim=1)
        return x, was_numpy

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self._nbits] if self._matrix is None else x @ self._matrix

    def _hash(self, x: torch.Tensor) -> torch.Tensor:
        """Packed codes padded to whole int32 words, shape (n, padded bytes), uint8."""
        projected = self._project(x)
        if self._thresholds is not None:
            projected = projected - self._thresholds
        codes = pack_bits(projected > 0)
        pad = self._padded_bytes - self._nbytes
        return torch.nn.functional.pad(codes, (0, pad)) if pad else codes

    def _require_trained(self) -> None:
        if not self._is_trained:
            raise RuntimeError(
                "the index is not trained: call train(x) first "
                "(projection='itq' or train_thresholds=True)"
            )

    def encode(self, x: Any, *, check_finite: bool = True) -> Any:
        """The packed binary codes of ``x``: shape (n, ceil(nbits / 8)), uint8 (numpy for numpy)."""
        self._require_trained()
        x, was_numpy = self._vectors(x, "x", check_finite)
        codes = self._hash(x)[:, : self._nbytes]
        return codes.cpu().numpy() if was_numpy else codes

    def train(self, x: Any, *, check_finite: bool = True) -> None:
        """Learn the ITQ projection and/or median thresholds from ``x`` (shape (n, dim)).

        Nothing to learn for data-independent projections without thresholds. The index must
        be empty (codes already stored would no longer match).
        """
        x, _ = self._vectors(x, "x", check_finite)
        if x.shape[0] == 0:
            raise ValueError("x: cannot train on zero vectors")
        with self._lock.write():
            if self._rows.n:
                raise RuntimeError("train: the index already holds vectors; call reset() first")
            matrix, thresholds = self._matrix, None
            if self._projection_kind == "itq":
                matrix, offsets = itq_projection(x, self._nbits, self._seed)
                matrix, thresholds = matrix.to(self._device), offsets.to(self._device)
            if self._train_thresholds:
                projected = x[:, : self._nbits] if matrix is None else x @ matrix
                thresholds = median_thresholds(projected)
            self._matrix, self._thresholds, self._is_trained = matrix, thresholds, True

    # ---------------------------------------------------------------- mutations
    def _rows_of(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = {"codes": self._hash(x)}
        if self._keep_vectors:
            rows["vectors"] = x.to(self._dtype)
            if self._metric is Metric.L2:
                stored = rows["vectors"].float()
                rows["sqnorms"] = (stored * stored).sum(dim=1)
        return rows

    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Hash and add vectors.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim), floating
        ids : int64 tensor, array or list, shape (n,), optional
            Unique ids not already in the index; default: consecutive after the largest used.
        check_finite : bool
            Raise on NaN or infinity in ``x``.

        On any error the index is left unchanged.
        """
        self._require_trained()
        x, _ = self._vectors(x, "x", check_finite)
        rows = self._rows_of(x)
        with self._lock.write():
            new_ids, order = self._rows.new_ids(ids, x.shape[0])
            if order is not None:
                rows = {name: value[order] for name, value in rows.items()}
            self._rows.insert(new_ids, rows)

    def update(self, ids: Any, x: Any, *, check_finite: bool = True) -> None:
        """Replace the vectors (and codes) of existing ids: ``ids`` (n,), ``x`` (n, dim)."""
        self._require_trained()
        x, _ = self._vectors(x, "x", check_finite)
        ids = as_ids(ids, x.shape[0], device=self._device)
        rows = self._rows_of(x)
        with self._lock.write():
            pos = self._rows.require(ids)
            for name, value in rows.items():
                self._rows.data[name][pos] = value

    def remove(self, ids: Any, *, strict: bool = True) -> int:
        """Remove vectors by id; return how many were removed (``strict=False``: ignore unknown)."""
        ids = as_ids(ids, -1, device=self._device)
        with self._lock.write():
            return self._rows.remove(ids, strict)

    def reset(self) -> None:
        """Remove every vector (ids restart at 0); the projection and thresholds are kept."""
        with self._lock.write():
            self._rows.reset()

    def _renumber(self) -> None:
        with self._lock.write():
            self._rows.renumber()

    def reconstruct(self, ids: Any) -> Any:
        """The stored vectors of ``ids`` (normalised for cosine); needs ``keep_vectors``."""
        if not self._keep_vectors:
            raise RuntimeError("reconstruct: this index keeps only codes (keep_vectors=False)")
        as_numpy = isinstance(ids, np.ndarray)
        ids = as_ids(ids, -1, device=self._device, unique=False)
        with self._lock.read():
            vectors = self._rows.data["vectors"][self._rows.require(ids)]
        return vectors.float().cpu().numpy() if as_numpy else vectors

    # ---------------------------------------------------------------- search
    def search(
        self,
        queries: Any,
        k: int,
        *,
        rescore: int | None = None,
        backend: str = "auto",
        memory_budget: int | None = None,
        check_finite: bool = True,
    ) -> SearchResult:
        """The ``k`` approximate nearest neighbours of each query.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
        k : int
        rescore : int, optional
            Hamming candidates re-ranked exactly (at least ``k`` are taken); default the
            index's ``rescore``; ``0`` ranks by Hamming distance only.
        backend : {"auto", "triton", "torch"}
            Backend of the Hamming search.
        memory_budget : int, optional
        check_finite : bool

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k), float32 and int64 (see the class Notes for what
            the distances are). numpy when ``queries`` is numpy, else on the queries' device.
        """
        k = check_k(k)
        n_rescore = self.rescore if rescore is None else _check_count(rescore, "rescore")
        if n_rescore and not self._keep_vectors:
            raise ValueError(
                "rescore: this index keeps only codes (keep_vectors=False); pass rescore=0"
            )
        self._require_trained()
        out_device = queries.device if isinstance(queries, torch.Tensor) else None
        q, was_numpy = self._vectors(queries, "queries", check_finite)
        words = self._hash(q).view(torch.int32)
        budget = check_budget(
            memory_budget if memory_budget is not None else self.memory_budget, self._device
        )
        with self._lock.read():
            rows = self._rows
            n_candidates = max(k, n_rescore) if n_rescore else k
            database = rows.view("codes").view(torch.int32)
            hamming, pos = hamming_topk(
                words, database, n_candidates, backend=backend, memory_budget=budget
            )
            if n_rescore:
                sqnorms = rows.view("sqnorms") if self._metric is Metric.L2 else None
                distances, pos = rescore_candidates(
                    q, rows.view("vectors"), sqnorms, pos, k, self._metric, budget
                )
            else:
                distances = torch.where(hamming == MISSING_DISTANCE, float("inf"), hamming.float())
            ids = torch.where(pos >= 0, rows.stored_ids[pos.clamp(min=0)], pos) if rows.n else pos
        if was_numpy:
            return SearchResult(distances.cpu().numpy(), ids.cpu().numpy())
        return SearchResult(distances.to(out_device), ids.to(out_device))

    # ---------------------------------------------------------------- moving and saving
    def _config(self) -> dict[str, Any]:
        return {
            "dim": self._dim,
            "nbits": self._nbits,
            "metric": self._metric.value,
            "rescore": self.rescore,
            "projection": self._projection_kind,
            "train_thresholds": self._train_thresholds,
            "seed": self._seed,
            "keep_vectors": self._keep_vectors,
            "dtype": str(self._dtype).removeprefix("torch."),
        }

    def _empty_like(self, device: Any) -> LSHIndex:
        config = self._config()
        config["dtype"] = self._dtype
        other = LSHIndex(device=device, memory_budget=self.memory_budget, **config)
        other._matrix = self._matrix.to(other.device) if self._matrix is not None else None
        other._thresholds = (
            self._thresholds.to(other.device) if self._thresholds is not None else None
        )
        other._is_trained = self._is_trained
        return other

    def to(self, device: str | torch.device) -> LSHIndex:
        """This index on ``device``: ``self`` if already there, else a copy."""
        device = resolve_device(device)
        if device == self._device:
            return self
        with self._lock.read():
            other = self._empty_like(device)
            other._rows = self._rows.copy_to(device)
        return other

    def save(self, path: str | os.PathLike) -> None:
        """Write the index (projection, thresholds, codes, vectors, ids) to ``path`` atomically."""
        with self._lock.read():
            meta = {**self._config(), "next_id": self._rows.next_id, "is_trained": self._is_trained}
            arrays = {name: self._rows.view(name) for name in self._rows.data}
            arrays["codes"] = arrays["codes"][:, : self._nbytes]
            arrays["ids"] = self._rows.stored_ids
            if self._matrix is not None:
                arrays["projection"] = self._matrix
            if self._thresholds is not None:
                arrays["thresholds"] = self._thresholds
            write_index_file(path, "LSHIndex", meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> LSHIndex:
        """Load an ``LSHIndex`` saved with :meth:`save`."""
        return load(path, device, kind="LSHIndex")


def _load_lsh(meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> LSHIndex:
    config = {
        key: meta[key]
        for key in (
            "dim",
            "nbits",
            "metric",
            "rescore",
            "projection",
            "train_thresholds",
            "seed",
            "keep_vectors",
        )
    }
    index = LSHIndex(device=device, dtype=getattr(torch, meta["dtype"]), **config)
    codes, ids = arrays["codes"], arrays["ids"]
    n = codes.shape[0]
    if codes.dtype != torch.uint8 or codes.shape != (n, index._nbytes):
        raise IndexFileError("codes do not match the header's nbits")
    check_sorted_ids(ids, n)
    if "projection" in arrays:
        if arrays["projection"].shape != (index.dim, index.nbits):
            raise IndexFileError("projection does not match the header's dim and nbits")
        index._matrix = arrays["projection"].to(index.device, torch.float32)
    if "thresholds" in arrays:
        if arrays["thresholds"].shape != (index.nbits,):
            raise IndexFileError("thresholds do not match the header's nbits")
        index._thresholds = arrays["thresholds"].to(index.device, torch.float32)
    index._is_trained = bool(meta["is_trained"])
    rows = {"codes": torch.nn.functional.pad(codes, (0, index._padded_bytes - index._nbytes))}
    for name, (shape, dtype) in index._columns().items():
        if name != "codes":
            if (
                name not in arrays
                or arrays[name].dtype != dtype
                or arrays[name].shape != (n, *shape)
            ):
                raise IndexFileError(f"array {name!r} is missing or does not match the header")
            rows[name] = arrays[name]
    index._rows.load(ids, rows, meta["next_id"])
    return index


register_index_kind("LSHIndex", _load_lsh)
