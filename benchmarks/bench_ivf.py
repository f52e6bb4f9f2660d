"""IVF search: recall vs QPS over ``nprobe`` for gpuann IVF-Flat / IVF-PQ and faiss itself.

Run from the repository root, as a module::

    python -m benchmarks.bench_ivf --preset quick   # a few minutes on 2 CPU cores
    python -m benchmarks.bench_ivf --preset smoke   # seconds
    python -m benchmarks.bench_ivf --preset full    # 1M x 128, on a GPU machine

Every method searches the *same* faiss index object with the same queries, in the same run,
timed round-robin (:func:`benchmarks.harness.time_interleaved`):

``faiss IVF-Flat`` / ``faiss IVF-PQ``
    ``index.faiss_index.search(numpy queries, k, params=SearchParametersIVF(nprobe))``, the
    faiss call a faiss user makes (on CUDA: torch tensors through ``faiss.contrib.torch_utils``).
``gpuann IVF-Flat`` / ``gpuann IVF-PQ``
    ``index.search(torch queries, k, nprobe=nprobe)``: validation, finite check, faiss, tie
    ordering.
    ``overhead`` is its median time over faiss's on the same index, minus one.
``faiss IVF-PQ+RFlat`` / ``gpuann IVF-PQ+refine``
    faiss ``IndexRefineFlat`` (``k_factor`` 4) over the same IVF-PQ index, and gpuann's
    ``refine=True`` index (``refine_factor`` 4, re-ranking with torch on the device).

Data: a seeded Gaussian mixture (clustered, overlapping clusters); recall@k against exact
ground truth from :func:`gpuann.knn`. Results: ``benchmarks/results/bench_ivf_<device>_<date>``
``.json`` (raw timing samples included) and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

import numpy as np

from benchmarks import harness

__all__ = ["PRESETS", "main", "make_data", "run"]

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "database": 5_000, "queries": 200, "dim": 16, "nlist": 32, "m": 4, "nbits": 6,
        "nprobes": [1, 4], "batches": [100], "repeats": 2, "min_seconds": 0.0,
    },
    "quick": {
        "database": 100_000, "queries": 1_000, "dim": 64, "nlist": 256, "m": 16, "nbits": 8,
        "nprobes": [1, 2, 4, 8, 16, 32, 64], "batches": [100, 1_000], "repeats": 5,
        "min_seconds": 0.3,
    },
    "full": {
        "database": 1_000_000, "queries": 10_000, "dim": 128, "nlist": 4096, "m": 32,
        "nbits": 8, "nprobes": [1, 4, 16, 64, 256], "batches": [100, 1_000, 10_000],
        "repeats": 5, "min_seconds": 0.5,
    },
}  # fmt: skip
K = 10
REFINE_FACTOR = 4


def make_data(n: int, d: int, seed: int = 0, n_clusters: int = 1024) -> np.ndarray:
    """``n`` float32 vectors of a seeded Gaussian mixture (uneven weights and widths)."""
    rs = np.random.default_rng(seed)
    centers = rs.standard_normal((n_clusters, d)).astype("float32")
    labels = rs.choice(n_clusters, n, p=rs.dirichlet(np.ones(n_clusters)))
    scale = 0.6 * rs.uniform(0.5, 1.5, n_clusters).astype("float32")
    out = np.empty((n, d), dtype="float32")
    for r0 in range(0, n, 100_000):  # in blocks: no float64 copy of everything
        lab = labels[r0 : r0 + 100_000]
        noise = rs.standard_normal((lab.size, d), dtype="float32")
        out[r0 : r0 + lab.size] = centers[lab] + scale[lab, None] * noise
    return out


def _build(cfg: dict[str, Any], xb: Any, device: str) -> dict[str, Any]:
    import gpuann

    built, seconds = {}, {}
    for name, make in [
        ("IVF-Flat", lambda: gpuann.IVFFlatIndex(cfg["dim"], cfg["nlist"], device=device)),
        ("IVF-PQ", lambda: gpuann.IVFPQIndex(cfg["dim"], cfg["nlist"], cfg["m"],
                                             nbits=cfg["nbits"], device=device)),
        ("IVF-PQ+refine", lambda: gpuann.IVFPQIndex(cfg["dim"], cfg["nlist"], cfg["m"],
                                                    nbits=cfg["nbits"], device=device,
                                                    refine=True)),
    ]:  # fmt: skip
        start = time.perf_counter()
        index = make()
        index.train(xb)
        index.add(xb)
        built[name], seconds[name] = index, time.perf_counter() - start
        print(f"  built {name} in {seconds[name]:.1f} s: {index!r}", flush=True)
    return {"indexes": built, "build_s": seconds}


def _methods(indexes: dict[str, Any], xb_np: np.ndarray, device: str) -> dict[str, Any]:
    """name -> (search(queries_np, queries_t, nprobe) callable, faiss counterpart or None)."""
    import faiss

    if device.startswith("cuda"):
        import faiss.contrib.torch_utils

    def faiss_search(index):
        def search(q_np, q_t, nprobe):
            q = q_t if device.startswith("cuda") else q_np
            return index.faiss_index.search(q, K, params=faiss.SearchParametersIVF(nprobe=nprobe))

        return search

    def gpuann_search(index, **kw):
        return lambda q_np, q_t, nprobe: index.search(q_t, K, nprobe=nprobe, **kw)

    pqr = indexes["IVF-PQ+refine"]
    refine = faiss.IndexRefineFlat(faiss.index_gpu_to_cpu(pqr.faiss_index)
                                   if device.startswith("cuda") else pqr.faiss_index,
                                   faiss.swig_ptr(xb_np))  # fmt: skip
    refine.k_factor = REFINE_FACTOR

    def faiss_refine(q_np, q_t, nprobe):
        params = faiss.IndexRefineSearchParameters(
            k_factor=REFINE_FACTOR, base_index_params=faiss.SearchParametersIVF(nprobe=nprobe)
        )
        return refine.search(q_np, K, params=params)

    return {
        "faiss IVF-Flat": (faiss_search(indexes["IVF-Flat"]), None),
        "gpuann IVF-Flat": (gpuann_search(indexes["IVF-Flat"]), "faiss IVF-Flat"),
        "faiss IVF-PQ": (faiss_search(indexes["IVF-PQ"]), None),
        "gpuann IVF-PQ": (gpuann_search(indexes["IVF-PQ"]), "faiss IVF-PQ"),
        "faiss IVF-PQ+RFlat (CPU)": (faiss_refine, None),
        "gpuann IVF-PQ+refine": (gpuann_search(pqr, refine_factor=REFINE_FACTOR), None),
        "_keepalive": (refine, None),
    }


def run(preset: str, device: str, threads: int, out: str | None) -> dict[str, Any]:
    """Run ``preset`` on ``device``; write and return the results."""
    import torch

    from gpuann.eval import ground_truth, recall_at_k

    harness.set_threads(threads)
    cfg = PRESETS[preset]
    env = harness.environment_info(device, threads=threads)
    x = make_data(cfg["database"] + cfg["queries"], cfg["dim"])
    xb_np, xq_np = x[: cfg["database"]], x[cfg["database"] :]
    xb, xq = torch.from_numpy(xb_np).to(device), torch.from_numpy(xq_np).to(device)
    truth = ground_truth(xq, xb, K)
    print(f"{preset}: {cfg}", flush=True)
    built = _build(cfg, xb, device)
    import faiss

    harness.set_threads(threads)  # faiss is imported now
    methods = _methods(built["indexes"], xb_np, device)
    methods.pop("_keepalive")
    rows = []
    for nprobe in cfg["nprobes"]:
        found = {name: fn(xq_np, xq, nprobe)[1] for name, (fn, _) in methods.items()}
        recall = {name: recall_at_k(torch.as_tensor(ids), truth) for name, ids in found.items()}
        same = {}
        for name, (_, base) in methods.items():
            if base is not None:
                same[name] = float((torch.as_tensor(found[name]).cpu().sort(1).values
                                    == torch.as_tensor(found[base]).cpu().sort(1).values)
                                   .all(1).float().mean())  # fmt: skip
        for batch in cfg["batches"]:
            q_np, q_t = xq_np[:batch], xq[:batch]
            fns = {
                name: (lambda fn=fn, a=q_np, b=q_t, p=nprobe: fn(a, b, p))
                for name, (fn, _) in methods.items()
            }
            timings = harness.time_interleaved(
                fns, devices=device, repeats=cfg["repeats"], warmup=1,
                min_seconds=cfg["min_seconds"],
            )  # fmt: skip
            for name, (_, base) in methods.items():
                t = timings[name]
                overhead = t.median_s / timings[base].median_s - 1 if base else None
                rows.append({
                    "method": name, "nprobe": nprobe, "batch": batch, "k": K,
                    "median_ms": 1e3 * t.median_s, "qps": batch / t.median_s,
                    "recall": recall[name], "overhead": overhead,
                    "same_ids_as_faiss": same.get(name), "timing": t.to_dict(),
                })  # fmt: skip
            print(f"  nprobe={nprobe:4d} batch={batch:6d} " + "  ".join(
                f"{r['method']}: {r['median_ms']:.2f} ms" for r in rows[-len(methods):]),
                flush=True)  # fmt: skip
    command = "python -m benchmarks.bench_ivf " + shlex.join(sys.argv[1:])
    payload = {
        "benchmark": "bench_ivf", "command": command, "environment": env, "config": cfg,
        "faiss_version": faiss.__version__, "build_s": built["build_s"], "results": rows,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }  # fmt: skip
    if out:
        stem = harness.result_stem("bench_ivf", env["device_kind"], env["date"])
        harness.write_json(f"{out}/{stem}.json", payload)
        harness.write_text(f"{out}/{stem}.md", render_markdown(payload))
        print(f"wrote {out}/{stem}.json and .md")
    return payload


def render_markdown(payload: dict[str, Any]) -> str:
    """The results as Markdown: environment, a recall/QPS table per batch, overheads."""
    env, cfg = payload["environment"], payload["config"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [
        "# bench_ivf: recall vs QPS over nprobe",
        "",
        f"- command: `{payload['command']}`",
        f"- device: {env['device_name']} ({env['device_kind']}), {env['threads']} threads, "
        f"load average {env.get('load_average')}, "
        f"OMP_WAIT_POLICY={payload.get('omp_wait_policy')}",
        f"- versions: {versions}; git {env['git_commit']}; date {env['date']}",
        f"- data: {cfg['database']} x {cfg['dim']} Gaussian mixture, {cfg['queries']} queries, "
        f"k={K}; nlist={cfg['nlist']}, PQ m={cfg['m']} x {cfg['nbits']} bits, "
        f"refine factor {REFINE_FACTOR}",
        "- build (train + add) seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in payload["build_s"].items()),
        "",
    ]
    columns = [
        harness.Column("method", "method", align="left"),
        harness.Column("nprobe", "nprobe"),
        harness.Column("recall", "recall@10", "{:.3f}".format),
        harness.Column("qps", "QPS", "{:,.0f}".format),
        harness.Column("median_ms", "median ms", "{:.2f}".format),
        harness.Column("overhead", "overhead vs faiss", "{:+.1%}".format),
        harness.Column("same_ids_as_faiss", "same ids as faiss", "{:.0%}".format),
    ]
    for batch in cfg["batches"]:
        rows = sorted(
            (r for r in payload["results"] if r["batch"] == batch),
            key=lambda r: (r["method"], r["nprobe"]),
        )
        lines += [f"## batch {batch}", "", harness.markdown_table(rows, columns), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if faiss-gpu)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(harness.REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for torch's and faiss's OpenMP pools (default PASSIVE: idle "
        "threads sleep instead of spinning, which on a shared or 2-core machine otherwise "
        "slows both libraries several-fold); '' leaves the environment as it is",
    )
    args = parser.parse_args(argv)
    if args.omp_wait_policy:
        if "torch" in sys.modules or "faiss" in sys.modules:
            print("warning: --omp-wait-policy has no effect once torch or faiss is imported")
        os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    device = args.device
    if device is None:
        import torch

        from gpuann.ivf._faiss import faiss_gpu_available

        device = "cuda" if torch.cuda.is_available() and faiss_gpu_available() else "cpu"
    return run(args.preset, device, args.threads, args.out or None)


if __name__ == "__main__":
    main()
