"""int8 storage on every backend: exact int32 dots, the same bits from torch and Triton.

int8 queries against int8 codes with a power-of-two factor per query give scores that are
exact up to one rounding, so the Triton kernel (its int8 ``tl.dot``, here under the
interpreter) and the torch backend must agree bit for bit, ties included, with or without
filters; both must equal a float64 reference sorted by (score, row).
"""

from __future__ import annotations

import pytest
import torch
from reference import DEVICES

from gpuann._int8 import quantize_queries
from gpuann.backends.base import SearchRequest
from gpuann.backends.dispatch import BackendUnavailableError, get_backend
from gpuann.exact import exact_search
from gpuann.metrics import Metric

pytest.importorskip("triton")


def _data(n_q: int, n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (n, d), generator=g, dtype=torch.int8)
    codes[n // 2] = codes[1]  # duplicates: equal scores, the lower row first
    codes[n - 1] = codes[1]
    queries, scale = quantize_queries(torch.randn(n_q, d, generator=g))
    sqnorms = torch.rand(n, generator=g) * 1e3
    return queries, codes, scale, sqnorms


def _reference(queries, codes, scale, sqnorms, k, metric, excluded=None, allowed=None):
    dots = queries.double() @ codes.double().T * scale.double()[:, None]
    scores = (sqnorms.double()[None, :] - 2 * dots) if metric is Metric.L2 else -dots
    scores = scores.float().double()  # one rounding, as the backends
    if excluded is not None:
        for i, row in enumerate(excluded.tolist()):
            scores[i, [r for r in row if r >= 0]] = float("inf")
    if allowed is not None:
        scores[:, ~allowed] = float("inf")
    n = codes.shape[0]
    ids = torch.tensor(  # sorted by (score, row): ties to the lower row
        [[j for _, j in sorted(zip(s.tolist(), range(n), strict=True))[:k]] for s in scores]
    )
    values = torch.gather(scores, 1, ids)
    return values, ids


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP], ids=str)
@pytest.mark.parametrize(
    "shape", [(1, 37, 20, 5), (7, 150, 64, 13), (19, 90, 100, 40), (24, 96, 64, 8)], ids=str
)
@pytest.mark.parametrize("filtered", [False, True])
def test_triton_and_torch_give_the_reference_bits(device, metric, shape, filtered):
    n_q, n, d, k = shape  # (24, 96, 64): a shape cuBLASLt's int8 GEMM takes on CUDA
    queries, codes, scale, sqnorms = _data(n_q, n, d, seed=n)
    excluded = allowed = None
    if filtered:
        excluded = torch.tensor([[1, 3]] * n_q)
        allowed = torch.ones(n, dtype=torch.bool)
        allowed[::5] = False
    ref_values, ref_ids = _reference(queries, codes, scale, sqnorms, k, metric, excluded, allowed)
    on = {"device": device}
    for backend in ("torch", "triton"):
        values, ids = exact_search(
            queries.to(**on),
            codes.to(**on),
            k,
            metric,
            database_sqnorms=sqnorms.to(**on) if metric is Metric.L2 else None,
            query_scale=scale.to(**on),
            backend=backend,
            excluded_rows=None if excluded is None else excluded.to(**on),
            allowed_rows=None if allowed is None else allowed.to(**on),
        )
        values, ids = values.cpu(), ids.cpu()
        assert torch.equal(ids, ref_ids), backend
        if metric is Metric.IP:
            assert torch.equal(-values, ref_values.float()), backend
        else:  # the engine adds the queries' own term to the winners; the order is the test
            assert torch.equal(values.argsort(dim=1, stable=True), torch.arange(k).expand(n_q, k))


def test_int8_storage_without_a_query_scale_is_refused():
    queries, codes, scale, sqnorms = _data(3, 40, 16, seed=0)
    with pytest.raises(ValueError, match="query_scale"):
        exact_search(queries.float(), codes, 3, Metric.IP, query_scale=scale)
    with pytest.raises(ValueError, match="query_scale"):
        exact_search(queries, codes, 3, Metric.IP)
    with pytest.raises(ValueError, match="query_scale"):
        exact_search(queries, codes, 3, Metric.IP, query_scale=scale, column_scale=sqnorms)
    with pytest.raises(ValueError, match="query_scale"):
        exact_search(queries, codes, 3, Metric.L2, query_scale=scale)  # no sqnorms
    request = SearchRequest(queries.float(), codes, 3, Metric.IP, None, None, 1 << 20)
    reasons = get_backend("triton").not_supported_reasons(request)
    assert any("int8 queries with a query_scale" in r for r in reasons)
    with pytest.raises(BackendUnavailableError, match="int8 queries"):
        from gpuann.backends.dispatch import select_backend

        select_backend(request, "triton")


def test_query_codes_use_a_power_of_two_and_most_of_the_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 33, generator=g) * torch.logspace(-6, 6, 200)[:, None]
    codes, scale = quantize_queries(x)
    mantissa, _ = torch.frexp(scale)
    assert torch.all(mantissa == 0.5)  # powers of two
    peak = codes.abs().amax(dim=1)
    assert torch.all((peak > 63) & (peak <= 127))
    assert torch.all((codes.float() * scale[:, None] - x).abs() <= scale[:, None] / 2 + 1e-30)
    zero_codes, zero_scale = quantize_queries(torch.zeros(2, 4))
    assert torch.all(zero_codes == 0) and torch.all(zero_scale == 1)
