"""``RingState``: the ring storage policy of :class:`gpuann.MemoryBank`.

A mixin over the ring's buffers (``embeddings``, ``labels``, ``slot_ids``, ``filled``,
``count``, ``next_id``, ``sqnorms``), filling in the storage hooks of
:class:`~gpuann.index.Index` for a ring instead of the id-sorted row store: writing a batch in
place at the write pointer (overwriting the oldest slots), emptying and overwriting slots,
finding an id's slot, the tie order of the slots, and saving and restoring the ring
(``state_dict`` extra state, and ``save`` / ``gpuann.load`` files).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from gpuann._rows import missing_ids_error
from gpuann.filters import lookup_rows, rank_of, row_mask
from gpuann.index import Index
from gpuann.metrics import squared_norms

__all__ = ["RingState"]

_BUFFERS = ("embeddings", "labels", "slot_ids", "filled", "count", "next_id", "sqnorms")
_INT64_MAX = 2**63 - 1


class RingState:
    """Slot lookups, tie ranks and persistence for a ring of ``capacity`` slots (a mixin of
    a ``torch.nn.Module`` and :class:`~gpuann.index.Index`, listed before both)."""

    capacity: int
    embeddings: torch.Tensor
    labels: torch.Tensor
    slot_ids: torch.Tensor
    filled: torch.Tensor
    count: torch.Tensor
    next_id: torch.Tensor
    sqnorms: torch.Tensor | None
    _given_ids: bool
    _ids_exhausted: bool
    _lock: Any
    _dim: int
    _metric: Any
    named_buffers: Any

    # ---------------------------------------------------------------- id lookups
    def _slots_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Slot of each id (any shape), ``-1`` where it is not stored."""
        if not self._given_ids:  # automatic ids: id i can only be in slot i mod capacity
            slots = ids.remainder(self.capacity)
            found = (ids >= 0) & (self.slot_ids[slots] == ids) & self.filled[slots]
            return torch.where(found, slots, -1)
        sorted_ids, order, _ = rank_of(torch.where(self.filled, self.slot_ids, -1))
        return lookup_rows(sorted_ids, ids, order)

    def _require(self, ids: torch.Tensor) -> torch.Tensor:
        slots = self._slots_of(ids)
        if not bool((slots >= 0).all()):
            raise missing_ids_error(ids[slots < 0])
        return slots

    def _tie_rank(self) -> torch.Tensor:
        """Rank of each slot's id (empty slots anywhere: they are never returned)."""
        if not self._given_ids:  # ids grow with age: the oldest slot is ``count mod capacity``
            slots = torch.arange(self.capacity, device=self.filled.device)
            return (slots - self.count).remainder(self.capacity)
        return rank_of(self.slot_ids)[2]

    def _refuse_stored(self, ids: torch.Tensor, name: str, slots: Any = None) -> None:
        """Raise if any of ``ids`` is stored (one host sync)."""
        slots = self._slots_of(ids) if slots is None else slots
        present = slots >= 0
        if bool(present.any()):
            dup = ids[present]
            raise ValueError(
                f"{name}: {dup.numel()} id(s) already in the bank: {dup[:10].tolist()}; use "
                "update() to replace in place, or add(..., replace=True)"
            )

    # ---------------------------------------------------------------- writing
    def _writing(self) -> contextlib.AbstractContextManager:
        """The write lock, skipped under ``torch.compile`` tracing (as the read lock is)."""
        if torch.compiler.is_compiling():
            return contextlib.nullcontext()
        return self._lock.write()

    def _enqueue(
        self, x: torch.Tensor, ids: torch.Tensor | None, labels: torch.Tensor | None, replace: bool
    ) -> None:
        """Write a checked batch at the write pointer: of ``n`` rows the last ``capacity``,
        with automatic ids after ``next_id`` unless ``ids`` are given."""
        n = x.shape[0]
        keep = min(n, self.capacity)  # of a batch larger than the bank, the last rows survive
        offsets = torch.arange(n - keep, n, device=x.device)
        x = x.detach()[n - keep :]
        with self._writing():
            if ids is None:
                if self._given_ids and (
                    self._ids_exhausted or int(self.next_id) + n - 1 > _INT64_MAX
                ):
                    raise OverflowError(
                        f"ids: automatic ids would pass 2**63 - 1 (next id {int(self.next_id)}, "
                        f"{n} vectors); pass ids explicitly"
                    )
                new_ids = self.next_id + offsets
                if self._given_ids:
                    self._refuse_stored(new_ids, "automatic ids")
                self.next_id.add_(n)
            else:
                new_ids = ids[n - keep :]
                stale = self._slots_of(new_ids)
                if not replace:
                    self._refuse_stored(new_ids, "ids", stale)
                self._given_ids = True
                self.filled &= ~row_mask(stale, self.capacity)  # replaced: drop older copies
                top = int(ids.max())  # ids were checked on the host already: no new sync
                self._ids_exhausted = self._ids_exhausted or top == _INT64_MAX
                self.next_id.fill_(max(int(self.next_id), min(top + 1, _INT64_MAX)))
            slots = (self.count + offsets) % self.capacity
            self.embeddings.index_copy_(0, slots, x)
            self.slot_ids.index_copy_(0, slots, new_ids)
            new_labels = labels[n - keep :] if labels is not None else torch.full_like(new_ids, -1)
            self.labels.index_copy_(0, slots, new_labels)
            self.filled.index_fill_(0, slots, True)
            if self.sqnorms is not None:
                self.sqnorms.index_copy_(0, slots, squared_norms(x))
            self.count.add_(n)

    def _remove_ids(self, ids: torch.Tensor, strict: bool) -> int:
        """Empty the slots of ``ids`` (one host sync)."""
        with self._writing():
            slots = self._require(ids) if strict else self._slots_of(ids)
            slots = slots[slots >= 0]
            self.filled[slots] = False
            self.slot_ids[slots] = -1
            self.labels[slots] = -1
            return int(slots.numel())

    @torch.no_grad()
    def _update_ids(self, ids: torch.Tensor, x: torch.Tensor) -> None:
        """Overwrite the embeddings of ``ids`` in place (slots, labels and ages kept)."""
        with self._writing():
            slots = self._require(ids)
            self.embeddings[slots] = x
            if self.sqnorms is not None:
                self.sqnorms[slots] = squared_norms(x)

    def _reset_storage(self) -> None:
        """Empty every slot (automatic ids restart at 0); no reallocation."""
        self.filled.zero_()
        self.slot_ids.fill_(-1)
        self.labels.fill_(-1)
        self.count.zero_()
        self.next_id.zero_()
        self._given_ids = False
        self._ids_exhausted = False

    def _decode(self, slots: torch.Tensor) -> torch.Tensor:
        return self.embeddings[slots]

    # ---------------------------------------------------------------- checkpoints and files
    def get_extra_state(self) -> dict[str, Any]:
        config = {"capacity": self.capacity, "dim": self._dim, "metric": self._metric.value}
        return {**config, "given_ids": self._given_ids}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        mine = {k: v for k, v in self.get_extra_state().items() if k != "given_ids"}
        theirs = {k: v for k, v in state.items() if k != "given_ids"}
        if theirs != mine:
            raise ValueError(
                f"load_state_dict: checkpoint of a MemoryBank {theirs}, this is {mine}"
            )
        self._given_ids = bool(state.get("given_ids", True))

    def _config(self) -> dict[str, Any]:
        return {"capacity": self.capacity, **Index._config(self)}

    def _save_meta(self) -> dict[str, Any]:
        return {**self._config(), "given_ids": self._given_ids}

    def _save_arrays(self) -> dict[str, torch.Tensor]:
        # files hold no bool or 0-d arrays: ``filled`` is saved as uint8, ``count`` as (1,)
        arrays = {
            n: b.reshape(-1) if b.ndim == 0 else b for n, b in self.named_buffers() if n in _BUFFERS
        }
        return {**arrays, "filled": self.filled.to(torch.uint8)}

    def _restore(self, meta: dict, arrays: dict[str, torch.Tensor]) -> None:
        from gpuann.serialization import IndexFileError

        if "filled" in arrays and arrays["filled"].dtype == torch.uint8:
            arrays = {**arrays, "filled": arrays["filled"].bool()}
        for name, buffer in self.named_buffers():
            array = arrays.get(name)
            if array is None or array.dtype != buffer.dtype or array.numel() != buffer.numel():
                raise IndexFileError(
                    f"array {name!r} is missing or not {tuple(buffer.shape)} {buffer.dtype}"
                )
            buffer.copy_(array.reshape(buffer.shape))
        self._given_ids = bool(meta.get("given_ids", True))
