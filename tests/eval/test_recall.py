"""recall@k with ann-benchmarks' rule: hand-computed cases, ties, -1 padding; ground truth."""

from __future__ import annotations

import math

import pytest
import torch

import gpuann
from gpuann.eval import ground_truth, neighbour_distances, recall_at_k, recall_by_distance

INF = math.inf


@pytest.mark.parametrize(
    ("found_d", "found_i", "expected"),
    [
        ([[1.0, 2.0, 3.0]], [[4, 5, 6]], 1.0),  # the true set exactly
        ([[1.0, 2.0, 9.0]], [[4, 5, 6]], 2 / 3),  # the third is too far
        ([[3.0, 2.0, 1.0]], [[6, 5, 4]], 1.0),  # order does not matter
        ([[3.0005, 2.0, 1.0]], [[8, 5, 4]], 1.0),  # within k-th + epsilon: counts
        ([[3.002, 2.0, 1.0]], [[8, 5, 4]], 2 / 3),  # beyond k-th + epsilon
        ([[1.0, 1.0, 1.0]], [[4, 4, 4]], 1 / 3),  # a repeated id counts once
        ([[1.0, INF, INF]], [[4, -1, -1]], 1 / 3),  # -1 padding counts nothing
        ([[1.0, 2.0]], [[4, 5]], 2 / 3),  # fewer results than k
    ],
)
def test_hand_computed_l2(found_d, found_i, expected):
    truth_d, truth_i = [[1.0, 2.0, 3.0]], [[4, 5, 7]]
    assert recall_by_distance(found_d, found_i, truth_d, truth_i) == pytest.approx(expected)


def test_k_smaller_than_truth_and_several_queries():
    truth_d = [[1.0, 2.0, 3.0], [0.5, 0.6, 0.7]]
    truth_i = [[1, 2, 3], [7, 8, 9]]
    found_d = [[1.0, 3.0, 2.0], [0.5, 0.9, 0.6]]
    found_i = [[1, 3, 2], [7, 5, 8]]
    # k=2: query 0 keeps 1 (2 > threshold 2? no: 3.0 > 2.0) -> 1 hit; query 1 -> 1 hit
    assert recall_by_distance(found_d, found_i, truth_d, truth_i, k=2) == pytest.approx(2 / 4)
    assert recall_by_distance(found_d, found_i, truth_d, truth_i, k=3) == pytest.approx(5 / 6)


def test_similarity_metrics_use_the_other_side():
    truth_d, truth_i = [[0.9, 0.8]], [[1, 2]]
    assert recall_by_distance([[0.9, 0.7995]], [[1, 3]], truth_d, truth_i, metric="ip") == 1.0
    assert recall_by_distance([[0.9, 0.79]], [[1, 3]], truth_d, truth_i, metric="cosine") == 0.5


def test_padded_truth_needs_only_the_valid_neighbours():
    # the database held 2 vectors for k=3: the last true entry is -1 / inf
    truth_d, truth_i = [[1.0, 2.0, INF]], [[0, 1, -1]]
    assert recall_by_distance([[2.0, 1.0, INF]], [[1, 0, -1]], truth_d, truth_i) == 1.0
    assert recall_by_distance([[1.0, INF, INF]], [[0, -1, -1]], truth_d, truth_i) == 0.5
    # nothing to find at all
    assert recall_by_distance([[INF]], [[-1]], [[INF]], [[-1]]) == 1.0


def test_shape_errors():
    with pytest.raises(ValueError, match="rows"):
        recall_by_distance([[1.0]], [[1]], [[1.0], [2.0]], [[1], [2]])
    with pytest.raises(ValueError, match="k"):
        recall_by_distance([[1.0]], [[1]], [[1.0]], [[1]], k=2)


def test_ties_at_the_kth_distance_all_count():
    # 4 vectors at distance 1 from the query: any 2 of them are a perfect top-2
    database = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [5.0, 5.0]])
    query = torch.zeros(1, 2)
    truth = ground_truth(query, database, k=2)
    assert truth.ids.tolist() == [[0, 1]]  # lower id first
    assert recall_at_k(torch.tensor([[3, 2]]), truth) == 1.0
    assert recall_at_k(torch.tensor([[3, 4]]), truth) == 0.5


def test_reported_distances_are_ignored():
    database = torch.tensor([[0.0], [1.0], [2.0]])
    truth = ground_truth(torch.tensor([[0.1]]), database, k=1)
    lying = gpuann.SearchResult(torch.tensor([[0.0]]), torch.tensor([[2]]))
    assert recall_at_k(lying, truth) == 0.0


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_ground_truth_matches_a_float64_reference(metric):
    g = torch.Generator().manual_seed(1)
    database, queries = torch.randn(300, 16, generator=g), torch.randn(20, 16, generator=g)
    truth = ground_truth(queries, database, k=5, metric=metric)
    q, x = queries.double(), database.double()
    if metric == "cosine":
        q, x = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(x, dim=1)
    scores = torch.cdist(q, x).square() if metric == "l2" else q @ x.T
    ref_d, ref_i = torch.topk(scores, 5, dim=1, largest=metric != "l2")
    assert torch.equal(truth.ids, ref_i)
    torch.testing.assert_close(truth.distances, ref_d.float(), atol=1e-4, rtol=1e-5)
    assert recall_at_k(ref_i, truth) == 1.0


def test_ground_truth_with_user_ids_and_small_database():
    database = torch.tensor([[0.0], [1.0]])
    truth = ground_truth(torch.tensor([[0.2]]), database, k=3, ids=[100, 7])
    assert truth.ids.tolist() == [[100, 7, -1]]
    assert truth.distances[0, 2] == INF
    assert recall_at_k(torch.tensor([[7, 100, -1]]), truth) == 1.0
    assert recall_at_k(torch.tensor([[7, 55, -1]]), truth) == 0.5  # 55 is unknown
    assert "GroundTruth(queries=1, k=3, database=2" in repr(truth)


def test_neighbour_distances_match_knn():
    g = torch.Generator().manual_seed(2)
    database, queries = torch.randn(100, 8, generator=g), torch.randn(4, 8, generator=g)
    D, I = gpuann.knn(queries, database, 6)
    torch.testing.assert_close(
        neighbour_distances(queries, database, I, "l2"), D, atol=1e-4, rtol=1e-5
    )


def test_approximate_index_recall_is_between():
    faiss_index = pytest.importorskip("faiss")
    del faiss_index
    g = torch.Generator().manual_seed(3)
    database, queries = torch.randn(2000, 16, generator=g), torch.randn(50, 16, generator=g)
    truth = ground_truth(queries, database, k=10)
    index = gpuann.IVFFlatIndex(16, nlist=32, device="cpu")
    index.train(database)
    index.add(database)
    low = recall_at_k(index.search(queries, 10, nprobe=1), truth)
    high = recall_at_k(index.search(queries, 10, nprobe=32), truth)
    assert 0.1 < low < 0.9 and high == 1.0
