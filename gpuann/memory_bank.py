"""``MemoryBank``: a fixed-capacity ring buffer of embeddings on the device, searched exactly.

The queue of past embeddings that contrastive learning (MoCo-style) and hard-negative mining
keep. Every tensor is allocated once, at its final size: ``push`` writes in place at a write
pointer kept as a device tensor, and ``search`` scans the whole buffer with an occupancy mask.
No operation syncs with the host or has a shape that depends on data, so a training step
that pushes and searches can be captured in a CUDA graph or compiled with
``torch.compile(fullgraph=True)``.

For a set that grows and shrinks without a capacity, use ``FlatIndex``: ``add`` (amortised
capacity doubling), ``remove`` (compaction in place) and ``update`` (in place) never rebuild
it, but its searches have shapes that follow its size and ``add`` reads the largest id back to
the host, so it is not for CUDA graphs; a ``MemoryBank`` is.

Ties: among equal distances the lower id wins. Ring slots are not in id order once the
buffer wraps around (nor with user ids), so a search passes the rank of each slot's id as the
tie order (``SearchRequest.row_rank``) rather than relying on the slot number. With automatic
ids that rank is the slot's age, ``(slot - count) mod capacity``, and an id's slot is
``id mod capacity``: no sort. Once ids have been given, each search sorts the ids once.
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann._validate import as_float_matrix, check_k, resolve_device, storage_dtype
from gpuann.display import Bytes, html_repr, text_repr
from gpuann.exact import differentiable_distances, exact_search
from gpuann.filters import as_allow_ids, as_exclude_ids, as_labels, lookup_rows, rank_of, row_mask
from gpuann.metrics import Metric, as_metric
from gpuann.result import SearchResult

__all__ = ["MemoryBank"]


class MemoryBank(torch.nn.Module):
    """A ring buffer of the last ``capacity`` embeddings, with labels and ids, searched exactly.

    A ``torch.nn.Module`` whose state is buffers: assign it to a model's attribute and it
    moves with ``.to()`` and checkpoints with ``state_dict()`` / ``load_state_dict()``.

    Parameters
    ----------
    capacity : int
        Number of embeddings kept; a push beyond it overwrites the oldest.
    dim : int
        Embedding dimension.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype
        Storage dtype (float32, float16 or bfloat16); scores accumulate in float32.
    metric : {"cosine", "ip", "l2"}
        For cosine, embeddings are normalised when pushed.
    memory_budget : int, optional
        Bytes of working memory per search (see :func:`gpuann.knn`).

    Examples
    --------
    >>> bank = MemoryBank(4, 2, device="cpu", metric="l2")
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    >>> bank.push(x, labels=torch.tensor([0, 1, 1]))
    >>> bank.push(torch.tensor([[3.0, 0.0], [4.0, 0.0]]))  # wraps around: id 0 is overwritten
    >>> len(bank), bank.search(torch.tensor([[0.9, 0.0]]), 2).ids
    (4, tensor([[1, 2]]))
    >>> bank.search(torch.tensor([[0.9, 0.0]]), 2, exclude_labels=torch.tensor([1])).ids
    tensor([[3, 4]])
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    filled: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        capacity: int,
        dim: int,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        metric: str | Metric = "cosine",
        *,
        memory_budget: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("capacity", capacity), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        self.capacity, self.dim = capacity, dim
        self.metric = as_metric(metric)
        self.memory_budget = memory_budget
        device, dtype = resolve_device(device), storage_dtype(dtype)
        self.register_buffer("embeddings", torch.zeros((capacity, dim), dtype=dtype, device=device))
        self.register_buffer("labels", torch.full((capacity,), -1, device=device))
        self.register_buffer("ids", torch.full((capacity,), -1, device=device))
        self.register_buffer("filled", torch.zeros(capacity, dtype=torch.bool, device=device))
        #: Embeddings ever pushed: the write pointer is ``count % capacity``, and automatic
        #: ids continue from it.
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))
        sqnorms = torch.zeros(capacity, device=device) if self.metric is Metric.L2 else None
        self.register_buffer("sqnorms", sqnorms)
        #: Whether a push ever gave ids (then slots are found by sorting the ids).
        self._given_ids = False

    @property
    def device(self) -> torch.device:
        """Where the buffer lives and searches run."""
        return self.embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype."""
        return self.embeddings.dtype

    def __len__(self) -> int:
        """Number of stored embeddings (one host sync)."""
        return int(self.filled.sum())

    @property
    def nbytes(self) -> int:
        """Bytes of device memory held by the buffers."""
        return sum(b.nbytes for b in self.buffers())

    def _display_fields(self) -> dict[str, Any]:
        """What Jupyter shows: no fill level, since counting it would sync the device."""
        return {
            "capacity": self.capacity,
            "dim": self.dim,
            "metric": self.metric,
            "dtype": self.dtype,
            "device": self.device,
            "memory": Bytes(self.nbytes),
        }

    def extra_repr(self) -> str:
        return text_repr(self).removeprefix(f"{type(self).__name__}(").removesuffix(")")

    def _repr_html_(self) -> str:
        return html_repr(self)

    # ---------------------------------------------------------------- checkpoints
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "dim": self.dim,
            "metric": self.metric.value,
            "given_ids": self._given_ids,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        mine = {k: v for k, v in self.get_extra_state().items() if k != "given_ids"}
        theirs = {k: v for k, v in state.items() if k != "given_ids"}
        if theirs != mine:
            raise ValueError(
                f"load_state_dict: checkpoint of a MemoryBank {theirs}, this is {mine}"
            )
        self._given_ids = bool(state.get("given_ids", True))

    # ---------------------------------------------------------------- writing
    def reset(self) -> None:
        """Forget every embedding (automatic ids restart at 0); no reallocation."""
        self.filled.zero_()
        self.ids.fill_(-1)
        self.labels.fill_(-1)
        self.count.zero_()
        self._given_ids = False

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: Any = None, ids: Any = None) -> None:
        """Enqueue a batch, overwriting the oldest entries in place.

        Parameters
        ----------
        embeddings : torch.Tensor, shape (B, dim), floating
            Detached and copied; any ``B``: a batch that wraps around the end is split, and of
            a batch larger than the capacity only the last ``capacity`` rows are kept.
        labels : int64 tensor, shape (B,), optional
            For ``search(exclude_labels=...)``; negative (the default, -1) means none.
        ids : int64 tensor, shape (B,), optional
            Non-negative, distinct within the batch. An id already stored is replaced (its
            older copy is dropped). Default: consecutive ids continuing the push counter
            (the number of embeddings ever pushed). Do not mix given and automatic ids.

        No host sync: the write pointer is a device tensor, shapes depend on ``B`` only.
        Values are not checked for NaN (that would sync).
        """
        x, _ = as_float_matrix(embeddings, "embeddings", dim=self.dim, dim_source="the bank's dim")
        device, n = self.device, x.shape[0]
        if labels is not None:
            labels = as_labels(labels, n, "labels", device)
        if ids is not None:
            ids = as_labels(ids, n, "ids", device)
        if n == 0:
            return
        keep = min(n, self.capacity)  # of a batch larger than the bank, the last rows survive
        offsets = torch.arange(n - keep, n, device=device)
        slots = (self.count + offsets) % self.capacity
        x = x.detach()[n - keep :].to(device)
        if self.metric is Metric.COSINE:
            x = torch.nn.functional.normalize(x.float(), dim=1)
        x = x.to(self.dtype)
        if ids is None:
            new_ids = self.count + offsets
        else:
            new_ids = ids[n - keep :]
            self._given_ids = True
            stale = row_mask(self._slots_of(new_ids), self.capacity)
            self.filled &= ~stale  # an id pushed again replaces its older copy
        self.embeddings.index_copy_(0, slots, x)
        self.ids.index_copy_(0, slots, new_ids)
        new_labels = labels[n - keep :] if labels is not None else torch.full_like(new_ids, -1)
        self.labels.index_copy_(0, slots, new_labels)
        self.filled.index_fill_(0, slots, True)
        if self.sqnorms is not None:
            xf = x.float()
            self.sqnorms.index_copy_(0, slots, (xf * xf).sum(dim=1))
        self.count.add_(n)

    # ---------------------------------------------------------------- id lookups
    def _slots_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Slot of each id (any shape), ``-1`` where it is not stored."""
        if not self._given_ids:  # automatic ids: id i can only be in slot i mod capacity
            slots = ids.remainder(self.capacity)
            found = (ids >= 0) & (self.ids[slots] == ids) & self.filled[slots]
            return torch.where(found, slots, -1)
        sorted_ids, order, _ = rank_of(torch.where(self.filled, self.ids, -1))
        return lookup_rows(sorted_ids, ids, order)

    def _tie_rank(self) -> torch.Tensor:
        """Rank of each slot's id (empty slots anywhere: they are never returned)."""
        if not self._given_ids:  # ids grow with age: the oldest slot is ``count mod capacity``
            slots = torch.arange(self.capacity, device=self.device)
            return (slots - self.count).remainder(self.capacity)
        return rank_of(self.ids)[2]

    # ---------------------------------------------------------------- searching
    def search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        exclude_labels: Any = None,
        exclude_ids: Any = None,
        allow_ids: Any = None,
        differentiable: bool = False,
        backend: str = "auto",
        memory_budget: int | None = None,
    ) -> SearchResult:
        """The ``k`` nearest stored embeddings of each query.

        Parameters
        ----------
        queries : torch.Tensor, shape (Q, dim), floating
        k : int
        exclude_labels : int64 tensor, shape (Q,), optional
            The label of each query: stored items with the same (non-negative) label are
            skipped (hard-negative mining).
        exclude_ids : int64 tensor, shape (Q, m) or (Q,), optional
            Ids skipped per query; ``-1`` pads.
        allow_ids : int64 tensor, shape (n,), optional
            The only ids that may be returned.
        differentiable : bool
            Distances carry autograd to ``queries`` (recomputed for the selected pairs; the
            stored embeddings are detached copies).
        backend : {"auto", "triton", "torch"}
        memory_budget : int, optional

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k), on the bank's device: squared L2 ascending or
            similarity descending, ties by lower id, ``-1`` / ±inf where fewer than ``k``
            stored items are eligible. The search always scans all ``capacity`` slots (a
            static shape), skipping empty ones.
        """
        k = check_k(k)
        queries, _ = as_float_matrix(queries, "queries", dim=self.dim, dim_source="the bank's dim")
        original = queries = queries.to(self.device)
        if self.metric is Metric.COSINE:
            queries = torch.nn.functional.normalize(queries.float(), dim=1)
        allowed = self.filled
        if allow_ids is not None:
            allow = self._slots_of(as_allow_ids(allow_ids, self.device))
            allowed = allowed & row_mask(allow, self.capacity)
        excluded_rows = query_labels = None
        if exclude_ids is not None:
            excluded = as_exclude_ids(exclude_ids, queries.shape[0], self.device)
            excluded_rows = self._slots_of(excluded)
        if exclude_labels is not None:
            query_labels = as_labels(
                exclude_labels, queries.shape[0], "exclude_labels", self.device
            )
        distances, rows = exact_search(
            queries,
            self.embeddings,
            k,
            Metric.L2 if self.metric is Metric.L2 else Metric.IP,
            database_sqnorms=self.sqnorms,
            backend=backend,
            memory_budget=memory_budget if memory_budget is not None else self.memory_budget,
            excluded_rows=excluded_rows,
            allowed_rows=allowed,
            row_labels=self.labels if query_labels is not None else None,
            query_labels=query_labels,
            row_rank=self._tie_rank(),
        )
        if differentiable:
            distances = differentiable_distances(original, self.embeddings, rows, self.metric)
        ids = torch.where(rows >= 0, self.ids[rows.clamp(min=0)], -1)
        return SearchResult(distances, ids)
