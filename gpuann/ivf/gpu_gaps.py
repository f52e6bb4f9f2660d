"""``GapFilledFaiss``: the faiss IVF index of a gpuann index, with faiss-gpu's gaps filled.

An IVF index keeps its ids in gpuann's id-sorted store (:class:`gpuann._rows.IdRows`) and its
inverted lists in faiss; this class is the faiss half. Where faiss-gpu falls short, it fills
in (each path also runs on CPU through the private switches, so CPU-only tests cover them):

- **Removal by tombstones.** faiss-gpu IVF has no ``remove_ids``: a removed id becomes a
  *tombstone*, filtered from results at search time after over-fetching ``k + #tombstones``
  candidates, which is exact: at most ``#tombstones`` of the fetched results can be dead. Past
  ``max_tombstones`` pending removals (or when a removed id is added again) the index is
  *compacted*: copied to the host, ``remove_ids`` run there, and copied back. A CPU index
  compacts at once, so it never holds tombstones after a mutation. Tombstoning first and
  compacting afterwards makes a removal all-or-nothing: a failed compaction leaves
  tombstones, which still give the right results.
- **Id filters.** faiss-gpu takes no id selector: a search with ``allow_ids`` over-fetches
  ``k + #stored ids not allowed`` and drops the rest, exact by the same argument; when that is
  more than faiss-gpu can select, it runs on the host copy (below) with a faiss selector, as a
  CPU index always does. Per-query ``exclude_ids`` (Q, m) over-fetch ``m`` more everywhere
  (faiss selectors are per search, not per query).
- **The k limit.** A fetch (``k``, the look-ahead for ties and what is over-fetched above) or
  ``nprobe`` above faiss-gpu's 2048 runs on a cached CPU copy of the index (a documented host
  round trip; the copy is dropped after any change).
- **Thread safety.** faiss-gpu is not thread-safe: calls on a GPU index are serialised per
  device; CPU calls run concurrently.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any

import numpy as np
import torch

from gpuann.ivf import _faiss
from gpuann.ivf.label_filter import LabelFilter

__all__ = ["MAX_TOMBSTONES", "GapFilledFaiss", "LabelFilter"]

#: Pending GPU removals kept as tombstones before the index is compacted.
MAX_TOMBSTONES = 1024


class GapFilledFaiss:
    """A faiss IVF index on ``device`` (a faiss-gpu index on CUDA), driven through tensors.

    Parameters
    ----------
    cpu_index : faiss.IndexIVF
        A CPU index; it is cloned onto ``device``.
    device : torch.device

    Attributes
    ----------
    index : faiss.Index
        The faiss index searches run on.
    tombstones : torch.Tensor, shape (t,), int64, ascending, on ``device``
        Removed ids faiss still holds.
    use_tombstones : bool
        Remove by tombstones (on for CUDA; a private switch for tests).
    use_selectors : bool
        Whether the device index takes faiss id selectors (off for CUDA, where ``allow_ids``
        over-fetches and filters; a private switch for tests).
    device_k_limit : int or None
        The largest ``k``/``nprobe`` the device index accepts (2048 on CUDA, None on CPU).
    max_tombstones : int
    """

    def __init__(self, cpu_index: Any, device: torch.device) -> None:
        self.device = device
        on_gpu = device.type == "cuda"
        self.use_tombstones = on_gpu
        self.use_selectors = not on_gpu
        self.device_k_limit: int | None = _faiss.GPU_MAX_K if on_gpu else None
        self.max_tombstones = MAX_TOMBSTONES
        self._cache_mutex = threading.Lock()
        self.install(cpu_index)

    # ---------------------------------------------------------------- state
    def install(self, cpu_index: Any) -> None:
        """Adopt (a device clone of) ``cpu_index``; no tombstones, no host cache."""
        self.adopt(_faiss.index_to_device(cpu_index, self.device))

    def adopt(self, device_index: Any) -> None:
        """Adopt ``device_index`` (already on the device) as it is; no tombstones, no host
        cache."""
        self.index = device_index
        self.tombstones = torch.empty(0, dtype=torch.int64, device=self.device)
        self._host_cache: Any = None

    @property
    def is_cpu(self) -> bool:
        """Whether the faiss index is a CPU one."""
        return not hasattr(self.index, "getDevice")

    @property
    def ntotal(self) -> int:
        """Entries faiss holds (tombstoned ones included)."""
        return int(self.index.ntotal)

    def serial(self) -> AbstractContextManager:
        """Serialises faiss calls on a GPU (faiss-gpu is not thread-safe); CPU runs freely."""
        return nullcontext() if self.is_cpu else _faiss.device_lock(self.device)

    def drop_cache(self) -> None:
        """Forget the host copy (after any change)."""
        self._host_cache = None

    # ---------------------------------------------------------------- mutations
    def train(self, x: torch.Tensor) -> None:
        """Train on contiguous float32 ``x`` on the device; a failure changes nothing.

        faiss trains a copy of the (untrained) index, swapped in once trained: a faiss train
        that fails after the coarse k-means (the PQ codebooks') leaves its quantizer holding
        the centroids, and a retry would keep them (faiss skips training a quantizer that
        holds ``nlist`` vectors).
        """
        with self.serial():
            host = self.index if self.is_cpu else _faiss.index_to_cpu(self.index)
            fresh = _faiss.index_to_device(host, self.device)
            _faiss.train(fresh, x)
        self.index = fresh
        self.drop_cache()

    def add(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        """Add ``x`` with labels ``ids``; a re-added tombstoned id compacts first (its dead
        copy must not mask the new one). Raises with nothing added when faiss fails."""
        if self.tombstones.numel() and bool(torch.isin(ids, self.tombstones).any()):
            self.compact()
        with self.serial():
            _faiss.add_with_ids(self.index, x, ids)
        self.drop_cache()

    def tombstone(self, ids: torch.Tensor) -> None:
        """Mark ``ids`` (held by faiss, not tombstoned yet) removed; no faiss call."""
        self.tombstones = torch.cat([self.tombstones, ids]).sort().values
        self.drop_cache()

    def settle(self) -> None:
        """Compact when due (a CPU index at once, a GPU one past ``max_tombstones``).

        Best effort: a failed compaction keeps the tombstones, which stay correct.
        """
        due = not self.use_tombstones or self.tombstones.numel() > self.max_tombstones
        if self.tombstones.numel() and due:
            with suppress(RuntimeError, MemoryError, ValueError):
                self.compact()

    def compact(self) -> None:
        """Remove the tombstoned ids from faiss for good (all-or-nothing)."""
        if not self.tombstones.numel():
            return
        if self.is_cpu:
            _faiss.remove_ids(self.index, self.tombstones)
        else:
            with self.serial():
                host = _faiss.index_to_cpu(self.index)
            _faiss.remove_ids(host, self.tombstones)
            self.index = _faiss.index_to_device(host, self.device)
        self.tombstones = self.tombstones[:0]
        self.drop_cache()

    def replace(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        """Give the stored ``ids`` the vectors ``x``: remove + add on a copy, then swap it in,
        so a failure leaves the index as it was."""
        host = _faiss.index_to_cpu(self.host_index())
        _faiss.remove_ids(host, ids)
        _faiss.add_with_ids(host, x.cpu().contiguous(), ids.cpu())
        self.index = host if self.is_cpu else _faiss.index_to_device(host, self.device)
        self.drop_cache()

    def reset(self) -> None:
        """Remove every entry (training kept)."""
        with self.serial():
            self.index.reset()
        self.tombstones = self.tombstones[:0]
        self.drop_cache()

    # ---------------------------------------------------------------- host copies
    def host_index(self) -> Any:
        """A CPU faiss index with the same content (tombstones included): the index itself
        on CPU, else a cached copy, rebuilt after any change."""
        if self.is_cpu:
            return self.index
        with self._cache_mutex:
            if self._host_cache is None:
                with self.serial():
                    self._host_cache = _faiss.index_to_cpu(self.index)
            return self._host_cache

    def compacted_host_copy(self) -> Any:
        """A new CPU faiss index without tombstoned ids (for saving, moving and merging).

        Nor with faiss's id -> entry map, which :meth:`reconstruct` builds when first
        needed: faiss's ``merge_from`` refuses an index that holds one.
        """
        faiss = _faiss.import_faiss()
        host = _faiss.index_to_cpu(self.host_index())
        if host.direct_map.type != faiss.DirectMap.NoMap:
            host.set_direct_map_type(faiss.DirectMap.NoMap)
        if self.tombstones.numel():
            _faiss.remove_ids(host, self.tombstones)
        return host

    def reconstruct(self, ids: torch.Tensor, dim: int) -> torch.Tensor:
        """faiss's decoding of the stored ``ids``: (n, dim) float32 on the device."""
        faiss = _faiss.import_faiss()
        host = self.host_index()
        with self._cache_mutex:  # the first call builds faiss's id -> entry map
            if host.direct_map.type != faiss.DirectMap.Hashtable:
                host.set_direct_map_type(faiss.DirectMap.Hashtable)  # kept current by faiss
            keys = np.ascontiguousarray(ids.cpu().numpy())
            out = host.reconstruct_batch(keys) if keys.size else np.empty((0, dim), "float32")
        return torch.from_numpy(out).to(self.device)

    # ---------------------------------------------------------------- search
    def plan(
        self, k: int, nprobe: int, stored: int, filters: LabelFilter | None = None
    ) -> tuple[int, bool, bool]:
        """How :meth:`search` runs: ``(fetch, on_host, selected)``.

        ``fetch`` candidates per query: ``k``, plus the tombstones and the per-query
        exclusions, plus, without a selector, the stored ids not allowed (each at most what
        faiss holds); ``on_host``: on the host copy (past the device's k limit);
        ``selected``: ``allowed`` goes to faiss as an id selector (CPU faiss only).
        """
        f = filters if filters is not None else _NO_FILTER
        held = max(1, stored + self.tombstones.numel())
        base = k + self.tombstones.numel() + f.width
        limit = self.device_k_limit
        if f.allowed is None or self.use_selectors:
            fetch = min(base, held)
            on_host = limit is not None and (fetch > limit or nprobe > limit)
            return fetch, on_host, f.allowed is not None
        fetch = min(base + f.hidden, held)
        if limit is not None and (fetch > limit or nprobe > limit):
            return min(base, held), True, True  # the host copy takes a selector
        return fetch, False, False

    def search(
        self,
        q: torch.Tensor,
        k: int,
        nprobe: int,
        stored: int,
        filters: LabelFilter | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The ``k`` best live faiss labels of each query (those of a real removal) that
        ``filters`` lets through.

        Fetches :meth:`plan`'s ``fetch``, which is exact: at most ``#tombstones`` of them are
        dead, at most ``m`` excluded, and (without a selector) at most ``hidden`` not allowed.

        Returns
        -------
        distances : torch.Tensor, shape (Q, w), float32 (faiss's raw values), ``w <= k``
        labels : torch.Tensor, shape (Q, w), int64, ``-1`` where missing
        masked : bool
            Whether entries were masked (the rows then need re-sorting).
        """
        tombstones = self.tombstones
        fetch, on_host, selected = self.plan(k, nprobe, stored, filters)
        allowed = filters.allowed if filters is not None and selected else None
        if on_host:
            # faiss-gpu cannot select more than GPU_MAX_K: search the host copy instead.
            distances, labels = _faiss.search(
                self.host_index(), q.cpu(), fetch, nprobe, allowed=allowed
            )
            distances, labels = distances.to(self.device), labels.to(self.device)
        else:
            with self.serial():
                distances, labels = _faiss.search(self.index, q, fetch, nprobe, allowed=allowed)
        dead = torch.isin(labels, tombstones) if tombstones.numel() else None
        dropped = filters.dropped(labels, selected) if filters is not None else None
        if dropped is not None:
            dead = dropped if dead is None else dead | dropped
        if dead is not None:
            # dead entries last (live ones keep faiss's order), then the first k: the labels
            # a real removal would have given
            order = torch.argsort(dead.to(torch.int8), dim=1, stable=True)[:, :k]
            labels = labels.masked_fill(dead, -1).gather(1, order)
            distances = distances.gather(1, order)
        return distances, labels, dead is not None


#: No filter at all.
_NO_FILTER = LabelFilter()
