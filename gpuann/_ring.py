"""``RingState``: the id bookkeeping and persistence of :class:`gpuann.MemoryBank`'s ring.

A mixin over the ring's buffers (``embeddings``, ``labels``, ``slot_ids``, ``filled``,
``count``, ``sqnorms``): finding an id's slot, the tie order of the slots, and saving and
restoring the ring (``state_dict`` extra state, and ``save`` / ``gpuann.load`` files).
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann._rows import missing_ids_error
from gpuann.filters import lookup_rows, rank_of
from gpuann.index import Index

__all__ = ["RingState"]

_BUFFERS = ("embeddings", "labels", "slot_ids", "filled", "count", "next_id", "sqnorms")


class RingState:
    """Slot lookups, tie ranks and persistence for a ring of ``capacity`` slots (a mixin of
    a ``torch.nn.Module`` and :class:`~gpuann.index.Index`, listed before both)."""

    capacity: int
    embeddings: torch.Tensor
    labels: torch.Tensor
    slot_ids: torch.Tensor
    filled: torch.Tensor
    count: torch.Tensor
    _given_ids: bool
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
