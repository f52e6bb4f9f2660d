"""int8 storage for :class:`gpuann.FlatIndex` (``dtype=torch.int8``): codes, scoring, refine.

Vectors are stored as int8 codes with per-dimension ranges (:class:`gpuann.quantize.
ScalarQuantizer`): a quarter of float32's memory. A search runs the shared exact engine on the
codes with the query scaled per dimension, ``q' = q · step``, so that the engine's scores are
``‖x̂‖² − 2⟨q', c⟩`` (l2) or ``⟨q', c⟩`` (ip): the order of the true scores against the decoded
vectors ``x̂ = mid + step · c``, up to a constant per query.

With ``int8_queries`` the scaled query is itself quantised to int8 codes ``u`` with a
power-of-two factor ``s`` (``q' ≈ s · u``) and the engine multiplies int8 by int8 with exact
int32 accumulation (``torch._int_mm`` on the CPU, the fused kernel's int8 ``tl.dot`` on CUDA):
scores ``‖x̂‖² − 2·s·⟨u, c⟩`` or ``s·⟨u, c⟩``, exact up to one rounding, so every backend gives
the same bits. One factor per query: where a few dimensions have much larger ranges than the
rest (their ``q'`` grows with the square of the range), the others keep few bits and recall
drops (a reviewer measured recall@10 0.977 → 0.897 with 2 of 128 dimensions at 10× the range).

The candidates (``k``, ``INT8_OVERFETCH · k`` with ``int8_queries``, or ``refine_factor · k``
with ``refine=True``) are then re-scored with the float query by
:func:`gpuann.refine.rerank_rows`: against the decoded codes, or against float32 copies of the
vectors kept in host memory (``refine=True``), which makes the final distances exact.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from gpuann._rows import IdRows
from gpuann.metrics import Metric
from gpuann.quantize import CODE_MAX, ScalarQuantizer
from gpuann.refine import rerank_rows

__all__ = ["INT8_OVERFETCH", "Int8Codes", "quantize_queries"]

#: Without ``refine``: candidates per result taken from the int8 scores and re-scored with the
#: float query against the decoded codes (recovers the query's 8-bit rounding; measured on the
#: demo's MiniLM embeddings and a Gaussian mixture: the 2k candidates held every one of the
#: float-query top 10).
INT8_OVERFETCH = 2


def quantize_queries(queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes ``u`` (Q, d) and power-of-two factors ``s`` (Q,) with ``queries ≈ s · u``.

    ``s`` is the least power of two with ``max |queries| <= 127 · s`` per row (1 for a zero
    row), so that ``s · ⟨u, c⟩`` is exact for any integer dot. A row holding NaN or ±inf
    (searched with ``check_finite=False``) gets codes 0 and ``s = NaN``: its scores are NaN,
    never the codes of an undefined float-to-int8 cast.

    >>> u, s = quantize_queries(torch.tensor([[0.5, -1.0, 0.25], [1.984375, 0.0, -0.5]]))
    >>> u.tolist(), s.tolist()
    ([[32, -64, 16], [127, 0, -32]], [0.015625, 0.015625])
    >>> u, s = quantize_queries(torch.tensor([[float("nan"), 1.0], [float("inf"), 0.0]]))
    >>> u.tolist(), s.tolist()
    ([[0, 0], [0, 0]], [nan, nan])
    """
    q = queries.float()
    amax = q.abs().amax(dim=1) if q.shape[1] else q.new_zeros(q.shape[0])
    mantissa, exponent = torch.frexp(amax / CODE_MAX)  # amax / 127 = m · 2**e, 0.5 <= m < 1
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)  # already a power of two
    scale = torch.where(amax > 0, torch.ldexp(torch.ones_like(amax), exponent), 1.0)
    finite = torch.isfinite(amax)
    scaled = torch.where(finite[:, None], q / scale[:, None], 0.0)
    codes = torch.round(scaled).clamp_(-CODE_MAX, CODE_MAX).to(torch.int8)
    return codes, torch.where(finite, scale, float("nan"))


class Int8Codes:
    """The int8 side of a FlatIndex: its quantiser and, with ``refine``, the float vectors.

    Parameters
    ----------
    dim : int
    metric : Metric
    device : torch.device
        Where the codes live (the index's device).
    refine : bool
        Keep float32 copies of the vectors in host memory for exact re-scoring.
    """

    def __init__(
        self,
        dim: int,
        metric: Metric,
        device: torch.device,
        refine: bool,
        int8_queries: bool = False,
    ) -> None:
        self.dim, self.metric, self.device, self.refine = dim, metric, device, refine
        self.int8_queries = int8_queries
        self.quantizer = ScalarQuantizer(dim, device)
        #: Held by an add while the ranges may still be learned (see ``FlatIndex.add``).
        self.first_add = threading.Lock()
        #: Float32 vectors, same ids and row order as the codes, in host memory.
        self.host = IdRows(torch.device("cpu"), {"vectors": ((dim,), torch.float32)})

    # ---------------------------------------------------------------- storage
    def columns(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        columns = {"vectors": ((self.dim,), torch.int8)}
        if self.metric is Metric.L2:
            columns["sqnorms"] = ((), torch.float32)
        return columns

    def derive(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.metric is not Metric.L2:
            return {}
        decoded = self.quantizer.decode(codes)
        return {"sqnorms": (decoded * decoded).sum(dim=1)}

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Columns of float32 ``x`` (the raw vectors travel too, for the host copy); no rows
        need no ranges (an untrained index takes an empty ``add``)."""
        if not x.shape[0]:
            codes = torch.empty((0, self.dim), dtype=torch.int8, device=x.device)
            empty = {"sqnorms": torch.empty(0, device=x.device)} if self.metric is Metric.L2 else {}
            return {"vectors": codes, **empty, "float_vectors": x}
        codes = self.quantizer.encode(x)
        return {"vectors": codes, **self.derive(codes), "float_vectors": x}

    def decode(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The stored vectors of ``rows``: exact with ``refine``, else decoded codes."""
        if self.refine:
            return self.host.data["vectors"][rows.cpu()].to(self.device)
        return self.quantizer.decode(codes[rows])

    # ---------------------------------------------------------------- keeping the host copy in step
    def insert(self, ids: torch.Tensor, columns: dict[str, torch.Tensor]) -> None:
        x = columns.pop("float_vectors")
        if self.refine:
            self.host.insert(ids.cpu(), {"vectors": x.cpu()})

    def remove(self, rows: torch.Tensor) -> None:
        if self.refine:
            self.host.remove_rows(rows.cpu())

    def update(self, rows: torch.Tensor, columns: dict[str, torch.Tensor]) -> None:
        x = columns.pop("float_vectors")
        if self.refine:
            self.host.set_rows(rows.cpu(), {"vectors": x.cpu()})

    # ---------------------------------------------------------------- search
    def engine_queries(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The engine's queries, scaled per dimension, and with ``int8_queries`` quantised
        (:func:`quantize_queries`: int8 codes and their factors; else the factor is None)."""
        scaled = queries.float() * self.quantizer.step
        return quantize_queries(scaled) if self.int8_queries else (scaled, None)

    def candidates(self, k: int, refine_factor: int | None) -> int:
        """Candidates the engine finds for ``k`` results (re-scored by :meth:`rescore`)."""
        if refine_factor is not None:
            return k * refine_factor
        return k * INT8_OVERFETCH if self.int8_queries else k

    def rescore(
        self,
        queries: torch.Tensor,
        codes: torch.Tensor,
        rows: torch.Tensor,
        k: int,
        memory_budget: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best of the candidate ``rows`` (Q, C), scored against decoded codes or,
        with ``refine``, the exact host vectors."""
        metric = Metric.L2 if self.metric is Metric.L2 else Metric.IP
        if self.refine:
            host = self.host.data["vectors"]

            def gather(safe: torch.Tensor) -> torch.Tensor:
                flat = host.index_select(0, safe.reshape(-1).cpu())
                return flat.view(*safe.shape, -1)
        else:
            quantizer = self.quantizer

            def gather(safe: torch.Tensor) -> torch.Tensor:
                flat = codes.index_select(0, safe.reshape(-1))
                return quantizer.decode(flat.view(*safe.shape, -1))

        return rerank_rows(
            queries.float(), None, None, rows, k, metric, memory_budget, gather=gather
        )

    def range_tile(self, codes: torch.Tensor) -> torch.Tensor:
        """Decoded float32 rows of a tile of codes (range search scores them exactly)."""
        return self.quantizer.decode(codes)

    # ---------------------------------------------------------------- files
    def arrays(self) -> dict[str, torch.Tensor]:
        arrays: dict[str, Any] = {}
        if self.quantizer.is_trained:
            arrays = {"sq_mid": self.quantizer.mid, "sq_step": self.quantizer.step}
        if self.refine:
            arrays["refine_vectors"] = self.host.view("vectors")
        return arrays

    def restore(self, arrays: dict[str, torch.Tensor], ids: torch.Tensor, next_id: int) -> None:
        from gpuann.serialization import IndexFileError

        if "sq_mid" in arrays:
            mid, step = arrays["sq_mid"], arrays.get("sq_step")
            if step is None or mid.shape != (self.dim,) or step.shape != (self.dim,):
                raise IndexFileError("sq_mid/sq_step do not match the index's dim")
            self.quantizer.set_state(mid, step)
        elif ids.numel():
            raise IndexFileError("an int8 index with vectors needs sq_mid and sq_step")
        if self.refine:
            vectors = arrays.get("refine_vectors")
            if vectors is None or vectors.shape != (ids.shape[0], self.dim):
                raise IndexFileError("refine_vectors do not match the stored ids")
            self.host.load(ids.cpu(), {"vectors": vectors.float()}, next_id)

    def copy_to(self, device: torch.device) -> Int8Codes:
        other = Int8Codes(self.dim, self.metric, device, self.refine, self.int8_queries)
        other.quantizer = self.quantizer.to(device)
        other.host = self.host.copy_to(torch.device("cpu"))
        return other

    @property
    def nbytes(self) -> int:
        """Bytes of the host copy (the codes are counted by the index's row store)."""
        return self.host.nbytes
