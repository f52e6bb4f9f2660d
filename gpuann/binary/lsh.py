"""``LSHIndex``: locality-sensitive hashing to binary codes, Hamming search, optional re-ranking.

Vectors are hashed to ``nbits`` sign bits (see :mod:`gpuann.binary.projection`) and the packed
codes are searched by Hamming distance on the device (:func:`gpuann.binary.hamming.hamming_topk`).
Built with ``refine=True`` the index also keeps the full-precision vectors, and
``search(..., refine_factor=F)`` re-ranks the ``F · k`` best codes of each query by their exact
distance (:func:`gpuann.refine.rerank_rows`), which turns a coarse filter into a good ANN index.
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann._validate import non_negative_int, storage_dtype
from gpuann.binary.codes import code_bytes
from gpuann.binary.hamming import MISSING_DISTANCE
from gpuann.binary.projection import (
    PROJECTIONS,
    hash_vectors,
    itq_projection,
    median_thresholds,
    random_projection,
)
from gpuann.binary.stored_codes import StoredCodes, check_nbits, padded_bytes
from gpuann.budget import check_budget
from gpuann.display import Bytes
from gpuann.errors import NotTrainedError
from gpuann.index import DEFAULT_SEED, Index
from gpuann.inputs import prepare_vectors
from gpuann.metrics import Metric
from gpuann.refine import DEFAULT_REFINE_FACTOR, KeptVectors, rerank_rows
from gpuann.result import SearchResult

__all__ = ["LSHIndex"]


class LSHIndex(StoredCodes, KeptVectors, Index):
    """Binary-hash index: sign random projections, Hamming search, optional exact re-ranking.

    Parameters
    ----------
    dim : int
        Vector dimension.
    nbits : int
        Bits per code (any positive int; codes take ``ceil(nbits / 8)`` bytes).
    metric : {"cosine", "l2", "ip"}
        Used for hashing (cosine vectors are normalised first) and for re-ranking.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype
        Storage dtype of the kept vectors (``refine=True``): float32, float16 or bfloat16.
    memory_budget : int, optional
        Bytes of working memory per search.
    seed : int
        Seeds the random projection (and ITQ's initial rotation).
    refine : bool
        Keep the full-precision vectors and re-rank ``refine_factor · k`` Hamming candidates
        exactly in every search; ``False``: results are ranked by Hamming distance alone.
    refine_factor : int
        Default candidates per result re-ranked when ``refine=True``; overridable per search.
    projection : {"gaussian", "orthogonal", "identity", "itq"}
        See :mod:`gpuann.binary.projection`. ``"itq"`` is learned and needs :meth:`train`.
    train_thresholds : bool
        Learn a median threshold per bit in :meth:`train` (faiss's ``train_thresholds``).

    Notes
    -----
    Distances: with ``refine=False``, the **Hamming distance as float32** (ascending, as
    faiss's ``IndexLSH``), ``+inf`` for missing results; with ``refine=True``, the metric's
    value (squared L2 ascending, or similarity descending). Equal distances are ordered by
    lower id.

    ``merge_from`` copies the other index's codes, so it needs the same hashing: both trained,
    with the same projection matrix and thresholds (a copy of this index, or one trained on
    the same data with the same seed); an index trained on other data raises ``ValueError``.

    Examples
    --------
    >>> x = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    >>> index = LSHIndex(32, 256, device="cpu", refine=True, refine_factor=50)
    >>> index.add(x)
    >>> D, I = index.search(x[:3], k=1)
    >>> I.flatten().tolist()
    [0, 1, 2]
    """

    _config_keys = (
        *("dim", "nbits", "metric", "dtype", "memory_budget", "seed", "refine", "refine_factor"),
        *("projection", "train_thresholds"),
    )

    def __init__(
        self,
        dim: int,
        nbits: int,
        *,
        metric: str | Metric = "cosine",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        memory_budget: int | None = None,
        seed: int = DEFAULT_SEED,
        refine: bool = False,
        refine_factor: int = DEFAULT_REFINE_FACTOR,
        projection: str = "gaussian",
        train_thresholds: bool = False,
    ) -> None:
        dim = check_nbits(dim, "dim", multiple_of_8=False)
        self._nbits = check_nbits(nbits, multiple_of_8=False)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection: expected one of {PROJECTIONS}, got {projection!r}")
        if projection in ("identity", "itq") and self._nbits > dim:
            raise ValueError(
                f"nbits: projection={projection!r} needs nbits <= dim={dim}, got {self._nbits}"
            )
        self._init_refine(refine, refine_factor)
        self._projection = projection
        self._train_thresholds = bool(train_thresholds)
        self._seed = non_negative_int(seed, "seed")
        self._code_size = code_bytes(self._nbits)
        super().__init__(
            dim,
            metric=metric,
            device=device,
            dtype=storage_dtype(dtype),
            memory_budget=memory_budget,
        )
        self._matrix: torch.Tensor | None = None
        self._thresholds: torch.Tensor | None = None
        self._is_trained = projection != "itq" and not self._train_thresholds
        if projection != "itq":
            matrix = random_projection(projection, dim, self._nbits, self._seed)
            self._matrix = matrix.to(self._device) if matrix is not None else None

    # ---------------------------------------------------------------- properties
    @property
    def projection(self) -> str:
        """The projection kind (``"gaussian"``, ``"orthogonal"``, ``"identity"``, ``"itq"``)."""
        return self._projection

    @property
    def train_thresholds(self) -> bool:
        """Whether :meth:`train` learns a median threshold per bit."""
        return self._train_thresholds

    @property
    def is_trained(self) -> bool:
        """False until :meth:`train` for ``projection="itq"`` or ``train_thresholds=True``."""
        return self._is_trained

    @property
    def nbytes(self) -> int:
        """Bytes of memory held: the stored rows (codes, ids, kept vectors and norms, spare
        capacity included) and the projection matrix and thresholds."""
        extra = (t for t in (self._matrix, self._thresholds) if t is not None)
        return self._rows.nbytes + sum(t.nbytes for t in extra)

    def _display_fields(self) -> dict[str, Any]:
        return {
            "n": len(self),
            "dim": self._dim,
            "nbits": self._nbits,
            "metric": self._metric,
            "projection": self._projection,
            "refine": self._refine,
            **({"refine_factor": self.refine_factor} if self._refine else {}),
            "trained": self._is_trained,
            **({"dtype": self._dtype} if self._refine else {}),
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "nbits": self._nbits,
            "seed": self._seed,
            "refine": self._refine,
            "refine_factor": self.refine_factor,
            "projection": self._projection,
            "train_thresholds": self._train_thresholds,
        }

    # ---------------------------------------------------------------- storage
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {**self._code_columns(), **self._kept_columns()}

    def _prepare(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool, Any]:
        """float32 vectors (normalised for cosine), hashed and (``refine``) stored as given."""
        x, was_numpy, source = self._prepare_queries(x, check_finite, name)
        half = self._refine and self._dtype != torch.float32
        if (
            half
            and check_finite
            and x.numel()
            and not bool(torch.isfinite(x.to(self._dtype)).all())
        ):
            raise ValueError(
                f"{name}: values beyond {str(self._dtype).removeprefix('torch.')}'s range "
                "(the storage dtype) would be stored as infinite"
            )
        return x, was_numpy, source

    def _prepare_queries(
        self, queries: Any, check_finite: bool, name: str = "queries"
    ) -> tuple[torch.Tensor, bool, torch.device]:
        return prepare_vectors(
            queries,
            name,
            dim=self._dim,
            metric=self._metric,
            device=self._device,
            check_finite=check_finite,
        )

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._require_trained()
        return {"codes": self._hash(x, self.memory_budget), **self._kept(x)}

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        if not self._refine:
            raise RuntimeError("reconstruct: this index keeps only codes (refine=False)")
        return self._rows.data["vectors"][rows]

    def _copy_from(self, source: Index) -> None:
        self._matrix, self._thresholds = (
            None if t is None else t.to(self._device) for t in (source._matrix, source._thresholds)
        )
        self._is_trained = source._is_trained
        super()._copy_from(source)

    def _merge_rows(self, other: Any) -> None:
        """Insert ``other``'s codes, which only mean the same bits when ``other`` hashes as
        this index does: equal configurations still learn other ITQ rotations and thresholds
        from other data (both write locks held)."""
        for index, name in ((self, "this index"), (other, "other")):
            if not index._is_trained:
                raise NotTrainedError(f"merge_from: {name} is not trained; call train(x) first")
        mine, theirs = (self._matrix, self._thresholds), (other._matrix, other._thresholds)
        if not all(_same_tensor(a, b) for a, b in zip(mine, theirs, strict=True)):
            raise ValueError(
                "other: trained on other data (its projection or thresholds differ), so its "
                "codes do not match this index's; add its vectors to this index instead"
            )
        super()._merge_rows(other)

    # ---------------------------------------------------------------- hashing
    def _hash(self, x: torch.Tensor, memory_budget: int | None) -> torch.Tensor:
        """Packed codes padded to whole int32 words, shape (n, padded bytes), uint8."""
        budget = check_budget(memory_budget, self._device)
        width = padded_bytes(self._code_size)
        return hash_vectors(x, self._matrix, self._thresholds, self._nbits, width, budget)

    def _require_trained(self) -> None:
        if not self._is_trained:
            raise NotTrainedError(
                "the index is not trained: call train(x) first "
                "(projection='itq' or train_thresholds=True)"
            )

    def encode(self, x: Any, *, check_finite: bool = True) -> Any:
        """The packed binary codes of ``x``.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim), floating

        Returns
        -------
        codes : shape (n, ceil(nbits / 8)), uint8; numpy when ``x`` is numpy, else a tensor
            on the index device.
        """
        self._require_trained()
        x, was_numpy, _ = self._prepare_queries(x, check_finite, "x")
        codes = self._hash(x, self.memory_budget)[:, : self._code_size]
        return codes.cpu().numpy() if was_numpy else codes

    def train(self, x: Any, *, check_finite: bool = True) -> None:
        """Learn the ITQ projection and/or median thresholds from ``x`` (shape (n, dim)).

        Nothing to learn for data-independent projections without thresholds. The index must
        be empty (codes already stored would no longer match).
        """
        x, _, _ = self._prepare_queries(x, check_finite, "x")
        if x.shape[0] == 0:
            raise ValueError("x: cannot train on zero vectors")
        with self._lock.write():
            if self._rows.n:
                raise RuntimeError("train: the index already holds vectors; call reset() first")
            matrix, thresholds = self._matrix, None
            if self._projection == "itq":
                matrix, offsets = itq_projection(x, self._nbits, self._seed)
                matrix, thresholds = matrix.to(self._device), offsets.to(self._device)
            if self._train_thresholds:
                projected = x[:, : self._nbits] if matrix is None else x @ matrix
                thresholds = median_thresholds(projected)
            self._matrix, self._thresholds, self._is_trained = matrix, thresholds, True

    # ---------------------------------------------------------------- search
    def search(
        self,
        queries: Any,
        k: int,
        *,
        refine_factor: int | None = None,
        backend: str = "auto",
        memory_budget: int | None = None,
        check_finite: bool = True,
    ) -> SearchResult:
        """The ``k`` approximate nearest neighbours of each query.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
        k : int
        refine_factor : int, optional
            ``refine=True`` only: ``refine_factor · k`` Hamming candidates are re-ranked
            exactly; default the index's ``refine_factor``.
        backend : {"auto", "triton", "torch"}
            Backend of the Hamming search.
        memory_budget : int, optional
            Overrides the index's budget for this search.
        check_finite : bool
            Raise on NaN or infinity in ``queries``.

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k), float32 and int64 (see the class Notes for what
            the distances are). numpy when ``queries`` is numpy, else on the queries' device.
        """
        factor = self._refine_factor_for(refine_factor)
        self._require_trained()
        return self._run_search(
            queries,
            k,
            check_finite=check_finite,
            factor=factor,
            backend=backend,
            memory_budget=memory_budget,
        )

    def _search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        factor: int | None,
        backend: str,
        memory_budget: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        budget = self._budget(memory_budget)
        rows = self._rows
        codes = self._hash(queries, budget)
        hamming, found = self._hamming_search(
            codes, k if factor is None else factor * k, backend, budget
        )
        if factor is None:
            distances = torch.where(hamming == MISSING_DISTANCE, float("inf"), hamming.float())
        elif rows.n == 0:
            distances, found = self._no_results(queries.shape[0], k)
        else:
            sqnorms = rows.view("sqnorms") if self._metric is Metric.L2 else None
            distances, found = rerank_rows(
                queries, rows.view("vectors"), sqnorms, found, k, self._metric, budget
            )
        return distances, rows.ids_of(found)

    # ---------------------------------------------------------------- saving
    def _save_meta(self) -> dict[str, Any]:
        return {**super()._save_meta(), "is_trained": self._is_trained}

    def _save_arrays(self) -> dict[str, torch.Tensor]:
        arrays = super()._save_arrays()  # the codes unpadded (StoredCodes)
        if self._matrix is not None:
            arrays["projection"] = self._matrix
        if self._thresholds is not None:
            arrays["thresholds"] = self._thresholds
        return arrays

    @classmethod
    def _from_file(cls, meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> Index:
        if "refine" not in meta and "keep_vectors" in meta:  # saved by gpuann 0.1
            meta = {**meta, "refine": bool(meta["keep_vectors"])}
        return super()._from_file(meta, arrays, device)

    def _restore(self, meta: dict, arrays: dict[str, torch.Tensor]) -> None:
        from gpuann.serialization import IndexFileError

        if "projection" in arrays:
            if tuple(arrays["projection"].shape) != (self._dim, self._nbits):
                raise IndexFileError("projection does not match the header's dim and nbits")
            self._matrix = arrays["projection"].to(self._device, torch.float32)
        if "thresholds" in arrays:
            if tuple(arrays["thresholds"].shape) != (self._nbits,):
                raise IndexFileError("thresholds do not match the header's nbits")
            self._thresholds = arrays["thresholds"].to(self._device, torch.float32)
        self._is_trained = bool(meta.get("is_trained", self._is_trained))
        super()._restore(meta, arrays)  # checks and pads the codes (StoredCodes)


def _same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two optional tensors are both absent or equal bit for bit."""
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a, b.to(a.device))
