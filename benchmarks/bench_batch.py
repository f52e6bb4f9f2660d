"""Out-of-core exact search (``gpuann.batch_search`` streaming the database from disk or host
memory) against in-memory search (``gpuann.knn`` with the database resident on the device).

Run from the repository root, as a module::

    python -m benchmarks.bench_batch                 # 1M x 128 float32 (512 MB), 2000 queries
    python -m benchmarks.bench_batch --smoke         # seconds
    python -m benchmarks.bench_batch --database 4000000 --dim 96 --queries 20000 --device cuda

What is measured, each case in a fresh ``spawn`` child (so peak memory is the case's own):

``in-memory``
    ``gpuann.knn(queries, database, k)`` with the database loaded into RAM (CPU) or device
    memory (CUDA) before timing.
``out-of-core (warm)``
    ``gpuann.batch_search(queries, "db.npy", k)``: the database file read chunk by chunk while
    it sits in the page cache.
``out-of-core (cold)``
    The same, with the file evicted from the page cache (``posix_fadvise(DONTNEED)``) before
    every call: rows come from the disk.

The bound: one query chunk of ``B`` rows needs one pass over the database, ``N · d · 4``
bytes, so streaming caps throughput at ``B · bandwidth / (N · d · 4)`` queries/s, where the
bandwidth is the disk's (cold), the page cache's (warm) or, on CUDA, the host-to-device
link's (measured here with pinned buffers). Out-of-core reaches in-memory throughput when the
bound is well above it (compute per byte allows it). Peak memory is what the call adds: resident
set on the CPU (the out-of-core reader uses ``pread``, so file pages are never mapped into the
process), ``max_memory_allocated`` on CUDA.
Results: ``benchmarks/results/bench_batch_<device>_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = ["main", "make_files", "read_bandwidth", "run_case"]

MiB = 1 << 20
DEFAULT_OUT = harness.REPO_ROOT / "benchmarks" / "results"


def make_files(folder: Path, n: int, dim: int, n_queries: int, seed: int = 0) -> dict[str, str]:
    """Seeded clustered float32 vectors written as ``db.npy`` (block by block) and ``q.npy``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32) * 2
    db = np.lib.format.open_memmap(folder / "db.npy", "w+", np.float32, (n, dim))
    for r0 in range(0, n, 262_144):
        rows = min(n, r0 + 262_144) - r0
        noise = rng.standard_normal((rows, dim), dtype=np.float32)
        db[r0 : r0 + rows] = centres[rng.integers(0, 256, rows)] + noise
    db.flush()
    del db
    queries = centres[rng.integers(0, 256, n_queries)] + rng.standard_normal(
        (n_queries, dim), dtype=np.float32
    )
    np.save(folder / "q.npy", queries)
    return {"db": str(folder / "db.npy"), "queries": str(folder / "q.npy")}


def _evict(path: str) -> None:
    """Drop ``path`` from the page cache (clean pages; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_bandwidth(path: str, cold: bool, chunk: int = 64 * MiB) -> float:
    """Bytes per second of a sequential ``pread`` of ``path`` (cold: evicted first)."""
    if cold:
        _evict(path)
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY)
    total, start = 0, time.perf_counter()
    try:
        while got := os.preadv(fd, [view], total):
            total += got
    finally:
        os.close(fd)
    return total / (time.perf_counter() - start)


def _h2d_bandwidth(device: str, nbytes: int = 256 * MiB) -> float | None:
    """Pinned host-to-device copy bandwidth, bytes/s (None on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return None
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dest = torch.empty(nbytes, dtype=torch.uint8, device=device)
    timing = harness.time_function(lambda: dest.copy_(host, non_blocking=True), device=device)
    return nbytes / timing.median_s


def run_case(
    method: str, files: dict[str, str], k: int, device: str, repeats: int, threads: int
) -> dict[str, Any]:
    """One method in this (child) process: timings, peak memory, chunk size and ids."""
    import numpy as np
    import torch

    import gpuann

    harness.set_threads(threads)
    queries = np.load(files["queries"])
    chunk_rows: list[int] = []
    if method == "in-memory":
        database = torch.from_numpy(np.load(files["db"])).to(device)

        def call() -> Any:
            return gpuann.knn(torch.from_numpy(queries).to(device), database, k)
    else:
        cold = method.endswith("(cold)")

        def call() -> Any:
            if cold:
                _evict(files["db"])
            return gpuann.batch_search(
                queries, files["db"], k, progress=False, device=device,
                on_chunk=lambda info: chunk_rows.append(info.stop - info.start),
            )  # fmt: skip

    peak, result = harness.measure_peak_memory(call, device=device)
    timing = harness.time_function(call, device=device, repeats=repeats, warmup=0)
    ids = np.asarray(result.ids.cpu() if isinstance(result.ids, torch.Tensor) else result.ids)
    return {
        "method": method,
        "timing": timing.to_dict(),
        "queries_per_s": len(queries) / timing.median_s,
        "peak": peak.to_dict(),
        "batch_rows": max(chunk_rows) if chunk_rows else len(queries),
        "ids": ids.tolist(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write JSON and Markdown; return the payload."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=int, default=1_000_000, help="rows N")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=None, help="for the .npy files")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.database, args.queries, args.repeats = 20_000, 64, 1
    env = harness.environment_info(args.device, args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        files = make_files(Path(tmp), args.database, args.dim, args.queries)
        db_bytes = os.path.getsize(files["db"])
        bandwidth = {
            "disk_cold_Bps": read_bandwidth(files["db"], cold=True),
            "page_cache_Bps": read_bandwidth(files["db"], cold=False),
            "h2d_pinned_Bps": harness.run_isolated(_h2d_bandwidth, args.device),
        }
        rows = []
        methods = ["in-memory", "out-of-core (warm)", "out-of-core (cold)"]
        for method in methods:
            rows.append(
                harness.run_isolated(
                    run_case, method, files, args.k, args.device, args.repeats, args.threads,
                    env=harness.EXACT_RSS_ENV,
                )
            )  # fmt: skip
    reference = rows[0].pop("ids")
    for row in rows[1:]:
        row["ids_equal_in_memory"] = row.pop("ids") == reference
        link = bandwidth["h2d_pinned_Bps"] or float("inf")
        source = bandwidth["disk_cold_Bps" if "cold" in row["method"] else "page_cache_Bps"]
        row["bound_queries_per_s"] = row["batch_rows"] * min(link, source) / db_bytes
        row["vs_in_memory"] = row["queries_per_s"] / rows[0]["queries_per_s"]
    for row in rows:
        row["median_s"] = row["timing"]["median_s"]
        row["peak_mib"] = row["peak"]["bytes"] / MiB
    payload = {
        "benchmark": "bench_batch",
        "command": "python -m benchmarks.bench_batch " + shlex.join(argv or sys.argv[1:]),
        "environment": env,
        "workload": {
            "database_rows": args.database,
            "dim": args.dim,
            "queries": args.queries,
            "k": args.k,
            "database_bytes": db_bytes,
            "dtype": "float32",
        },
        "bandwidth": bandwidth,
        "results": rows,
    }
    stem = harness.result_stem("bench_batch", env["device_kind"], env["date"])
    harness.write_json(args.out / f"{stem}.json", payload)
    columns = [
        harness.Column("method", "method", align="left"),
        harness.Column("median_s", "median s", "{:.2f}".format),
        harness.Column("queries_per_s", "queries/s", "{:,.0f}".format),
        harness.Column("vs_in_memory", "vs in-memory", "{:.0%}".format),
        harness.Column("bound_queries_per_s", "streaming bound q/s", "{:,.0f}".format),
        harness.Column("batch_rows", "queries per pass"),
        harness.Column("peak_mib", "peak added MiB", "{:.0f}".format),
        harness.Column("ids_equal_in_memory", "ids == in-memory"),
    ]
    gib = 1 << 30
    text = (
        f"# bench_batch on {env['device_name']} ({env['device_kind']}, {args.threads} threads)\n\n"
        f"`{payload['command']}`\n\n"
        f"Database {args.database:,} x {args.dim} float32 ({db_bytes / gib:.2f} GiB), "
        f"{args.queries:,} queries, k={args.k}; medians of {args.repeats} runs.\n"
        f"Read bandwidth: disk (cold) {bandwidth['disk_cold_Bps'] / gib:.2f} GiB/s, page cache "
        f"{bandwidth['page_cache_Bps'] / gib:.2f} GiB/s"
        + (
            f", host-to-device (pinned) {bandwidth['h2d_pinned_Bps'] / gib:.1f} GiB/s"
            if bandwidth["h2d_pinned_Bps"]
            else ""
        )
        + ".\n\n"
        + harness.markdown_table(rows, columns)
        + "\n\nPeak memory: resident set growth (CPU) or max_memory_allocated (CUDA) during "
        "one call, inputs already loaded (the in-memory row's database is not counted).\n"
    )
    harness.write_text(args.out / f"{stem}.md", text)
    print(text)
    return payload


if __name__ == "__main__":
    main()
