"""HNSW search: recall@10 and QPS over ``ef_search``, gpuann's HNSWIndex vs faiss itself.

Run from the repository root, as a module::

    OMP_NUM_THREADS=2 python -m benchmarks.bench_hnsw --preset quick   # a few minutes, 2 cores
    python -m benchmarks.bench_hnsw --preset smoke                     # seconds

Both methods search the *same* faiss ``IndexHNSWFlat`` object with the same queries, at the
same thread count, timed round-robin (:func:`benchmarks.harness.time_interleaved`):

``faiss HNSW``
    ``index.faiss_index.search(numpy queries, k, params=SearchParametersHNSW(efSearch=ef))``,
    the call a faiss user makes.
``gpuann HNSW``
    ``index.search(torch queries, k, ef_search=ef)``: validation, finite check, cosine
    normalisation, faiss, label → id mapping, tie ordering. ``overhead`` is its median time
    over faiss's, minus one.

Data sets:

``minilm``
    The demo's cached MiniLM (all-MiniLM-L6-v2) embeddings of the standard library's
    docstrings (384 dims, cosine; queries: the demo's 500 name queries). Skipped, and said so,
    when the cache is absent (run ``python -m gpuann demo`` once to make it).
``gauss384``
    A seeded Gaussian mixture, 384 dims, l2: a larger database than the demo's.

Thread pools: torch and faiss each bring their own OpenMP runtime. With as many threads as
cores, the pool that ran last keeps spinning (``OMP_WAIT_POLICY=ACTIVE``-like default) and
starves the other, so alternating torch and faiss calls slows *both* many times over. Each
data set is therefore measured twice, each in a fresh process: with the default wait policy
and with ``OMP_WAIT_POLICY=PASSIVE``.

Recall@10 is against exact float64 ground truth. Results:
``benchmarks/results/bench_hnsw_<device>_<date>.json`` (raw samples included) and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness

__all__ = ["PRESETS", "main", "run"]

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "gauss_database": 3_000, "gauss_queries": 100, "efs": [16, 64], "batches": [100],
        "repeats": 2, "min_seconds": 0.0, "minilm": False,
    },
    "quick": {
        "gauss_database": 50_000, "gauss_queries": 1_000, "efs": [16, 32, 64, 128],
        "batches": [1_000, 10], "repeats": 7, "min_seconds": 0.5, "minilm": True,
    },
}  # fmt: skip
K = 10
M = 32
EF_CONSTRUCTION = 40


def minilm_embeddings() -> tuple[Any, Any, str] | None:
    """The demo's cached ``(documents, name queries, cache path)``, or None without a cache."""
    import random

    import torch

    from gpuann.demo.cache import cache_dir, cache_key
    from gpuann.demo.corpus import stdlib_docstrings
    from gpuann.demo.model import MODEL_NAME
    from gpuann.demo.run import _document, _name_query

    corpus = stdlib_docstrings()
    texts = [_document(q, d) for q, d in corpus]
    sample = random.Random(0).sample(range(len(corpus)), min(500, len(corpus)))
    names = [_name_query(corpus[i][0]) for i in sample]
    path = cache_dir() / f"embeddings-{cache_key(MODEL_NAME, [*texts, chr(0), *names])}.pt"
    if not path.is_file():
        return None
    tensors = torch.load(path, map_location="cpu", weights_only=True)
    return tensors["documents"].float(), tensors["names"].float(), str(path)


def minilm_or_note(notes: list[str]) -> tuple[Any, Any, str] | None:
    """:func:`minilm_embeddings`, noting in ``notes`` when they are absent (skipped)."""
    found = minilm_embeddings()
    if found is None:
        notes.append("minilm skipped: no cached demo embeddings (run `python -m gpuann demo`)")
    return found


def gauss(n: int, nq: int, d: int = 384, seed: int = 0) -> tuple[Any, Any]:
    """Seeded Gaussian mixture (100 overlapping clusters) and queries from the same mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, d)).astype(np.float32)
    x = centres[rng.integers(0, 100, n)] + rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.integers(0, 100, nq)] + rng.standard_normal((nq, d)).astype(np.float32)
    return x, q


def exact_ids(x: Any, q: Any, k: int, metric: str) -> np.ndarray:
    """Exact top-k ids in float64 (torch matmul; blocks of 256 queries)."""
    import torch

    xd, qd = torch.as_tensor(x).double(), torch.as_tensor(q).double()
    if metric == "cosine":
        xd, qd = torch.nn.functional.normalize(xd, dim=1), torch.nn.functional.normalize(qd, dim=1)
    out = []
    for block in qd.split(256):
        scores = block @ xd.T
        if metric == "l2":
            scores = 2 * scores - (xd * xd).sum(dim=1)  # larger is nearer
        out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k nearest found."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def bench_dataset(name: str, x: Any, q: Any, metric: str, cfg: dict, threads: int) -> list[dict]:
    """Rows of results (one per ef_search and batch size) for one data set."""
    import faiss
    import torch

    from gpuann.hnsw import HNSWIndex

    xt, qt = torch.as_tensor(x), torch.as_tensor(q)
    harness.set_threads(threads)
    start = time.perf_counter()
    index = HNSWIndex(xt.shape[1], M=M, ef_construction=EF_CONSTRUCTION, metric=metric)
    index.add(xt)
    build_s = time.perf_counter() - start
    truth = exact_ids(xt, qt, K, metric)
    q_faiss = qt if metric != "cosine" else torch.nn.functional.normalize(qt, dim=1)
    q_faiss = np.ascontiguousarray(q_faiss.numpy())
    raw = index.faiss_index
    rows = []
    for ef in cfg["efs"]:
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        _, found = index.search(qt, K, ef_search=ef)
        _, found_faiss = raw.search(q_faiss, K, params=params)
        for batch in cfg["batches"]:
            qb, qfb = qt[:batch], q_faiss[:batch]
            fns = {
                "faiss": lambda qfb=qfb, params=params: raw.search(qfb, K, params=params),
                "gpuann": lambda qb=qb, ef=ef: index.search(qb, K, ef_search=ef),
            }
            timings = harness.time_interleaved(
                fns, repeats=cfg["repeats"], min_seconds=cfg["min_seconds"]
            )
            n = qb.shape[0]
            rows.append(
                {
                    "dataset": name,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                    "database": xt.shape[0],
                    "dim": xt.shape[1],
                    "metric": metric,
                    "ef_search": ef,
                    "batch": n,
                    "recall_at_10": recall(found.numpy(), truth),
                    "recall_at_10_faiss": recall(found_faiss, truth),
                    "qps_faiss": n / timings["faiss"].median_s,
                    "qps_gpuann": n / timings["gpuann"].median_s,
                    "overhead": timings["gpuann"].median_s / timings["faiss"].median_s - 1,
                    "build_s": build_s,
                    "timings": {key: t.to_dict() for key, t in timings.items()},
                }
            )
            r = rows[-1]
            print(
                f"{r['omp_wait_policy']:8s} {name:9s} ef={ef:4d} batch={n:5d} "
                f"recall@10={r['recall_at_10']:.4f} faiss {r['qps_faiss']:9.0f} q/s  "
                f"gpuann {r['qps_gpuann']:9.0f} q/s  overhead {100 * r['overhead']:+.1f}%",
                flush=True,
            )
    return rows


def run(preset: str, threads: int) -> dict[str, Any]:
    """Run every data set of ``preset``; returns the result payload."""
    cfg = PRESETS[preset]
    notes = []
    results = []
    if cfg["minilm"]:
        found = minilm_or_note(notes)
        if found is not None:
            docs, names, path = found
            notes.append(f"minilm: {docs.shape[0]} documents, {names.shape[0]} queries ({path})")
            results += bench_dataset("minilm", docs, names, "cosine", cfg, threads)
    x, q = gauss(cfg["gauss_database"], cfg["gauss_queries"])
    results += bench_dataset("gauss384", x, q, "l2", cfg, threads)
    return {
        "benchmark": "bench_hnsw",
        "preset": preset,
        "environment": harness.environment_info("cpu", threads=threads),
        "parameters": {"k": K, "M": M, "ef_construction": EF_CONSTRUCTION, **cfg},
        "notes": notes,
        "results": results,
    }


def markdown(payload: dict[str, Any]) -> str:
    """The Markdown report of a result payload."""
    columns = [
        harness.Column("omp_wait_policy", "OMP_WAIT_POLICY", align="left"),
        harness.Column("dataset", "data", align="left"),
        harness.Column("database", "n"),
        harness.Column("ef_search", "ef_search"),
        harness.Column("batch", "batch"),
        harness.Column("recall_at_10", "recall@10", "{:.4f}".format),
        harness.Column("qps_faiss", "faiss q/s", "{:.0f}".format),
        harness.Column("qps_gpuann", "gpuann q/s", "{:.0f}".format),
        harness.Column("overhead", "overhead", lambda v: f"{100 * v:+.1f}%"),
    ]
    env = payload["environment"]
    threads = env.get("threads")
    return (
        f"# bench_hnsw ({payload['preset']}), {env.get('date', '')}\n\n"
        f"`{payload['command']}` on {env.get('device_name', 'CPU')} "
        f"({env.get('cpu_count')} cores, load average {env.get('load_average')} at the start), "
        f"{threads} threads (faiss and torch alike); HNSW M={M}, "
        f"ef_construction={EF_CONSTRUCTION}, k={K}; medians of round-robin runs.\n\n"
        "`overhead` is gpuann's median time per call over faiss's on the same index, minus "
        "one. With the default OpenMP wait policy, torch's and faiss's thread pools spin against "
        "each other on a machine with as many threads as cores, and both slow down several "
        "times over: those rows measure that contention, not the wrapper. "
        "`OMP_WAIT_POLICY=PASSIVE` rows measure the wrapper.\n\n"
        + "".join(f"- {note}\n" for note in payload["notes"])
        + "\n"
        + harness.markdown_table(payload["results"], columns)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.preset_parser(__doc__, PRESETS)
    parser.add_argument("--policies", default="default,PASSIVE", help="OMP_WAIT_POLICY values")
    parser.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_json is not None:
        harness.write_json(args.child_json, run(args.preset, args.threads))
        return 0
    payload: dict[str, Any] = {}
    for policy in args.policies.split(","):
        env = {**os.environ}
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        with tempfile.TemporaryDirectory() as tmp:
            child = Path(tmp) / "result.json"
            command = [sys.executable, "-m", "benchmarks.bench_hnsw", "--preset", args.preset]
            command += ["--threads", str(args.threads), "--child-json", str(child)]
            subprocess.run(command, env=env, check=True, cwd=harness.REPO_ROOT)
            part = json.loads(child.read_text(encoding="utf-8"))
        if not payload:
            payload = part
        else:
            payload["results"] += part["results"]
    args_given = sys.argv[1:] if argv is None else argv
    payload["command"] = "python -m benchmarks.bench_hnsw " + shlex.join(args_given)
    stem = harness.result_stem("bench_hnsw", "cpu")
    harness.write_json(args.out / f"{stem}.json", payload)
    text = markdown(payload)
    harness.write_text(args.out / f"{stem}.md", text)
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
