"""``gpuann search`` / ``self-join`` / ``build``: round trips against the library, and errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

import gpuann
from gpuann.cli import main


def _data(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    db, queries = _data(3000, seed=1), _data(40, seed=2)
    np.save(tmp_path / "db.npy", db)
    np.save(tmp_path / "q.npy", queries)
    return tmp_path, db, queries


def _cli(*args: str) -> int:
    return main([str(a) for a in args])


def _load(out) -> tuple[np.ndarray, np.ndarray]:
    return np.load(out / "distances.npy"), np.load(out / "ids.npy")


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_search_database_equals_knn(files, metric, capsys):
    tmp, db, queries = files
    out = tmp / "res"
    args = ("search", "--database", tmp / "db.npy", "--queries", tmp / "q.npy", "-k", 7)
    assert _cli(*args, "--metric", metric, "--out", out, "--no-progress") == 0
    assert "40 x 7" in capsys.readouterr().out
    D, I = _load(out)
    expected = gpuann.knn(queries, db, 7, metric=metric)
    np.testing.assert_array_equal(I, expected.ids)
    np.testing.assert_array_equal(D, expected.distances)
    # Run again: refused without --resume; --resume finds the job complete.
    assert _cli(*args, "--metric", metric, "--out", out, "--no-progress") == 2
    assert "pass resume=True" in capsys.readouterr().err
    assert _cli(*args, "--metric", metric, "--out", out, "--no-progress", "--resume") == 0
    np.testing.assert_array_equal(_load(out)[1], expected.ids)


@pytest.mark.parametrize("index_type", ["flat", "ivf-flat"])
def test_build_then_search_index_equals_the_library(files, index_type):
    tmp, db, queries = files
    path = tmp / "index.gpuann"
    build = ("build", "--vectors", tmp / "db.npy", "--index-type", index_type, "--out", path)
    assert (
        _cli(
            *build,
            "--metric",
            "ip",
            "--device",
            "cpu",
            *(["--nlist", 16] if "ivf" in index_type else []),
        )
        == 0
    )
    index = gpuann.load(path, "cpu")
    assert len(index) == len(db) and index.metric is gpuann.Metric.IP
    out = tmp / "res"
    search = ("search", "--index", path, "--queries", tmp / "q.npy", "-k", 5, "--out", out)
    assert _cli(*search, "--no-progress", "--device", "cpu") == 0
    D, I = _load(out)
    expected = index.search(queries, 5)
    np.testing.assert_array_equal(I, expected.ids)
    np.testing.assert_allclose(D, expected.distances, rtol=1e-6)
    if index_type == "flat":  # a flat index is exact: the same neighbours as knn
        np.testing.assert_array_equal(I, gpuann.knn(queries, db, 5, metric="ip").ids)


def test_self_join_command(files):
    tmp, db, _ = files
    out = tmp / "graph"
    assert (
        _cli("self-join", "--vectors", tmp / "db.npy", "-k", 3, "--out", out, "--no-progress") == 0
    )
    np.testing.assert_array_equal(_load(out)[1], gpuann.self_join(db, 3, progress=False).ids)


def test_errors_name_the_argument_and_exit_2(files, capsys):
    tmp, _, _ = files
    np.save(tmp / "vec1d.npy", np.zeros(16, np.float32))
    np.save(tmp / "ints.npy", np.zeros((4, 16), np.int64))
    np.save(tmp / "narrow.npy", np.zeros((4, 8), np.float32))
    (tmp / "junk.npy").write_bytes(b"not numpy")
    base = ("search", "--database", tmp / "db.npy", "-k", 3, "--out", tmp / "o", "--no-progress")
    cases = {
        "missing.npy": "--queries: no such file",
        "vec1d.npy": "--queries (",
        "ints.npy": "expected float16, float32 or float64 values, got dtype int64",
        "narrow.npy": "--queries",
        "junk.npy": "is not a readable .npy file",
    }
    for name, message in cases.items():
        assert _cli(*base, "--queries", tmp / name) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("gpuann search: error: ") and message in err, err
        assert name in err
    assert _cli("search", "--index", tmp / "nope.gpuann", "--queries", tmp / "q.npy", "-k", 3,
                "--out", tmp / "o") == 2  # fmt: skip
    assert "--index: no such file" in capsys.readouterr().err
    assert _cli("build", "--vectors", tmp / "ints.npy", "--out", tmp / "i.gpuann") == 2
    assert "--vectors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: --database or --index is required
        _cli("search", "--queries", tmp / "q.npy", "-k", 3, "--out", tmp / "o")
    assert exit_info.value.code == 2


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli("search", "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for part in ("--database DB.npy", "--index FILE", "--resume", "examples:", "ids.npy"):
        assert part in text
    out = subprocess.run([sys.executable, "-m", "gpuann", "--help"], capture_output=True, text=True)
    assert all(c in out.stdout for c in ("search", "self-join", "build", "demo"))


def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_search_on_a_full_disk_is_one_error_line(files, capsys, monkeypatch):
    tmp, _, _ = files
    monkeypatch.setattr(os, "posix_fallocate", _no_space, raising=False)
    args = ("search", "--database", tmp / "db.npy", "--queries", tmp / "q.npy", "-k", 3)
    assert _cli(*args, "--out", tmp / "res", "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuann search: error: ") and err.count("\n") == 1
    assert "out: cannot create" in err and "No space left" in err
    assert os.listdir(tmp / "res") == []


def test_search_on_a_full_tmpfs_exits_2_instead_of_sigbus(tmp_path):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    np.save(tmp_path / "db.npy", _data(300, 8, seed=1))
    np.save(tmp_path / "q.npy", _data(30_000, 8, seed=2))  # 3.6 MB of results
    full = tmp_path / "full"
    full.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        command = [sys.executable, "-m", "gpuann", "search", "--database", tmp_path / "db.npy"]
        command += ["--queries", tmp_path / "q.npy", "-k", "10", "--out", full / "res"]
        done = subprocess.run(
            [str(c) for c in [*command, "--no-progress"]], capture_output=True, text=True
        )
        assert done.returncode == 2, f"exit {done.returncode}: {done.stderr[-2000:]}"
        assert done.stderr.startswith("gpuann search: error: ")
        assert "out: cannot create" in done.stderr and "No space left" in done.stderr
    finally:
        if subprocess.run(["umount", str(full)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(full)], check=True)
