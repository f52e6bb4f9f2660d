"""A job killed with SIGKILL mid-run, resumed, equals an uninterrupted run; no chunk runs twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from batch_helpers import SMALL_BUDGET, assert_same, data, save_npy

from gpuann.batch import batch_search, self_join

K, BATCH, N_QUERIES = 5, 24, 200  # 12-row query tiles: 9 chunks

JOB = textwrap.dedent(
    """
    import sys, time
    from gpuann.batch import batch_search, self_join
    queries, db, out, kind = sys.argv[1:5]
    slow = lambda info: time.sleep(0.4)  # give the parent time to kill us mid-job
    kwargs = dict(out=out, batch_size={batch}, memory_budget={budget}, progress=False,
                  on_chunk=slow)
    if kind == "search":
        batch_search(queries, db, {k}, **kwargs)
    else:
        self_join(queries, {k}, **kwargs)
    """
).format(batch=BATCH, budget=SMALL_BUDGET, k=K)


def _checkpoint(out) -> dict | None:
    try:
        return json.loads((out / "checkpoint.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # not written yet (a torn read is impossible: it is replaced atomically)


def _start_and_kill(args: list[str], out, min_chunks: int = 2, timeout: float = 60.0) -> dict:
    """Run the job in a subprocess, SIGKILL it after ``min_chunks`` checkpoints; return the last."""
    process = subprocess.Popen([sys.executable, "-c", JOB, *args])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = _checkpoint(out)
            if state is not None and state["chunks_done"] >= min_chunks:
                os.kill(process.pid, signal.SIGKILL)
                break
            assert process.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint appeared in time")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return _checkpoint(out)


@pytest.mark.parametrize("kind", ["search", "self_join"])
def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path, kind):
    queries = save_npy(tmp_path / "q.npy", data(N_QUERIES, seed=21))
    db = save_npy(tmp_path / "db.npy", data(6000, seed=22))
    out = tmp_path / "killed"
    killed_at = _start_and_kill([queries, db, str(out), kind], out)
    assert not killed_at["complete"] and killed_at["rows_done"] == killed_at["chunks_done"] * BATCH

    resumed_chunks = []
    kwargs = dict(batch_size=BATCH, memory_budget=SMALL_BUDGET, progress=False)
    if kind == "search":
        resumed = batch_search(
            queries, db, K, out=out, resume=True, on_chunk=resumed_chunks.append, **kwargs
        )
        reference = batch_search(queries, db, K, out=tmp_path / "whole", **kwargs)
    else:
        resumed = self_join(
            queries, K, out=out, resume=True, on_chunk=resumed_chunks.append, **kwargs
        )
        reference = self_join(queries, K, out=tmp_path / "whole", **kwargs)
    total_chunks = -(-N_QUERIES // BATCH)
    # Every chunk is computed once: the killed run's completed ones are not redone.
    assert len(resumed_chunks) == total_chunks - killed_at["chunks_done"]
    assert resumed_chunks[0].start == killed_at["rows_done"]
    assert _checkpoint(out)["chunks_done"] == total_chunks
    assert_same(resumed, reference, f"{kind}: resumed vs uninterrupted")
    assert_same(
        (np.load(out / "distances.npy"), np.load(out / "ids.npy")), reference, "files on disk"
    )
