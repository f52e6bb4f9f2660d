"""Exact k-NN search: gpuann ``FlatIndex.search`` vs faiss ``IndexFlat`` vs plain torch.

Run from the repository root, as a module (``benchmarks`` is a package)::

    python -m benchmarks.bench_exact --quick   # the preset in README.md (< 10 min on 2 cores)
    python -m benchmarks.bench_exact --smoke   # seconds; what tests/benchmarks runs
    python -m benchmarks.bench_exact           # the full grid, minus what is too slow here
    python -m benchmarks.bench_exact --queries 1,100 --database 100000 --dims 128 --k 10 \
        --metrics l2 --repeats 3 --out benchmarks/results

Three methods run on the same seeded data, at the same thread count, in the same run:

``gpuann``
    ``gpuann.flat.FlatIndex(d, metric=metric, device).search(q, k)`` with the default backend choice
    (torch on CPU; Triton on CUDA once that backend exists) and the default memory budget.
``faiss``
    faiss ``IndexFlatL2`` / ``IndexFlatIP`` ``.search`` (faiss-cpu, on the CPU, always).
``torch``
    What a user writes with torch alone: ``addmm`` (L2, with precomputed database norms) or
    ``mm`` (IP) and ``topk``, in query chunks whose score matrix fits ``--naive-chunk-mib``.
``gpuann_tiled`` (only when ``--methods`` names it)
    ``gpuann`` with ``GPUANN_CPU_BLAS=torch``: the tiled engine on torch's MKL instead of the
    verified OpenBLAS passes (``gpuann/engine/verified_cpu.py``), for an A/B in one run.

Each case runs in two fresh ``spawn`` child processes that generate the same seeded data: the
first measures each method's peak memory during one search (one method after another, with
glibc returning freed memory at once) and keeps its ids; the second builds every method's
index and times the searches round-robin, so that load from other processes on a shared
machine slows every method alike. Results go to ``<out>/bench_exact_<device kind>_<date>.json``
(raw samples included) and ``.md``, rewritten after every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = [
    "PRESETS",
    "Case",
    "id_agreement",
    "main",
    "make_data",
    "measure_memory",
    "plan_cases",
    "run_case",
    "time_case",
]

METHODS: tuple[str, ...] = ("faiss", "gpuann", "torch")
#: Methods run only when ``--methods`` names them: ``gpuann_tiled`` is gpuann with
#: ``GPUANN_CPU_BLAS=torch`` (the tiled engine on MKL, no verified OpenBLAS passes), for an
#: A/B of the two CPU paths in one run.
EXTRA_METHODS: tuple[str, ...] = ("gpuann_tiled",)
MiB = 1 << 20
DEFAULT_OUT = harness.REPO_ROOT / "benchmarks" / "results"
#: Cases above this much arithmetic (2·Q·N·d) are skipped by default on the CPU: the largest,
#: Q=10 000 × N=10⁶ × d=768, is 15 TFLOP, minutes per call on a small machine.
DEFAULT_CPU_MAX_GFLOP = 300.0
DEFAULT_CUDA_MAX_GFLOP = 20_000.0

#: Presets: lists of sub-grids (axis -> values). A preset's case list is the union of the
#: product of each sub-grid; axis flags (``--dims 128``) replace that axis in every sub-grid.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "grids": [
            {
                "queries": [1, 100, 10_000],
                "database": [100_000, 1_000_000],
                "dims": [128, 384, 768],
                "k": [10, 100],
                "metrics": ["l2", "ip"],
            }
        ],
        "repeats": 5,
        "warmup": 1,
        "min_seconds": 0.5,
        "description": "the whole grid; on the CPU the cases above --max-gflop are skipped "
        "(listed below)",
    },
    "quick": {
        "grids": [
            # Latency and small batches: every dim extreme, both k, both metrics.
            {
                "queries": [1, 100],
                "database": [100_000],
                "dims": [128, 768],
                "k": [10, 100],
                "metrics": ["l2", "ip"],
            },
            # Large batch (compute bound): the one Q=10 000 shape that takes seconds here.
            {
                "queries": [10_000],
                "database": [100_000],
                "dims": [128],
                "k": [10, 100],
                "metrics": ["l2"],
            },
            # A million-vector database.
            {
                "queries": [1, 100],
                "database": [1_000_000],
                "dims": [128, 384],
                "k": [10],
                "metrics": ["l2"],
            },
        ],
        "repeats": 3,
        "warmup": 1,
        "min_seconds": 0.2,
        "description": "22 of the full grid's 72 shapes, chosen to finish in minutes on 2 "
        "cores. Not run: d=384 at N=10⁵; Q=10 000 except N=10⁵ d=128 l2 (ip there is the same "
        "work; the other Q=10 000 shapes are 0.8-15 TFLOP, minutes to hours per call here); "
        "N=10⁶ with d=768, k=100 or ip. Run the full preset or pass axis flags for those",
    },
    "smoke": {
        "grids": [{"queries": [8], "database": [2_000], "dims": [16], "k": [5], "metrics": ["l2"]}],
        "repeats": 2,
        "warmup": 1,
        "min_seconds": 0.0,
        "description": "one tiny case, to check that the script runs",
    },
}
AXES: tuple[str, ...] = ("queries", "database", "dims", "k", "metrics")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape.

    Attributes
    ----------
    queries, database, dim, k : int
        Q, N, d and k.
    metric : str
        ``"l2"`` or ``"ip"``.
    """

    queries: int
    database: int
    dim: int
    k: int
    metric: str

    @property
    def gflop(self) -> float:
        """Arithmetic of the distance computation, 2·Q·N·d, in GFLOP."""
        return 2.0 * self.queries * self.database * self.dim / 1e9

    @property
    def database_bytes(self) -> int:
        """Bytes of the float32 database."""
        return 4 * self.database * self.dim

    @property
    def label(self) -> str:
        """``Q=… N=… d=… k=… l2``."""
        return f"Q={self.queries} N={self.database} d={self.dim} k={self.k} {self.metric}"


# ---------------------------------------------------------------------------- data
def make_data(case: Case, seed: int) -> tuple[Any, Any]:
    """Seeded float32 data: database (N, d) then queries (Q, d), i.i.d. standard normal.

    The database depends only on ``(seed, N, d)``, so cases that differ in Q, k or metric
    search the same vectors.
    """
    import numpy as np

    database = np.random.default_rng([seed, case.database, case.dim]).standard_normal(
        (case.database, case.dim), dtype=np.float32
    )
    queries = np.random.default_rng([seed, case.database, case.dim, case.queries]).standard_normal(
        (case.queries, case.dim), dtype=np.float32
    )
    return database, queries


def id_agreement(ids: Any, reference: Any) -> float:
    """Fraction of ``reference``'s ids (``-1`` excluded) that ``ids`` also returns, row by row.

    Order within a row is ignored (equal distances may be ordered differently).

    >>> import numpy as np
    >>> id_agreement(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]))
    0.6666666666666666
    """
    import numpy as np

    ids, reference = np.asarray(ids), np.asarray(reference)
    both = np.sort(np.concatenate([ids, reference], axis=1), axis=1)
    common = (both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)
    valid = int((reference >= 0).sum())
    return float(common.sum() / valid) if valid else 1.0


# ---------------------------------------------------------------------------- one method
def _searcher(
    method: str, case: Case, data: tuple[Any, Any], job: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Build ``method``'s index over ``data`` and return ``(search function, facts)``.

    ``facts`` has the ``device`` the search runs on and, for gpuann, ``budget_bytes``,
    ``index_bytes`` and ``backends``.
    """
    database, queries = data
    threads, device = job["threads"], job["device"]
    if method == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatL2(case.dim) if case.metric == "l2" else faiss.IndexFlatIP(case.dim)
        index.add(database)
        return (lambda: index.search(queries, case.k)), {"device": "cpu"}

    import torch

    torch.set_num_threads(threads)
    q = torch.from_numpy(queries).to(device)
    if method in ("gpuann", "gpuann_tiled"):
        import gpuann
        from gpuann.budget import check_budget
        from gpuann.flat import FlatIndex

        index = FlatIndex(case.dim, metric=case.metric, device=device, memory_budget=job["budget"])
        index.add(torch.from_numpy(database))
        facts = {
            "device": str(index.device),
            "budget_bytes": check_budget(job["budget"], index.device),
            "index_bytes": index.nbytes,
            "backends": gpuann.available_backends(),
        }
        if method == "gpuann":
            return (lambda: index.search(q, case.k)), facts

        def tiled() -> Any:
            before = os.environ.get("GPUANN_CPU_BLAS")
            os.environ["GPUANN_CPU_BLAS"] = "torch"
            try:
                return index.search(q, case.k)
            finally:
                if before is None:
                    del os.environ["GPUANN_CPU_BLAS"]
                else:
                    os.environ["GPUANN_CPU_BLAS"] = before

        return tiled, facts

    if method == "torch":
        xb = torch.from_numpy(database).to(device)  # no copy on the CPU
        xb_sq = (xb * xb).sum(dim=1) if case.metric == "l2" else None
        rows = max(1, min(case.queries, job["naive_chunk_bytes"] // (4 * case.database)))
        k = min(case.k, case.database)

        def search() -> tuple[Any, Any]:
            distances, ids = [], []
            for q0 in range(0, q.shape[0], rows):
                qc = q[q0 : q0 + rows]
                if xb_sq is not None:
                    scores = torch.addmm(xb_sq, qc, xb.T, alpha=-2.0)
                    d, i = scores.topk(k, dim=1, largest=False)
                    d += (qc * qc).sum(dim=1, keepdim=True)
                else:
                    d, i = (qc @ xb.T).topk(k, dim=1)
                distances.append(d)
                ids.append(i)
            return torch.cat(distances), torch.cat(ids)

        return search, {"device": str(xb.device), "query_chunk": rows}
    raise ValueError(f"method: expected one of {METHODS + EXTRA_METHODS}, got {method!r}")


def measure_memory(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Peak memory and ids of one search per method (body of a child process).

    Run in a fresh process with :data:`harness.EXACT_RSS_ENV`: the methods are measured one
    after another, each index freed before the next is built.

    Parameters
    ----------
    job : dict
        ``methods``, ``case`` (a :class:`Case` as a dict), ``device``, ``threads``, ``seed``,
        ``budget`` (bytes or ``None``) and ``naive_chunk_bytes``.

    Returns
    -------
    dict
        Per method: ``peak_memory`` (see :class:`harness.PeakMemory`), ``ids`` (numpy, (Q, k)),
        ``build_s`` and the method's facts.
    """
    import gc

    import numpy as np

    case = Case(**job["case"])
    data = make_data(case, job["seed"])
    out = {}
    for method in job["methods"]:
        try:
            start = time.perf_counter()
            search, facts = _searcher(method, case, data, job)
            build_s = time.perf_counter() - start
            peak, (_, ids) = harness.measure_peak_memory(search, device=facts["device"])
            ids = ids.cpu().numpy() if hasattr(ids, "cpu") else np.asarray(ids)
            out[method] = {"peak_memory": peak.to_dict(), "ids": ids, "build_s": build_s, **facts}
        except Exception as error:  # one failing method must not hide the others
            out[method] = {"error": f"{type(error).__name__}: {error}"}
        search = None  # free the index before building the next one
        gc.collect()
    return out


def time_case(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Timings of every method, interleaved round-robin (body of a child process).

    Parameters
    ----------
    job : dict
        As for :func:`measure_memory`, plus ``repeats``, ``warmup`` and ``min_seconds``.

    Returns
    -------
    dict
        Per method, a :meth:`harness.Timing.to_dict`.
    """
    case = Case(**job["case"])
    data = make_data(case, job["seed"])
    searches, devices = {}, {}
    for method in job["methods"]:
        searches[method], facts = _searcher(method, case, data, job)
        devices[method] = facts["device"]
    timings = harness.time_interleaved(
        searches,
        devices=devices,
        repeats=job["repeats"],
        warmup=job["warmup"],
        min_seconds=job["min_seconds"],
    )
    return {name: timing.to_dict() for name, timing in timings.items()}


# ---------------------------------------------------------------------------- one case
def run_case(case: Case, settings: dict[str, Any]) -> dict[str, Any]:
    """Run every method on ``case`` and derive the comparisons.

    Two child processes: one measures each method's peak memory and ids, one times the
    methods round-robin (see :func:`harness.time_interleaved`).

    Returns
    -------
    dict
        The case's fields; per-method ``timing``, ``qps``, ``peak_memory``… under
        ``methods`` (ids left out); ``ratio_vs_faiss`` (gpuann QPS / faiss QPS),
        ``ratio_vs_torch``, ``agreement_vs_faiss`` per method; the targets
        ``throughput_target_met`` (ratio ≥ 1) and ``memory_target_met`` (gpuann's search peak
        ≤ its budget); the load average before and after.
    """
    row: dict[str, Any] = {**dataclasses.asdict(case), "gflop": case.gflop}
    row["database_bytes"] = case.database_bytes
    row["load_average_before"] = harness.load_average()
    row["gpuann_sha256"] = (harness.source_info("gpuann") or {}).get("sha256")
    job = {**settings["job"], "methods": settings["methods"], "case": dataclasses.asdict(case)}
    isolate = settings["isolate"]
    try:
        methods = harness.run_isolated(
            measure_memory, job, isolate=isolate, env=harness.EXACT_RSS_ENV
        )
    except Exception as error:
        methods = {name: {"error": f"memory run: {error}"} for name in settings["methods"]}
    ids = {name: m.pop("ids") for name, m in methods.items() if "ids" in m}
    working = [name for name in settings["methods"] if "error" not in methods[name]]
    if working:
        try:
            timings = harness.run_isolated(time_case, {**job, "methods": working}, isolate=isolate)
        except Exception as error:
            timings = {}
            for name in working:
                methods[name]["error"] = f"timing run: {error}"
        for name, timing in timings.items():
            methods[name]["timing"] = timing
            methods[name]["qps"] = case.queries / timing["median_s"]
    row["load_average_after"] = harness.load_average()
    row["methods"] = methods

    def median(name: str) -> float | None:
        return methods.get(name, {}).get("timing", {}).get("median_s")

    g, f, t = median("gpuann"), median("faiss"), median("torch")
    tiled = median("gpuann_tiled")
    row["ratio_vs_faiss"] = f / g if g and f else None
    row["ratio_vs_torch"] = t / g if g and t else None
    row["ratio_vs_tiled"] = tiled / g if g and tiled else None
    row["agreement_vs_faiss"] = {
        name: id_agreement(found, ids["faiss"]) for name, found in ids.items() if "faiss" in ids
    }
    gpuann = methods.get("gpuann", {})
    row["budget_bytes"] = gpuann.get("budget_bytes")
    peak = gpuann.get("peak_memory", {}).get("bytes")
    ratio = row["ratio_vs_faiss"]
    row["throughput_target_met"] = None if ratio is None else ratio >= 1.0
    row["memory_target_met"] = None if peak is None else peak <= row["budget_bytes"]
    return row


# ---------------------------------------------------------------------------- planning
def _csv(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        # digit separators in numbers (100_000); names keep their underscores
        clean = (lambda v: v) if kind is str else (lambda v: v.replace("_", ""))
        values = [kind(clean(v.strip())) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return values

    return parse


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def plan_cases(
    grids: Sequence[dict[str, list[Any]]],
    overrides: dict[str, list[Any] | None],
    max_gflop: float | None,
    memory_limit: int | None,
) -> tuple[list[Case], list[dict[str, Any]]]:
    """The cases to run and the cases skipped (with the reason), in grid order.

    Parameters
    ----------
    grids : list of dict
        Sub-grids of a preset (see :data:`PRESETS`).
    overrides : dict
        Axis values from the command line (``None``: keep the preset's).
    max_gflop : float, optional
        Skip cases whose 2·Q·N·d exceeds this.
    memory_limit : int, optional
        Skip cases whose estimated resident memory (three float32 copies of the database
        while an index is built) exceeds this many bytes.
    """
    cases: list[Case] = []
    for grid in grids:
        axes = [overrides.get(a) or grid[a] for a in AXES]
        for q, n, d, k, metric in itertools.product(*axes):
            case = Case(int(q), int(n), int(d), int(k), str(metric))
            if case not in cases:
                cases.append(case)
    run, skipped = [], []
    for case in cases:
        if max_gflop is not None and case.gflop > max_gflop:
            reason = f"2·Q·N·d = {case.gflop:,.0f} GFLOP > --max-gflop {max_gflop:,.0f}"
        elif memory_limit is not None and 3 * case.database_bytes > memory_limit:
            reason = f"needs ~{3 * case.database_bytes / 2**30:.1f} GiB, more than is available"
        else:
            run.append(case)
            continue
        skipped.append({**dataclasses.asdict(case), "reason": reason})
    return run, skipped


# ---------------------------------------------------------------------------- output
def _fmt_s(x: float) -> str:
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def _fmt_mib(x: float) -> str:
    return f"{x / MiB:.1f}"


def _yes_no(x: bool) -> str:
    return "yes" if x else "**no**"


def _flat_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = {key: r[key] for key in ("queries", "database", "dim", "k", "metric")}
        for name in METHODS + EXTRA_METHODS:
            m = r["methods"].get(name, {})
            row[f"{name}_s"] = m.get("timing", {}).get("median_s")
            row[f"{name}_qps"] = m.get("qps")
            row[f"{name}_peak"] = m.get("peak_memory", {}).get("bytes")
            if "error" in m:
                row[f"{name}_s"] = None
        row["ratio_vs_faiss"] = r["ratio_vs_faiss"]
        row["ratio_vs_torch"] = r["ratio_vs_torch"]
        row["ratio_vs_tiled"] = r.get("ratio_vs_tiled")
        row["budget"] = r["budget_bytes"]
        row["agree_gpuann"] = r["agreement_vs_faiss"].get("gpuann")
        row["agree_torch"] = r["agreement_vs_faiss"].get("torch")
        row["throughput_met"] = r["throughput_target_met"]
        row["memory_met"] = r["memory_target_met"]
        row["load"] = (r.get("load_average_after") or [None])[0]
        rows.append(row)
    return rows


COLUMNS: tuple[harness.Column, ...] = (
    harness.Column("queries", "Q"),
    harness.Column("database", "N"),
    harness.Column("dim", "d"),
    harness.Column("k", "k"),
    harness.Column("metric", "metric", align="left"),
    harness.Column("gpuann_s", "gpuann", _fmt_s),
    harness.Column("faiss_s", "faiss", _fmt_s),
    harness.Column("torch_s", "torch", _fmt_s),
    harness.Column("gpuann_tiled_s", "gpuann tiled", _fmt_s),
    harness.Column("gpuann_qps", "gpuann QPS", "{:,.0f}".format),
    harness.Column("ratio_vs_faiss", "gpuann/faiss", "{:.2f}".format),
    harness.Column("ratio_vs_torch", "gpuann/torch", "{:.2f}".format),
    harness.Column("ratio_vs_tiled", "gpuann/tiled", "{:.2f}".format),
    harness.Column("gpuann_peak", "gpuann peak MiB", _fmt_mib),
    harness.Column("budget", "budget MiB", _fmt_mib),
    harness.Column("faiss_peak", "faiss peak MiB", _fmt_mib),
    harness.Column("torch_peak", "torch peak MiB", _fmt_mib),
    harness.Column("agree_gpuann", "ids = faiss (gpuann)", "{:.4f}".format),
    harness.Column("agree_torch", "ids = faiss (torch)", "{:.4f}".format),
    harness.Column("throughput_met", "≥ faiss", _yes_no),
    harness.Column("memory_met", "≤ budget", _yes_no),
    harness.Column("load", "load"),
)


def render_markdown(payload: dict[str, Any]) -> str:
    """The Markdown report of a run: environment, table, targets, skipped cases, method."""
    env, settings = payload["environment"], payload["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v is not None)
    source = env.get("gpuann_source") or {}
    same_source = all(r.get("gpuann_sha256") == source.get("sha256") for r in payload["results"])
    lines = [
        f"# Exact search: gpuann vs faiss-cpu vs torch ({env['device_kind']}, {env['date'][:10]})",
        "",
        f"- Device: {env['device_name']} ({env['device']}); CPU: {env['cpu_model']}, "
        f"{env['cpu_count']} cores; **{env['threads']} threads** for torch and faiss alike",
        f"- Versions: {versions}",
        f"- Commit: `{env['git_commit']}`; date {env['date']}",
        f"- gpuann source: `{source.get('path')}`, sha256 of its .py files "
        f"`{str(source.get('sha256'))[:16]}…`"
        + ("" if same_source else " — **the source changed during the run**"),
        f"- Command: `{payload['command']}`",
        *([f"- Note: {payload['note']}"] if payload.get("note") else []),
        *(
            [
                f"- Resumed: {sum('reused_from_run_of' in r for r in payload['results'])} case(s) "
                f"come from the interrupted run(s) of the same command started at "
                f"{', '.join(map(str, payload['resumed_from']))} (same settings, threads, "
                "versions and gpuann source)"
            ]
            if payload.get("resumed_from")
            else []
        ),
        f"- Preset `{settings['preset']}`: float32, seed {settings['seed']}; per method "
        f"{settings['warmup']} warm-up call(s), then at least {settings['repeats']} timed calls "
        f"(more while they add up to under {settings['min_seconds']} s), round-robin across "
        "methods, each turn of a call under 0.25 s after one untimed call of its own "
        "(another library's spinning threads would otherwise slow it); memory and ids from "
        "a separate "
        f"{'fresh process per case' if settings['isolate'] else 'in-process run'}",
        f"- Shapes: {PRESETS.get(settings['preset'], {}).get('description', '')}",
        f"- Load average (1/5/15 min) at start: {env['load_average']} on {env['cpu_count']} "
        "cores; the `load` column is the 1-minute average after each case (above the thread "
        "count, other processes were competing for the cores)",
        "",
    ]
    results = payload["results"]
    if results:
        lines += [harness.markdown_table(_flat_rows(results), COLUMNS), ""]
    done = [r for r in results if r["ratio_vs_faiss"] is not None]
    met_t = sum(bool(r["throughput_target_met"]) for r in done)
    met_m = sum(bool(r["memory_target_met"]) for r in done)
    lines += [
        "## Targets",
        "",
        f"- Throughput ≥ faiss-cpu at equal threads: met in **{met_t} of {len(done)}** cases.",
        f"- gpuann search peak ≤ budget (so resident ≤ database + budget): met in "
        f"**{met_m} of {len(done)}** cases.",
    ]
    failed = [
        f"{name} on Q={r['queries']} N={r['database']} d={r['dim']} k={r['k']} {r['metric']}: "
        f"{m['error']}"
        for r in results
        for name, m in r["methods"].items()
        if "error" in m
    ]
    if failed:
        lines += ["", "## Errors", "", *[f"- {f}" for f in failed]]
    if payload["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [
            f"- Q={s['queries']} N={s['database']} d={s['dim']} k={s['k']} {s['metric']}: "
            f"{s['reason']}"
            for s in payload["skipped"]
        ]
    lines += [
        "",
        "## Columns",
        "",
        "- gpuann / faiss / torch: median seconds per `search` of all Q queries.",
        "- gpuann QPS: Q / median. gpuann/faiss, gpuann/torch: throughput ratios "
        "(> 1: gpuann is faster).",
        "- peak MiB: growth of the process's peak resident set during one search, over the "
        "level just before it (index already built; `VmHWM` reset via `/proc/self/clear_refs`). "
        "On CUDA: `torch.cuda.max_memory_allocated` growth. Budget: gpuann's working-memory "
        "budget for the search.",
        "- ids = faiss: fraction of faiss's ids that the method also returns (order ignored).",
        "- torch: `addmm` with precomputed norms (L2) or `mm` (IP), then `topk`, in query "
        f"chunks of at most {settings['naive_chunk_bytes'] // MiB} MiB of scores.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_exact",
        description="Exact search: gpuann FlatIndex vs faiss IndexFlat vs torch mm+topk.",
    )
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a representative subset (< 10 min)")
    preset.add_argument("--smoke", action="store_true", help="one tiny case, for tests")
    p.add_argument("--queries", type=_csv(int), help="Q values, e.g. 1,100,10000")
    p.add_argument("--database", type=_csv(int), help="N values, e.g. 100000,1000000")
    p.add_argument("--dims", type=_csv(int), help="d values, e.g. 128,384,768")
    p.add_argument("--k", type=_csv(int), help="k values, e.g. 10,100")
    p.add_argument("--metrics", type=_csv(str), help="l2 and/or ip")
    p.add_argument(
        "--methods", type=_csv(str), help=f"subset of {','.join(METHODS + EXTRA_METHODS)}"
    )
    p.add_argument("--repeats", type=int, help="timed repeats per method (preset default)")
    p.add_argument("--warmup", type=int, help="extra warm-up calls before timing")
    p.add_argument("--min-seconds", type=float, help="time fast calls until this many seconds")
    p.add_argument("--threads", type=int, help="CPU threads for torch and faiss (default: all)")
    p.add_argument("--device", default=None, help="gpuann/torch device (default: cuda if any)")
    p.add_argument("--budget-mib", type=int, help="gpuann memory budget (default: library's)")
    p.add_argument("--naive-chunk-mib", type=int, default=1024, help="torch baseline chunk")
    p.add_argument("--max-gflop", type=float, help="skip cases above this 2·Q·N·d")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="no child processes (memory approx.)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--name", default="bench_exact", help="result file name prefix")
    p.add_argument("--note", default="", help="free text for the report (e.g. which build)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the cases already in the output JSON when settings, threads, device and "
        "gpuann source are the same (for long runs that were interrupted)",
    )
    return p


def _reusable_rows(json_path: Path, payload: dict[str, Any]) -> dict[Case, dict[str, Any]]:
    """Rows of an earlier run in ``json_path`` measured the same way as ``payload`` will be."""
    import json

    if not json_path.exists():
        return {}
    old = json.loads(json_path.read_text(encoding="utf-8"))
    env, old_env = payload["environment"], old.get("environment", {})
    same = old.get("settings") == payload["settings"] and all(
        old_env.get(key) == env.get(key)
        for key in ("device", "device_name", "threads", "versions", "gpuann_source")
    )
    if not same:
        print(f"--resume: {json_path} was measured differently; starting afresh")
        return {}
    rows = {}
    for row in old.get("results", []):
        case = Case(*(row[key] for key in ("queries", "database", "dim", "k", "metric")))
        if row.get("gpuann_sha256") == (env.get("gpuann_source") or {}).get("sha256"):
            rows[case] = {**row, "reused_from_run_of": old_env.get("date")}
    print(f"--resume: reusing {len(rows)} case(s) measured at {old_env.get('date')}")
    payload["resumed_from"] = [*old.get("resumed_from", []), old_env.get("date")]
    return rows


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the JSON payload (also written to ``--out``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    preset_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = PRESETS[preset_name]
    device = args.device or _default_device()
    kind = device.split(":", 1)[0]
    threads = args.threads or len(os.sched_getaffinity(0))
    methods = args.methods or list(METHODS)
    if unknown := set(methods) - set(METHODS + EXTRA_METHODS):
        raise SystemExit(
            f"--methods: unknown {sorted(unknown)}; choose from {METHODS + EXTRA_METHODS}"
        )
    max_gflop = args.max_gflop
    if max_gflop is None:
        max_gflop = DEFAULT_CUDA_MAX_GFLOP if kind == "cuda" else DEFAULT_CPU_MAX_GFLOP
    overrides = {a: getattr(args, a) for a in AXES}
    cases, skipped = plan_cases(preset["grids"], overrides, max_gflop, _available_memory())
    settings = {
        "preset": preset_name,
        "methods": methods,
        "isolate": not args.in_process,
        "repeats": args.repeats or preset["repeats"],
        "warmup": preset["warmup"] if args.warmup is None else args.warmup,
        "min_seconds": preset["min_seconds"] if args.min_seconds is None else args.min_seconds,
        "seed": args.seed,
        "max_gflop": max_gflop,
        "naive_chunk_bytes": args.naive_chunk_mib * MiB,
        "budget_bytes": args.budget_mib * MiB if args.budget_mib else None,
    }
    settings["job"] = {
        "device": device,
        "threads": threads,
        "seed": args.seed,
        "repeats": settings["repeats"],
        "warmup": settings["warmup"],
        "min_seconds": settings["min_seconds"],
        "budget": args.budget_mib * MiB if args.budget_mib else None,
        "naive_chunk_bytes": settings["naive_chunk_bytes"],
    }
    env = harness.environment_info(device, threads)
    env["gpuann_source"] = harness.source_info("gpuann")
    if "faiss" in methods:
        import faiss

        env["faiss_compile_options"] = faiss.get_compile_options()
    stem = harness.result_stem(args.name, kind, env["date"])
    payload: dict[str, Any] = {
        "benchmark": "bench_exact",
        "command": "python -m benchmarks.bench_exact " + shlex.join(argv),
        "environment": env,
        "settings": {k: v for k, v in settings.items() if k != "job"},
        "note": args.note,
        "cases_planned": len(cases),
        "results": [],
        "skipped": skipped,
    }
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    reused = _reusable_rows(json_path, payload) if args.resume else {}
    print(f"{len(cases)} cases on {env['device_name']}, {threads} threads -> {json_path}")
    for s in skipped:
        print(f"  skip Q={s['queries']} N={s['database']} d={s['dim']} k={s['k']}: {s['reason']}")
    started = time.perf_counter()
    for i, case in enumerate(cases, 1):
        row = reused.get(case) or run_case(case, settings)
        payload["results"].append(row)
        payload["elapsed_s"] = time.perf_counter() - started
        harness.write_json(json_path, payload)
        harness.write_text(md_path, render_markdown(payload))
        times = "  ".join(
            f"{name} {m['timing']['median_s'] * 1e3:9.2f} ms" if "timing" in m else f"{name} ERROR"
            for name, m in row["methods"].items()
        )
        ratio = row["ratio_vs_faiss"]
        print(
            f"[{i}/{len(cases)}] {case.label:<40} {times}  gpuann/faiss "
            f"{'—' if ratio is None else f'{ratio:.2f}'}  load {row['load_average_after']}",
            flush=True,
        )
    if not cases:  # still leave a (empty) report behind
        harness.write_json(json_path, payload)
        harness.write_text(md_path, render_markdown(payload))
    print(f"wrote {json_path} and {md_path} in {time.perf_counter() - started:.0f} s")
    return payload


if __name__ == "__main__":
    main()
