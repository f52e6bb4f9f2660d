"""What every index does with its whole content: move it, merge it, save, load and pickle it.

A mixin of :class:`gpuann.Index`: it relies on the base's lock, row store and hooks
(``_config``, ``_copy_from``, ``_save_meta``/``_save_arrays``, ``_restore``), which a subclass
overrides where its storage is not the row store alone.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from gpuann._validate import non_negative_int, resolve_device

__all__ = ["Persistence"]


class Persistence:
    """``to``, ``merge_from``, ``save``/``load``, ``pickle`` for :class:`gpuann.Index`."""

    # ---------------------------------------------------------------- merging and pickling
    def merge_from(self, other: Any) -> None:
        """Move every vector of ``other`` into this index, with its id (faiss's ``merge_from``).

        ``other`` must be of the same class and configuration (``dim``, ``metric``…) and share
        no id with this index; on success it is left empty, as faiss leaves it. On any error
        neither index changes.
        """
        if type(other) is not type(self):
            raise TypeError(f"other: expected a {type(self).__name__}, got {type(other).__name__}")
        if other is self:
            raise ValueError("other: cannot merge an index into itself")
        search_defaults = ("memory_budget", "nprobe", "refine_factor", "ef_search")
        search_defaults += ("ef_construction",)  # HNSW: applies to later adds only
        search_defaults += ("max_train_points",)  # IVF: training only (compared by its own check)
        mine = {k: v for k, v in self._config().items() if k not in search_defaults}
        theirs = {k: v for k, v in other._config().items() if k not in search_defaults}
        if mine != theirs:
            raise ValueError(f"other: configuration {theirs} differs from this index's {mine}")
        with other._lock.write(), self._lock.write():
            self._merge_rows(other)
            self._after_change()
            other._reset_storage()
            other._after_change()

    def _merge_rows(self, other: Any) -> None:
        """Insert ``other``'s rows (write locks on both held)."""
        source = other._rows
        ids = source.stored_ids.to(self._device)
        _, present = self._rows.positions(ids)
        if bool(present.any()):
            dup = ids[present]
            raise ValueError(
                f"other: {dup.numel()} id(s) already in this index: {dup[:10].tolist()}"
            )
        columns = {name: source.view(name).to(self._device) for name in source.data}
        if ids.numel():
            self._before_insert(ids, columns)
            self._rows.insert(ids, columns)
        self._rows.next_id = max(self._rows.next_id, source.next_id)

    def __reduce__(self):
        """Pickle through the safe native format (no code in the bytes; loads on the CPU
        when the saving device is absent)."""
        from gpuann.serialization import index_to_bytes, unpickle_index

        with self._lock.read():
            data = index_to_bytes(self.kind, self._save_meta(), self._save_arrays())
        return unpickle_index, (data, str(self._device))

    # ---------------------------------------------------------------- moving and saving
    def to(self, device: str | torch.device) -> Any:
        """This index on ``device``: ``self`` if already there, else a copy."""
        device = resolve_device(device)
        if device == self._device:
            return self
        with self._lock.read():
            other = type(self)(**self._config(), device=device)
            other._copy_from(self)
        return other

    def _copy_from(self, source: Any) -> None:
        """Adopt ``source``'s content (on this index's device); ``source``'s lock is held."""
        self._rows = source._rows.copy_to(self._device)
        self._after_change()

    def _save_meta(self) -> dict[str, Any]:
        return {**self._config(), "next_id": self._rows.next_id}

    def _save_arrays(self) -> dict[str, torch.Tensor]:
        arrays = self._rows.arrays()
        return {name: t for name, t in arrays.items() if name not in self._derived_columns}

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically; reload with :meth:`load` or
        :func:`gpuann.load` (onto any device). A failed save leaves an existing file as it was.
        """
        from gpuann.serialization import write_index_file

        with self._lock.read():
            write_index_file(path, self.kind, self._save_meta(), self._save_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
        """Load an index of this class saved with :meth:`save`."""
        from gpuann.serialization import load

        return load(path, device, kind=cls.kind)

    @classmethod
    def _from_file(cls, meta: dict, arrays: dict[str, torch.Tensor], device: Any) -> Any:
        config = {key: meta[key] for key in cls._config_keys if key in meta}
        index = cls(**config, device=device)
        index._restore(meta, arrays)
        return index

    def _restore(self, meta: dict, arrays: dict[str, torch.Tensor]) -> None:
        """Fill a new index from a file's arrays, checking each against the columns."""
        from gpuann.serialization import IndexFileError

        ids = arrays["ids"]
        n = ids.shape[0] if ids.ndim == 1 else -1
        if ids.dtype != torch.int64 or n < 0 or (n > 1 and not bool((ids[1:] > ids[:-1]).all())):
            raise IndexFileError("ids are not one strictly ascending int64 id per row")
        if n and int(ids[0]) < 0:
            raise IndexFileError("ids must be non-negative")
        columns = self._columns()
        saved = {}
        for name, (shape, dtype) in columns.items():
            if name in self._derived_columns:
                continue
            if name not in arrays:
                raise IndexFileError(f"the file has no array {name!r}")
            array = arrays[name]
            if array.dtype != dtype or tuple(array.shape) != (n, *shape):
                raise IndexFileError(
                    f"array {name!r} has shape {tuple(array.shape)} and dtype {array.dtype}; "
                    f"the header implies {(n, *shape)} and {dtype}"
                )
            saved[name] = array.to(self._device)
        rows = {**saved, **self._derive(saved)}
        next_id = non_negative_int(meta.get("next_id", 0), "next_id")
        self._rows.load(ids, rows, next_id)
        self._after_change()
