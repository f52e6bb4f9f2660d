"""Flat search through ``gpuann.compat.faiss`` against faiss-cpu's ``IndexFlat``, equal threads.

Run from the repository root::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_compat [--threads 2]

Both libraries get the same number of threads (torch's for gpuann, OpenMP's for faiss); the
shim runs on the CPU (``device="cpu"``); ``native`` is the ``FlatIndex`` behind it, called
directly (the shim's own cost is the difference). Each case times both searches round-robin
(:func:`benchmarks.harness.time_interleaved`) and prints medians; ``--json PATH`` also writes
them with the environment.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import harness

#: (queries, database size, dim, k, metric)
CASES = [
    (1, 100_000, 128, 10, "l2"),
    (16, 100_000, 128, 10, "l2"),
    (100, 100_000, 128, 10, "l2"),
    (1000, 100_000, 128, 10, "l2"),
    (100, 100_000, 128, 100, "ip"),
    (1000, 20_000, 384, 10, "ip"),
]


def run(threads: int, repeats: int) -> list[dict]:
    import faiss
    import torch

    import gpuann.compat.faiss as shim

    harness.set_threads(threads)
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    rows = []
    rng = np.random.default_rng(0)
    for nq, nb, d, k, metric in CASES:
        xb = rng.standard_normal((nb, d), dtype=np.float32)
        xq = rng.standard_normal((nq, d), dtype=np.float32)
        theirs = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        ours = shim.IndexFlatL2(d, "cpu") if metric == "l2" else shim.IndexFlatIP(d, "cpu")
        theirs.add(xb)
        ours.add(xb)
        np.testing.assert_array_equal(ours.search(xq[:5], k)[1], theirs.search(xq[:5], k)[1])
        timings = harness.time_interleaved(
            {
                "shim": lambda ours=ours, xq=xq, k=k: ours.search(xq, k),
                "native": lambda ours=ours, xq=xq, k=k: ours.index.search(xq, k),
                "faiss": lambda theirs=theirs, xq=xq, k=k: theirs.search(xq, k),
            },
            repeats=repeats,
            warmup=1,
            min_seconds=0.5,
        )
        row = {
            "Q": nq,
            "N": nb,
            "d": d,
            "k": k,
            "metric": metric,
            "shim_ms": timings["shim"].median_s * 1e3,
            "native_ms": timings["native"].median_s * 1e3,
            "faiss_ms": timings["faiss"].median_s * 1e3,
        }
        row["faiss/shim"] = row["faiss_ms"] / row["shim_ms"]
        rows.append(row)
        print(
            f"Q={nq:5d} N={nb:7d} d={d:4d} k={k:4d} {metric:3s}  shim {row['shim_ms']:9.2f} ms"
            f"  native {row['native_ms']:9.2f} ms  faiss {row['faiss_ms']:9.2f} ms"
            f"  faiss/shim {row['faiss/shim']:.2f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write results and environment here")
    args = parser.parse_args()
    rows = run(args.threads, args.repeats)
    if args.json:
        payload = {"environment": harness.environment_info("cpu", args.threads), "rows": rows}
        harness.write_json(args.json, payload)


if __name__ == "__main__":
    main()
