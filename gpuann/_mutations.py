"""What every index does to its content by id: add, remove, update, reconstruct, reset.

A mixin of :class:`gpuann.Index`, as :class:`gpuann._persistence.Persistence` is: it parses
and checks the arguments, takes the write lock (``_writing``) and works through the base's
hooks (``_prepare``, ``_encode``, ``_require``, ``_before_insert``, ``_before_remove``,
``_before_update``, ``_after_change``, ``_decode``) over the id-sorted row store. A storage
policy other than the row store (:class:`gpuann._ring.RingState`) overrides the private
steps ``_remove_ids``, ``_update_ids``, ``_reset_storage`` and ``_renumber_storage``; every
mutation is all-or-nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuann._validate import as_ids

__all__ = ["Mutations"]


class Mutations:
    """``add``, ``remove``, ``update``, ``reset``, ``renumber``, ``reconstruct`` for
    :class:`gpuann.Index`."""

    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Add vectors.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, dim)
        ids : int64 tensor, array or list, shape (n,), optional
            Unique non-negative ids not already in the index. Default: consecutive ids after
            the largest id ever used.
        check_finite : bool
            Raise on NaN/inf, or values beyond the storage dtype's range.

        On any error the index is left unchanged.
        """
        x, _, _ = self._prepare(x, "x", check_finite)
        columns = self._encode(x)
        with self._writing():
            new_ids, order = self._rows.new_ids(ids, x.shape[0])
            if order is not None:
                columns = {name: value[order] for name, value in columns.items()}
            if not new_ids.numel():
                return
            self._before_insert(new_ids, columns)
            self._rows.insert(new_ids, columns)
            self._after_change()

    def remove(self, ids: Any, *, strict: bool = True) -> int:
        """Remove vectors by id and return how many were removed.

        Parameters
        ----------
        ids : int64 tensor, array or list
            Repeated ids count once.
        strict : bool
            True (default): an id not in the index raises :class:`~gpuann.UnknownIdError`
            and nothing is removed; False: unknown ids are ignored, as faiss does.
        """
        return self._remove_ids(as_ids(ids, -1, device=self._device, unique=False).unique(), strict)

    def _remove_ids(self, ids: torch.Tensor, strict: bool) -> int:
        """Remove checked, unique ``ids`` (the storage policy of :meth:`remove`)."""
        with self._writing():
            if strict:
                rows = self._require(ids)
            else:
                rows, found = self._rows.positions(ids)
                rows, ids = rows[found], ids[found]
            if not rows.numel():
                return 0
            self._before_remove(ids, rows)
            removed = self._rows.remove_rows(rows)
            self._after_change()
            return removed

    def update(self, ids: Any, x: Any, *, check_finite: bool = True) -> None:
        """Replace the vectors of ids already in the index.

        Parameters
        ----------
        ids : int64 tensor, array or list, shape (n,), unique
        x : torch.Tensor or numpy.ndarray, shape (n, dim)
        """
        x, _, _ = self._prepare(x, "x", check_finite)
        self._update_ids(as_ids(ids, x.shape[0], device=self._device), x)

    def _update_ids(self, ids: torch.Tensor, x: torch.Tensor) -> None:
        """Overwrite the vectors of checked ``ids`` with prepared ``x`` (see :meth:`update`)."""
        columns = self._encode(x)
        with self._writing():
            rows = self._require(ids)
            self._before_update(rows, columns)
            self._rows.set_rows(rows, columns)
            self._after_change()

    def reset(self) -> None:
        """Remove every vector (ids restart at 0)."""
        with self._writing():
            self._reset_storage()
            self._after_change()

    def _reset_storage(self) -> None:
        self._rows.reset()

    def renumber(self) -> None:
        """Give the stored vectors ids ``0..n-1`` in id order (faiss ``IndexFlat`` semantics).

        For code that follows faiss's convention that ids are positions (``gpuann.compat``).
        """
        with self._writing():
            self._renumber_storage()
            self._after_change()

    def _renumber_storage(self) -> None:
        self._rows.renumber()

    def reconstruct(self, ids: Any) -> Any:
        """The stored vectors of ``ids`` (normalised for cosine).

        Parameters
        ----------
        ids : int64 tensor, array or list, shape (n,); repeats allowed

        Returns
        -------
        torch.Tensor, shape (n, dim), on :attr:`device`; a numpy array when ``ids`` is one
        (float32 for 16-bit storage, which numpy lacks or computes slowly).
        """
        as_numpy = isinstance(ids, np.ndarray)
        ids = as_ids(ids, -1, device=self._device, unique=False)
        with self._lock.read():
            out = self._decode(self._require(ids))
        if as_numpy:
            if out.is_floating_point() and out.dtype != torch.float64:
                out = out.float()
            return out.cpu().numpy()
        return out.to(self.device)
