"""Fused Triton k-NN vs torch ``mm + topk`` vs faiss-gpu ``knn_gpu``, and batched top-k.

Run from the repository root on a CUDA machine, as a module (``benchmarks`` is a package)::

    python -m benchmarks.bench_triton_knn                 # the full grid (skips what cannot fit)
    python -m benchmarks.bench_triton_knn --queries 4096 --database 1000000 --dims 128 \
        --k 10 --dtypes float16                          # one case
    python -m benchmarks.bench_triton_knn --smoke         # CPU, Triton interpreter, seconds

Grid: Q ∈ {1, 16, 256, 4096, 65536}, N ∈ {1e5, 1e6, 1e7}, d ∈ {64, 128, 768},
k ∈ {1, 10, 100, 1000, 4096}, float16 and bfloat16 storage, squared L2 (``--metrics ip`` for
inner product). Queries are stored in the database's dtype, as faiss-gpu does with float16.

Methods, timed in the same run on the same seeded data (``triton.testing.do_bench`` medians
through ``benchmarks.harness``):

``triton``
    gpuann's Triton backend (fused distance + top-k, split-N merge; k > 2048 takes its tiled
    torch path). Database norms precomputed, as ``FlatIndex`` keeps them. The first call
    (autotuning, compilation) is excluded; ``GPUANN_AUTOTUNE=0`` times the fixed configs.
``torch``
    What a user writes with torch alone: ``addmm`` (L2, precomputed norms) or ``mm`` in the
    storage dtype (cuBLAS, 16-bit scores) and ``torch.topk``, in query chunks whose score
    matrix fits ``--torch-chunk-gib`` (counted at 4 bytes a score).
``faiss``
    ``faiss.knn_gpu`` on torch tensors (``faiss.contrib.torch_utils``) when faiss-gpu imports;
    faiss refuses k > 2048 (recorded as an error).
``triton_open`` (k >= 256 only)
    ``triton`` with ``GPUANN_TRITON_PRESET=off``: the fused kernel without preset thresholds,
    its threshold open at the start of every split, for an A/B of the presets in one run.

Each case also reports its roofline time, ``max(2·Q·N·d / peak FLOP/s, bytes / bandwidth)``
(bytes: database, queries and results once), with both ceilings measured at start-up on this
device (a large ``mm`` in the case's dtype, a large copy), and each method's fraction of it.
Cases whose roofline time exceeds ``--max-case-seconds`` or whose memory does not fit are
skipped (listed with the reason). The batched top-k part times ``gpuann.batched_topk`` against
``torch.topk`` on rows of 1e5 and 1e6 entries with k ≤ 256.

Results: ``<out>/bench_triton_knn_<device kind>_<date>.json`` (device, versions, date, ceilings,
raw samples) and ``.md``, rewritten after every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = ["Case", "main", "measure_ceilings", "plan_cases", "roofline_seconds"]

GRID = {
    "queries": [1, 16, 256, 4096, 65536],
    "database": [100_000, 1_000_000, 10_000_000],
    "dims": [64, 128, 768],
    "k": [1, 10, 100, 1000, 4096],
    "dtypes": ["float16", "bfloat16"],
    "metrics": ["l2"],
}
SMOKE = {
    "queries": [3],
    "database": [300],
    "dims": [16],
    "k": [5],
    "dtypes": ["float16"],
    "metrics": ["l2"],
}
TOPK_GRID = {"rows": [1, 64, 1024], "n": [100_000, 1_000_000], "k": [1, 16, 64, 256]}
TOPK_SMOKE = {"rows": [2], "n": [200], "k": [3]}
METHODS = ("triton", "torch", "faiss", "triton_open")
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Case:
    """One k-NN shape."""

    queries: int
    database: int
    dim: int
    k: int
    dtype: str
    metric: str

    @property
    def flops(self) -> float:
        return 2.0 * self.queries * self.database * self.dim

    def bytes_moved(self, itemsize: int) -> float:
        """Database and queries read once, results written once."""
        return (self.database + self.queries) * self.dim * itemsize + self.queries * self.k * 12


def roofline_seconds(case: Case, itemsize: int, ceilings: dict[str, float]) -> float:
    """The case's lower bound: ``max(FLOPs / peak, bytes / bandwidth)``."""
    peak = ceilings[f"flops_{case.dtype}"]
    return max(case.flops / peak, case.bytes_moved(itemsize) / ceilings["bytes_per_s"])


def plan_cases(
    grid: dict[str, list[Any]],
    ceilings: dict[str, float],
    memory_bytes: int,
    max_case_seconds: float,
) -> tuple[list[Case], list[dict[str, Any]]]:
    """Cases to run, and the skipped ones with their reasons."""
    cases, skipped = [], []
    for q, n, d, k, dtype, metric in itertools.product(
        grid["queries"], grid["database"], grid["dims"], grid["k"], grid["dtypes"], grid["metrics"]
    ):
        case = Case(q, n, d, k, dtype, metric)
        need = case.bytes_moved(2) + n * 4 + 2 * q * k * 12
        ideal = roofline_seconds(case, 2, ceilings)
        reason = None
        if k > n:
            reason = "k > N"
        elif need > 0.8 * memory_bytes:
            reason = f"needs {need / GiB:.1f} GiB"
        elif ideal > max_case_seconds:
            reason = f"roofline time {ideal:.1f} s > --max-case-seconds"
        if reason:
            skipped.append({**dataclasses.asdict(case), "reason": reason})
        else:
            cases.append(case)
    return cases, skipped


def measure_ceilings(device: str, dtypes: Sequence[str], smoke: bool) -> dict[str, Any]:
    """Peak FLOP/s per dtype (a square ``mm``) and copy bandwidth, measured on ``device``."""
    import torch

    size = 256 if smoke else 8192
    out: dict[str, Any] = {}
    for name in dtypes:
        a = torch.randn(size, size, device=device).to(getattr(torch, name))
        b = torch.randn(size, size, device=device).to(a.dtype)
        t = harness.time_function(lambda a=a, b=b: a @ b, device=device, repeats=3)
        out[f"flops_{name}"] = 2.0 * size**3 / t.median_s
    src = torch.empty((1 << 24) if smoke else (1 << 30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = harness.time_function(lambda: dst.copy_(src), device=device, repeats=3)
    out["bytes_per_s"] = 2.0 * src.numel() / t.median_s  # read + write
    out["method"] = f"{size}x{size} mm per dtype; copy of {src.numel() / GiB:.3f} GiB"
    return out


def _make_data(case: Case, device: str):
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    dtype = getattr(torch, case.dtype)
    database = torch.randn(case.database, case.dim, device=device, generator=gen).to(dtype)
    queries = torch.randn(case.queries, case.dim, device=device, generator=gen).to(dtype)
    return queries, database


def _methods(case: Case, queries, database, chunk_bytes: int) -> dict[str, Callable[[], Any]]:
    """The timed callables, each returning ``(distances, ids)``."""
    import torch

    from gpuann.backends.base import SearchRequest
    from gpuann.backends.dispatch import get_backend
    from gpuann.metrics import Metric

    l2 = case.metric == "l2"
    sqnorms = database.float().pow(2).sum(dim=1) if l2 else None
    request = SearchRequest(
        queries, database, case.k, Metric(case.metric), sqnorms, None, memory_budget=4 * GiB
    )
    triton_backend = get_backend("triton")
    chunk = max(1, min(case.queries, chunk_bytes // (4 * case.database)))
    half_norms = sqnorms.to(database.dtype) if l2 else None

    def torch_mm_topk():
        outs = []
        for q0 in range(0, case.queries, chunk):
            q = queries[q0 : q0 + chunk]
            if l2:
                scores = torch.addmm(half_norms, q, database.T, alpha=-2.0)
            else:
                scores = torch.mm(q, database.T)
            outs.append(torch.topk(scores, case.k, dim=1, largest=not l2))
        return torch.cat([o.values for o in outs]), torch.cat([o.indices for o in outs])

    fns: dict[str, Callable[[], Any]] = {
        "triton": lambda: triton_backend.search(request),
        "torch": torch_mm_topk,
    }
    from gpuann._triton.knn_plan import PRESET_MIN_K

    if case.k >= PRESET_MIN_K:

        def triton_open():
            before = os.environ.get("GPUANN_TRITON_PRESET")
            os.environ["GPUANN_TRITON_PRESET"] = "off"
            try:
                return triton_backend.search(request)
            finally:
                if before is None:
                    del os.environ["GPUANN_TRITON_PRESET"]
                else:
                    os.environ["GPUANN_TRITON_PRESET"] = before

        fns["triton_open"] = triton_open
    faiss_fn = _faiss_knn(case, queries, database)
    if faiss_fn is not None:
        fns["faiss"] = faiss_fn
    return fns


def _faiss_knn(case: Case, queries, database) -> Callable[[], Any] | None:
    try:
        import faiss
        import faiss.contrib.torch_utils  # lets knn_gpu take torch tensors
    except ImportError:
        return None
    if not hasattr(faiss, "StandardGpuResources"):
        return None
    resources = faiss.StandardGpuResources()
    metric = faiss.METRIC_L2 if case.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    return lambda: faiss.knn_gpu(resources, queries, database, case.k, metric=metric)


def _agreement(ids, reference) -> float:
    """Fraction of ids found in the reference's row, averaged (near-ties make it < 1)."""
    if ids.numel() == 0:
        return 1.0
    return float((ids[:, :, None] == reference[:, None, :]).any(dim=2).float().mean())


def run_knn(case: Case, device: str, ceilings, args) -> dict[str, Any]:
    """Time every method on one case; record medians, raw samples and roofline fractions."""
    import torch

    queries, database = _make_data(case, device)
    fns = _methods(case, queries, database, int(args.torch_chunk_gib * GiB))
    row: dict[str, Any] = dataclasses.asdict(case)
    ideal = roofline_seconds(case, database.element_size(), ceilings)
    row["roofline_s"] = ideal
    results = {}
    for name in args.methods:
        if name not in fns:
            row[f"{name}_error"] = "not available"
            continue
        try:
            results[name] = fns[name]()  # warm-up: compilation and autotuning happen here
            timing = harness.time_function(fns[name], device=device, repeats=args.repeats)
        except Exception as exc:  # e.g. faiss k > 2048, out of memory
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        row[f"{name}_s"] = timing.median_s
        row[f"{name}_roofline_fraction"] = ideal / timing.median_s
        row[f"{name}_timing"] = timing.to_dict()
    if "triton" in results and "torch" in results:
        row["triton_id_agreement_with_torch"] = _agreement(
            results["triton"][1], results["torch"][1]
        )
    if "triton_s" in row and "torch_s" in row:
        row["speedup_vs_torch"] = row["torch_s"] / row["triton_s"]
    if "triton_s" in row and "faiss_s" in row:
        row["speedup_vs_faiss"] = row["faiss_s"] / row["triton_s"]
    if "triton_s" in row and "triton_open_s" in row:
        row["speedup_of_presets"] = row["triton_open_s"] / row["triton_s"]
    return row


def run_topk(rows: int, n: int, k: int, device: str, args) -> dict[str, Any]:
    """``gpuann.batched_topk`` (Triton) vs ``torch.topk`` on a (rows, n) float32 matrix."""
    import torch

    import gpuann

    x = torch.randn(rows, n, device=device, generator=torch.Generator(device).manual_seed(0))
    fns = {
        "triton": lambda: gpuann.batched_topk(x, k, backend="triton"),
        "torch": lambda: torch.topk(x, k, dim=1, largest=False),
    }
    row: dict[str, Any] = {"rows": rows, "n": n, "k": k, "dtype": "float32"}
    for name, fn in fns.items():
        fn()
        timing = harness.time_function(fn, device=device, repeats=args.repeats)
        row[f"{name}_s"] = timing.median_s
        row[f"{name}_timing"] = timing.to_dict()
    row["speedup_vs_torch"] = row["torch_s"] / row["triton_s"]
    return row


COLUMNS = [
    harness.Column("queries", "Q"),
    harness.Column("database", "N"),
    harness.Column("dim", "d"),
    harness.Column("k", "k"),
    harness.Column("dtype", "dtype", align="left"),
    harness.Column("triton_s", "triton ms", lambda s: f"{1e3 * s:.3f}"),
    harness.Column("torch_s", "torch ms", lambda s: f"{1e3 * s:.3f}"),
    harness.Column("faiss_s", "faiss ms", lambda s: f"{1e3 * s:.3f}"),
    harness.Column("triton_open_s", "triton, no presets ms", lambda s: f"{1e3 * s:.3f}"),
    harness.Column("speedup_vs_torch", "× torch", "{:.2f}".format),
    harness.Column("triton_roofline_fraction", "triton % roofline", lambda f: f"{100 * f:.1f}"),
]
TOPK_COLUMNS = [
    harness.Column("rows", "rows"),
    harness.Column("n", "n"),
    harness.Column("k", "k"),
    harness.Column("triton_s", "triton ms", lambda s: f"{1e3 * s:.3f}"),
    harness.Column("torch_s", "torch.topk ms", lambda s: f"{1e3 * s:.3f}"),
    harness.Column("speedup_vs_torch", "× torch", "{:.2f}".format),
]


def _csv(kind: type) -> Callable[[str], list[Any]]:
    return lambda text: [kind(float(v)) if kind is int else kind(v) for v in text.split(",")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny case on the CPU (interpreter)")
    p.add_argument("--queries", type=_csv(int), help="Q values, e.g. 1,4096")
    p.add_argument("--database", type=_csv(int), help="N values, e.g. 1e6,1e7")
    p.add_argument("--dims", type=_csv(int), help="d values, e.g. 128,768")
    p.add_argument("--k", type=_csv(int), help="k values, e.g. 10,1000")
    p.add_argument("--dtypes", type=_csv(str), help="float16 and/or bfloat16")
    p.add_argument("--metrics", type=_csv(str), help="l2 and/or ip")
    p.add_argument("--methods", type=_csv(str), default=list(METHODS), help="triton,torch,faiss")
    p.add_argument("--no-knn", action="store_true", help="skip the k-NN grid")
    p.add_argument("--no-topk", action="store_true", help="skip the batched top-k part")
    p.add_argument("--repeats", type=int, default=5, help="minimum timed calls per method")
    p.add_argument("--max-case-seconds", type=float, default=2.0, help="skip slower rooflines")
    p.add_argument("--torch-chunk-gib", type=float, default=4.0, help="torch score chunk")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    if unknown := set(args.methods) - set(METHODS):
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        # Must precede the first import of triton (nothing above imports it).
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["GPUANN_AUTOTUNE"] = "0"
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            "bench_triton_knn needs a CUDA device (none found). For a CPU check that the script "
            "works, run: python -m benchmarks.bench_triton_knn --smoke",
            file=sys.stderr,
        )
        return 2
    device = "cpu" if args.smoke else "cuda"
    grid = dict(SMOKE if args.smoke else GRID)
    grid.update({a: getattr(args, a) for a in GRID if getattr(args, a) is not None})
    topk_grid = TOPK_SMOKE if args.smoke else TOPK_GRID
    if args.smoke:
        args.repeats = 1
        args.methods = [m for m in args.methods if m != "faiss"]
    out = args.out or (
        Path(tempfile.mkdtemp()) if args.smoke else harness.REPO_ROOT / "benchmarks" / "results"
    )
    env = harness.environment_info(device)
    env["interpreter"] = args.smoke
    env["autotune"] = os.environ.get("GPUANN_AUTOTUNE", "1") != "0"
    ceilings = measure_ceilings(device, grid["dtypes"], args.smoke)
    if device == "cuda":
        memory = torch.cuda.mem_get_info()[0]
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    cases, skipped = plan_cases(grid, ceilings, memory, args.max_case_seconds)
    stem = harness.result_stem(
        "bench_triton_knn" + ("_smoke" if args.smoke else ""), env["device_kind"], env["date"]
    )
    payload: dict[str, Any] = {
        "environment": env,
        "ceilings": ceilings,
        "knn": [],
        "knn_skipped": skipped,
        "topk": [],
    }

    def save() -> None:
        harness.write_json(out / f"{stem}.json", payload)
        text = "## k-NN\n\n" + harness.markdown_table(payload["knn"], COLUMNS)
        text += "\n\n## batched top-k\n\n" + harness.markdown_table(payload["topk"], TOPK_COLUMNS)
        harness.write_text(out / f"{stem}.md", text + "\n")

    print(f"{len(cases)} k-NN cases ({len(skipped)} skipped); ceilings {ceilings}", flush=True)
    for case in [] if args.no_knn else cases:
        payload["knn"].append(run_knn(case, device, ceilings, args))
        print(harness.markdown_table(payload["knn"][-1:], COLUMNS).splitlines()[-1], flush=True)
        save()
    if not args.no_topk:
        for rows, n, k in itertools.product(topk_grid["rows"], topk_grid["n"], topk_grid["k"]):
            if rows * n * 4 > 0.5 * memory:
                continue
            payload["topk"].append(run_topk(rows, n, k, device, args))
            print(harness.markdown_table(payload["topk"][-1:], TOPK_COLUMNS).splitlines()[-1])
            save()
    save()
    print(f"results: {out / stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
