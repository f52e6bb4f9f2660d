"""``MemoryBank``: a fixed-capacity ring buffer of embeddings on the device, searched exactly.

The queue of past embeddings that contrastive learning (MoCo-style) and hard-negative mining
keep. It is an :class:`~gpuann.index.Index` whose storage policy is a ring: every tensor is
allocated once, at its final size; ``add`` writes in place at a write pointer kept as a
device tensor, overwriting the oldest entries, and ``search`` scans the whole buffer with an
occupancy mask. With automatic ids and ``check_finite=False`` no operation syncs with the
host or has a shape that depends on data, so a training step that adds and searches can be
captured in a CUDA graph; under ``torch.compile(fullgraph=True)`` the value checks and the
lock are skipped, so the same step compiles without a graph break.

For a set that grows and shrinks without a capacity, use ``FlatIndex``: its searches have
shapes that follow its size and ``add`` reads the largest id back to the host, so it is not
for CUDA graphs; a ``MemoryBank`` is.

Ties: among equal distances the lower id wins. Ring slots are not in id order once the
buffer wraps around (nor with user ids), so a search passes the rank of each slot's id as the
tie order (``SearchRequest.row_rank``) rather than relying on the slot number. With automatic
ids that rank is the slot's age, ``(slot - count) mod capacity``, and an id's slot is
``id mod capacity``: no sort. Once ids have been given, each search sorts the ids once.

Concurrency: ``add``, ``remove``, ``update`` and ``reset`` hold the index's write lock,
``search`` its read lock, so a search never sees a half-written batch (the lock orders the
work queued on the device, which runs in that order on one stream).
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann._ring import RingState
from gpuann._validate import as_new_ids, positive_int, storage_dtype
from gpuann.differentiable import differentiable_distances, grad_queries
from gpuann.display import Bytes, text_repr
from gpuann.exact import exact_search
from gpuann.filters import as_allow_ids, as_exclude_ids, as_labels, row_mask
from gpuann.index import Index
from gpuann.metrics import Metric, squared_norms
from gpuann.result import SearchResult

__all__ = ["MemoryBank"]


#: The dtypes a bank stores (a module cast to another leaves the embeddings as they were).
_STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class MemoryBank(RingState, torch.nn.Module, Index):
    """A ring buffer of the last ``capacity`` embeddings, with labels and ids, searched exactly.

    A ``torch.nn.Module`` whose state is buffers: assign it to a model's attribute and it
    moves with ``.to()`` (in place, as modules do) and checkpoints with ``state_dict()`` /
    ``load_state_dict()``; ``save`` / ``gpuann.load`` also work.

    Parameters
    ----------
    capacity : int
        Number of embeddings kept; an ``add`` beyond it overwrites the oldest.
    dim : int
        Embedding dimension.
    metric : {"cosine", "ip", "l2"}
        For cosine, embeddings are normalised when added.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype
        Storage dtype (float32, float16 or bfloat16); scores accumulate in float32.
    memory_budget : int, optional
        Bytes of working memory per search (see :func:`gpuann.knn`).

    Attributes
    ----------
    embeddings : torch.Tensor, shape (capacity, dim), ``dtype``
        The ring's slots (buffer).
    labels, slot_ids : torch.Tensor, shape (capacity,), int64
        Each slot's label and id, ``-1`` where empty (buffers).
    filled : torch.Tensor, shape (capacity,), bool
        Which slots hold an embedding (buffer).
    count : torch.Tensor, shape (), int64
        Embeddings ever added: the write pointer is ``count % capacity`` (buffer).

    Notes
    -----
    The storage policy is :class:`gpuann._ring.RingState`'s. ``remove``, ``update`` and
    ``reconstruct`` (those of :class:`~gpuann.index.Index`) act on the ids' slots in place and
    sync with the host once to check the ids; ``reset`` empties every slot without
    reallocating, and automatic ids restart at 0.

    Examples
    --------
    >>> bank = MemoryBank(4, 2, metric="l2", device="cpu")
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    >>> bank.add(x, labels=torch.tensor([0, 1, 1]))
    >>> bank.add(torch.tensor([[3.0, 0.0], [4.0, 0.0]]))  # wraps around: id 0 is overwritten
    >>> len(bank), bank.ids, bank.search(torch.tensor([[0.9, 0.0]]), 2).ids
    (4, tensor([1, 2, 3, 4]), tensor([[1, 2]]))
    >>> bank.search(torch.tensor([[0.9, 0.0]]), 2, exclude_labels=torch.tensor([1])).ids
    tensor([[3, 4]])
    """

    _config_keys = ("capacity", "dim", "metric", "dtype", "memory_budget")

    embeddings: torch.Tensor
    labels: torch.Tensor
    slot_ids: torch.Tensor
    filled: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        metric: str | Metric = "cosine",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        memory_budget: int | None = None,
    ) -> None:
        torch.nn.Module.__init__(self)
        self.capacity = positive_int(capacity, "capacity")
        Index.__init__(
            self,
            dim,
            metric=metric,
            device=device,
            dtype=storage_dtype(dtype),
            memory_budget=memory_budget,
        )
        self._rows = None  # the ring is the storage: the base's row store is not used
        device, shape = self._device, (self.capacity,)
        self.register_buffer(
            "embeddings", torch.zeros((*shape, self._dim), dtype=self._dtype, device=device)
        )
        self.register_buffer("labels", torch.full(shape, -1, device=device))
        self.register_buffer("slot_ids", torch.full(shape, -1, device=device))
        self.register_buffer("filled", torch.zeros(shape, dtype=torch.bool, device=device))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))
        #: One past the largest id ever stored: automatic ids start here (a device scalar, so
        #: adding never syncs; equal to ``count`` while no ids were given).
        self.register_buffer("next_id", torch.zeros((), dtype=torch.int64, device=device))
        sqnorms = torch.zeros(shape, device=device) if self._metric is Metric.L2 else None
        self.register_buffer("sqnorms", sqnorms)
        #: Whether ids were ever given (then slots are found by sorting the ids).
        self._given_ids = False
        #: Whether id 2**63 - 1 was given: no automatic id can follow it.
        self._ids_exhausted = False

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> MemoryBank:
        """``.to()``, ``.cuda()``… move the buffers in place; keep ``device``/``dtype`` in step.

        A module cast (``.half()``, ``.to(torch.bfloat16)``, a model's ``.double()``) changes
        the embeddings' dtype when it is a storage dtype (float32, float16, bfloat16), else
        leaves it; the squared norms stay float32, measured again from the cast embeddings
        (found by review: they were cast too, to inf in float16, and ``.double()`` made a
        bank that saved but did not load).
        """
        before = self.embeddings.dtype
        super()._apply(fn, *args, **kwargs)
        embeddings = self.embeddings
        if embeddings.dtype not in _STORAGE_DTYPES:
            embeddings = self._buffers["embeddings"] = embeddings.to(before)
        if self.sqnorms is not None:
            if embeddings.dtype != before:
                self._buffers["sqnorms"] = squared_norms(embeddings)
            elif self.sqnorms.dtype != torch.float32:  # cast back: exact from float64
                self._buffers["sqnorms"] = self.sqnorms.float()
        self._device, self._dtype = embeddings.device, embeddings.dtype
        return self

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        """Number of stored embeddings (one host sync)."""
        return int(self.filled.sum())

    @property
    def ids(self) -> torch.Tensor:
        """The stored ids, ascending (int64, a copy, on the bank's device; one host sync).

        The id of each ring slot, ``-1`` where empty, is the ``slot_ids`` buffer.
        """
        with self._lock.read():
            return self.slot_ids[self.filled].sort().values

    @property
    def nbytes(self) -> int:
        """Bytes of device memory held by the buffers."""
        return sum(b.nbytes for b in self.buffers())

    def _display_fields(self) -> dict[str, Any]:
        """What Jupyter shows: no fill level, since counting it would sync the device."""
        return {
            "capacity": self.capacity,
            "dim": self._dim,
            "metric": self._metric,
            "dtype": self._dtype,
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def extra_repr(self) -> str:
        return text_repr(self).removeprefix(f"{type(self).__name__}(").removesuffix(")")

    # ---------------------------------------------------------------- writing
    @torch.no_grad()
    def add(
        self,
        x: Any,
        ids: Any = None,
        *,
        labels: Any = None,
        check_finite: bool = True,
        replace: bool = False,
    ) -> None:
        """Enqueue a batch, overwriting the oldest entries in place.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (B, dim), floating
            Detached and copied; any ``B``: a batch that wraps around the end is split, and of
            a batch larger than the capacity only the last ``capacity`` rows are kept.
        ids : int64 tensor, array or list, shape (B,), optional
            Unique, non-negative and not already stored (checked: one host sync). Default:
            consecutive ids after the largest id ever stored, as every index numbers them,
            with no host sync; once ids have been given, automatic ids are checked against
            the stored ones and int64's range too (one sync).
        labels : int64 tensor, shape (B,), optional
            For ``search(exclude_labels=...)``; negative (the default, -1) means none.
        check_finite : bool
            Raise on NaN/inf or values beyond the storage dtype's range (one host sync; pass
            False inside a CUDA graph; skipped under ``torch.compile``).
        replace : bool
            With ``ids``: an id already stored is dropped from its slot and stored anew
            (the newest entry) instead of raising. ``update`` replaces in place.

        On any error the bank is left unchanged.
        """
        x, ids, labels = self._collect(x, ids, labels)
        x, _, _ = self._prepare(x, "x", check_finite)
        device, n = self._device, x.shape[0]
        if labels is not None:
            labels = as_labels(labels, n, "labels", device)
        if ids is not None:
            ids = as_new_ids(ids, n, device=device)
        if n:
            self._enqueue(x, ids, labels, replace)

    def _collect(self, x: Any, ids: Any, labels: Any) -> tuple[Any, Any, Any]:
        """The batch an ``add`` enqueues, as given (``DistributedMemoryBank``: every rank's)."""
        return x, ids, labels

    def renumber(self) -> None:
        """Not supported: a ring's automatic ids follow the add counter."""
        raise NotImplementedError("MemoryBank.renumber: a ring's ids follow its add counter")

    def merge_from(self, other: MemoryBank) -> None:
        """Add every embedding of ``other`` (oldest first, with ids and labels) and empty it.

        ``other`` must have this bank's ``dim``, ``metric`` and ``dtype`` and share no id with
        it; on any error neither bank changes.
        """
        if not isinstance(other, MemoryBank):
            raise TypeError(f"other: expected a MemoryBank, got {type(other).__name__}")
        if other is self:
            raise ValueError("other: cannot merge a bank into itself")
        mine = (self._dim, self._metric, self._dtype)
        if (other._dim, other._metric, other._dtype) != mine:
            raise ValueError("other: dim, metric and dtype must match this bank's")
        with other._lock.read():
            slots = other.filled.nonzero().flatten()
            slots = slots[torch.argsort(other._tie_rank()[slots])]
            x, ids = other.embeddings[slots], other.slot_ids[slots]
            labels = other.labels[slots]
        with self._lock.read():
            clash = ids[self._slots_of(ids.to(self._device)).to(ids.device) >= 0]
        if clash.numel():
            raise ValueError(
                f"other: {clash.numel()} id(s) already in this bank: {clash[:10].tolist()}"
            )
        self.add(x, ids=ids, labels=labels, check_finite=False)
        other.reset()

    # ---------------------------------------------------------------- searching
    def search(
        self,
        queries: Any,
        k: int,
        *,
        exclude_labels: Any = None,
        exclude_ids: Any = None,
        allow_ids: Any = None,
        differentiable: bool = False,
        backend: str = "auto",
        memory_budget: int | None = None,
        check_finite: bool = True,
    ) -> SearchResult:
        """The ``k`` nearest stored embeddings of each query.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, dim), floating
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
            stored embeddings are detached copies). Tensor queries only.
        backend : {"auto", "triton", "torch"}
        memory_budget : int, optional
        check_finite : bool
            Raise on NaN or infinity in ``queries`` (one host sync; pass False inside a CUDA
            graph; skipped under ``torch.compile``).

        Returns
        -------
        SearchResult
            ``(distances, ids)``, each (Q, k): squared L2 ascending or similarity
            descending, ties by lower id, ``-1`` / ±inf where fewer than ``k`` stored items
            are eligible; numpy when ``queries`` is numpy, else on the queries' device. The
            search always scans all ``capacity`` slots (a static shape), skipping empty ones.
        """
        grad = grad_queries(queries, differentiable)
        return self._run_search(
            queries,
            k,
            check_finite=check_finite,
            exclude_labels=exclude_labels,
            exclude_ids=exclude_ids,
            allow_ids=allow_ids,
            differentiable=grad,
            backend=backend,
            memory_budget=memory_budget,
        )

    def _search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        exclude_labels: Any,
        exclude_ids: Any,
        allow_ids: Any,
        differentiable: torch.Tensor | None,
        backend: str,
        memory_budget: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device, q = self._device, queries.shape[0]
        allowed = self.filled
        if allow_ids is not None:
            allow = self._slots_of(as_allow_ids(allow_ids, device))
            allowed = allowed & row_mask(allow, self.capacity)
        excluded_rows = query_labels = None
        if exclude_ids is not None:
            excluded_rows = self._slots_of(as_exclude_ids(exclude_ids, q, device))
        if exclude_labels is not None:
            query_labels = as_labels(exclude_labels, q, "exclude_labels", device)
        distances, rows = exact_search(
            queries,
            self.embeddings,
            k,
            self._metric.scoring,
            database_sqnorms=self.sqnorms,
            backend=backend,
            memory_budget=self._budget(memory_budget),
            excluded_rows=excluded_rows,
            allowed_rows=allowed,
            row_labels=self.labels if query_labels is not None else None,
            query_labels=query_labels,
            row_rank=self._tie_rank(),
        )
        if differentiable is not None:
            distances = differentiable_distances(
                differentiable.to(device), self.embeddings, rows, self._metric
            )
        return distances, torch.where(rows >= 0, self.slot_ids[rows.clamp(min=0)], -1)
