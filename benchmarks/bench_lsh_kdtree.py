"""LSH (± re-ranking) vs IVF-PQ vs exact at equal recall, and KD-tree vs exact across d and N.

Run from the repository root, as a module::

    python -m benchmarks.bench_lsh_kdtree            # default preset (a few minutes on 2 cores)
    python -m benchmarks.bench_lsh_kdtree --smoke    # seconds
    python -m benchmarks.bench_lsh_kdtree --device cuda   # the same on a GPU

Part 1 (approximate search, clustered seeded data, recall@10 against exact ground truth):

``exact``   ``gpuann.FlatIndex(d, metric="l2").search``.
``lsh``     ``gpuann.LSHIndex(d, nbits, metric="l2", refine=F > 0)``, ``search(refine_factor=F)``
            for nbits × F (F = 0: Hamming only; else F·k candidates re-ranked exactly).
``ivfpq``   ``gpuann.IVFPQIndex(d, nlist, m=d/4, nbits=8, refine=True)`` for nprobe ×
            refine_factor (build includes k-means training through faiss).

For each recall target the fastest configuration of each method that reaches it is reported
("equal recall"), plus the full sweep and a plot of LSH recall@10 against nbits.

Part 2 (exact low-dimensional search, uniform points in [0, 1]^d): ``gpuann.KDTreeIndex``
(scipy cKDTree) vs ``gpuann.FlatIndex`` (brute force) for d × N, with a batch of queries and a
single query; ids are checked to agree.

Timings are medians of repeated calls (``benchmarks.harness.time_function``), in one process,
on the same data. Results: ``<out>/bench_lsh_kdtree_<device>_<date>.json`` / ``.md`` and
``lsh_recall_vs_nbits_<device>_<date>.png``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = ["PRESETS", "clustered", "equal_recall_table", "main", "run_kdtree", "run_lsh"]

DEFAULT_OUT = harness.REPO_ROOT / "benchmarks" / "results"
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "lsh": {
            "n": 100_000,
            "q": 500,
            "dim": 64,
            "nbits": [32, 64, 128, 256, 512],
            "lsh_refine_factor": [0, 5, 20, 100],  # × K=10: 50, 200, 1000 candidates
            "nlist": 256,
            "nprobe": [1, 2, 4, 8, 16, 32],
            "refine_factor": [1, 4, 16],
        },
        "kdtree": {"dims": [2, 3, 8, 16], "n": [10_000, 100_000, 1_000_000], "q": 1000},
        "recall_targets": [0.8, 0.9, 0.95, 0.99],
        "repeats": 3,
    },
    "smoke": {
        "lsh": {
            "n": 3000,
            "q": 50,
            "dim": 32,
            "nbits": [32, 128],
            "lsh_refine_factor": [0, 10],
            "nlist": 16,
            "nprobe": [2, 8],
            "refine_factor": [1, 8],
        },
        "kdtree": {"dims": [2, 8], "n": [2000], "q": 50},
        "recall_targets": [0.8],
        "repeats": 1,
    },
}
K = 10


def clustered(seed: int, n: int, q: int, dim: int, clusters: int = 100, spread: float = 0.6):
    """Seeded Gaussian blobs (database, queries), float32 CPU tensors; not trivially easy."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)

    def draw(m: int):
        labels = torch.randint(0, clusters, (m,), generator=g)
        return centres[labels] + spread * torch.randn(m, dim, generator=g)

    return draw(n), draw(q)


def _recall(ids, truth) -> float:
    import numpy as np

    ids, truth = ids.cpu().numpy(), truth.cpu().numpy()
    return float(
        np.mean(
            [
                len(set(a) & set(b)) / len(b)
                for a, b in zip(ids.tolist(), truth.tolist(), strict=True)
            ]
        )
    )


def _timed(fn, device: str, repeats: int) -> float:
    return harness.time_function(fn, device=device, repeats=repeats, warmup=1).median_s


def run_lsh(cfg: dict[str, Any], device: str, repeats: int) -> list[dict[str, Any]]:
    """Recall@10 and search time of every configuration of every method (Part 1)."""
    import gpuann

    x, q = clustered(0, cfg["n"], cfg["q"], cfg["dim"])
    x, q = x.to(device), q.to(device)
    rows = []
    exact = gpuann.FlatIndex(cfg["dim"], metric="l2", device=device)
    exact.add(x)
    truth = exact.search(q, K).ids
    t = _timed(lambda: exact.search(q, K), device, repeats)
    rows.append({"method": "exact", "config": "FlatIndex", "recall": 1.0, "search_s": t})
    for nbits in cfg["nbits"]:
        builds = {}
        for refine in sorted({f > 0 for f in cfg["lsh_refine_factor"]}):
            start = time.perf_counter()
            index = gpuann.LSHIndex(cfg["dim"], nbits, metric="l2", device=device, refine=refine)
            index.add(x)
            builds[refine] = index, time.perf_counter() - start
        for factor in cfg["lsh_refine_factor"]:
            index, build = builds[factor > 0]
            options = {"refine_factor": factor} if factor else {}
            result = index.search(q, K, **options)
            t = _timed(lambda o=options, i=index: i.search(q, K, **o), device, repeats)
            rows.append(
                {
                    "method": "lsh" if factor == 0 else "lsh+refine",
                    "nbits": nbits,
                    "refine_factor": factor,
                    "config": f"nbits={nbits}, refine_factor={factor}",
                    "recall": _recall(result.ids, truth),
                    "search_s": t,
                    "build_s": build,
                }
            )
    m = cfg["dim"] // 4
    start = time.perf_counter()
    ivf = gpuann.IVFPQIndex(cfg["dim"], cfg["nlist"], m=m, nbits=8, device=device, refine=True)
    ivf.train(x)
    ivf.add(x)
    build = time.perf_counter() - start
    for nprobe in cfg["nprobe"]:
        for factor in cfg["refine_factor"]:
            result = ivf.search(q, K, nprobe=nprobe, refine_factor=factor)
            t = _timed(
                lambda p=nprobe, f=factor: ivf.search(q, K, nprobe=p, refine_factor=f),
                device,
                repeats,
            )
            rows.append(
                {
                    "method": "ivfpq",
                    "config": f"nlist={cfg['nlist']}, PQ{m}x8, nprobe={nprobe}, "
                    f"refine_factor={factor}",
                    "recall": _recall(result.ids, truth),
                    "search_s": t,
                    "build_s": build,
                }
            )
    for row in rows:
        row["qps"] = cfg["q"] / row["search_s"]
    return rows


def equal_recall_table(rows: list[dict[str, Any]], targets: list[float]) -> list[dict[str, Any]]:
    """For each target and method, the fastest configuration reaching the target recall."""
    table = []
    for target in targets:
        for method in ("exact", "lsh", "lsh+refine", "ivfpq"):
            ok = [r for r in rows if r["method"] == method and r["recall"] >= target]
            best = min(ok, key=lambda r: r["search_s"]) if ok else None
            table.append(
                {
                    "target": target,
                    "method": method,
                    "config": best["config"] if best else "not reached",
                    "recall": best and best["recall"],
                    "search_s": best and best["search_s"],
                    "qps": best and best["qps"],
                }
            )
    return table


#: Queries checked against the float64 brute-force reference in Part 2.
_CHECKED_QUERIES = 50


def _float64_knn(x, q):
    """Ids of the k nearest rows by float64 squared distance, ties by lower row."""
    import torch

    out = []
    for q0 in range(0, q.shape[0], 10):
        d2 = torch.cdist(
            q[q0 : q0 + 10].double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist"
        )
        out.append(torch.sort(d2, dim=1, stable=True).indices[:, :K])
    return torch.cat(out)


def _same_ids(ids, truth) -> float:
    """Fraction of the checked queries whose k ids equal the float64 reference exactly."""
    return float((ids[: truth.shape[0]].cpu() == truth).all(dim=1).float().mean())


def run_kdtree(cfg: dict[str, Any], device: str, repeats: int) -> list[dict[str, Any]]:
    """KD-tree vs brute force, batch and single query (Part 2)."""
    import scipy.spatial  # noqa: F401  (imported here so the first build is not charged for it)
    import torch

    import gpuann

    rows = []
    for dim in cfg["dims"]:
        for n in cfg["n"]:
            g = torch.Generator().manual_seed(dim * 7 + n)
            x, q = torch.rand(n, dim, generator=g), torch.rand(cfg["q"], dim, generator=g)
            start = time.perf_counter()
            tree = gpuann.KDTreeIndex(dim, device=device)
            tree.add(x)
            build = time.perf_counter() - start
            flat = gpuann.FlatIndex(dim, metric="l2", device=device)
            flat.add(x.to(device))
            qd = q.to(device)
            truth = _float64_knn(x, q[:_CHECKED_QUERIES])
            row = {
                "dim": dim,
                "n": n,
                "q": cfg["q"],
                "kdtree_build_s": build,
                "kdtree_ids_exact": _same_ids(tree.search(qd, K).ids, truth),
                "flat_ids_exact": _same_ids(flat.search(qd, K).ids, truth),
            }
            one = qd[:1]
            row["kdtree_batch_s"] = _timed(lambda t=tree, a=qd: t.search(a, K), device, repeats)
            row["flat_batch_s"] = _timed(lambda f=flat, a=qd: f.search(a, K), device, repeats)
            row["kdtree_single_s"] = _timed(
                lambda t=tree, a=one: t.search(a, K), device, max(repeats, 5)
            )
            row["flat_single_s"] = _timed(
                lambda f=flat, a=one: f.search(a, K), device, max(repeats, 5)
            )
            row["batch_speedup"] = row["flat_batch_s"] / row["kdtree_batch_s"]
            row["single_speedup"] = row["flat_single_s"] / row["kdtree_single_s"]
            rows.append(row)
            print(
                f"  kdtree d={dim} N={n}: batch ×{row['batch_speedup']:.1f}, "
                f"single ×{row['single_speedup']:.1f}",
                flush=True,
            )
    return rows


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lsh = [r for r in rows if r["method"].startswith("lsh")]
    for factor in sorted({r["refine_factor"] for r in lsh}):
        pts = sorted((r["nbits"], r["recall"]) for r in lsh if r["refine_factor"] == factor)
        label = "Hamming only" if factor == 0 else f"re-rank top {factor * K}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nbits (code bits per vector)")
    ax.set_ylabel("recall@10")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_s(v: float) -> str:
    return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"


def _markdown(env, preset, lsh_rows, equal_rows, kd_rows, command) -> str:
    col = harness.Column
    parts = [
        f"# LSH / KD-tree benchmark ({env['device_name']}, {env['threads']} threads)\n",
        f"Command: `{command}`  \nCommit: {env['git_commit']}  \nDate: {env['date']}  \n"
        f"Versions: {env['versions']}\n",
    ]
    if lsh_rows:
        c = preset["lsh"]
        parts.append(
            f"## Equal recall: N={c['n']}, Q={c['q']}, d={c['dim']}, k={K}, clustered, l2\n"
        )
        parts.append(
            harness.markdown_table(
                equal_rows,
                [
                    col("target", "recall target", "{:.2f}".format),
                    col("method", "method", align="left"),
                    col("config", "fastest config reaching it", align="left"),
                    col("recall", "recall@10", "{:.3f}".format),
                    col("search_s", "search (median)", _fmt_s),
                    col("qps", "queries/s", "{:,.0f}".format),
                ],
            )
        )
        parts.append("\n## Full sweep\n")
        parts.append(
            harness.markdown_table(
                lsh_rows,
                [
                    col("method", "method", align="left"),
                    col("config", "config", align="left"),
                    col("recall", "recall@10", "{:.3f}".format),
                    col("search_s", "search", _fmt_s),
                    col("build_s", "build", _fmt_s),
                ],
            )
        )
    if kd_rows:
        parts.append(
            f"\n## KD-tree vs brute force (uniform [0,1]^d, k={K}; "
            f"batch = {kd_rows[0]['q']} queries)\n"
        )
        parts.append(
            harness.markdown_table(
                kd_rows,
                [
                    col("dim", "d"),
                    col("n", "N", "{:,}".format),
                    col("kdtree_build_s", "tree build", _fmt_s),
                    col("kdtree_batch_s", "KD-tree batch", _fmt_s),
                    col("flat_batch_s", "Flat batch", _fmt_s),
                    col("batch_speedup", "batch speed-up", "×{:.1f}".format),
                    col("kdtree_single_s", "KD-tree 1 query", _fmt_s),
                    col("flat_single_s", "Flat 1 query", _fmt_s),
                    col("single_speedup", "1-query speed-up", "×{:.1f}".format),
                    col("kdtree_ids_exact", "KD-tree ids = f64", "{:.0%}".format),
                    col("flat_ids_exact", "Flat ids = f64", "{:.0%}".format),
                ],
            )
        )
        parts.append(
            f'\n"ids = f64": share of the first {_CHECKED_QUERIES} queries whose {K} ids equal a '
            "float64 brute-force reference exactly (FlatIndex computes float32 "
            "‖x‖² − 2⟨q,x⟩ + ‖q‖², which can swap near-ties at small distances).\n"
        )
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny preset (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--parts", default="lsh,kdtree", help="comma-separated: lsh, kdtree")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    preset = PRESETS["smoke" if args.smoke else "default"]
    env = harness.environment_info(args.device, threads=threads)
    command = "python -m benchmarks.bench_lsh_kdtree " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    parts = args.parts.split(",")
    lsh_rows, equal_rows, kd_rows = [], [], []
    if "lsh" in parts:
        print("LSH / IVF-PQ / exact …", flush=True)
        lsh_rows = run_lsh(preset["lsh"], args.device, preset["repeats"])
        equal_rows = equal_recall_table(lsh_rows, preset["recall_targets"])
    if "kdtree" in parts:
        print("KD-tree / exact …", flush=True)
        kd_rows = run_kdtree(preset["kdtree"], args.device, preset["repeats"])
    stem = harness.result_stem("bench_lsh_kdtree", env["device_kind"], env["date"])
    payload = {
        "environment": env,
        "command": command,
        "preset": preset,
        "k": K,
        "lsh": lsh_rows,
        "equal_recall": equal_rows,
        "kdtree": kd_rows,
    }
    harness.write_json(args.out / f"{stem}.json", payload)
    text = _markdown(env, preset, lsh_rows, equal_rows, kd_rows, command)
    harness.write_text(args.out / f"{stem}.md", text)
    if lsh_rows:
        c = preset["lsh"]
        png = args.out / harness.result_stem("lsh_recall_vs_nbits", env["device_kind"], env["date"])
        _plot(
            lsh_rows,
            png.with_suffix(".png"),
            f"LSHIndex recall@10, clustered N={c['n']:,} d={c['dim']} (l2), {env['device_name']}",
        )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
