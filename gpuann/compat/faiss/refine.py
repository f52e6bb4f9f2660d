"""faiss's ``IndexRefineFlat``: any index's candidates re-ranked by exact distance."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann.compat.faiss._base import Index
from gpuann.compat.faiss._common import (
    METRIC_L2,
    FaissRuntimeError,
    as_vectors,
    check_k,
    faiss_errors,
    fill_missing,
)
from gpuann.compat.faiss.flat import IndexFlat

__all__ = ["IndexRefineFlat", "IndexRefineSearchParameters"]


class IndexRefineSearchParameters:
    """faiss's ``IndexRefineSearchParameters(k_factor=..., base_index_params=...)``."""

    def __init__(self, *, k_factor: float = 1.0, base_index_params: Any = None) -> None:
        self.k_factor, self.base_index_params = float(k_factor), base_index_params
        self.sel = None


class IndexRefineFlat(Index):
    """faiss ``IndexRefineFlat(base_index)``: ``k_factor · k`` candidates of ``base_index``
    re-ranked by exact distance against :attr:`refine_index` (an :class:`IndexFlat` of every
    added vector); ``k_factor`` is 1 by default, as in faiss.

    ``base_index`` must be empty (faiss's ``ntotal`` check) and number added vectors
    ``0, 1, …`` (every index of this module does, with ``add``).
    """

    _positional = True

    def __init__(self, base_index: Index, xb: Any = None) -> None:
        if not isinstance(base_index, Index):
            raise TypeError(
                "base_index: expected an index from gpuann.compat.faiss, got "
                f"{type(base_index).__name__}"
            )
        if base_index.ntotal:
            raise FaissRuntimeError("base_index: IndexRefineFlat needs an empty base index")
        self.base_index = base_index
        self.metric_type = base_index.metric_type
        device = getattr(getattr(base_index, "_native", None), "device", None)
        self.refine_index = IndexFlat(base_index.d, base_index.metric_type, device)
        self.k_factor = 1.0
        self.own_fields = False
        if xb is not None:
            self.add(xb)

    @property
    def _native(self) -> Any:
        return self.refine_index.index

    @property
    def d(self) -> int:
        return self.base_index.d

    @property
    def ntotal(self) -> int:
        return self.base_index.ntotal

    @property
    def is_trained(self) -> bool:
        return self.base_index.is_trained

    @is_trained.setter
    def is_trained(self, value: bool) -> None:
        self.base_index.is_trained = value

    def train(self, x: Any) -> None:
        self.base_index.train(x)

    def add(self, x: Any) -> None:
        """Add to the base index and keep the exact vector."""
        x = as_vectors(x, self.d)
        self.base_index.add(x)
        self.refine_index.add(x)

    def reset(self) -> None:
        self.base_index.reset()
        self.refine_index.reset()

    def remove_ids(self, x: Any) -> int:
        """Not supported by faiss's ``IndexRefine`` either."""
        raise FaissRuntimeError("remove_ids not implemented for this type of index")

    def range_search(self, x: Any, thresh: float, *, params: Any = None):
        """``(lims, D, I)`` as faiss's ``IndexRefine``: the base index's range search with
        ``thresh · k_factor`` (faiss's widening, for inner products too), its results
        re-scored exactly and kept where within ``thresh`` (l2: ``<``; inner product: ``>``),
        each query's ordered by exact distance, then id."""
        x = as_vectors(x, self.d)
        k_factor, base_params = self.k_factor, params
        if isinstance(params, IndexRefineSearchParameters):
            k_factor, base_params = params.k_factor, params.base_index_params
        wide = float(thresh) * k_factor
        lims, _, found = self.base_index.range_search(x, wide, params=base_params)
        lims = np.asarray(lims, dtype=np.int64)
        found = np.asarray(found, dtype=np.int64)
        queries = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
        q = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        scores = self._exact_scores(q[torch.from_numpy(queries)], torch.from_numpy(found))
        scores = scores.cpu()  # the native index may live on the GPU
        l2 = self.metric_type == METRIC_L2
        keep = scores < thresh if l2 else scores > thresh
        scores, found, queries = scores[keep], torch.from_numpy(found)[keep], queries[keep.numpy()]
        # by query, then exact distance, then id
        key = scores if l2 else -scores
        order = np.lexsort((found.numpy(), key.numpy(), queries))
        counts = np.bincount(queries, minlength=len(lims) - 1)
        new_lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
        return new_lims, scores.numpy()[order], found.numpy()[order]

    def _exact_scores(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Exact distances (l2) or inner products of ``q[i]`` (n, d) with stored vector
        ``rows[i]`` (n,), ``±inf`` where ``rows[i]`` is ``-1`` (float32, (n,))."""
        l2 = self.metric_type == METRIC_L2
        device = self._native.device
        rows, q = rows.to(device), q.to(device, torch.float32)
        vectors = torch.zeros((rows.shape[0], self.d), device=device)
        hit = rows >= 0
        if bool(hit.any()):  # an empty index holds no vector, not even row 0 (found by review)
            with faiss_errors():
                vectors[hit] = self._native.reconstruct(rows[hit]).float()
        if l2:
            scores = ((vectors - q) ** 2).sum(dim=1)
        else:
            scores = torch.bmm(vectors[:, None, :], q[:, :, None]).reshape(-1)
        return scores.masked_fill(~hit, float("inf") if l2 else float("-inf"))

    def merge_from(self, otherIndex: Any, add_id: int = 0) -> None:
        """Not supported by faiss's ``IndexRefine`` either."""
        raise FaissRuntimeError("merge_from not implemented for this type of index")

    def _search_positions(self, x: Any, k: int, params: Any) -> tuple[Any, Any]:
        x, k = as_vectors(x, self.d), check_k(k)
        k_factor, base_params = self.k_factor, params
        if isinstance(params, IndexRefineSearchParameters):
            k_factor, base_params = params.k_factor, params.base_index_params
        wide = max(k, int(k * k_factor))
        _, candidates = self.base_index.search(x, wide, params=base_params)
        was_numpy = isinstance(candidates, np.ndarray)
        device = self._native.device
        rows = torch.as_tensor(candidates).to(device)
        # a copy: a reversed (negative-stride) array is no tensor (found by review)
        q = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
        q = q.to(device, torch.float32)
        wide = rows.shape[1]
        scores = self._exact_scores(q.repeat_interleave(wide, dim=0), rows.reshape(-1))
        scores = scores.reshape(rows.shape)
        l2 = self.metric_type == METRIC_L2
        missing = float("inf") if l2 else float("-inf")
        scores, order = torch.sort(scores, dim=1, descending=not l2, stable=True)
        scores, found = scores[:, :k], rows.gather(1, order)[:, :k].contiguous()
        if k > found.shape[1]:
            pad = k - found.shape[1]
            scores = torch.nn.functional.pad(scores, (0, pad), value=missing)
            found = torch.nn.functional.pad(found, (0, pad), value=-1)
        scores = fill_missing(scores.contiguous(), found, self._missing())
        if was_numpy:
            return scores.cpu().numpy(), found.cpu().numpy()
        return scores.to(candidates.device), found.to(candidates.device)
