"""Hamming search, BinaryFlatIndex and LSH + re-ranking: gpuann vs faiss-cpu at equal threads.

Run from the repository root, as a module::

    python -m benchmarks.bench_hamming             # default preset (minutes on 2 cores)
    python -m benchmarks.bench_hamming --smoke     # seconds

Parts (seeded data, every method on the same data in one process, timed round-robin with
``benchmarks.harness.time_interleaved``; medians; ``torch.set_num_threads(t)`` and
``faiss.omp_set_num_threads(t)`` alike):

``hamming``      ``gpuann.binary.hamming.hamming_topk`` with the default backend choice, and
                 with ``backend="torch"`` (numpy popcount tiles), vs faiss
                 ``IndexBinaryFlat.search`` on random codes; ids are compared with faiss's
                 (same set and, after ordering ties by lower id, same order).
``binary_flat``  ``gpuann.BinaryFlatIndex.search`` vs ``faiss.IndexBinaryFlat.search``.
``lsh``          ``gpuann.LSHIndex(d, nbits, refine=True, projection="orthogonal")``
                 ``.search(q, k, refine_factor=F)`` (faiss's projection: a random rotation) vs
                 faiss ``IndexLSH.search(q, F·k)`` + the same exact re-ranking written in torch
                 (gather the candidates, ``bmm``, ``topk``), on unit vectors with low-rank
                 cluster structure (:func:`embedding_like`, cosine); recall@10 of each
                 against exact ground truth, and an equal-recall table (fastest
                 configuration of each reaching a target).

Results: ``<out>/bench_hamming_<device>_<date>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = ["PRESETS", "embedding_like", "main", "run_binary_flat", "run_hamming", "run_lsh"]

DEFAULT_OUT = harness.REPO_ROOT / "benchmarks" / "results"
K = 10
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "hamming": {"n": 100_000, "q": [1, 300], "nbits": [64, 256, 512, 1024], "k": [10, 100]},
        "numpy_max_pairs": 300 * 100_000,  # the numpy backend only where it takes seconds
        "binary_flat": {"n": 100_000, "q": [1, 300], "nbits": [256, 512], "k": [10]},
        "lsh": {
            "n": 100_000,
            "q": 300,
            "dim": 384,
            "nbits": [256, 512, 1024],
            "factor": [5, 10, 20],
        },
        "recall_targets": [0.8, 0.9, 0.95, 0.98],
        "repeats": 5,
    },
    "smoke": {
        "hamming": {"n": 3000, "q": [1, 20], "nbits": [64], "k": [10]},
        "numpy_max_pairs": 20 * 3000,
        "binary_flat": {"n": 3000, "q": [20], "nbits": [64], "k": [10]},
        "lsh": {"n": 3000, "q": 20, "dim": 32, "nbits": [64], "factor": [5]},
        "recall_targets": [0.5],
        "repeats": 2,
    },
}


def _codes(seed: int, n: int, nbytes: int):
    import numpy as np

    return np.random.default_rng([seed, n, nbytes]).integers(0, 256, (n, nbytes), dtype=np.uint8)


def _ordered(distances, ids):
    """faiss's lists with ties ordered by lower id (lexicographic (distance, id))."""
    import numpy as np

    order = np.lexsort((ids, distances), axis=1)
    return np.take_along_axis(distances, order, 1), np.take_along_axis(ids, order, 1)


def _timings(fns: dict, repeats: int) -> dict[str, float]:
    timed = harness.time_interleaved(fns, repeats=repeats, warmup=1, min_seconds=0.2)
    return {name: t.median_s for name, t in timed.items()}


def run_hamming(cfg: dict[str, Any], numpy_max_pairs: int, repeats: int) -> list[dict[str, Any]]:
    """``hamming_topk`` (auto, torch) vs ``IndexBinaryFlat`` on random codes."""
    import faiss
    import numpy as np
    import torch

    from gpuann.binary.codes import to_words
    from gpuann.binary.hamming import hamming_topk, select_hamming_backend

    rows = []
    for nbits in cfg["nbits"]:
        xb = _codes(0, cfg["n"], nbits // 8)
        index = faiss.IndexBinaryFlat(nbits)
        index.add(xb)
        db_words = to_words(torch.from_numpy(xb))
        for q in cfg["q"]:
            xq = _codes(1, q, nbits // 8)
            q_words = to_words(torch.from_numpy(xq))
            for k in cfg["k"]:
                fns = {
                    "gpuann": lambda a=q_words, b=db_words, k=k: hamming_topk(a, b, k),
                    "faiss": lambda a=xq, i=index, k=k: i.search(a, k),
                }
                if q * cfg["n"] <= numpy_max_pairs:
                    fns["numpy"] = lambda a=q_words, b=db_words, k=k: hamming_topk(
                        a, b, k, backend="torch"
                    )
                t = _timings(fns, repeats)
                D, I = hamming_topk(q_words, db_words, k)
                fD, fI = _ordered(*index.search(xq, k))
                row = {
                    "nbits": nbits,
                    "n": cfg["n"],
                    "q": q,
                    "k": k,
                    "backend": select_hamming_backend("auto", torch.device("cpu"), k),
                    "gpuann_s": t["gpuann"],
                    "faiss_s": t["faiss"],
                    "numpy_s": t.get("numpy"),
                    "ratio": t["faiss"] / t["gpuann"],
                    "numpy_ratio": t["faiss"] / t["numpy"] if "numpy" in t else None,
                    "same_as_faiss": bool(
                        np.array_equal(D.numpy(), fD) and np.array_equal(I.numpy(), fI)
                    ),
                    "load": harness.load_average()[0],
                }
                rows.append(row)
                print(f"  hamming nbits={nbits} Q={q} k={k}: ×{row['ratio']:.2f}", flush=True)
    return rows


def run_binary_flat(cfg: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    """``BinaryFlatIndex.search`` vs ``IndexBinaryFlat.search``."""
    import faiss
    import numpy as np

    import gpuann

    rows = []
    for nbits in cfg["nbits"]:
        xb = _codes(0, cfg["n"], nbits // 8)
        ours = gpuann.BinaryFlatIndex(nbits, device="cpu")
        ours.add(xb)
        theirs = faiss.IndexBinaryFlat(nbits)
        theirs.add(xb)
        for q in cfg["q"]:
            xq = _codes(1, q, nbits // 8)
            for k in cfg["k"]:
                t = _timings(
                    {
                        "gpuann": lambda a=xq, i=ours, k=k: i.search(a, k),
                        "faiss": lambda a=xq, i=theirs, k=k: i.search(a, k),
                    },
                    repeats,
                )
                D, I = ours.search(xq, k)
                fD, fI = _ordered(*theirs.search(xq, k))
                rows.append(
                    {
                        "nbits": nbits,
                        "n": cfg["n"],
                        "q": q,
                        "k": k,
                        "gpuann_s": t["gpuann"],
                        "faiss_s": t["faiss"],
                        "ratio": t["faiss"] / t["gpuann"],
                        "same_as_faiss": bool(np.array_equal(D, fD) and np.array_equal(I, fI)),
                        "load": harness.load_average()[0],
                    }
                )
                print(f"  binary_flat nbits={nbits} Q={q}: ×{rows[-1]['ratio']:.2f}", flush=True)
    return rows


def _recall(ids, truth) -> float:
    import numpy as np

    ids, truth = np.asarray(ids), np.asarray(truth)
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth, strict=True)]))


def embedding_like(seed: int, n: int, q: int, dim: int, rank: int = 32):
    """Unit vectors with low-rank cluster structure, like text embeddings: clustered points
    in ``rank`` dimensions, a random map to ``dim``, a little isotropic noise."""
    import torch

    from benchmarks.bench_lsh_kdtree import clustered

    z, zq = clustered(seed, n, q, rank)
    g = torch.Generator().manual_seed(seed + 1)
    lift = torch.randn(rank, dim, generator=g) / rank**0.5
    x = z @ lift + 0.3 * torch.randn(n, dim, generator=g)
    xq = zq @ lift + 0.3 * torch.randn(q, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(xq, dim=1)


def run_lsh(cfg: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    """LSHIndex + re-ranking vs faiss IndexLSH + torch re-ranking, cosine, same data."""
    import faiss
    import torch

    import gpuann

    x, q = embedding_like(0, cfg["n"], cfg["q"], cfg["dim"])
    truth = gpuann.knn(q, x, K, metric="ip").ids
    xn, qn = x.numpy(), q.numpy()

    def faiss_rerank(index, factor: int):
        _, cand = index.search(qn, factor * K)
        cand = torch.from_numpy(cand)
        scores = torch.bmm(x[cand.clamp(min=0)], q[:, :, None]).squeeze(2)
        scores = scores.masked_fill(cand < 0, float("-inf"))
        top = torch.topk(scores, K, dim=1).indices
        return cand.gather(1, top)

    rows = []
    for nbits in cfg["nbits"]:
        ours = gpuann.LSHIndex(
            cfg["dim"], nbits, metric="cosine", device="cpu", refine=True, projection="orthogonal"
        )
        ours.add(x)
        theirs = faiss.IndexLSH(cfg["dim"], nbits)
        theirs.add(xn)
        for factor in cfg["factor"]:
            t = _timings(
                {
                    "gpuann": lambda f=factor, i=ours: i.search(q, K, refine_factor=f),
                    "faiss": lambda f=factor, i=theirs: faiss_rerank(i, f),
                },
                repeats,
            )
            rows.append(
                {
                    "nbits": nbits,
                    "candidates": factor * K,
                    "gpuann_s": t["gpuann"],
                    "faiss_s": t["faiss"],
                    "ratio": t["faiss"] / t["gpuann"],
                    "gpuann_recall": _recall(ours.search(q, K, refine_factor=factor).ids, truth),
                    "faiss_recall": _recall(faiss_rerank(theirs, factor), truth),
                    "load": harness.load_average()[0],
                }
            )
            print(f"  lsh nbits={nbits} F={factor}: ×{rows[-1]['ratio']:.2f}", flush=True)
    return rows


def equal_recall(rows: list[dict[str, Any]], targets: list[float]) -> list[dict[str, Any]]:
    """Per target: the fastest configuration of each method reaching it, and their ratio."""
    out = []
    for target in targets:
        best = {}
        for method in ("gpuann", "faiss"):
            ok = [r for r in rows if r[f"{method}_recall"] >= target]
            best[method] = min(ok, key=lambda r: r[f"{method}_s"]) if ok else None
        g, f = best["gpuann"], best["faiss"]
        out.append(
            {
                "target": target,
                "gpuann_config": g and f"nbits={g['nbits']}, {g['candidates']} cand.",
                "gpuann_recall": g and g["gpuann_recall"],
                "gpuann_s": g and g["gpuann_s"],
                "faiss_config": f and f"nbits={f['nbits']}, {f['candidates']} cand.",
                "faiss_recall": f and f["faiss_recall"],
                "faiss_s": f and f["faiss_s"],
                "ratio": f["faiss_s"] / g["gpuann_s"] if g and f else None,
            }
        )
    return out


def _fmt_s(v: float) -> str:
    return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"


def _markdown(env, preset, parts: dict[str, list], command: str) -> str:
    col, ratio, yes = harness.Column, "×{:.2f}".format, lambda v: "yes" if v else "**no**"
    out = [
        f"# Hamming / BinaryFlat / LSH vs faiss-cpu ({env['device_name']}, "
        f"{env['threads']} threads)\n",
        f"Command: `{command}`  \nCommit: {env['git_commit']}  \nDate: {env['date']}  \n"
        f"Versions: {env['versions']}  \nLoad average at start: {env['load_average']} on "
        f"{env['cpu_count']} cores (`load`: 1-minute average after each case)\n",
        "Ratios are faiss time / gpuann time (> 1: gpuann faster).\n",
    ]
    common = [col("nbits", "nbits"), col("n", "N", "{:,}".format), col("q", "Q"), col("k", "k")]
    if parts.get("hamming"):
        out += ["## hamming_topk vs IndexBinaryFlat.search\n"]
        out.append(
            harness.markdown_table(
                parts["hamming"],
                [
                    *common,
                    col("backend", "auto backend", align="left"),
                    col("gpuann_s", "gpuann", _fmt_s),
                    col("faiss_s", "faiss", _fmt_s),
                    col("numpy_s", "numpy backend", _fmt_s),
                    col("ratio", "gpuann/faiss", ratio),
                    col("numpy_ratio", "numpy/faiss", ratio),
                    col("same_as_faiss", "same D, I as faiss", yes),
                    col("load", "load"),
                ],
            )
        )
    if parts.get("binary_flat"):
        out += ["\n## BinaryFlatIndex vs IndexBinaryFlat\n"]
        out.append(
            harness.markdown_table(
                parts["binary_flat"],
                [
                    *common,
                    col("gpuann_s", "gpuann", _fmt_s),
                    col("faiss_s", "faiss", _fmt_s),
                    col("ratio", "gpuann/faiss", ratio),
                    col("same_as_faiss", "same D, I as faiss", yes),
                    col("load", "load"),
                ],
            )
        )
    if parts.get("lsh"):
        c = preset["lsh"]
        out += [
            f"\n## LSH + re-ranking, N={c['n']:,}, Q={c['q']}, d={c['dim']}, k={K}, "
            "embedding-like unit vectors (rank-32 clusters + noise; cosine)\n",
            "gpuann: `LSHIndex(d, nbits, metric='cosine', refine=True, projection='orthogonal')"
            ".search(q, k, refine_factor=F)`; faiss: `IndexLSH(d, nbits).search(q, F·k)` "
            "+ torch re-ranking (gather, `bmm`, `topk`).\n",
        ]
        out.append(
            harness.markdown_table(
                parts["lsh"],
                [
                    col("nbits", "nbits"),
                    col("candidates", "candidates"),
                    col("gpuann_s", "gpuann", _fmt_s),
                    col("faiss_s", "faiss + torch", _fmt_s),
                    col("ratio", "gpuann/faiss", ratio),
                    col("gpuann_recall", "gpuann recall@10", "{:.3f}".format),
                    col("faiss_recall", "faiss recall@10", "{:.3f}".format),
                    col("load", "load"),
                ],
            )
        )
        out += ["\n### Equal recall (fastest configuration of each reaching the target)\n"]
        out.append(
            harness.markdown_table(
                parts["lsh_equal_recall"],
                [
                    col("target", "recall target", "{:.2f}".format),
                    col("gpuann_config", "gpuann config", align="left"),
                    col("gpuann_recall", "recall", "{:.3f}".format),
                    col("gpuann_s", "gpuann", _fmt_s),
                    col("faiss_config", "faiss config", align="left"),
                    col("faiss_recall", "recall", "{:.3f}".format),
                    col("faiss_s", "faiss + torch", _fmt_s),
                    col("ratio", "gpuann/faiss", ratio),
                ],
            )
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny preset (seconds)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--parts", default="hamming,binary_flat,lsh")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import faiss  # noqa: F401  (imported before set_threads so that it is set too)
    import torch

    threads = args.threads or torch.get_num_threads()
    harness.set_threads(threads)
    preset = PRESETS["smoke" if args.smoke else "default"]
    env = harness.environment_info("cpu", threads=threads)
    command = "python -m benchmarks.bench_hamming " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    wanted = args.parts.split(",")
    parts: dict[str, list] = {}
    if "hamming" in wanted:
        parts["hamming"] = run_hamming(
            preset["hamming"], preset["numpy_max_pairs"], preset["repeats"]
        )
    if "binary_flat" in wanted:
        parts["binary_flat"] = run_binary_flat(preset["binary_flat"], preset["repeats"])
    if "lsh" in wanted:
        parts["lsh"] = run_lsh(preset["lsh"], preset["repeats"])
        parts["lsh_equal_recall"] = equal_recall(parts["lsh"], preset["recall_targets"])
    stem = harness.result_stem("bench_hamming", env["device_kind"], env["date"])
    harness.write_json(
        args.out / f"{stem}.json",
        {"environment": env, "command": command, "preset": preset, "k": K, **parts},
    )
    text = _markdown(env, preset, parts, command)
    harness.write_text(args.out / f"{stem}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
