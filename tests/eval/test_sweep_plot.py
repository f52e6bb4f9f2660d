"""sweep returns a DataFrame with every measurement; plot_pareto draws a labelled figure."""

from __future__ import annotations

import math

import pytest
import torch

import gpuann
from gpuann.eval import ground_truth, index_nbytes, pareto_frontier, plot_pareto, sweep

pd = pytest.importorskip("pandas")


def _data(n: int = 3000, dim: int = 16):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(20, dim, generator=g) * 3
    database = centers[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, dim, generator=g)
    queries = centers[torch.randint(0, 20, (40,), generator=g)] + torch.randn(40, dim, generator=g)
    return database, queries


def test_sweep_of_an_exact_index():
    database, queries = _data()
    truth = ground_truth(queries, database, k=5)
    index = gpuann.FlatIndex(16, device="cpu")
    index.add(database)
    df = sweep(index, queries, truth, build_s=0.5, backend=["torch", "auto"], repeats=2)
    assert list(df.columns) == [
        "index", "backend", "k", "recall", "qps", "batch_ms", "latency_ms", "build_s",
        "index_bytes",
    ]  # fmt: skip
    assert df["backend"].tolist() == ["torch", "auto"]
    assert (df["recall"] == 1.0).all() and (df["k"] == 5).all()
    assert (df["qps"] > 0).all() and (df["latency_ms"] > 0).all()
    assert (df["build_s"] == 0.5).all() and (df["index_bytes"] == index.nbytes).all()
    # qps is the batch rate
    assert df["qps"].iloc[0] == pytest.approx(40 / (df["batch_ms"].iloc[0] / 1e3))
    assert df.attrs["device"] == "cpu"


def test_sweep_builds_and_times_a_builder_and_crosses_parameters():
    pytest.importorskip("faiss")
    database, queries = _data()
    truth = ground_truth(queries, database, k=10)

    built = []

    def build():
        index = gpuann.IVFPQIndex(16, nlist=16, m=4, nbits=6, refine=True, device="cpu")
        index.train(database)
        index.add(database)
        built.append(index)
        return index

    df = sweep(build, queries, truth, nprobe=[1, 16], refine_factor=[1, 8], latency_queries=0)
    assert df[["nprobe", "refine_factor"]].values.tolist() == [[1, 1], [1, 8], [16, 1], [16, 8]]
    assert (df["build_s"] > 0).all() and df["latency_ms"].isna().all()
    best = df.set_index(["nprobe", "refine_factor"])["recall"]
    assert best[(16, 8)] > 0.95 and best[(1, 1)] < best[(16, 8)]
    # the index's own nbytes (sizes only, no faiss serialisation): PQ codes (3 B) and ids,
    # coarse centroids, codebooks, faiss's L2 tables, and the ids, float32 vectors and norms
    # kept for refinement
    expected = 3000 * (3 + 8) + 16 * 16 * 4 + 64 * 16 * 4 + 16 * 4 * 64 * 4 + 3000 * (8 + 68)
    assert (df["index_bytes"] == built[0].nbytes).all() and built[0].nbytes == expected
    assert index_nbytes(object()) is None


def test_sweep_rejects_what_is_not_an_index():
    database, queries = _data(200)
    truth = ground_truth(queries, database, k=1)
    with pytest.raises(TypeError, match="index"):
        sweep(42, queries, truth)


def test_pareto_frontier():
    df = pd.DataFrame(
        {
            "index": ["a"] * 4 + ["b"] * 2,
            "recall": [0.5, 0.9, 0.8, 0.95, 0.99, 0.7],
            "qps": [900.0, 400.0, 300.0, 100.0, 50.0, 60.0],
        }
    )
    front = pareto_frontier(df)
    # (0.8, 300) is beaten by (0.9, 400); in "b" neither point beats the other
    assert front["index"].tolist() == ["a", "a", "a", "b", "b"]
    assert front["recall"].tolist() == [0.5, 0.9, 0.95, 0.7, 0.99]


def test_plot_is_labelled_log_scaled_and_saved(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    df = pd.DataFrame(
        {
            "index": ["IVF"] * 3 + ["exact"],
            "nprobe": [1, 4, 16, math.nan],
            "k": [10] * 4,
            "recall": [0.6, 0.9, 0.99, 1.0],
            "qps": [9000.0, 4000.0, 1500.0, 300.0],
        }
    )
    ax = plot_pareto(df)
    assert ax.get_xlabel() == "recall@10"
    assert ax.get_ylabel() == "queries per second (log scale)"
    assert ax.get_yscale() == "log" and ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["IVF", "exact"]
    assert [t.get_text() for t in ax.texts] == ["nprobe=1", "nprobe=4", "nprobe=16"]
    path = tmp_path / "pareto.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 10_000
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_many_indexes_get_their_own_markers_and_a_legend_beside_the_axes():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"index {i}" for i in range(8)]
    df = pd.DataFrame(
        {
            "index": [n for n in names for _ in range(2)],
            "k": 10,
            "recall": [0.5, 0.9] * 8,
            "qps": [1000.0 * (i + 1) for i in range(8) for _ in range(2)][::-1],
        }
    )
    ax = plot_pareto(df)
    markers = [line.get_marker() for line in ax.get_lines()]
    assert len(markers) == 8 and len(set(markers)) == 8
    ax.figure.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1  # beside the axes, covering no point
    plt.close(ax.figure)
    few = plot_pareto(df[df["index"].isin(names[:3])])
    few.figure.canvas.draw()
    inside = few.get_legend().get_window_extent()
    assert inside.x1 <= few.get_window_extent().x1
    plt.close(few.figure)


def test_labels_that_would_overlap_are_left_out_but_points_stay():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(
        {
            "index": ["a", "a", "b", "b"],
            "nprobe": [1, 16, 1, 16],
            "k": 10,
            "recall": [0.5, 0.99, 0.5001, 0.7],
            "qps": [1000.0, 100.0, 1000.5, 400.0],
        }
    )
    ax = plot_pareto(df)
    # b's nprobe=1 point sits on a's: its label is dropped, every other point keeps one
    assert sorted(t.get_text() for t in ax.texts) == ["nprobe=1", "nprobe=16", "nprobe=16"]
    assert sum(len(line.get_xdata()) for line in ax.get_lines()) == 4
    plt.close(ax.figure)
