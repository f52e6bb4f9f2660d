"""Robustness of batch jobs: full disks, inputs changed between runs, argument types, memory."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import subprocess
import sys
import textwrap

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
from gpuann.batch import CheckpointMismatchError, batch_search, self_join
from gpuann.batch.checkpoint import read_checkpoint

K, BATCH = JOB_K, JOB_BATCH
run = run_job


@pytest.fixture
def job(tmp_path):
    """A database and queries on disk, and the in-memory answer."""
    return make_job(tmp_path)


class Stop(Exception):
    pass


def stop_after(chunks):
    def on_chunk(info):
        if info.chunks_done == chunks:
            raise Stop

    return on_chunk


def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------------- full disks (item 3)
def test_no_room_for_the_results_is_a_clean_oserror_before_any_work(tmp_path, job, monkeypatch):
    paths, _ = job
    monkeypatch.setattr(os, "posix_fallocate", _no_space, raising=False)
    seen = []
    with pytest.raises(OSError) as caught:
        run(paths, tmp_path / "out", on_chunk=seen.append)
    assert caught.value.errno == errno.ENOSPC and "distances.npy" in str(caught.value)
    assert seen == [] and os.listdir(tmp_path / "out") == []  # no half-made files left


def test_no_room_on_resume_keeps_the_checkpoint(tmp_path, job, monkeypatch):
    paths, expected = job
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run(paths, out, on_chunk=stop_after(2))
    before = (out / "checkpoint.json").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", _no_space, raising=False)
        with pytest.raises(OSError) as caught:
            run(paths, out, resume=True)
    assert caught.value.errno == errno.ENOSPC
    assert (out / "checkpoint.json").read_bytes() == before
    assert_same(run(paths, out, resume=True), expected)


def test_result_files_are_not_sparse(tmp_path, job):
    paths, _ = job
    run(paths, tmp_path / "out")
    for name in ("ids.npy", "distances.npy"):
        info = os.stat(tmp_path / "out" / name)
        assert info.st_blocks * 512 >= info.st_size - 4096, f"{name} is sparse"


@contextlib.contextmanager
def small_tmpfs(path, size="1m"):
    """A ``size`` tmpfs mounted at ``path`` (skips unless root may mount one)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        gc.collect()  # memory maps of result files keep the mount busy
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


_FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import errno, sys
    import numpy as np
    from gpuann.batch import batch_search
    rng = np.random.default_rng(0)
    db = rng.standard_normal((500, 8)).astype(np.float32)
    queries = rng.standard_normal((20_000, 8)).astype(np.float32)  # 2.4 MB of results
    try:
        batch_search(queries, db, 10, out=sys.argv[1], progress=False)
    except OSError as err:
        print("ENOSPC" if err.errno == errno.ENOSPC else f"errno {err.errno}")
    """
)


def test_full_tmpfs_raises_oserror_instead_of_sigbus(tmp_path):
    with small_tmpfs(tmp_path / "full") as full:
        done = subprocess.run(
            [sys.executable, "-c", _FULL_DISK_SCRIPT, str(full / "out")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"died with {done.returncode}: {done.stderr[-2000:]}"
        assert done.stdout.strip() == "ENOSPC"
        assert os.listdir(full / "out") == []


def test_disk_filling_up_mid_job_keeps_the_checkpoint_and_resumes(tmp_path, job):
    paths, expected = job
    with small_tmpfs(tmp_path / "full") as full:
        out, filler = full / "out", full / "filler"

        def fill_the_disk(info):
            if info.chunks_done == 2:
                with open(filler, "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()

        with pytest.raises(OSError) as caught:
            run(paths, out, on_chunk=fill_the_disk)
        assert caught.value.errno == errno.ENOSPC
        state = read_checkpoint(out / "checkpoint.json")
        assert state.rows_done == 2 * BATCH and not state.complete
        filler.unlink()
        assert_same(run(paths, out, resume=True), expected)


# ---------------------------------------------------------------------- changed inputs (12)
def _unsampled_row(n, below, lowest=0):
    """A row in ``[lowest, below)`` that the 64-row sample of the fingerprint skips."""
    sampled = set(np.unique(np.linspace(0, n - 1, num=min(n, 64)).astype(np.int64)).tolist())
    return next(r for r in range(lowest, below) if r not in sampled)


def test_resume_refuses_queries_changed_in_rows_the_fingerprint_does_not_sample(tmp_path, job):
    paths, _ = job
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run(paths, out, on_chunk=stop_after(3))  # rows 0..71 done
    queries = np.load(paths["queries"])
    row = _unsampled_row(len(queries), 72)
    queries[row] += 1.0
    np.save(paths["queries"], queries)
    with pytest.raises(CheckpointMismatchError, match=r"queries rows 0\.\.71 differ"):
        run(paths, out, resume=True)
    assert read_checkpoint(out / "checkpoint.json").rows_done == 72


def test_resume_accepts_changes_in_rows_not_done_yet(tmp_path, job):
    paths, _ = job
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run(paths, out, on_chunk=stop_after(3))
    queries = np.load(paths["queries"])
    sampled = set(np.unique(np.linspace(0, 99, num=64).astype(np.int64)).tolist())
    row = next(r for r in range(72, 100) if r not in sampled)  # the sample check still passes
    queries[row] += 1.0
    np.save(paths["queries"], queries)
    result = run(paths, out, resume=True)  # every row done was read from the same bytes
    db = np.load(paths["db"])
    assert_same(result, gpuann.knn(queries, db, K, memory_budget=SMALL_BUDGET))


def test_checkpoint_hash_covers_exactly_the_rows_done(tmp_path, job):
    import hashlib

    paths, _ = job
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run(paths, out, on_chunk=stop_after(2))
    state = json.loads((out / "checkpoint.json").read_text())
    raw = np.load(paths["queries"])[: state["rows_done"]].tobytes()
    assert state["queries_sha256"] == hashlib.sha256(raw).hexdigest()


def test_resume_refuses_a_database_changed_in_rows_the_fingerprint_does_not_sample(tmp_path, job):
    import hashlib

    paths, _ = job
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run(paths, out, on_chunk=stop_after(2))
    db = np.load(paths["db"])
    state = read_checkpoint(out / "checkpoint.json")
    assert state.database_sha256 == hashlib.sha256(db.tobytes()).hexdigest()
    db[_unsampled_row(len(db), len(db))] += 1.0
    np.save(paths["db"], db)
    ids_before = np.load(out / "ids.npy")
    with pytest.raises(CheckpointMismatchError, match="database differs"):
        run(paths, out, resume=True)
    assert read_checkpoint(out / "checkpoint.json").rows_done == 2 * BATCH
    np.testing.assert_array_equal(np.load(out / "ids.npy"), ids_before)  # nothing written


def test_self_join_resume_refuses_a_changed_x(tmp_path):
    x = data(300, seed=5)
    path = save_npy(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    kwargs = {"memory_budget": SMALL_BUDGET, "batch_size": 8, "progress": False, "out": out}
    with pytest.raises(Stop):
        self_join(path, 4, on_chunk=stop_after(2), **kwargs)
    x[_unsampled_row(len(x), len(x), 16)] *= 2.0  # not a row done: only the database has it
    np.save(path, x)
    with pytest.raises(CheckpointMismatchError, match="x differs"):
        self_join(path, 4, resume=True, **kwargs)


# ---------------------------------------------------------------------- arguments
def test_self_join_names_x_in_its_nan_error():
    x = torch.randn(50, 8)
    x[7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^x: contains NaN"):
        self_join(x, 3, progress=False)


def test_numpy_integers_are_accepted_for_every_int_argument(job):
    paths, expected = job
    result = batch_search(
        paths["queries"],
        paths["db"],
        np.int64(K),
        batch_size=np.int32(BATCH),
        memory_budget=np.int64(SMALL_BUDGET),
        database_chunk_rows=np.uint32(1024),
        progress=False,
    )
    assert_same(result, expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"memory_budget": 2.5e6}, TypeError, "memory_budget"),
        ({"memory_budget": True}, TypeError, "memory_budget"),
        ({"database_chunk_rows": 0}, ValueError, "database_chunk_rows"),
        ({"database_chunk_rows": 10.0}, TypeError, "database_chunk_rows"),
        ({"batch_size": "big"}, TypeError, "batch_size"),
        ({"batch_size": np.int64(0)}, ValueError, "batch_size"),
    ],
)
def test_bad_int_arguments_name_themselves(job, kwargs, error, name):
    paths, _ = job
    with pytest.raises(error, match=f"^{name}: "):
        batch_search(paths["queries"], paths["db"], K, progress=False, **kwargs)


# ---------------------------------------------------------------------- memory
_PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gpuann.batch import batch_search

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    folder, budget = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    np.save(f"{folder}/db.npy", rng.standard_normal((120_000, 64), dtype=np.float32))
    np.save(f"{folder}/q.npy", rng.standard_normal((3_000, 64), dtype=np.float32))
    args = (f"{folder}/q.npy", f"{folder}/db.npy", 10)
    options = dict(memory_budget=budget, progress=False, out=f"{folder}/out", overwrite=True)
    batch_search(*args, **options)  # warm up allocator, thread pools and code pages
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = status("VmRSS")
    batch_search(*args, **options)
    print(status("VmHWM") - before)
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_of_an_out_of_core_job_stays_within_the_budget(tmp_path):
    budget = 16 << 20
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), str(budget)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    growth = int(done.stdout.strip().splitlines()[-1])
    # The database file is 30 MiB: a job that maps or buffers it whole cannot pass.
    assert growth <= budget, f"peak RSS grew by {growth / 2**20:.1f} MiB (budget 16 MiB)"
