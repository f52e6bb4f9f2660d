"""Jobs: memmap inputs and outputs, checkpoints, resume checks, OOM retries, progress, indexes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from batch_helpers import (
    JOB_BATCH,
    JOB_K,
    SMALL_BUDGET,
    assert_same,
    data,
    make_job,
    run_job,
    save_npy,
)

import gpuann
from gpuann.batch import CheckpointMismatchError, batch_search
from gpuann.batch import search as search_module
from gpuann.batch.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from gpuann.batch.sizing import BatchSizer, is_out_of_memory
from gpuann.batch.streaming import StreamingExactSearch

K, BATCH = JOB_K, JOB_BATCH
run = run_job


@pytest.fixture
def job(tmp_path):
    """A database and queries on disk, and the in-memory answer."""
    return make_job(tmp_path)


def test_memmap_in_and_out_equals_in_memory(tmp_path, job):
    paths, expected = job
    result = run(paths, tmp_path / "out")
    assert isinstance(result.ids, np.memmap) and not result.ids.flags.writeable
    assert_same(result, expected)
    on_disk = (np.load(tmp_path / "out" / n) for n in ("distances.npy", "ids.npy"))
    assert_same(tuple(on_disk), expected)
    state = json.loads((tmp_path / "out" / "checkpoint.json").read_text())
    assert state["complete"] and state["rows_done"] == 100 and state["chunks_done"] == 5
    assert [p for p in os.listdir(tmp_path / "out") if p.endswith(".tmp")] == []


def test_tensor_queries_give_tensors_without_out(job):
    paths, expected = job
    queries = torch.from_numpy(np.load(paths["queries"]))
    D, I = batch_search(queries, paths["db"], K, memory_budget=SMALL_BUDGET, progress=False)
    assert isinstance(I, torch.Tensor) and I.dtype == torch.int64
    assert_same((D, I), expected)


def test_resume_after_a_partial_run_computes_only_the_rest(tmp_path, job):
    paths, expected = job
    out = tmp_path / "out"

    class Stop(Exception):
        pass

    def stop_after_three(info):
        if info.chunks_done == 3:
            raise Stop

    with pytest.raises(Stop):
        run(paths, out, on_chunk=stop_after_three)
    assert read_checkpoint(out / "checkpoint.json").rows_done == 72
    seen = []
    result = run(paths, out, resume=True, on_chunk=seen.append)
    assert [(c.start, c.stop) for c in seen] == [(72, 96), (96, 100)]
    assert seen[-1].chunks_done == 5
    assert_same(result, expected)
    again = []  # a finished job resumes to its results, computing nothing
    assert_same(run(paths, out, resume=True, on_chunk=again.append), expected)
    assert again == []


def test_resume_refuses_another_job(tmp_path, job):
    paths, _ = job
    out = tmp_path / "out"
    run(paths, out)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)different job.*  k: checkpoint has 6"):
        batch_search(paths["queries"], paths["db"], 5, out=out, resume=True, progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"metric"):
        run(paths, out, resume=True, metric="ip")
    other = save_npy(tmp_path / "q2.npy", data(100, seed=99))
    with pytest.raises(CheckpointMismatchError, match=r"queries"):
        run({**paths, "queries": other}, out, resume=True)
    other_db = save_npy(tmp_path / "db2.npy", data(5000, seed=98))
    with pytest.raises(CheckpointMismatchError, match=r"database"):
        run({**paths, "db": other_db}, out, resume=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_resume_refuses_another_index_of_the_same_class_and_size(tmp_path, kind):
    """An index job's checkpoint recorded the index's class, size and dim only: another index
    of the same shape resumed it and the results mixed both (found by review)."""
    queries = data(40, seed=1)
    indexes = []
    for seed in (2, 3):
        if kind == "flat":
            index = gpuann.FlatIndex(32, device="cpu")
        else:
            index = gpuann.HNSWIndex(32, M=8, device="cpu")
        index.add(torch.from_numpy(data(300, seed=seed)))
        indexes.append(index)
    out = tmp_path / "out"

    class Stop(Exception):
        pass

    def stop(info):
        raise Stop

    with pytest.raises(Stop):
        batch_search(queries, indexes[0], K, out=out, batch_size=10, progress=False, on_chunk=stop)
    with pytest.raises(CheckpointMismatchError, match="index"):
        batch_search(queries, indexes[1], K, out=out, batch_size=10, progress=False, resume=True)
    D, I = batch_search(queries, indexes[0], K, out=out, batch_size=10, progress=False, resume=True)
    expected = indexes[0].search(torch.from_numpy(queries), K)
    np.testing.assert_array_equal(np.asarray(I), expected.ids.numpy())


def test_existing_results_are_not_overwritten_by_accident(tmp_path, job):
    paths, expected = job
    out = tmp_path / "out"
    run(paths, out)
    with pytest.raises(FileExistsError, match="resume=True"):
        run(paths, out)
    assert_same(run(paths, out, overwrite=True), expected)


def test_resume_without_a_checkpoint_starts_over(tmp_path, job):
    paths, expected = job
    assert_same(run(paths, tmp_path / "new", resume=True), expected)
    with pytest.raises(ValueError, match="resume: needs out"):
        run(paths, None, resume=True)


def test_checkpoint_write_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "checkpoint.json"
    state = Checkpoint({"k": 1}, {"query_tile": 8, "database_tile": 64}, 40, 5)
    write_checkpoint(path, state)
    write_checkpoint(path, Checkpoint(state.job, state.plan, 48, 6))
    assert read_checkpoint(path) == Checkpoint(state.job, state.plan, 48, 6)
    assert os.listdir(tmp_path) == ["checkpoint.json"]
    path.write_text("{not json")
    with pytest.raises(CheckpointMismatchError, match="not a gpuann batch-search checkpoint"):
        read_checkpoint(path)


def test_out_of_memory_halves_the_chunk_and_retries(monkeypatch, job):
    paths, expected = job
    real_search = StreamingExactSearch.search
    attempts = []

    def fake_oom_above_12(self, queries, first_row=0, exclude_self=False):
        attempts.append((first_row, queries.shape[0], self.chunk_rows))
        if queries.shape[0] > 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_search(self, queries, first_row, exclude_self)

    monkeypatch.setattr(StreamingExactSearch, "search", fake_oom_above_12)
    chunks = []
    result = run(paths, None, batch_size=64, on_chunk=chunks.append)  # 60 rows: 5 tiles
    assert_same(result, expected)
    assert [a[1] for a in attempts[:3]] == [60, 24, 12]  # halved (whole tiles) twice
    assert chunks[0].batch_rows == 12 and chunks[0].retries == 2
    assert all(c.stop - c.start <= 12 for c in chunks) and len(chunks) == 9


def test_out_of_memory_at_the_smallest_chunk_shrinks_transfers_then_raises(monkeypatch, job):
    paths, _ = job

    transfers = []

    def always_oom(self, queries, first_row=0, exclude_self=False):
        transfers.append((queries.shape[0], self.chunk_rows))
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(StreamingExactSearch, "search", always_oom)
    with pytest.raises(torch.OutOfMemoryError):
        # One 8-row tile; 5000 rows travel as 2 tiles of 4096 (given: the automatic transfer
        # of a database read from disk is sized to the budget, here a single tile).
        run(paths, None, batch_size=8, database_chunk_rows=8192)
    assert transfers == [(8, 8192), (8, 4096)]
    sizer = BatchSizer(8, 8, 4 * 4096, 4096)
    assert [sizer.shrink() for _ in range(3)] == [True, True, False]
    assert sizer.chunk_rows == 4096


def test_other_errors_are_not_retried(monkeypatch, job):
    paths, _ = job
    calls = []

    def broken(self, queries, first_row=0, exclude_self=False):
        calls.append(first_row)
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")

    monkeypatch.setattr(StreamingExactSearch, "search", broken)
    with pytest.raises(RuntimeError, match="CUBLAS"):
        run(paths, None)
    assert calls == [0]
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))


def test_progress_bar_shows_throughput_and_can_be_silenced(job, capsys):
    paths, _ = job
    run(paths, None, progress=True)
    assert "q/s" in capsys.readouterr().err
    run(paths, None, progress=False)
    assert capsys.readouterr() == ("", "")


def test_any_index_with_search_is_accepted(tmp_path, job):
    paths, _ = job
    index = gpuann.FlatIndex(32, metric="cosine", device="cpu")
    index.add(np.load(paths["db"]), ids=np.arange(5000) * 3)
    queries = np.load(paths["queries"])
    expected = index.search(queries, K)
    # Chunks of 30 queries are products of another shape than one of 100: the same ids, and
    # distances equal up to float32 rounding.
    D, I = batch_search(queries, index, K, batch_size=30, progress=False)
    np.testing.assert_array_equal(I, expected.ids)
    np.testing.assert_allclose(D, expected.distances, rtol=1e-6, atol=1e-6)
    index.save(tmp_path / "index.gpuann")  # a saved index file works too (one 100-row chunk)
    got = batch_search(paths["queries"], tmp_path / "index.gpuann", K, progress=False)
    assert_same(got, expected)
    with pytest.raises(ValueError, match="the index searches with 'cosine'"):
        batch_search(queries, index, K, metric="l2", progress=False)


def test_index_jobs_retry_on_out_of_memory(job):
    paths, _ = job

    class FlakyIndex:
        """Duck-typed index: fails with CUDA OOM on batches above 10 rows."""

        dim, metric = 32, gpuann.Metric.L2

        def __init__(self):
            self.inner = gpuann.FlatIndex(32, device="cpu")
            self.inner.add(np.load(paths["db"]))
            self.sizes = []

        def __len__(self):
            return len(self.inner)

        def search(self, queries, k):
            self.sizes.append(queries.shape[0])
            if queries.shape[0] > 10:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return self.inner.search(queries, k)

    index = FlakyIndex()
    queries = np.load(paths["queries"])
    D, I = batch_search(queries, index, K, batch_size=40, progress=False)
    assert index.sizes[:3] == [40, 20, 10] and max(index.sizes[3:]) == 10
    expected = index.inner.search(queries, K)
    np.testing.assert_array_equal(I, expected.ids)
    np.testing.assert_allclose(D, expected.distances, rtol=1e-6, atol=1e-6)


def test_bad_arguments_name_themselves(tmp_path, job):
    paths, _ = job
    with pytest.raises(FileNotFoundError, match="queries: no such file"):
        batch_search(tmp_path / "missing.npy", paths["db"], K)
    with pytest.raises(ValueError, match="queries: expected 32 columns"):
        batch_search(np.zeros((3, 4), np.float32), paths["db"], K)
    with pytest.raises(TypeError, match=r"database.*float16, float32 or float64"):
        batch_search(data(3), save_npy(tmp_path / "i.npy", np.zeros((4, 32), np.int32)), K)
    with pytest.raises(TypeError, match="index_or_database"):
        batch_search(data(3), object(), K)
    with pytest.raises(ValueError, match="batch_size"):
        batch_search(data(3), paths["db"], K, batch_size=0)


def test_module_exports():
    assert gpuann.batch_search is search_module.batch_search
    assert gpuann.self_join is search_module.self_join


def test_batch_imports_stay_lean():
    """The batch API pulls in neither ray, faiss nor triton, adds no tqdm import of its own
    (torch itself imports tqdm through torch.hub when it is installed), and leaves CUDA alone."""
    import subprocess
    import sys

    code = (
        "import sys, torch; had_tqdm = 'tqdm' in sys.modules; import gpuann; "
        "gpuann.batch_search, gpuann.self_join, gpuann.ray_search; "
        "print([m for m in ('ray', 'faiss', 'triton') if m in sys.modules], "
        "'tqdm' in sys.modules and not had_tqdm, torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] False False"


def test_an_ivf_job_does_not_reconstruct_to_fingerprint(tmp_path, monkeypatch):
    """The resume fingerprint reconstructed sampled vectors, which attaches faiss's id map to
    an IVF index for good (and on CUDA copies it to the host): its ids alone are hashed."""
    x = torch.from_numpy(data(500, seed=4))
    index = gpuann.IVFFlatIndex(32, 4, device="cpu")
    index.train(x)
    index.add(x)

    def refused(*args, **kwargs):
        raise AssertionError("reconstruct called")

    monkeypatch.setattr(type(index), "reconstruct", refused)
    D, I = batch_search(x[:20], index, K, out=tmp_path / "out", batch_size=10, progress=False)
    np.testing.assert_array_equal(np.asarray(I), index.search(x[:20], K).ids.numpy())
