"""``FaissSync``: keeping an IVF index's faiss index in step with its id store.

The faiss index holds the user's ids as its labels. The :class:`gpuann.Index` base makes
every mutation all-or-nothing for its own id store; this mixin fills the base's hooks so that
the faiss index follows, and is changed back when a mutation fails after faiss was changed:
``add`` calls faiss's ``add_with_ids`` first (a faiss failure changes nothing); ``remove``
tombstones the ids, then compacts (on CPU at once); ``update`` is remove + add on a copy of
the faiss index, swapped in when both succeeded (:class:`~gpuann.ivf.gpu_gaps.GapFilledFaiss`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gpuann.ivf.gpu_gaps import GapFilledFaiss

__all__ = ["FaissSync"]

#: The transient column carrying the float32 vectors faiss receives (never stored).
_FAISS_INPUT = "faiss_input"


class FaissSync:
    """The storage hooks of an IVF index (a mixin of :class:`gpuann.Index`, listed before it).

    The index sets ``_faiss`` (a :class:`~gpuann.ivf.gpu_gaps.GapFilledFaiss`) and
    ``_pending_undo = None``, and provides ``_require_trained`` and ``_kept`` (the columns
    kept for ``refine``, :class:`gpuann.refine.KeptVectors`).
    """

    _faiss: GapFilledFaiss
    _pending_undo: Any
    _lock: Any
    _rows: Any

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._require_trained("add")  # type: ignore[attr-defined]
        # _FAISS_INPUT is not a stored column: IdRows writes only its own
        return {_FAISS_INPUT: x, **self._kept(x)}  # type: ignore[attr-defined]

    def _before_insert(self, ids: torch.Tensor, rows: Mapping[str, torch.Tensor]) -> None:
        self._run_undo()
        self._faiss.add(rows[_FAISS_INPUT].contiguous(), ids)
        self._pending_undo = lambda: (self._faiss.tombstone(ids), self._faiss.settle())

    def _before_remove(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        self._run_undo()
        before = self._faiss.tombstones
        self._faiss.tombstone(ids)  # compacted in _after_change when due

        def undo() -> None:
            self._faiss.tombstones = before
            self._faiss.drop_cache()

        self._pending_undo = undo

    def _before_update(self, rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        x = values.pop(_FAISS_INPUT)  # type: ignore[attr-defined]  # the base's own dict
        self._run_undo()
        self._faiss.replace(x, self._rows.stored_ids[rows])

    def _after_change(self) -> None:
        self._pending_undo = None
        self._faiss.settle()
        self._faiss.drop_cache()

    def _run_undo(self) -> None:
        """Undo the faiss change of a mutation that failed after it (write lock held)."""
        undo, self._pending_undo = self._pending_undo, None
        if undo is not None:
            undo()

    def _undoing(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a base mutation; if it fails after faiss was changed, change faiss back (at
        once, or by the next mutation if that takes the lock first)."""
        try:
            return call(*args, **kwargs)
        except BaseException:
            with self._lock.write():
                self._run_undo()
            raise

    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Add vectors to a trained index (see :meth:`gpuann.Index.add`); faiss stores the ids
        as its labels. On any error the index is left unchanged."""
        self._undoing(super().add, x, ids, check_finite=check_finite)  # type: ignore[misc]

    def remove(self, ids: Any, *, strict: bool = True) -> int:
        """Remove vectors by id (see :meth:`gpuann.Index.remove`). On CPU faiss drops them at
        once; on GPU they are tombstones until compaction; no later search returns them."""
        return self._undoing(super().remove, ids, strict=strict)  # type: ignore[misc]

    def _reset_storage(self) -> None:
        self._pending_undo = None  # faiss is emptied anyway
        self._faiss.reset()  # keeps the training
        super()._reset_storage()  # type: ignore[misc]
