"""gpuann.knn against a float64 reference and faiss-cpu, tie-aware."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import TOLERANCE, assert_knn_matches, reference_knn

import gpuann

METRICS = ["l2", "ip", "cosine"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (queries, database rows, dim, k): N not a multiple of the tile, k > N, d = 1, huge k.
SHAPES = [(5, 37, 8, 4), (3, 4100, 16, 10), (7, 300, 1, 5), (4, 20, 12, 50), (2, 9000, 4, 4500)]


def _data(q: int, n: int, d: int, dtype: torch.dtype):
    return torch.randn(q, d), torch.randn(n, d).to(dtype)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_knn_matches_float64_reference(metric, dtype, shape):
    q, n, d, k = shape
    queries, database = _data(q, n, d, dtype)
    D, I = gpuann.knn(queries, database, k, metric=metric)
    assert D.dtype == torch.float32 and I.dtype == torch.int64 and D.shape == (q, k)
    assert_knn_matches(D, I, queries, database, k, metric, tol=TOLERANCE[dtype])


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("budget", [1 << 20, 3 << 20, None])
def test_exact_ties_go_to_the_lower_id(metric, budget):
    # Small integers: every l2/ip score is exact in float32, so ties are real ties.
    database = torch.randint(-2, 3, (6000, 4)).float()
    queries = torch.randint(-2, 3, (9, 4)).float()
    D, I = gpuann.knn(queries, database, 40, metric=metric, memory_budget=budget)
    D_ref, I_ref = reference_knn(queries, database, 40, metric)
    np.testing.assert_array_equal(I.numpy(), I_ref)
    np.testing.assert_allclose(D.numpy(), D_ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_duplicated_rows_come_back_in_id_order(metric):
    base = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    database = base.repeat(40, 1)  # every vector 40 times: bitwise-equal scores
    D, I = gpuann.knn(base[:3], database, 40, metric=metric)
    expected = torch.arange(40)[None, :] * 50 + torch.arange(3)[:, None]
    assert torch.equal(I, expected)
    assert torch.all(D[:, :1] == D)


@pytest.mark.parametrize("metric,faiss_cls", [("l2", "IndexFlatL2"), ("ip", "IndexFlatIP")])
def test_knn_agrees_with_faiss(metric, faiss_cls):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    database = rng.standard_normal((5000, 32), dtype=np.float32)
    queries = rng.standard_normal((50, 32), dtype=np.float32)
    index = getattr(faiss, faiss_cls)(32)
    index.add(database)
    D_faiss, I_faiss = index.search(queries, 20)
    D, I = gpuann.knn(queries, database, 20, metric=metric)
    assert isinstance(D, np.ndarray) and isinstance(I, np.ndarray)
    np.testing.assert_allclose(D, D_faiss, rtol=1e-5, atol=1e-4)
    assert (I_faiss == I).mean() > 0.999  # differences only where faiss breaks near-ties
    assert_knn_matches(D, I, queries, database, 20, metric)


def test_empty_database_and_no_queries():
    D, I = gpuann.knn(torch.randn(3, 4), torch.empty(0, 4), 2, metric="ip")
    assert torch.all(I == -1) and torch.all(float("-inf") == D)
    D, I = gpuann.knn(torch.empty(0, 4), torch.randn(5, 4), 2)
    assert D.shape == (0, 2) and I.shape == (0, 2)


def test_float64_inputs_and_numpy_out():
    rng = np.random.default_rng(2)
    db, q = rng.standard_normal((100, 5)), rng.standard_normal((3, 5))
    D, I = gpuann.knn(q, db, 3)
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert_knn_matches(D, I, q, db.astype(np.float32), 3, "l2")


def test_cosine_of_zero_vector_is_zero():
    database = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    D, I = gpuann.knn(torch.tensor([[0.0, 1.0]]), database, 2, metric="cosine")
    assert I.tolist() == [[0, 1]] and D.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: gpuann.knn(torch.randn(2, 3), torch.randn(5, 4), 1),
            "queries: expected 4 columns",
        ),
        (lambda: gpuann.knn(torch.randn(3), torch.randn(5, 3), 1), "queries: expected a 2-D"),
        (lambda: gpuann.knn(torch.randn(2, 3), torch.randn(5, 3), 0), "k: expected a positive int"),
        (
            lambda: gpuann.knn(torch.randn(2, 3), torch.randn(5, 3), 2.0),
            "k: expected a positive int",
        ),
        (
            lambda: gpuann.knn(torch.randn(2, 3), torch.randint(0, 3, (5, 3)), 1),
            "database: expected a floating",
        ),
        (
            lambda: gpuann.knn(torch.randn(2, 3), torch.randn(5, 3), 1, metric="hamming"),
            "metric: expected one of",
        ),
        (
            lambda: gpuann.knn(torch.randn(2, 3), torch.randn(5, 3), 1, backend="cuda"),
            "backend: expected one of",
        ),
        (
            lambda: gpuann.knn(torch.full((2, 3), float("nan")), torch.randn(5, 3), 1),
            "queries: contains NaN",
        ),
        (
            lambda: gpuann.knn(torch.randn(2, 3), torch.tensor([[0.0, 1.0, float("inf")]]), 1),
            "database: contains NaN",
        ),
        (
            lambda: gpuann.knn(torch.randn(2, 3), torch.randn(5, 3), 1, memory_budget=10),
            "memory_budget: expected at least",
        ),
        (
            lambda: gpuann.knn([[1.0]], torch.randn(5, 1), 1),
            "queries: expected a torch.Tensor or numpy.ndarray",
        ),
        (
            lambda: gpuann.knn(torch.randn(2, 3, device="meta"), torch.randn(5, 3), 1),
            "queries: a meta tensor",
        ),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_nan_check_can_be_skipped():
    D, I = gpuann.knn(torch.full((1, 2), float("nan")), torch.randn(3, 2), 1, check_finite=False)
    assert I.shape == (1, 1)


def test_cpu_queries_on_cpu_database_return_cpu():
    D, I = gpuann.knn(torch.randn(2, 3), torch.randn(4, 3), 2)
    assert D.device.type == "cpu" and I.device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_matches_cpu(metric):
    queries, database = torch.randn(64, 32), torch.randn(10_000, 32)
    D, I = gpuann.knn(queries.cuda(), database.cuda(), 17, metric=metric, backend="torch")
    assert D.device.type == "cuda"
    assert_knn_matches(D, I, queries, database, 17, metric)
    # CPU queries against a CUDA database: results come back on the CPU.
    D2, I2 = gpuann.knn(queries, database.cuda(), 17, metric=metric, backend="torch")
    assert D2.device.type == "cpu" and torch.equal(I2, I.cpu())


def test_check_finite_is_one_pass_and_names_the_row(monkeypatch):

    database = torch.randn(150_000, 4)
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: calls.append(x.shape) or real(x))
    gpuann.knn(database[:3], database, 2)
    # folded minima/maxima, one host read each; the rows are scanned on failure only
    assert not [shape for shape in calls if shape[-1:] == (4,)]
    database[140_001, 2] = float("inf")
    with pytest.raises(ValueError, match=r"database: contains NaN or infinite.*140001"):
        gpuann.knn(database[:3], database, 2)


def test_an_impossible_k_is_named_not_an_allocation_failure():
    """Issue 13: k = 10**12 surfaced as a failed 8 TB allocation."""
    with pytest.raises(ValueError, match="k: 1000000000000 results for each of 2 queries"):
        gpuann.knn(torch.randn(2, 4), torch.randn(10, 4), 10**12)


@pytest.mark.parametrize(
    ("queries", "database", "metric", "named", "match"),
    [
        ([[1.0, 0.0]], [[1e300, 0.0], [2.0, 0.0]], "l2", "database", "rows \\[0\\]"),
        ([[1e300, 0.0]], [[2.0, 0.0]], "l2", "queries", "beyond float32's range"),
        ([[1.0, 0.0]], [[3e38, 0.0], [2.0, 0.0]], "l2", "database", "squared norms"),
        ([[1e20, 0.0]], [[1e19, 0.0], [2.0, 0.0]], "ip", "queries", "squared norms"),
    ],
)
def test_knn_checks_values_as_an_index_add_does(queries, database, metric, named, match):
    """knn checked float64 values before narrowing them to float32 and never the squared
    norms: a float64 1e300 or a float32 3e38 gave NaN or inf distances where FlatIndex.add
    raises (found by review)."""
    q = torch.tensor(queries, dtype=torch.float64)
    x = torch.tensor(database, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"{named}: .*{match}"):
        gpuann.knn(q, x, 1, metric=metric)
    with pytest.raises(ValueError, match="x: "):  # as an index refuses them
        gpuann.FlatIndex(2, metric=metric, device="cpu").add(x if named == "database" else q)
    assert gpuann.knn(q, x, 1, metric=metric, check_finite=False).ids.shape == (1, 1)
