"""The one dispatcher: registration, declared support, forced backends, fall-through, explain."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import gpuann
from gpuann.backends import (
    ExactBackend,
    SearchRequest,
    available_backends,
    dispatch,
    explain,
    get_backend,
    register_backend,
    registered_backends,
    select_backend,
)
from gpuann.metrics import Metric

OPS = ["exact_search", "hamming_search", "batched_topk"]


def _request(k: int = 3, device: str = "cpu") -> SearchRequest:
    return SearchRequest(
        queries=torch.randn(2, 4, device=device),
        database=torch.randn(10, 4, device=device),
        k=k,
        metric=Metric.L2,
        database_sqnorms=None,
        column_scale=None,
        memory_budget=1 << 24,
    )


class _Picky(ExactBackend):
    name: ClassVar[str] = "picky"

    def extra_reasons(self, request):
        return ["needs a quantum computer", f"dim {request.database.shape[1]} is not 7"]

    def search(self, request):  # pragma: no cover - never chosen
        raise AssertionError


class _SmallK(ExactBackend):
    """Runs everything up to k = 5, before torch."""

    name: ClassVar[str] = "small_k"
    priority: ClassVar[int] = 20
    max_k: ClassVar[int] = 5

    def search(self, request):
        return get_backend("torch").search(request)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so tests may register freely."""
    copy = {op: list(entries) for op, entries in dispatch._backends.items()}
    monkeypatch.setattr(dispatch, "_backends", copy)
    return copy


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_fused_backend_then_torch(op):
    middle = ["faiss"] if op == "hamming_search" else []  # faiss: CPU only, declared missing
    assert available_backends(op) == ["triton", *middle, "torch"]
    triton = get_backend("triton", op)
    assert triton.max_k is not None and not triton.auto_on_cpu and triton.op == op


def test_one_k_limit_per_kernel_declared_on_its_backend():
    from gpuann._triton import MAX_K, TOPK_MAX_K

    assert get_backend("triton").max_k == MAX_K
    assert get_backend("triton", "batched_topk").max_k == TOPK_MAX_K
    assert get_backend("triton", "hamming_search").max_k == 1024
    assert all(get_backend("torch", op).max_k is None for op in OPS)


def test_auto_on_cpu_picks_torch():
    assert select_backend(_request()).name == "torch"


def test_torch_backend_can_be_forced():
    D, I = gpuann.knn(torch.randn(2, 4), torch.randn(10, 4), 3, backend="torch")
    assert I.shape == (2, 3)


def test_a_registered_backend_is_used_without_editing_gpuann(registry):
    register_backend("exact_search", _SmallK())
    assert available_backends() == ["triton", "small_k", "torch"]
    assert select_backend(_request(k=5)).name == "small_k"


def test_k_above_a_limit_falls_through_visibly(registry):
    register_backend("exact_search", _SmallK())
    assert select_backend(_request(k=6)).name == "torch"
    report = explain("exact_search", _request(k=6))
    assert "small_k: passed over: k=6 is above the kernel's limit of 5" in report
    assert "torch: chosen" in report


def test_impossible_forced_choice_lists_the_reasons(registry):
    registry["exact_search"] = [_Picky()]
    with pytest.raises(
        gpuann.BackendUnavailableError,
        match="backend='picky' cannot run this search: needs a quantum computer; dim 4 is not 7",
    ):
        select_backend(_request(), "picky")
    with pytest.raises(
        gpuann.BackendUnavailableError, match="no backend can run this search:\n  picky: needs"
    ):
        select_backend(_request())
    assert "-> no backend can run it" in explain("exact_search", _request())


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend: expected one of 'auto'"):
        select_backend(_request(), "cuvs")
    with pytest.raises(ValueError, match="op: expected one of"):
        registered_backends("sort")


def test_declared_dtypes_are_checked():
    x = torch.zeros(2, 8, dtype=torch.float64)
    reasons = get_backend("triton", "batched_topk").not_supported_reasons(
        dispatch._request_builders["batched_topk"](x, 2)
    )
    assert any("dtype torch.float64: expected float32, float16, bfloat16" in r for r in reasons)


def test_explain_takes_each_ops_public_arguments():
    report = explain("exact_search", torch.randn(3, 4), torch.randn(10, 4), 5, "cosine")
    assert report.splitlines()[0] == "exact_search on cpu, dtype float32, k=5:"
    assert "torch: chosen" in report
    codes = torch.zeros(3, 2, dtype=torch.int32)
    report = explain("hamming_search", codes, codes, 2000, backend="triton")
    assert "k=2000 is above the kernel's limit of 1024" in report
    assert "torch: chosen" in explain("batched_topk", torch.randn(2, 9), 4)
