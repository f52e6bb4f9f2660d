"""``FlatIndex``: exact search over vectors kept on the device, with user ids.

Rows live in the shared id-sorted store (:class:`gpuann._rows.IdRows`): exact search breaks
ties by lower row, which is then the same as lower id, with no extra work at search time.
Appending ids larger than every stored one (always the case with automatic ids) is an
amortised O(batch) copy into spare capacity; ids that fall between stored ones cost a merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gpuann._int8 import Int8Codes
from gpuann._validate import positive_int, resolve_device, storage_dtype
from gpuann.differentiable import differentiable_distances, grad_queries
from gpuann.exact import exact_search
from gpuann.filters import as_allow_ids, as_exclude_ids, lookup_rows, row_mask
from gpuann.index import Index
from gpuann.metrics import Metric, as_metric, squared_norms
from gpuann.range_search import tiled_range_search
from gpuann.refine import DEFAULT_REFINE_FACTOR, RefineOptions
from gpuann.result import SearchResult

__all__ = ["FlatIndex"]


class FlatIndex(RefineOptions, Index):
    """Exact (brute-force) index over vectors stored on one device.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"l2", "ip", "cosine"}
        For cosine, vectors are normalised once when added.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype
        Storage dtype: float32, float16 or bfloat16 (scores accumulate in float32), or int8:
        codes with per-dimension ranges, a quarter of float32's memory (see the Notes).
    memory_budget : int, optional
        Bytes of working memory per search (see :func:`gpuann.knn`).
    refine : bool
        int8 only: also keep float32 copies of the vectors in host memory, and re-score
        ``refine_factor · k`` candidates with them exactly (the distances are then exact).
    refine_factor : int
        Default re-scoring factor of :meth:`search` (with ``refine``).
    int8_queries : bool
        int8 only: quantise each query to int8 too and score with exact int32 dots
        (``torch._int_mm`` on the CPU, the fused kernel's int8 ``tl.dot`` on CUDA: faster,
        and the same bits on every backend), at a cost in recall where a few dimensions
        have much larger ranges than the rest (one factor per query). Default: float
        queries against the codes.

    Notes
    -----
    int8 storage learns each dimension's range from :meth:`train` — or, when ``add`` comes
    first, from the vectors of that first ``add`` (later values outside the range are
    clipped). The search runs the exact engine over the codes (float queries, or with
    ``int8_queries`` int8 × int8 products accumulated exactly in int32, each query quantised
    with a power-of-two factor), then re-scores the candidates (``k``, ``2k`` with
    ``int8_queries``, or ``refine_factor · k``) with the float query against the decoded
    codes, or the kept float vectors with ``refine=True``. Results are approximate without
    ``refine``.

    Examples
    --------
    >>> index = FlatIndex(2, device="cpu")
    >>> index.add(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), ids=[10, 11, 12])
    >>> D, I = index.search(torch.tensor([[0.9, 0.9]]), k=2)
    >>> I
    tensor([[11, 10]])
    >>> index.remove([11]), len(index)
    (1, 2)
    """

    _derived_columns = ("sqnorms",)
    _config_keys = (*Index._config_keys, "refine", "refine_factor", "int8_queries")

    def __init__(
        self,
        dim: int,
        *,
        metric: str | Metric = "l2",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        memory_budget: int | None = None,
        refine: bool = False,
        refine_factor: int = DEFAULT_REFINE_FACTOR,
        int8_queries: bool = False,
    ) -> None:
        int8 = dtype in (torch.int8, "int8")
        dtype = torch.int8 if int8 else storage_dtype(dtype)
        self._init_refine(refine, refine_factor)
        if refine and not int8:
            raise ValueError("refine: only for dtype=torch.int8 (float storage is exact)")
        if int8_queries and not int8:
            raise ValueError("int8_queries: only for dtype=torch.int8")
        self._int8 = (
            Int8Codes(
                positive_int(dim, "dim"),
                as_metric(metric),
                resolve_device(device),
                refine,
                bool(int8_queries),
            )
            if int8
            else None
        )
        super().__init__(
            dim, metric=metric, device=device, dtype=dtype, memory_budget=memory_budget
        )

    @property
    def is_trained(self) -> bool:
        """False only for int8 storage whose ranges are not learned yet."""
        return self._int8 is None or self._int8.quantizer.is_trained

    @property
    def nbytes(self) -> int:
        """Bytes held, spare capacity and the host copy of ``refine`` included (no sync)."""
        return self._rows.nbytes + (self._int8.nbytes if self._int8 is not None else 0)

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "refine": self._refine,
            "refine_factor": self.refine_factor,
            "int8_queries": self._int8 is not None and self._int8.int8_queries,
        }

    def _display_extra(self) -> dict[str, Any]:
        if self._int8 is None:
            return {}
        return {"trained": self.is_trained, "refine": self._refine}

    # ---------------------------------------------------------------- storage
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if self._int8 is not None:
            return self._int8.columns()
        columns = {"vectors": ((self._dim,), self._dtype)}
        if self._keeps_sqnorms():
            columns["sqnorms"] = ((), torch.float32)
        return columns

    def _keeps_sqnorms(self) -> bool:
        """Each row's squared norm is kept (derived, never saved): L2 scores add it, and with
        float32 storage the CPU's verified passes bound inner products with it (measured
        2026-12-08, 2 threads, AMD EPYC: 5-7 ms of a 70-180 ms search measured it again,
        Q = 100, N = 10⁵, d = 128 and Q = 1000, N = 20 000, d = 384); 4 bytes a row."""
        return self._metric is Metric.L2 or self._dtype == torch.float32

    def _input_dtype(self) -> torch.dtype:
        return torch.float32 if self._int8 is not None else self._dtype

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._int8 is None:
            return super()._encode(x)
        return self._int8.encode(x)

    def _derive(self, columns: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._int8 is not None:
            return self._int8.derive(columns["vectors"])
        if not self._keeps_sqnorms():
            return {}
        return {"sqnorms": squared_norms(columns["vectors"])}

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        if self._int8 is None:
            return super()._decode(rows)
        return self._int8.decode(rows, self._rows.data["vectors"])

    def train(self, x: Any, *, check_finite: bool = True) -> None:
        """int8 storage: learn each dimension's range from ``x`` (shape (n, dim), n ≥ 1).

        Float storage has nothing to learn (a no-op, as faiss's ``IndexFlat.train``).
        Training again replaces the ranges, which only an empty index allows.
        """
        x, _, _ = self._prepare(x, "x", check_finite)
        if self._int8 is None:
            return
        if not x.shape[0]:
            raise ValueError("x: training the int8 ranges needs at least one vector")
        with self._lock.write():
            if len(self._rows):
                raise RuntimeError("train: the int8 ranges are fixed once vectors are stored")
            self._int8.quantizer.train(x)

    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Add vectors (see :meth:`gpuann.Index.add`); an untrained int8 index first learns
        its ranges from these vectors."""
        int8 = self._int8
        if int8 is not None:
            # One first add at a time, and every add waits for its outcome: a concurrent add
            # must not encode with ranges that a failing first add then forgets (review).
            with int8.first_add:
                if not int8.quantizer.is_trained:
                    self._first_int8_add(x, ids, check_finite)
                    return
        super().add(x, ids, check_finite=check_finite)

    def _first_int8_add(self, x: Any, ids: Any, check_finite: bool) -> None:
        """Learn the int8 ranges from ``x``, then add it; a failed add forgets them again
        (ranges learned from a refused batch, bad ids say, would clip every later vector to
        them: found by review). ``first_add`` is held."""
        quantizer = self._int8.quantizer
        prepared, _, _ = self._prepare(x, "x", check_finite)
        if prepared.shape[0]:
            with self._lock.write():
                quantizer.train(prepared)
        try:
            super().add(x, ids, check_finite=check_finite)
        except BaseException:
            if prepared.shape[0]:
                with self._lock.write():
                    quantizer.forget()
            raise

    def _before_insert(self, ids: torch.Tensor, rows: Mapping[str, torch.Tensor]) -> None:
        if self._int8 is not None:
            self._int8.insert(ids, rows)  # type: ignore[arg-type]  # the base's own dict

    def _before_remove(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        if self._int8 is not None:
            self._int8.remove(rows)

    def _before_update(self, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        if self._int8 is not None:
            self._int8.update(rows, values)  # type: ignore[arg-type]  # the base's own dict

    def _reset_storage(self) -> None:
        super()._reset_storage()
        if self._int8 is not None:
            self._int8.host.reset()

    def _renumber_storage(self) -> None:
        super()._renumber_storage()
        if self._int8 is not None and self._refine:
            self._int8.host.renumber()

    # ---------------------------------------------------------------- queries
    def search(
        self,
        queries: Any,
        k: int,
        *,
        backend: str = "auto",
        memory_budget: int | None = None,
        check_finite: bool = True,
        exclude_ids: Any = None,
        allow_ids: Any = None,
        differentiable: bool = False,
        refine_factor: int | None = None,
    ) -> SearchResult:
        """The ``k`` nearest stored vectors of each query.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
            Moved to the index's device if needed; results come back where the queries were.
        k : int
        backend : {"auto", "triton", "torch"}
        memory_budget : int, optional
            Overrides the index's budget for this search.
        check_finite : bool
            Raise on NaN or infinity in ``queries`` (one host sync).
        exclude_ids : int64 tensor, shape (Q, m) or (Q,), optional
            Ids never returned for each query (e.g. the query's own id); ``-1`` pads, ids
            not in the index are ignored.
        allow_ids : int64 tensor, shape (n,), optional
            The only ids that may be returned (ids not in the index are ignored).
        differentiable : bool
            Return distances recomputed for the selected pairs with autograd to ``queries``
            (the stored vectors are a copy and get no gradient); see
            :func:`gpuann.differentiable_distances`. Tensor queries only; not with
            int8 storage.
        refine_factor : int, optional
            int8 with ``refine=True``: re-score ``refine_factor · k`` candidates exactly
            (default :attr:`refine_factor`).

        Returns
        -------
        SearchResult
            ``(distances, ids)`` of shape (Q, k); id ``-1`` with ±inf where fewer than ``k``
            stored vectors are eligible. Ties are ordered by lower id. Filters apply inside
            the search, with no host sync.
        """
        grad = grad_queries(queries, differentiable)
        if differentiable and self._int8 is not None:
            raise ValueError("differentiable: not available with int8 storage")
        factor = self._refine_factor_for(refine_factor)
        return self._run_search(
            queries,
            k,
            check_finite=check_finite and not torch.compiler.is_compiling(),
            backend=backend,
            memory_budget=memory_budget,
            exclude_ids=exclude_ids,
            allow_ids=allow_ids,
            differentiable=grad,
            refine_factor=factor,
        )

    def _search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        backend: str,
        memory_budget: int | None,
        exclude_ids: Any,
        allow_ids: Any,
        differentiable: torch.Tensor | None,
        refine_factor: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows
        n = rows.n
        excluded_rows = allowed_rows = None
        if exclude_ids is not None:
            excluded = as_exclude_ids(exclude_ids, queries.shape[0], self._device)
            excluded_rows = lookup_rows(rows.stored_ids, excluded)
        if allow_ids is not None:
            allowed_rows = row_mask(
                lookup_rows(rows.stored_ids, as_allow_ids(allow_ids, self._device)), n
            )
        vectors = rows.view("vectors")
        if self._int8 is not None and not self._int8.quantizer.is_trained:  # so, empty
            shape = (queries.shape[0], k)
            return (
                torch.full(shape, self._metric.missing_distance, device=self._device),
                torch.full(shape, -1, dtype=torch.int64, device=self._device),
            )
        engine_queries, query_scale, wanted = queries, None, k
        if self._int8 is not None:
            engine_queries, query_scale = self._int8.engine_queries(queries)
            wanted = self._int8.candidates(k, refine_factor)
        distances, found = exact_search(
            engine_queries,
            vectors,
            wanted,
            self._metric.scoring,
            database_sqnorms=rows.view("sqnorms") if self._keeps_sqnorms() else None,
            query_scale=query_scale,
            backend=backend,
            memory_budget=self._budget(memory_budget),
            excluded_rows=excluded_rows,
            allowed_rows=allowed_rows,
        )
        if self._int8 is not None and n:
            distances, found = self._int8.rescore(
                queries, vectors, found, k, self._budget(memory_budget)
            )
        distances, found = distances[:, :k], found[:, :k]
        if differentiable is not None:
            distances = differentiable_distances(
                differentiable.to(self._device), vectors, found, self._metric
            )
        return distances, rows.ids_of(found) if n else found

    def _range_search(
        self, queries: torch.Tensor, radius: float, *, max_results: int | None, memory_budget: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self._rows
        vectors = rows.view("vectors")
        l2 = self._metric is Metric.L2
        q = queries.float()
        q_norms = (q * q).sum(dim=1, keepdim=True) if l2 else None
        sqnorms = rows.view("sqnorms") if l2 else None

        int8 = self._int8

        def score_tile(q0: int, q1: int, r0: int, r1: int) -> torch.Tensor:
            x = vectors[r0:r1].float() if int8 is None else int8.range_tile(vectors[r0:r1])
            dots = q[q0:q1] @ x.T
            if not l2:
                return dots
            return (sqnorms[r0:r1] - 2.0 * dots + q_norms[q0:q1]).clamp_(min=0.0)

        lims, distances, found = tiled_range_search(
            q.shape[0],
            rows.n,
            score_tile,
            radius,
            descending=not l2,
            device=self._device,
            memory_budget=memory_budget,
            max_results=max_results,
            dim=self._dim,
        )
        return lims, distances, rows.ids_of(found)

    # ---------------------------------------------------------------- int8: moving, merging, files
    def _copy_from(self, source: Index) -> None:
        super()._copy_from(source)
        if self._int8 is not None:
            self._int8 = source._int8.copy_to(self._device)

    def _merge_rows(self, other: Index) -> None:
        if self._int8 is None:
            return super()._merge_rows(other)
        mine, theirs = self._int8.quantizer, other._int8.quantizer
        if theirs.is_trained and len(other._rows):
            if not mine.is_trained:
                mine.set_state(theirs.mid, theirs.step)
            elif not (torch.equal(mine.mid, theirs.mid) and torch.equal(mine.step, theirs.step)):
                raise ValueError("other: its int8 ranges differ from this index's; cannot merge")
        host = other._int8.host
        float_vectors = host.view("vectors") if self._refine else None
        ids = other._rows.stored_ids.to(self._device)
        _, present = self._rows.positions(ids)
        if bool(present.any()):
            dup = ids[present]
            raise ValueError(
                f"other: {dup.numel()} id(s) already in this index: {dup[:10].tolist()}"
            )
        columns = {name: other._rows.view(name).to(self._device) for name in other._rows.data}
        columns["float_vectors"] = float_vectors
        if ids.numel():
            self._before_insert(ids, columns)
            self._rows.insert(ids, columns)
        self._rows.next_id = max(self._rows.next_id, other._rows.next_id)
        return None

    def _save_arrays(self) -> dict[str, torch.Tensor]:
        arrays = super()._save_arrays()
        return {**arrays, **self._int8.arrays()} if self._int8 is not None else arrays

    def _restore(self, meta: dict, arrays: dict[str, torch.Tensor]) -> None:
        if self._int8 is not None:
            self._int8.restore(arrays, arrays["ids"], int(meta.get("next_id", 0)))
        super()._restore(meta, arrays)
