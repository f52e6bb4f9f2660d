"""Fixtures of the IVF tests: one seeded clustered workload and its exact ground truth."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss")

from ivf_helpers import DIM, NB, NQ, mixture

import gpuann


@pytest.fixture(scope="session", autouse=True)
def _one_faiss_thread():
    """faiss's OpenMP threads slow down badly when the cores are shared (as on CI): one
    thread keeps these tests' run time steady. Restored afterwards."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def dataset():
    """``(database, queries)``: float32 numpy, a Gaussian mixture (seed 0)."""
    x = mixture(NB + NQ, DIM, seed=0)
    return x[:NB], x[NB:]


@pytest.fixture(scope="session")
def ground_truth(dataset):
    """Exact top-10 per metric (:class:`gpuann.eval.GroundTruth`), for
    :func:`gpuann.eval.recall_at_k`."""
    xb, xq = dataset
    return {m: gpuann.eval.ground_truth(xq, xb, 10, m) for m in ("l2", "ip", "cosine")}


@pytest.fixture(scope="session")
def small():
    """A small workload for protocol tests: 2000 x 16 database, 20 queries."""
    x = mixture(2020, 16, n_clusters=32, seed=1)
    return x[:2000], x[2000:]
