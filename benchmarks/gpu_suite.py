"""One prepared GPU run: CUDA tests, headline kernel timings, baselines — one process, ≤ 8 min.

Run from the repository root on a CUDA machine::

    python -m benchmarks.gpu_suite --out DIR            # everything, within --budget-s (480)
    python -m benchmarks.gpu_suite --out DIR --dry-run  # any machine: the plan, nothing timed

Sections, in order, each with a share of the budget (a section stops starting new cases when
its share is spent, and the run stops when the whole budget is):

1. ``tests``: ``pytest -m cuda`` in this process (pass/fail/skip per test).
2. ``aot_vs_device``: registers and spills of the default fused kernels as the driver reports
   them (``n_regs``/``n_spills``), next to the ahead-of-time compile of the same launch.
3. ``knn``: the headline rows of ``benchmarks.bench_triton_knn`` — fused Triton vs torch
   ``mm + topk`` (and faiss ``knn_gpu`` when importable) vs the roofline measured on the same
   GPU: Q ∈ {1, 256, 4096, 16384}, N = 10⁶, d ∈ {128, 768}, k ∈ {10, 100, 1000},
   float16 / bfloat16 / float32, most informative first.
4. ``topk``: ``gpuann.batched_topk`` (Triton) vs ``torch.topk``.
5. ``hamming``: the Hamming kernel vs its torch fallback (``gpuann.binary.hamming``).
6. ``ivf_pq``: ``gpuann.IVFPQIndex`` through faiss-gpu, when faiss has GPU support.

Writes ``DIR/gpu_suite_<device kind>_<date>.json`` (device, versions, date, raw timings) and
``.md``, rewritten after every section. Without a CUDA device it prints why and exits with
status 2 (``--dry-run`` still writes the plan).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = ["SECTIONS", "knn_cases", "main", "parse_args"]

#: Section name → share of the budget.
SECTIONS = {
    "tests": 0.20,
    "aot_vs_device": 0.05,
    "knn": 0.45,
    "topk": 0.10,
    "hamming": 0.08,
    "ivf_pq": 0.12,
}
KNN_AXES = {
    "queries": (4096, 256, 1, 16384),
    "dims": (128, 768),
    "k": (10, 100, 1000),
    "dtypes": ("float16", "bfloat16", "float32"),
}
TOPK_CASES = ((1024, 100_000, 16), (64, 1_000_000, 64), (1024, 100_000, 256), (1, 1_000_000, 1))
HAMMING_CASES = ((4096, 1_000_000, 8, 10), (4096, 1_000_000, 8, 100), (1, 1_000_000, 8, 10))
N_ROWS = 1_000_000


def knn_cases() -> list[Any]:
    """Headline k-NN cases, most informative first (the headline shape leads)."""
    from benchmarks.bench_triton_knn import Case

    out = []
    for q, d, k, dtype in itertools.product(*KNN_AXES.values()):
        out.append(Case(q, N_ROWS, d, k, dtype, "l2"))
    # Q=4096/d=128/k=10/fp16 first, then by how far each axis is from it.
    return sorted(
        out,
        key=lambda c: (
            KNN_AXES["queries"].index(c.queries)
            + KNN_AXES["dims"].index(c.dim)
            + KNN_AXES["k"].index(c.k)
            + KNN_AXES["dtypes"].index(c.dtype)
        ),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and Markdown")
    p.add_argument("--budget-s", type=float, default=480.0, help="whole run, seconds (480)")
    p.add_argument("--dry-run", action="store_true", help="write the plan, time nothing")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of sections")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per method")
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; choose from {list(SECTIONS)}")
    return args


@dataclasses.dataclass
class _Clock:
    budget_s: float
    start: float = dataclasses.field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def section_deadline(self, share: float) -> float:
        return time.monotonic() + min(share * self.budget_s, max(self.left(), 0.0))


def _plan() -> dict[str, Any]:
    return {
        "sections": SECTIONS,
        "knn_cases": [dataclasses.asdict(c) for c in knn_cases()],
        "topk_cases": [dict(zip(("rows", "n", "k"), c, strict=True)) for c in TOPK_CASES],
        "hamming_cases": [
            dict(zip(("queries", "n", "words", "k"), c, strict=True)) for c in HAMMING_CASES
        ],
    }


# ---------------------------------------------------------------------------- sections
class _Collector:
    """pytest plugin: one row per test outcome."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            row = {"test": report.nodeid, "outcome": report.outcome, "seconds": report.duration}
            if report.outcome == "failed":
                row["message"] = str(report.longrepr)[-1500:]
            self.rows.append(row)


def run_tests(deadline: float) -> dict[str, Any]:
    """``pytest -m cuda`` in this process."""
    import pytest

    collector = _Collector()
    args = ["-m", "cuda", "-q", "-p", "no:cacheprovider", str(harness.REPO_ROOT / "tests")]
    code = pytest.main(args, plugins=[collector])
    counts: dict[str, int] = {}
    for row in collector.rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return {"exit_code": int(code), "counts": counts, "tests": collector.rows}


def run_aot_vs_device(deadline: float) -> list[dict[str, Any]]:
    """Driver-reported registers/spills of default fused launches vs the AOT compile."""
    import torch
    from gpuann._kernels.fused_knn import fused_knn_kernel
    from triton.runtime import driver

    from gpuann._triton import aot
    from gpuann._triton.knn import fused_knn

    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    rows = []
    gen = torch.Generator("cuda").manual_seed(0)
    for q, d, k, dtype in ((4096, 128, 10, torch.float16), (4096, 128, 100, torch.float16)):
        if time.monotonic() > deadline:
            break
        x = torch.randn(N_ROWS // 10, d, device="cuda", generator=gen).to(dtype)
        queries = torch.randn(q, d, device="cuda", generator=gen).to(dtype)
        fused_knn(queries, x, k, True, (x.float() ** 2).sum(1))
        torch.cuda.synchronize()
        device = driver.active.get_current_device()
        for compiled in fused_knn_kernel.device_caches[device][0].values():
            compiled._init_handles()
            meta = dict(compiled.metadata._asdict())
            row = {
                "shape": {"Q": q, "d": d, "k": k, "dtype": str(dtype)},
                "device_n_regs": compiled.n_regs,
                "device_n_spills": compiled.n_spills,
                "device_shared": meta.get("shared"),
                "num_warps": meta.get("num_warps"),
            }
            rows.append(row)
        del x, queries
    if aot.ARCHS and arch in aot.SHARED_PER_BLOCK:
        from gpuann._triton import catalog

        grid = {
            **catalog.REPRESENTATIVE,
            "queries": (4096,),
            "dims": (128,),
            "k": (10, 100),
            "dtypes": ("float16",),
            "extra": (),
        }
        cases = [c for c in catalog.fused_knn_cases(grid, arch) if c.op == "fused_knn"]
        results = aot.compile_launches([c.launch for c in cases], arch)
        for case, res in zip(cases, results, strict=True):
            rows.append({"aot": case.describe(), **res.to_dict()})
    return rows


def run_knn(deadline: float, repeats: int) -> dict[str, Any]:
    """Headline rows of bench_triton_knn, until the deadline."""
    import torch

    from benchmarks import bench_triton_knn as bench

    ceilings = bench.measure_ceilings("cuda", KNN_AXES["dtypes"], smoke=False)
    args = argparse.Namespace(methods=list(bench.METHODS), repeats=repeats, torch_chunk_gib=4.0)
    rows, skipped = [], []
    memory = torch.cuda.mem_get_info()[0]
    for case in knn_cases():
        if time.monotonic() > deadline:
            skipped.append({**dataclasses.asdict(case), "reason": "section budget spent"})
            continue
        if case.bytes_moved(4) + 3 * case.queries * case.k * 12 > 0.6 * memory:
            skipped.append({**dataclasses.asdict(case), "reason": "memory"})
            continue
        try:
            rows.append(bench.run_knn(case, "cuda", ceilings, args))
        except Exception as exc:  # one failing case must not end the run
            rows.append({**dataclasses.asdict(case), "error": f"{type(exc).__name__}: {exc}"[:500]})
        torch.cuda.empty_cache()
    return {"ceilings": ceilings, "rows": rows, "skipped": skipped}


def _time_methods(
    fns: dict[str, Callable[[], Any]], repeats: int, row: dict[str, Any]
) -> dict[str, Any]:
    results = {}
    for name, fn in fns.items():
        try:
            results[name] = fn()  # warm-up: compilation happens here
            timing = harness.time_function(fn, device="cuda", repeats=repeats)
        except Exception as exc:
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        row[f"{name}_s"] = timing.median_s
        row[f"{name}_timing"] = timing.to_dict()
    names = list(fns)
    if len(names) == 2 and all(f"{n}_s" in row for n in names):
        row["speedup"] = row[f"{names[1]}_s"] / row[f"{names[0]}_s"]
    return results


def run_topk(deadline: float, repeats: int) -> list[dict[str, Any]]:
    """``gpuann.batched_topk(backend="triton")`` vs ``torch.topk``."""
    import torch

    import gpuann

    rows = []
    for n_rows, n, k in TOPK_CASES:
        if time.monotonic() > deadline:
            break
        x = torch.randn(n_rows, n, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        row: dict[str, Any] = {"rows": n_rows, "n": n, "k": k, "dtype": "float32"}
        res = _time_methods(
            {
                "triton": lambda x=x, k=k: gpuann.batched_topk(x, k, backend="triton"),
                "torch": lambda x=x, k=k: torch.topk(x, k, dim=1, largest=False),
            },
            repeats,
            row,
        )
        if len(res) == 2:
            row["values_equal"] = bool(torch.equal(res["triton"][0], res["torch"][0]))
        rows.append(row)
    return rows


def run_hamming(deadline: float, repeats: int) -> list[dict[str, Any]]:
    """The Hamming kernel vs its torch fallback, on random packed codes."""
    import torch

    from gpuann.binary.hamming import hamming_topk

    rows = []
    gen = torch.Generator("cuda").manual_seed(0)
    for q, n, words, k in HAMMING_CASES:
        if time.monotonic() > deadline:
            break
        lo, hi = -(2**31), 2**31 - 1
        db = torch.randint(lo, hi, (n, words), device="cuda", generator=gen, dtype=torch.int32)
        qs = torch.randint(lo, hi, (q, words), device="cuda", generator=gen, dtype=torch.int32)
        row: dict[str, Any] = {"queries": q, "n": n, "words": words, "k": k}
        res = _time_methods(
            {
                "triton": lambda qs=qs, db=db, k=k: hamming_topk(qs, db, k, backend="triton"),
                "torch": lambda qs=qs, db=db, k=k: hamming_topk(qs, db, k, backend="torch"),
            },
            repeats,
            row,
        )
        if len(res) == 2:
            row["ids_equal"] = bool(torch.equal(res["triton"][1], res["torch"][1]))
        rows.append(row)
    return rows


def run_ivf_pq(deadline: float, repeats: int) -> dict[str, Any]:
    """``gpuann.IVFPQIndex`` on faiss-gpu: build, then search timings."""
    import torch

    try:
        from gpuann.ivf._faiss import faiss_gpu_available

        if not faiss_gpu_available():
            return {"skipped": "faiss has no GPU support here"}
    except ImportError as exc:
        return {"skipped": f"faiss not importable: {exc}"}
    from gpuann.ivf.ivf_pq import IVFPQIndex

    n, d, nlist, m = 200_000, 128, 1024, 16
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=gen)
    queries = torch.randn(4096, d, device="cuda", generator=gen)
    t0 = time.perf_counter()
    index = IVFPQIndex(d, nlist, m, device="cuda")
    index.train(x)
    index.add(x)
    torch.cuda.synchronize()
    row: dict[str, Any] = {"n": n, "d": d, "nlist": nlist, "m": m, "queries": 4096, "k": 10}
    row["build_s"] = time.perf_counter() - t0
    for nprobe in (8, 32):
        if time.monotonic() > deadline:
            break
        timing = harness.time_function(
            lambda nprobe=nprobe: index.search(queries, 10, nprobe=nprobe),
            device="cuda",
            repeats=repeats,
        )
        row[f"search_nprobe{nprobe}_s"] = timing.median_s
        row[f"search_nprobe{nprobe}_timing"] = timing.to_dict()
    return row


# ---------------------------------------------------------------------------- output
def _markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# gpu_suite",
        "",
        f"- device: {env.get('device_kind')} ({env.get('device_name', '')})",
        f"- date: {env.get('date')}; versions: {env.get('versions')}",
        f"- dry run: {payload['dry_run']}; wall time: {payload.get('wall_s', 0):.0f} s",
        "",
    ]
    tests = payload["results"].get("tests")
    if tests:
        lines += ["## tests (pytest -m cuda)", "", f"counts: {tests['counts']}", ""]
        lines += [f"- FAILED {r['test']}" for r in tests["tests"] if r["outcome"] == "failed"]
        lines.append("")
    knn = payload["results"].get("knn")
    if knn:
        from benchmarks.bench_triton_knn import COLUMNS

        lines += [
            "## k-NN (median seconds as ms)",
            "",
            harness.markdown_table(knn["rows"], COLUMNS),
        ]
        lines.append("")
    for name in ("topk", "hamming"):
        rows = payload["results"].get(name)
        if rows:
            columns = [harness.Column(c, c) for c in rows[0] if not c.endswith("_timing")]
            lines += [f"## {name}", "", harness.markdown_table(rows, columns), ""]
    for name in ("aot_vs_device", "ivf_pq"):
        if name in payload["results"]:
            lines += [f"## {name}", "", "```", str(payload["results"][name])[:4000], "```", ""]
    if payload["errors"]:
        lines += ["## section errors", ""] + [f"- {k}: {v}" for k, v in payload["errors"].items()]
    if payload["dry_run"]:
        plan = payload["plan"]
        lines += ["## plan", "", f"sections (budget shares): {plan['sections']}", ""]
        lines += [f"- knn {c}" for c in plan["knn_cases"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "gpu_suite needs a CUDA device and none was found: nothing was run. "
            "`python -m benchmarks.gpu_suite --out DIR --dry-run` writes the plan on any machine.",
            file=sys.stderr,
        )
        return 2
    clock = _Clock(args.budget_s)
    env = harness.environment_info("cuda" if cuda else "cpu")
    if cuda:
        env["device_name"] = torch.cuda.get_device_name()
        env["capability"] = list(torch.cuda.get_device_capability())
    stem = harness.result_stem("gpu_suite", env["device_kind"], env["date"])
    payload: dict[str, Any] = {
        "environment": env,
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "plan": _plan(),
        "results": {},
        "errors": {},
    }

    def save() -> None:
        payload["wall_s"] = time.monotonic() - clock.start
        harness.write_json(args.out / f"{stem}.json", payload)
        harness.write_text(args.out / f"{stem}.md", _markdown(payload))

    runners: dict[str, Callable[[float], Any]] = {
        "tests": run_tests,
        "aot_vs_device": run_aot_vs_device,
        "knn": lambda deadline: run_knn(deadline, args.repeats),
        "topk": lambda deadline: run_topk(deadline, args.repeats),
        "hamming": lambda deadline: run_hamming(deadline, args.repeats),
        "ivf_pq": lambda deadline: run_ivf_pq(deadline, args.repeats),
    }
    for name in [] if args.dry_run else args.sections:
        if clock.left() <= 0:
            payload["errors"][name] = "run budget spent before this section"
            continue
        print(f"[gpu_suite] {name} ({clock.left():.0f} s left)", flush=True)
        try:
            payload["results"][name] = runners[name](clock.section_deadline(SECTIONS[name]))
        except Exception as exc:  # report the section's failure, go on with the next
            payload["errors"][name] = f"{type(exc).__name__}: {exc}"[:1000]
        save()
    save()
    print(f"[gpu_suite] results: {args.out / stem}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
