"""HNSWIndex: recall against exact float64 search, equality with faiss, ids, tombstones, files."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from reference import reference_knn

from gpuann.errors import NotTrainedError, UnknownIdError
from gpuann.hnsw import OVERFETCH_LIMIT, HNSWIndex
from gpuann.serialization import load

faiss = pytest.importorskip("faiss")

METRICS = ["l2", "ip", "cosine"]
#: recall@10 with M=16, ef_search=64 on the clustered data below (measured ≈ 0.99 or more).
RECALL_THRESHOLD = 0.95


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """faiss's HNSW builds are deterministic on one thread only."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _data(n: int = 3000, d: int = 32, nq: int = 50, seed: int = 0):
    """Seeded clustered data (not trivially easy: 30 overlapping Gaussian clusters)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(30, d, generator=g) * 2
    x = centres[torch.randint(0, 30, (n,), generator=g)] + torch.randn(n, d, generator=g)
    q = centres[torch.randint(0, 30, (nq,), generator=g)] + torch.randn(nq, d, generator=g)
    return x, q


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def _faiss_twin(x: torch.Tensor, metric: str, M: int, ef_construction: int, seed: int):
    ftype = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    ref = faiss.IndexHNSWFlat(x.shape[1], M, ftype)
    ref.hnsw.efConstruction = ef_construction
    ref.hnsw.rng = faiss.RandomGenerator(seed)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    for part in x.split(1200):  # faiss inserts each batch by level: batches shape the graph
        ref.add(part.numpy())
    return ref


@pytest.mark.parametrize("metric", METRICS)
def test_recall_against_float64_exact(metric):
    x, q = _data()
    ids = torch.randperm(10**6, generator=torch.Generator().manual_seed(1))[: x.shape[0]]
    index = HNSWIndex(32, M=16, ef_construction=40, metric=metric, device="cpu")
    index.add(x, ids=ids)
    D, I = index.search(q, 10, ef_search=64)
    ref_metric = "ip" if metric == "cosine" else metric
    qq, xx = (q, x) if metric != "cosine" else (_unit(q), _unit(x))
    _, truth = reference_knn(qq, xx, 10, ref_metric, ids.numpy())
    recall = _recall(I.numpy(), truth)
    assert recall >= RECALL_THRESHOLD, f"recall@10 {recall:.3f} < {RECALL_THRESHOLD}"
    assert D.dtype == torch.float32 and (I >= 0).all()
    order_ok = (D[:, 1:] >= D[:, :-1]) if metric == "l2" else (D[:, 1:] <= D[:, :-1])
    assert order_ok.all()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=1)


@pytest.mark.parametrize("metric", METRICS)
def test_equal_to_faiss_with_the_same_parameters(metric):
    x, q = _data(2000)
    index = HNSWIndex(32, M=12, ef_construction=30, metric=metric, device="cpu", seed=7)
    index.add(x[:1200])
    index.add(x[1200:])
    ref = _faiss_twin(x, metric, 12, 30, seed=7)
    qq = _unit(q).float() if metric == "cosine" else q
    for ef in (16, 48):
        D, I = index.search(q, 10, ef_search=ef)
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        D_ref, I_ref = ref.search(qq.numpy(), 10, params=params)
        np.testing.assert_array_equal(I.numpy(), I_ref)
        np.testing.assert_allclose(D.numpy(), D_ref, rtol=1e-6, atol=1e-5)


def test_default_seed_is_reproducible_and_seeds_differ():
    x, q = _data(1500)
    runs = []
    for seed in (0, 0, 1):
        index = HNSWIndex(32, M=8, device="cpu", seed=seed)
        index.add(x)
        runs.append(faiss.vector_to_array(index.faiss_index.hnsw.levels))
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_user_ids_label_map_and_reconstruct():
    x, _ = _data(500)
    ids = torch.arange(500) * 3 + 11
    index = HNSWIndex(32, device="cpu")
    index.add(x[:250], ids=ids[250:])
    index.add(x[250:], ids=ids[:250])
    assert torch.equal(index.ids, ids)
    assert torch.equal(index.label_to_id, torch.cat([ids[250:], ids[:250]]))
    assert torch.equal(index.reconstruct(ids[[0, 260]]), x[[250, 10]])
    D, I = index.search(x[:5], 1, ef_search=64)
    assert I[:, 0].tolist() == ids[250:255].tolist() and torch.allclose(D, torch.zeros(5, 1))


@pytest.mark.parametrize("n_removed", [40, OVERFETCH_LIMIT + 300])  # over-fetch, then selector
def test_removed_ids_are_never_returned(n_removed):
    x, q = _data(2000)
    index = HNSWIndex(32, M=16, device="cpu")
    index.add(x)
    gone = torch.randperm(2000, generator=torch.Generator().manual_seed(3))[:n_removed]
    q = torch.cat([q, x[gone[:20]]])  # queries sitting on removed vectors
    assert index.remove(gone) == n_removed and index.tombstones == n_removed
    assert len(index) == 2000 - n_removed
    D, I = index.search(q, 10, ef_search=64)
    assert not np.isin(I.numpy(), gone.numpy()).any()
    assert (I >= 0).all(), "tombstones must not leave holes"
    keep = torch.ones(2000, dtype=torch.bool)
    keep[gone] = False
    live = keep.nonzero().flatten()
    _, truth = reference_knn(q, x[live], 10, "l2", live.numpy())
    assert _recall(I.numpy(), truth) >= RECALL_THRESHOLD
    with pytest.raises(UnknownIdError):
        index.reconstruct(gone[:1])
    index.compact()
    assert index.tombstones == 0 and index.faiss_index.ntotal == len(index)
    assert torch.equal(index.label_to_id, live)
    D2, I2 = index.search(q, 10, ef_search=64)
    assert not np.isin(I2.numpy(), gone.numpy()).any()
    assert _recall(I2.numpy(), truth) >= RECALL_THRESHOLD


def test_update_is_remove_then_add_under_the_same_id():
    x, _ = _data(300)
    index = HNSWIndex(32, device="cpu")
    index.add(x, ids=torch.arange(300) + 1000)
    index.update([1005], x[7:8] + 100.0)
    assert index.tombstones == 1 and len(index) == 300
    assert torch.equal(index.reconstruct([1005]), x[7:8] + 100.0)
    D, I = index.search(x[7:8] + 100.0, 2)
    assert I[0, 0] == 1005
    _, I = index.search(x[5:6], 3, ef_search=64)
    assert 1005 not in I.tolist()[0]


def test_small_index_pads_with_missing_and_ties_by_lower_id():
    index = HNSWIndex(2, metric="ip", device="cpu")
    index.add(torch.tensor([[1.0, 0.0]]).repeat(3, 1), ids=[30, 10, 20])
    D, I = index.search(torch.tensor([[1.0, 0.0]]), 5)
    assert I.tolist() == [[10, 20, 30, -1, -1]]
    assert torch.isneginf(D[:, 3:]).all() and torch.equal(D[:, :3], torch.ones(1, 3))
    index.remove([10, 20, 30])
    D, I = index.search(np.ones((2, 2), np.float32), 2)
    assert isinstance(I, np.ndarray) and (I == -1).all() and np.isneginf(D).all()
    l2 = HNSWIndex(2, device="cpu")
    D, I = l2.search(torch.zeros(1, 2), 2)
    assert (I == -1).all() and torch.isposinf(D).all()


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    x, q = _data(400)
    index = HNSWIndex(32, device="cpu")
    index.add(x.numpy().astype(np.float64))
    D, I = index.search(q.numpy(), 4)
    assert isinstance(D, np.ndarray) and D.dtype == np.float32 and I.dtype == np.int64
    Dt, It = index.search(q, 4)
    assert isinstance(Dt, torch.Tensor) and np.array_equal(It.numpy(), I)
    assert isinstance(index.reconstruct(np.array([1, 2])), np.ndarray)


@pytest.mark.parametrize("sq8", [False, True])
def test_save_load_round_trip_gives_identical_results(tmp_path, sq8):
    x, q = _data(1500)
    index = HNSWIndex(32, M=16, ef_search=24, metric="cosine", sq8=sq8, device="cpu", seed=5)
    if sq8:
        index.train(x)
    index.add(x, ids=torch.arange(1500) * 2)
    index.remove(torch.arange(0, 200, 2))
    before = index.search(q, 10)
    index.save(tmp_path / "h.gpuann")
    loaded = load(tmp_path / "h.gpuann", "cpu")
    assert isinstance(loaded, HNSWIndex) and loaded.sq8 == sq8 and loaded.ef_search == 24
    assert loaded.tombstones == 100 and torch.equal(loaded.ids, index.ids)
    after = loaded.search(q, 10)
    assert torch.equal(after.ids, before.ids) and torch.equal(after.distances, before.distances)
    loaded.add(x[:10])  # still usable: new automatic ids after the largest
    assert loaded.ids[-1] == 2 * 1499 + 10
    assert repr(loaded).startswith("HNSWIndex(n=1410")


def test_load_rejects_inconsistent_files(tmp_path):
    from gpuann.serialization import IndexFileError, read_index_file, write_index_file

    index = HNSWIndex(8, device="cpu")
    index.add(torch.randn(20, 8))
    index.save(tmp_path / "h.gpuann")
    kind, meta, arrays = read_index_file(tmp_path / "h.gpuann")
    arrays["label_to_id"] = arrays["label_to_id"].flip(0)
    write_index_file(tmp_path / "bad.gpuann", kind, meta, arrays)
    with pytest.raises(IndexFileError, match="label_to_id"):
        HNSWIndex.load(tmp_path / "bad.gpuann", "cpu")
    _, _, arrays = read_index_file(tmp_path / "h.gpuann")
    arrays["faiss_index"] = arrays["faiss_index"][:100]
    write_index_file(tmp_path / "cut.gpuann", kind, meta, arrays)
    with pytest.raises(IndexFileError, match="faiss"):
        HNSWIndex.load(tmp_path / "cut.gpuann", "cpu")


def test_sq8_needs_training_and_keeps_recall():
    x, q = _data(2000)
    index = HNSWIndex(32, M=16, sq8=True, device="cpu")
    assert not index.is_trained
    with pytest.raises(NotTrainedError, match="train"):
        index.add(x)
    assert len(index) == 0
    index.train(x[:1000])
    index.add(x)
    _, truth = reference_knn(q, x, 10, "l2")
    recall = _recall(index.search(q, 10, ef_search=64).ids.numpy(), truth)
    assert recall >= 0.85, f"sq8 recall@10 {recall:.3f} < 0.85"
    flat = HNSWIndex(32, M=16, device="cpu")
    flat.add(x)
    assert flat.nbytes - index.nbytes == 2000 * 32 * 3  # 1 byte a value instead of 4


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"M": 0}, ValueError, "M"),
        ({"ef_construction": -1}, ValueError, "ef_construction"),
        ({"ef_search": 1.5}, ValueError, "ef_search"),
        ({"metric": "hamming"}, ValueError, "metric"),
        ({"dtype": torch.float16}, TypeError, "dtype"),
        ({"sq8": 1}, TypeError, "sq8"),
        ({"seed": "x"}, TypeError, "seed"),
        ({"device": "tpu"}, ValueError, "device"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(kwargs, error, name):
    with pytest.raises(error, match=name):
        HNSWIndex(8, **kwargs)


def test_bad_call_arguments_name_the_argument():
    index = HNSWIndex(8, device="cpu")
    index.add(torch.randn(10, 8))
    with pytest.raises(ValueError, match="queries"):
        index.search(torch.randn(2, 7), 3)
    with pytest.raises(TypeError, match="k"):
        index.search(torch.randn(2, 8), 2.0)
    with pytest.raises(ValueError, match="ef_search"):
        index.search(torch.randn(2, 8), 2, ef_search=0)
    with pytest.raises(ValueError, match="queries"):
        index.search(torch.full((1, 8), float("nan")), 2)
    with pytest.raises(ValueError, match="ids"):
        index.add(torch.randn(2, 8), ids=[0, 100])  # 0 is taken
    with pytest.raises(ValueError, match="x"):
        index.add(torch.randn(2, 9))
    assert len(index) == 10 and index.faiss_index.ntotal == 10


def test_reset_to_and_import_without_faiss():
    index = HNSWIndex(8, device="cpu")
    index.add(torch.randn(10, 8))
    index.remove([3])
    assert index.to("cpu") is index
    index.reset()
    assert len(index) == 0 and index.tombstones == 0 and index.faiss_index.ntotal == 0
    index.add(torch.randn(3, 8))
    assert index.ids.tolist() == [0, 1, 2]
    assert "faiss" in sys.modules  # (imported by this test file; gpuann itself: test_lean_import)


@pytest.mark.cuda
def test_cuda_device_searches_on_host_and_returns_on_device():
    x, q = _data(500)
    index = HNSWIndex(32, device="cuda")
    index.add(x.cuda())
    D, I = index.search(q.cuda(), 5)
    assert D.is_cuda and I.is_cuda
    cpu = index.to("cpu")
    assert torch.equal(cpu.search(q, 5).ids, I.cpu())


def test_cagra_is_reported_unavailable_with_a_reason():
    from gpuann._hnsw_faiss import cagra_unavailable_reasons

    reasons = cagra_unavailable_reasons()
    if not reasons:
        pytest.skip("faiss has GpuIndexCagra and a GPU: CAGRA is available here")
    assert all(isinstance(r, str) and r for r in reasons)


def test_copy_to_another_index_and_renumber():
    x, q = _data(600)
    index = HNSWIndex(32, metric="cosine", device="cpu")
    index.add(x, ids=torch.arange(600) * 5)
    index.remove([0, 5, 10])
    twin = HNSWIndex(**index._config(), device="cpu")  # what ``to(device)`` does
    twin._copy_from(index)
    assert torch.equal(twin.search(q, 5).ids, index.search(q, 5).ids) and twin.tombstones == 3
    twin.add(x[:1])
    assert len(index) == 597 and index.faiss_index.ntotal == 600  # the copy is independent
    index.renumber()
    assert torch.equal(index.ids, torch.arange(597))
    assert torch.equal(index.search(x[20:21], 1).ids, torch.tensor([[17]]))


def test_importing_the_modules_does_not_import_faiss():
    import subprocess

    code = "import sys, gpuann.hnsw, gpuann.transforms; assert 'faiss' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmark_smoke_preset_writes_results(tmp_path):
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchmarks.bench_hnsw", "--preset", "smoke"]
    command += ["--policies", "PASSIVE", "--threads", "1", "--out", str(tmp_path)]
    subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=120)
    (result,) = tmp_path.glob("bench_hnsw_*.json")
    data = json.loads(result.read_text())
    assert data["command"].startswith("python -m benchmarks.bench_hnsw")
    assert {row["ef_search"] for row in data["results"]} == {16, 64}
    assert all(0.0 <= row["recall_at_10"] <= 1.0 for row in data["results"])
    assert result.with_suffix(".md").is_file()


def test_merge_from_moves_vectors_and_ids():
    x, q = _data(800)
    a, b = HNSWIndex(32, device="cpu"), HNSWIndex(32, device="cpu")
    a.add(x[:500])
    b.add(x[500:], ids=torch.arange(500, 800))
    b.remove([500])
    a.merge_from(b)
    assert len(a) == 799 and len(b) == 0 and b.faiss_index.ntotal == 0
    assert torch.equal(a.reconstruct([799]), x[799:800])
    _, I = a.search(x[600:610], 1, ef_search=64)
    assert I[:, 0].tolist() == list(range(600, 610))


@pytest.mark.parametrize("metric", METRICS)
def test_float32_cpu_queries_take_the_host_path_with_the_general_paths_results(metric, monkeypatch):
    x, q = _data(600, nq=20)
    x, q = x.round(), q.round()  # integer values: ties between distances
    index = HNSWIndex(32, M=8, metric=metric, device="cpu")
    index.add(x, ids=torch.arange(600) * 7)
    general = [index.search(q.double(), k, ef_search=40) for k in (1, 10, 700)]  # 700 > n
    assert (general[2].ids[:, 600:] == -1).all()

    def no_general_path(*args, **kwargs):
        raise AssertionError("float32 CPU queries took the general path")

    monkeypatch.setattr(HNSWIndex, "_run_search", no_general_path)
    for k, (D, I) in zip((1, 10, 700), general, strict=True):
        Dt, It = index.search(q, k, ef_search=40)
        Dn, In = index.search(q.numpy(), k, ef_search=40)
        assert torch.equal(It, I) and torch.equal(Dt, D)
        assert isinstance(In, np.ndarray) and np.array_equal(In, I.numpy())
        assert np.array_equal(Dn, D.numpy())
    if metric == "l2":
        ties = (D[:, 1:] == D[:, :-1]) & (I[:, 1:] >= 0)
        assert ties.any() and (I[:, 1:] > I[:, :-1])[ties].all()  # equal distances: lower id
    monkeypatch.undo()
    # bad float32 input still gets the general path's errors
    bad = [(np.full((1, 32), np.nan, np.float32), "NaN"), (np.zeros((1, 31), np.float32), "dim")]
    if metric != "cosine":  # (cosine rescales huge rows)
        bad.append((np.full((1, 32), 1e30, np.float32), "float32's range"))
    for queries, match in bad:
        with pytest.raises(ValueError, match=match):
            index.search(queries, 3)
    index.remove([0])  # tombstones: the general path
    assert 0 not in index.search(q, 10).ids.tolist()


def test_host_path_follows_the_label_map_through_every_change(tmp_path, monkeypatch):
    # the host path reads a numpy view of the label map kept beside it: every change of the
    # map (a new one, or one changed in place) must reach that view
    monkeypatch.setattr(HNSWIndex, "_run_search", None)  # the host path or a TypeError
    x, _ = _data(300)
    index = HNSWIndex(32, device="cpu")
    index.add(x[:200], ids=torch.arange(200) + 1000)
    assert index.search(x[5:6], 1).ids.tolist() == [[1005]]
    index.add(x[200:], ids=torch.arange(100) + 5000)  # a longer map
    assert index.search(x[250:251], 1).ids.tolist() == [[5050]]
    monkeypatch.undo()
    index.remove([1000, 1001])
    index.compact()  # a new map without tombstones
    monkeypatch.setattr(HNSWIndex, "_run_search", None)
    assert index.search(x[5:6], 1).ids.tolist() == [[1005]]
    index.renumber()  # ids become ranks: the map changes in place
    assert index.search(x[5:6], 1).ids.tolist() == [[3]]
    assert index.search(x[250:251], 1).ids.tolist() == [[248]]
    index.save(tmp_path / "h.gpuann")
    loaded = HNSWIndex.load(tmp_path / "h.gpuann")
    assert loaded.search(x[250:251], 1).ids.tolist() == [[248]]
    loaded.reset()
    loaded.add(x[:3], ids=torch.tensor([7, 8, 9]))
    assert loaded.search(x[1:2], 1).ids.tolist() == [[8]]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_from_faiss_keeps_the_graph_and_its_settings(metric):
    x, q = _data(800)
    graph = _faiss_twin(x, metric, M=12, ef_construction=30, seed=5)
    graph.hnsw.efSearch = 24
    index = HNSWIndex.from_faiss(graph, device="cpu")
    assert (index.M, index.ef_construction, index.ef_search, index.metric.value) == (
        12,
        30,
        24,
        metric,
    )
    assert torch.equal(index.ids, torch.arange(800))
    D, I = graph.search(q.numpy(), 10)
    found = index.search(q, 10)
    assert np.array_equal(found.ids.numpy(), I) and np.allclose(found.distances.numpy(), D)
    graph.add(q.numpy())  # a copy: the index does not change with the graph
    assert len(index) == 800 and index.faiss_index.ntotal == 800
    index.ef_construction = 50  # applies to what is added next
    assert index.faiss_index.hnsw.efConstruction == 50
    index.add(q, ids=torch.arange(5000, 5050))
    assert index.search(q[:3], 1).ids.tolist() == [[5000], [5001], [5002]]


def test_from_faiss_refuses_other_indexes_and_bad_vectors():
    with pytest.raises(TypeError, match="IndexHNSWFlat"):
        HNSWIndex.from_faiss(faiss.IndexFlatL2(8))
    with pytest.raises(TypeError, match="IndexHNSWFlat"):
        HNSWIndex.from_faiss(faiss.IndexHNSWSQ(8, faiss.ScalarQuantizer.QT_8bit, 16))
    graph = faiss.IndexHNSWFlat(8, 8)
    bad = np.ones((20, 8), dtype=np.float32)
    bad[3, 2] = np.nan
    graph.add(bad)
    with pytest.raises(ValueError, match="NaN"):
        HNSWIndex.from_faiss(graph)
    with pytest.raises(ValueError, match="ef_construction"):
        HNSWIndex(8).ef_construction = 0


def test_a_shim_of_merged_ids_writes_faiss_positions_in_id_order(tmp_path):
    # found by review: labels out of id order (a merge of interleaved ids, no tombstones) were
    # written as they were, and faiss numbered the vectors otherwise than the shim
    import gpuann.compat.faiss as shim

    x, q = _data(300, d=8)
    a, b = HNSWIndex(8, M=16, device="cpu"), HNSWIndex(8, M=16, device="cpu")
    a.add(x[:150], ids=torch.arange(150) * 2)
    b.add(x[150:], ids=torch.arange(150) * 2 + 1)
    a.merge_from(b)
    index = shim.IndexHNSWFlat.from_native(a)
    assert torch.equal(a.label_to_id, torch.arange(300))  # label i holds id i
    shim.write_index(index, tmp_path / "h")
    read = faiss.read_index(str(tmp_path / "h"))
    assert np.array_equal(read.reconstruct_n(0, 300), index.reconstruct_n(0, 300))
    _, expected = index.search(q.numpy(), 3)
    assert np.array_equal(read.search(q.numpy(), 3)[1], expected)


def test_settings_that_faiss_would_crash_on_or_that_merges_ignore():
    with pytest.raises(ValueError, match="M: expected at least 2"):
        HNSWIndex(8, M=1)  # faiss's HNSW crashes the process
    x, _ = _data(40, d=8)
    a, b = HNSWIndex(8, device="cpu"), HNSWIndex(8, device="cpu")
    a.ef_construction = 80  # applies to later adds: not a configuration merges compare
    a.add(x[:20])
    b.add(x[20:], ids=torch.arange(20, 40))
    a.merge_from(b)
    assert len(a) == 40
    import gpuann.compat.faiss as shim

    with pytest.raises(TypeError, match=r"holds its HNSWIndex as \.index"):
        HNSWIndex.from_faiss(shim.IndexHNSWFlat(8))
