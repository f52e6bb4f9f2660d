"""Exact search with the fused Triton kernel: distances and top-k in one pass over the database.

The fast path on CUDA. Each program scores a block of queries against database tiles with
``tl.dot`` (float32 accumulation), tests each score against its query's threshold, and keeps
its running top-k as packed int64 keys in global scratch, fed by per-query candidate buffers,
so the (Q, N) distance matrix never exists; when queries are few, the database is
split across programs and the partial lists are merged by a second small kernel. Results
follow the torch backend's rules (ties to the lower row, NaN last) on float32 scores whose
last bits differ from a cuBLAS product's (float32 storage: TF32X3 tensor-core scores, the
winners re-scored in float64). Filters and a per-row tie order run inside the kernel (see
``gpuann._kernels.fused_knn``).

The kernel selects at most ``max_k`` (``gpuann._triton.MAX_K``) per query;
a larger ``k`` is a declared reason, and the dispatcher moves on, visibly (see
``gpuann.backends.explain``), to the next backend.

CPU tensors run only under the Triton interpreter (``TRITON_INTERPRET=1``, set before triton
is imported), which exists to test the kernels: ``backend="triton"`` then works on the CPU,
but automatic selection never picks this backend for CPU tensors (``auto_on_cpu = False``),
because the interpreter is orders of magnitude slower than torch there.
"""

from __future__ import annotations

import importlib.metadata
from typing import ClassVar

import torch
from packaging.version import Version

from gpuann._triton import MAX_K, triton_installed
from gpuann._validate import FLOAT_DTYPES, STORAGE_DTYPES
from gpuann.backends.base import ExactBackend, SearchRequest, triton_runtime_reasons
from gpuann.backends.dispatch import register_backend
from gpuann.engine.int8_dots import EXACT_INT32_MAX_DIM
from gpuann.metrics import Metric

__all__ = ["TritonBackend"]

#: Row numbers are packed into the low 32 bits of a key.
_MAX_ROWS = 2**32 - 1


class TritonBackend(ExactBackend):
    """Fused distance + top-k Triton kernels (CUDA; the CPU only under the interpreter)."""

    priority: ClassVar[int] = 10
    name: ClassVar[str] = "triton"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (*STORAGE_DTYPES, torch.int8)
    max_k: ClassVar[int] = MAX_K
    #: Whether ``backend="auto"`` may pick this backend for CPU tensors: never, the
    #: interpreter that runs it there is a test tool (see the module docstring).
    auto_on_cpu: ClassVar[bool] = False

    def extra_reasons(self, request: SearchRequest) -> list[str]:
        device = request.device
        reasons = triton_runtime_reasons(device)
        if device.type == "cuda":
            capability = torch.cuda.get_device_capability(device)
            if capability < (7, 0):
                reasons.append(f"CUDA compute capability {capability} < (7, 0)")
            elif request.database.dtype == torch.bfloat16 and capability < (8, 0):
                reasons.append(f"bfloat16 needs compute capability >= (8, 0), got {capability}")
            elif request.database.dtype == torch.int8 and capability < (8, 0):
                reasons.append(
                    f"int8 is compile-checked for compute capability >= (8, 0), got {capability}"
                )
        int8 = request.database.dtype == torch.int8
        if int8 and (request.queries.dtype != torch.int8 or request.query_scale is None):
            reasons.append("int8 storage: needs int8 queries with a query_scale")
        elif int8 and request.database.shape[1] > EXACT_INT32_MAX_DIM:
            reasons.append(
                f"int8 storage: d={request.database.shape[1]} > {EXACT_INT32_MAX_DIM}, where "
                "the kernel's int32 accumulator could overflow"
            )
        elif not int8 and request.queries.dtype not in FLOAT_DTYPES:
            reasons.append(f"queries dtype {request.queries.dtype} is not supported")
        if request.database.shape[0] > _MAX_ROWS:
            reasons.append(
                f"{request.database.shape[0]} database rows: at most 2**32 - 1 (row numbers "
                "are packed into 32 bits)"
            )
        if device.type == "cpu" and triton_installed() and _interpreter_range_bug():
            reasons.append("the interpreter of triton < 3.7 crashes with numpy >= 2.3")
        return reasons

    def search(self, request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
        return _fused_search(request)


def _interpreter_range_bug() -> bool:
    """triton <= 3.6's interpreter fails on ``range(program_id-based bounds)`` with numpy >= 2.3."""
    triton_version = Version(importlib.metadata.version("triton"))
    numpy_version = Version(importlib.metadata.version("numpy"))
    return triton_version < Version("3.7") and numpy_version >= Version("2.3")


def _fused_search(request: SearchRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the fused kernel on chunks of queries whose partial lists fit half the budget."""
    from gpuann._triton.knn import fused_knn, partial_bytes

    queries, database, k = request.queries, request.database, request.k
    if queries.dtype == torch.float64:
        queries = queries.float()
    l2 = request.metric is Metric.L2
    per_query = partial_bytes(1, min(k, max(database.shape[0], 1)), 1)  # one split's scratch
    allowance = max(request.memory_budget // 2, per_query)
    chunk = max(1, min(queries.shape[0], allowance // per_query))
    results = []
    for q0 in range(0, max(queries.shape[0], 1), chunk):
        q = queries[q0 : q0 + chunk]
        results.append(
            fused_knn(
                q,
                database,
                k,
                l2,
                request.database_sqnorms if l2 else None,
                None if l2 else request.column_scale,
                max_splits=max(1, allowance // (per_query * max(q.shape[0], 1))),
                filters=request.for_queries(slice(q0, q0 + chunk)),
                query_scale=None
                if request.query_scale is None
                else request.query_scale[q0 : q0 + chunk],
            )
        )
    if len(results) == 1:
        return results[0]
    return torch.cat([d for d, _ in results]), torch.cat([p for _, p in results])


register_backend("exact_search", TritonBackend())
