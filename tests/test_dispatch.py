"""The dispatcher: forced backends, reasons when impossible, unknown names."""

from __future__ import annotations

import pytest
import torch

import gpuann
from gpuann.backends import ExactBackend, SearchRequest, select_backend
from gpuann.backends import dispatch as dispatch_module
from gpuann.metrics import Metric


def _request(device="cpu") -> SearchRequest:
    return SearchRequest(
        queries=torch.randn(2, 4, device=device),
        database=torch.randn(10, 4, device=device),
        k=3,
        metric=Metric.L2,
        database_sqnorms=None,
        column_scale=None,
        memory_budget=1 << 24,
    )


def test_auto_on_cpu_picks_torch():
    assert select_backend(_request()).name == "torch"


def test_torch_backend_can_be_forced():
    D, I = gpuann.knn(torch.randn(2, 4), torch.randn(10, 4), 3, backend="torch")
    assert I.shape == (2, 3)


class _Picky(ExactBackend):
    name = "picky"

    def not_supported_reasons(self, request):
        return ["needs a quantum computer", f"dim {request.database.shape[1]} is not 7"]

    def search(self, request):  # pragma: no cover - never chosen
        raise AssertionError


def test_impossible_forced_choice_lists_the_reasons(monkeypatch):
    monkeypatch.setattr(dispatch_module, "_REGISTRY", (("picky", __name__, "_Picky"),))
    monkeypatch.setattr(dispatch_module, "_instances", {"picky": _Picky()})
    with pytest.raises(
        gpuann.BackendUnavailableError,
        match="backend='picky' cannot run this search: needs a quantum computer; dim 4 is not 7",
    ):
        select_backend(_request(), "picky")
    with pytest.raises(
        gpuann.BackendUnavailableError, match="no backend can run this search:\n  picky: needs"
    ):
        select_backend(_request())


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend: expected one of 'auto'"):
        select_backend(_request(), "cuvs")
