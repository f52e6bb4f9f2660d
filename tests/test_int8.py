"""int8 storage in FlatIndex: ranges, memory, recall with and without exact re-scoring."""

from __future__ import annotations

import pytest
import torch

import gpuann
from gpuann.eval import ground_truth, recall_at_k


def _clustered(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(64, d, generator=g)
    return centers[torch.randint(0, 64, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_refine_recovers_exact_results_and_int8_alone_is_close(metric):
    x, q = _clustered(6000, 48, 0), _clustered(100, 48, 1)
    truth = ground_truth(q, x, k=10, metric=metric)
    approx = gpuann.FlatIndex(48, metric=metric, dtype=torch.int8, device="cpu")
    refined = gpuann.FlatIndex(48, metric=metric, dtype=torch.int8, refine=True, device="cpu")
    exact = gpuann.FlatIndex(48, metric=metric, device="cpu")
    for index in (approx, refined, exact):
        index.train(x)
        index.add(x)
    assert recall_at_k(approx.search(q, 10).ids, truth) >= 0.9
    result = refined.search(q, 10, refine_factor=4)
    assert recall_at_k(result.ids, truth) >= 0.99
    reference = exact.search(q, 10)
    same = result.ids == reference.ids
    torch.testing.assert_close(result.distances[same], reference.distances[same])


def test_memory_is_a_quarter_of_float32_plus_what_refine_keeps():
    x = _clustered(4000, 128, 2)
    sizes = {}
    for name, kwargs in {
        "float32": {},
        "int8": {"dtype": torch.int8},
        "int8+refine": {"dtype": torch.int8, "refine": True},
    }.items():
        index = gpuann.FlatIndex(128, metric="ip", device="cpu", **kwargs)
        index.add(x)
        sizes[name] = index.nbytes
    per_row = {name: size / 4000 for name, size in sizes.items()}
    assert per_row["float32"] == 128 * 4 + 8 + 4  # vectors, ids, norms (for the CPU's bounds)
    assert per_row["int8"] == 128 + 8  # codes and ids (no norms for ip)
    assert per_row["int8+refine"] == per_row["int8"] + 128 * 4 + 8


def test_ranges_come_from_train_or_the_first_add_and_later_values_are_clipped():
    index = gpuann.FlatIndex(2, dtype=torch.int8, device="cpu")
    assert not index.is_trained
    index.add(torch.tensor([[0.0, -1.0], [1.0, 1.0]]))
    assert index.is_trained
    index.add(torch.tensor([[5.0, 0.0]]))  # beyond the learned range: clipped to 1.0
    assert index.reconstruct([2]).tolist() == [[1.0, 0.0]]
    with pytest.raises(RuntimeError, match="train: the int8 ranges are fixed"):
        index.train(torch.randn(10, 2))
    trained = gpuann.FlatIndex(2, dtype=torch.int8, device="cpu")
    trained.train(torch.tensor([[-4.0, -4.0], [4.0, 4.0]]))
    trained.add(torch.tensor([[3.0, -3.0]]))
    torch.testing.assert_close(
        trained.reconstruct([0]), torch.tensor([[3.0, -3.0]]), atol=0.04, rtol=0
    )


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match=r"refine: only for dtype=torch\.int8"):
        gpuann.FlatIndex(4, refine=True, device="cpu")
    index = gpuann.FlatIndex(4, dtype=torch.int8, device="cpu")
    index.add(torch.randn(10, 4))
    with pytest.raises(ValueError, match="refine_factor: this index was built with refine=False"):
        index.search(torch.randn(1, 4), 2, refine_factor=3)
    with pytest.raises(ValueError, match="differentiable: not available with int8"):
        index.search(torch.randn(1, 4), 2, differentiable=True)


def test_merging_needs_the_same_ranges():
    a = gpuann.FlatIndex(3, dtype=torch.int8, device="cpu")
    b = gpuann.FlatIndex(3, dtype=torch.int8, device="cpu")
    a.add(torch.randn(5, 3))
    b.add(torch.randn(5, 3) * 3, ids=range(10, 15))
    with pytest.raises(ValueError, match="other: its int8 ranges differ"):
        a.merge_from(b)
    assert len(a) == 5 and len(b) == 5


def test_filters_and_range_search_work_on_int8():
    x = _clustered(500, 8, 3)
    index = gpuann.FlatIndex(8, dtype=torch.int8, refine=True, device="cpu")
    index.add(x)
    found = index.search(x[:3], 4, exclude_ids=torch.arange(3)[:, None]).ids
    assert not (found == torch.arange(3)[:, None]).any()
    lims, D, I = index.range_search(x[:2], 0.5)
    assert lims[-1] >= 2 and set(I[lims[0] : lims[1]].tolist()) >= {0}


def test_int8_queries_are_opt_in_and_cost_recall_on_uneven_ranges(tmp_path):
    # One factor per query: two dimensions with 10x the range leave the others few bits.
    g = torch.Generator().manual_seed(0)
    scale = torch.ones(64)
    scale[:2] = 10.0
    x = torch.randn(4000, 64, generator=g) * scale
    q = x[:100] + 0.5 * torch.randn(100, 64, generator=g) * scale
    truth = ground_truth(q, x, k=10, metric="l2")
    floats = gpuann.FlatIndex(64, dtype=torch.int8, device="cpu")
    ints = gpuann.FlatIndex(64, dtype=torch.int8, int8_queries=True, device="cpu")
    for index in (floats, ints):
        index.add(x)
    float_recall = recall_at_k(floats.search(q, 10).ids, truth)
    int_recall = recall_at_k(ints.search(q, 10).ids, truth)
    assert float_recall >= 0.9 and int_recall < float_recall
    path = tmp_path / "ints.gpuann"
    ints.save(path)
    assert gpuann.load(path)._int8.int8_queries
    with pytest.raises(ValueError, match="int8_queries"):
        gpuann.FlatIndex(8, int8_queries=True)


def test_int8_queries_give_the_same_ids_on_torch_and_triton():
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(300, 40, generator=g), torch.randn(9, 40, generator=g)
    for metric in ("l2", "cosine"):
        index = gpuann.FlatIndex(40, metric=metric, dtype=torch.int8, int8_queries=True)
        index.add(x)
        a, b = index.search(q, 5, backend="torch"), index.search(q, 5, backend="triton")
        assert torch.equal(a.ids, b.ids) and torch.equal(a.distances, b.distances)


STORAGE = {
    "float32": {},
    "int8": {"dtype": torch.int8},
    "int8_queries": {"dtype": torch.int8, "int8_queries": True},
    "int8+refine": {"dtype": torch.int8, "refine": True},
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("storage", list(STORAGE))
def test_non_finite_query_rows_come_back_non_finite_and_leave_the_others_alone(
    storage, metric, backend
):
    # check_finite=False: a query row holding NaN or inf has non-finite distances (NaN
    # scores, never int8 codes from an undefined float-to-int8 cast of NaN), valid ids, and
    # the finite rows come back as when searched alone.
    if backend == "triton":
        pytest.importorskip("triton")
        if storage in ("int8", "int8+refine"):
            pytest.skip("the fused kernel takes int8 storage with int8 queries only")
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(300, 16, generator=g), torch.randn(4, 16, generator=g)
    q[1, 3], q[2, 5] = float("nan"), float("inf")
    index = gpuann.FlatIndex(16, metric=metric, device="cpu", **STORAGE[storage])
    index.train(x)
    index.add(x)
    found = index.search(q, 5, backend=backend, check_finite=False)
    assert not torch.isfinite(found.distances[1:3]).any()
    assert ((found.ids >= 0) & (found.ids < 300)).all()
    alone = index.search(q[[0, 3]], 5, backend=backend)
    assert torch.equal(found.ids[[0, 3]], alone.ids)
    torch.testing.assert_close(found.distances[[0, 3]], alone.distances)  # batch-shaped gemm
    if storage == "int8_queries":  # codes 0 and a NaN factor: every candidate ties
        assert found.ids[1].tolist() == list(range(5))


def test_int8_queries_past_the_int32_bound_find_the_largest_dot():
    # d = 140 000: row 0's codes (127) against query codes 127 sum to 2.26e9 > 2**31, which
    # wrapped negative in int32 and ranked row 0 last; the Triton kernel (int32 accumulator)
    # refuses such a search with its reason.
    d = 140_000
    x = torch.full((20, d), 0.1)
    x[0] = 1.0
    index = gpuann.FlatIndex(d, metric="ip", dtype=torch.int8, int8_queries=True, device="cpu")
    index.train(torch.cat([x, -x]))
    index.add(x)
    query = torch.full((1, d), 16129 / 16384)  # scaled and quantised to codes of 127
    codes, _ = index._int8.engine_queries(query)
    assert (codes == 127).all()
    assert index.search(query, 1, backend="torch").ids.tolist() == [[0]]
    pytest.importorskip("triton")
    with pytest.raises(gpuann.BackendUnavailableError, match="int32 accumulator"):
        index.search(query, 1, backend="triton")


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_a_failed_first_add_learns_no_ranges(metric):
    """The first add learned the int8 ranges before its ids were checked: refused, it still
    left the index trained on the refused batch, and every later vector was clipped to those
    ranges (found by review)."""
    index = gpuann.FlatIndex(2, dtype=torch.int8, metric=metric, device="cpu")
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0]]), ids=[7, 7])
    assert not index.is_trained and len(index) == 0
    x = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    index.add(x)
    torch.testing.assert_close(index.reconstruct(index.ids), x, atol=2e-3, rtol=0)


def test_an_empty_untrained_index_searches_and_takes_empty_adds():
    """An empty, untrained int8 index raised TypeError on search and on an empty add, where
    every other index returns missing rows and accepts it (found by review)."""
    index = gpuann.FlatIndex(4, dtype=torch.int8, device="cpu")
    index.add(torch.empty(0, 4))
    D, I = index.search(torch.randn(2, 4), 3)
    assert I.tolist() == [[-1] * 3] * 2 and torch.isinf(D).all()
    assert not index.is_trained and len(index) == 0
