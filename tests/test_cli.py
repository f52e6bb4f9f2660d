"""The command line and the demo."""

from __future__ import annotations

import subprocess
import sys

from gpuann.cli import main
from gpuann.demo import HashingEmbedder, run_demo, stdlib_docstrings


def test_demo_answers_queries_with_the_right_modules(capsys):
    stats = run_demo(["read rows from a csv file"], device="cpu", synthetic_size=3000)
    out = capsys.readouterr().out
    assert "gpuann demo on cpu" in out
    answers = out.split("\n> ")
    assert "subprocess.check_output" in answers[3].splitlines()[1]  # run a command... output
    assert "tempfile." in answers[4].splitlines()[1]  # create a temporary directory
    assert "csv." in answers[6].splitlines()[1]  # the extra query
    assert stats["documents"] > 1000 and stats["gpuann_s"] > 0


def test_demo_results_are_exact_nearest_neighbours():
    corpus = stdlib_docstrings(("json", "csv"))
    texts = [doc for _, doc in corpus]
    embedder = HashingEmbedder(dim=256).fit(texts)
    vectors = embedder(texts)
    from gpuann import knn

    nearest = knn(vectors[:3], vectors, 1, metric="cosine").ids.flatten().tolist()
    # A document is its own nearest neighbour unless an identical text precedes it.
    for row, i in enumerate(nearest):
        assert i == row or texts[i] == texts[row]


def test_cli_help_and_errors():
    out = subprocess.run([sys.executable, "-m", "gpuann", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
    assert main(["demo", "--device", "tpu", "--synthetic-size", "0"]) == 2
