"""``BinaryFlatIndex``: exact Hamming search over packed binary codes, with user ids.

The GPU counterpart of faiss's ``IndexBinaryFlat``: codes are uint8 rows of ``nbits / 8``
bytes (``numpy.packbits`` / :func:`gpuann.quantize_binary` layout), distances are int32 Hamming
distances as in faiss, equal distances are ordered by lower id.

Codes live in the shared id-sorted store, zero-padded to whole int32 words so that the Hamming
kernel reads them in place (:class:`gpuann.binary.stored_codes.StoredCodes`, shared with
``LSHIndex``; ``check_nbits``, ``padded_bytes`` and ``prepare_codes`` are re-exported from
there).
"""

from __future__ import annotations

from typing import Any

import torch

from gpuann.binary.codes import as_codes, code_bytes
from gpuann.binary.stored_codes import StoredCodes, check_nbits, padded_bytes, prepare_codes
from gpuann.display import Bytes
from gpuann.index import Index
from gpuann.range_search import tiled_range_search
from gpuann.result import SearchResult

__all__ = ["BinaryFlatIndex", "check_nbits", "padded_bytes", "prepare_codes"]


class BinaryFlatIndex(StoredCodes, Index):
    """Exact Hamming-distance index over packed binary codes stored on one device.

    Parameters
    ----------
    nbits : int
        Bits per code, a multiple of 8 (faiss's ``d``); codes have ``nbits // 8`` bytes. Also
        the index's ``dim``.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    memory_budget : int, optional
        Bytes of working memory per search (torch backend).

    Notes
    -----
    ``search`` returns **int32** Hamming distances (as faiss's binary indexes do, exact and
    comparable with faiss), not float32; missing results (fewer than ``k`` codes) have id
    ``-1`` and distance ``2**31 - 1``. ``metric`` is ``"hamming"``; ``dtype`` is uint8.

    Examples
    --------
    >>> index = BinaryFlatIndex(16, device="cpu")
    >>> index.add(torch.tensor([[0, 0], [255, 0], [1, 1]], dtype=torch.uint8), ids=[7, 8, 9])
    >>> D, I = index.search(torch.tensor([[1, 0]], dtype=torch.uint8), k=2)
    >>> D, I
    (tensor([[1, 1]], dtype=torch.int32), tensor([[7, 9]]))
    """

    _config_keys = ("nbits", "memory_budget")

    def __init__(
        self,
        nbits: int,
        *,
        device: str | torch.device | None = None,
        memory_budget: int | None = None,
    ) -> None:
        self._nbits = check_nbits(nbits)  # also the index's ``dim``
        self._code_size = code_bytes(self._nbits)
        super().__init__(nbits, device=device, dtype=torch.uint8, memory_budget=memory_budget)

    # ---------------------------------------------------------------- properties
    @property
    def metric(self) -> str:  # type: ignore[override]
        """``"hamming"``."""
        return "hamming"

    def _display_fields(self) -> dict[str, Any]:
        return {
            "n": len(self),
            "nbits": self._dim,
            "metric": "hamming",
            "device": self._device,
            "memory": Bytes(self.nbytes),
        }

    def _config(self) -> dict[str, Any]:
        return {"nbits": self._dim, "memory_budget": self.memory_budget}

    # ---------------------------------------------------------------- storage
    def _columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return self._code_columns()

    def _prepare(self, x: Any, name: str, check_finite: bool) -> tuple[torch.Tensor, bool, Any]:
        codes, was_numpy = as_codes(x, name, self._code_size)
        return prepare_codes(codes, self._device), was_numpy, codes.device

    def _prepare_queries(
        self, queries: Any, check_finite: bool
    ) -> tuple[torch.Tensor, bool, torch.device]:
        return self._prepare(queries, "queries", check_finite)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"codes": x}

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        return self._rows.data["codes"][rows, : self._code_size]

    # ---------------------------------------------------------------- queries
    def add(self, x: Any, ids: Any = None, *, check_finite: bool = True) -> None:
        """Add codes.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (n, nbits // 8), uint8, any strides
        ids : int64 tensor, array or list, shape (n,), optional
            Unique non-negative ids not already in the index; default: consecutive after the
            largest used.
        check_finite : bool
            No effect (codes are integers); accepted as every index's ``add`` does.

        On any error the index is left unchanged.
        """
        super().add(x, ids, check_finite=check_finite)

    def search(
        self,
        queries: Any,
        k: int,
        *,
        backend: str = "auto",
        memory_budget: int | None = None,
        check_finite: bool = True,
    ) -> SearchResult:
        """The ``k`` stored codes nearest to each query code in Hamming distance.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (Q, nbits // 8), uint8, any strides
        k : int
        backend : {"auto", "triton", "torch"}
        memory_budget : int, optional
            Overrides the index's budget for this search.
        check_finite : bool
            No effect (codes are integers).

        Returns
        -------
        SearchResult
            ``(distances, ids)`` of shape (Q, k): int32 Hamming distances (ascending, ties by
            lower id) and int64 ids; ``-1`` / ``2**31 - 1`` beyond the index's size. numpy
            when ``queries`` is numpy, else tensors on the queries' device.
        """
        return self._run_search(queries, k, backend=backend, memory_budget=memory_budget)

    def _search(
        self, queries: torch.Tensor, k: int, *, backend: str, memory_budget: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        distances, found = self._hamming_search(queries, k, backend, self._budget(memory_budget))
        return distances, self._rows.ids_of(found)

    def _range_search(
        self, queries: torch.Tensor, radius: float, *, max_results: int | None, memory_budget: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes at Hamming distance ``< radius`` (faiss's ``IndexBinaryFlat.range_search``)."""
        rows = self._rows
        codes = rows.view("codes")
        table = _popcount_table(self._device)

        def score_tile(q0: int, q1: int, r0: int, r1: int) -> torch.Tensor:
            xor = torch.bitwise_xor(queries[q0:q1, None, :], codes[None, r0:r1, :])
            return table[xor.long()].sum(dim=2, dtype=torch.int32)

        lims, distances, found = tiled_range_search(
            queries.shape[0],
            rows.n,
            score_tile,
            radius,
            descending=False,
            device=self._device,
            memory_budget=memory_budget,
            max_results=max_results,
            dim=8 * codes.shape[1],  # the tile's XOR bytes and their int64 indices
        )
        return lims, distances, rows.ids_of(found)


def _popcount_table(device: torch.device) -> torch.Tensor:
    """Set bits of every byte value: shape (256,), int32."""
    values = torch.arange(256, device=device)
    return sum(((values >> b) & 1) for b in range(8)).to(torch.int32)
