"""Input preparation's value check: NaN/±inf found on both scan paths (numpy for small CPU
arrays, torch otherwise), rows named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpuann
from gpuann import inputs
from gpuann.metrics import Metric


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("rows", [3, inputs._NUMPY_SCAN_MAX // 8 + 1])  # numpy, then torch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_finite_values_are_found_and_their_rows_named(bad, rows, dtype):
    x = torch.ones(rows, 8, dtype=dtype)
    x[rows - 1, 5] = bad
    named = rf"queries: contains NaN or infinite.*rows \[{rows - 1}\]"
    with pytest.raises(ValueError, match=named):
        inputs.check_values(x, "queries", Metric.L2, dtype)


@pytest.mark.parametrize("rows", [3, inputs._NUMPY_SCAN_MAX // 8 + 1])
def test_the_peak_is_the_largest_magnitude_either_way(rows):
    x = torch.zeros(rows, 8)
    x[1, 2] = -7.5
    assert inputs._peak(x) == 7.5
    x[0, 0] = 1e30  # squared norms beyond float32 for l2/ip, fine for cosine
    with pytest.raises(ValueError, match="beyond float32's range"):
        inputs.check_values(x, "x", Metric.IP, torch.float32)
    inputs.check_values(x, "x", Metric.COSINE, torch.float32)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_cosine_preparation_finds_non_finite_rows_from_its_row_peaks(bad):
    x = torch.ones(4, 8)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"queries: contains NaN or infinite.*rows \[2\]"):
        inputs.prepare_vectors(
            x, "queries", dim=8, metric=Metric.COSINE, device=torch.device("cpu"), check_finite=True
        )


def test_cosine_preparation_is_scale_safe_on_tiny_and_huge_rows():
    x = torch.tensor([[3e-30, 4e-30], [3e30, 4e30], [3.0, 4.0], [0.0, 0.0]])
    got, _, _ = inputs.prepare_vectors(
        x, "x", dim=2, metric=Metric.COSINE, device=torch.device("cpu"), check_finite=True
    )
    expected = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.6, 0.8], [0.0, 0.0]])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("scale", [1e-11, 1.0, 1e15])
def test_cosine_preparation_gives_normalize_bits(dtype, scale):
    # The CPU fast path (row norms only) must give F.normalize's bits, in the caller's dtype;
    # rows near the rescaling bounds and a zero row take the careful path, unchanged.
    if dtype == torch.float16 and scale != 1.0:
        pytest.skip("beyond float16's range")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(37, 61, generator=g) * scale).to(dtype)
    for rows in (x, torch.cat([x, torch.zeros(1, 61, dtype=dtype)])):
        got, _, _ = inputs.prepare_vectors(
            rows, "x", dim=61, metric=Metric.COSINE, device=torch.device("cpu"),
            check_finite=True, dtype=None,
        )  # fmt: skip
        expected = torch.nn.functional.normalize(rows.float(), dim=1)
        want = torch.float32 if dtype == torch.float64 else dtype
        assert got.dtype == want and torch.equal(got, expected.to(want))


def test_cosine_preparation_keeps_autograd_and_the_old_bounds():
    # Regressions of the fast path: no in-place op on what backward needs, no warning from
    # reading a tensor that requires grad; float64 rows just under 1e-18 still rescaled.
    import warnings

    x = torch.randn(4, 8, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, _, _ = inputs.prepare_vectors(
            x, "q", dim=8, metric=Metric.COSINE, device=torch.device("cpu"), check_finite=True
        )
    got.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    tiny = torch.tensor([[9.99999999e-19]], dtype=torch.float64)
    got, _, _ = inputs.prepare_vectors(
        tiny, "q", dim=1, metric=Metric.COSINE, device=torch.device("cpu"), check_finite=True
    )
    assert got.tolist() == [[1.0]]


def test_host_queries_views_float32_cpu_matrices_and_declines_everything_else():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = inputs.host_queries(a, 4, Metric.L2, True)
    assert view is a
    assert np.shares_memory(inputs.host_queries(torch.from_numpy(a), 4, Metric.IP, True), a)
    declined = [
        a.astype(np.float64),  # another dtype
        a[:, :2],  # not C-contiguous, and 2 columns
        np.asfortranarray(a),
        a[:0],  # empty
        torch.from_numpy(a).requires_grad_(),
        np.full((1, 4), np.nan, np.float32),
        np.full((1, 4), np.inf, np.float32),
        np.full((1, 4), 1e19, np.float32),  # squared norms beyond float32's range
        [[1.0, 2.0, 3.0, 4.0]],
    ]
    for x in declined:
        assert inputs.host_queries(x, 4, Metric.L2, True) is None
    assert inputs.host_queries(np.full((1, 4), np.nan, np.float32), 4, Metric.L2, False) is not None
    assert inputs.host_queries(a, 5, Metric.L2, True) is None  # wrong dim


def test_host_queries_normalise_cosine_with_the_general_paths_bits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 33, generator=g) * 3
    general, _, _ = inputs.prepare_vectors(
        x, "q", dim=33, metric=Metric.COSINE, device=torch.device("cpu"), check_finite=True
    )
    fast = inputs.host_queries(x.numpy(), 33, Metric.COSINE, True)
    assert torch.equal(torch.from_numpy(fast), general)
    assert inputs.host_queries(torch.zeros(1, 33), 33, Metric.COSINE, True) is None  # zero row


def test_host_queries_accept_nothing_the_general_check_refuses():
    # found by review: float32 rounding of v² let this pass the fast check at d = 2
    edge = np.array([[1.3043817602097349e19, 0]], np.float32)
    with pytest.raises(ValueError, match="beyond float32's range"):
        inputs.check_values(torch.from_numpy(edge), "queries", Metric.L2, torch.float32)
    assert inputs.host_queries(edge, 2, Metric.L2, True) is None
    # np.matrix (an ndarray subclass whose reshape stays 2-D) is taken as a plain array
    m = np.asmatrix(np.ones((1, 2), np.float32))
    assert type(inputs.host_queries(m, 2, Metric.L2, True)) is np.ndarray


SCALES = [1e-25, 1e-13, 1.0, 1e20]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("side", ["queries", "database"])
def test_cosine_is_scale_safe_in_every_search(tmp_path, scale, side):
    """Rows of norm in [2e-18, 1e-12) were divided by F.normalize's eps 1e-12, not by their
    norm (a wrong ranking at 1e-13 while 1e-25 was right); knn had no rescaling at all, so
    norms beyond float32 gave similarity 0 everywhere (found by review)."""
    db = torch.tensor([[1.0, 1.0], [3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[1.0, 0.1]], dtype=torch.float64)
    expected_sims = (q / q.norm()) @ (db / db.norm(dim=1, keepdim=True)).T
    if side == "queries":
        q = q * scale
    else:
        db = db * scale
    q32, db32 = q.float(), db.float()
    if not (torch.isfinite(q32).all() and torch.isfinite(db32).all()):
        pytest.skip("beyond float32")
    index = gpuann.FlatIndex(2, metric="cosine", device="cpu")
    index.add(db32)
    bank = gpuann.MemoryBank(3, 2, metric="cosine", device="cpu")
    bank.add(db32)
    np.save(tmp_path / "db.npy", db32.numpy())
    results = {
        "knn": gpuann.knn(q32, db32, 3, metric="cosine"),
        "FlatIndex": index.search(q32, 3),
        "MemoryBank": bank.search(q32, 3),
        "batch_search": gpuann.batch_search(
            q32, str(tmp_path / "db.npy"), 3, metric="cosine", progress=False
        ),
    }
    for name, (D, I) in results.items():
        assert torch.as_tensor(I).tolist() == [[2, 0, 1]], name
        torch.testing.assert_close(
            torch.as_tensor(D).double(), expected_sims.sort(descending=True).values, msg=name
        )


def test_cosine_is_scale_safe_for_long_rows_and_tiny_norms(tmp_path):
    """Rows of 1000 values near 9e17 summed their squares to inf in float32 (similarity 0
    everywhere, in knn and FlatIndex), and a row of norm 1e-39 scored 0.085 in knn against
    a query it points along (its inner products underflow; no 1/norm factor repairs them).
    Both found by review."""
    g = torch.Generator().manual_seed(0)
    db = torch.sign(torch.randn(5, 1000, generator=g))
    q = db[3:4].clone()
    q[0, :100] *= -1
    expected = gpuann.knn(q, db, 3, metric="cosine")
    assert expected.ids.tolist() == [[3, 0, 1]]
    for scale in (9e17, 1e-30):
        index = gpuann.FlatIndex(1000, metric="cosine", device="cpu")
        index.add(db * scale)
        for D, I in (gpuann.knn(q, db * scale, 3, metric="cosine"), index.search(q, 3)):
            assert torch.equal(I, expected.ids)
            torch.testing.assert_close(D, expected.distances)
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    db = torch.tensor([[1e-39, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.save(tmp_path / "db.npy", db.numpy())
    for D, I in (
        gpuann.knn(q, db, 3, metric="cosine"),
        gpuann.batch_search(q, str(tmp_path / "db.npy"), 3, metric="cosine", progress=False),
    ):
        assert torch.as_tensor(I).tolist() == [[0, 1, 2]]
        torch.testing.assert_close(torch.as_tensor(D), torch.tensor([[1.0, 0.5**0.5, 0.0]]))
