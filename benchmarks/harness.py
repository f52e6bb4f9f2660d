"""Shared benchmark harness: environment, timing, peak memory, isolation and result writers.

Import it from a benchmark script run as a module from the repository root
(``python -m benchmarks.<script>``)::

    from benchmarks import harness

    env = harness.environment_info("cpu", threads=2)
    timing = harness.time_function(lambda: index.search(q, 10), device="cpu", repeats=5)
    peak = harness.measure_peak_memory(lambda: index.search(q, 10), device="cpu")

What each part does:

- :func:`environment_info`: device name (CPU model or CUDA device), threads, library versions,
  git commit and date, for the header of every result file.
- :func:`time_function`: median / min / raw samples of repeated calls after warm-up. On CUDA it
  synchronises around each call, and uses ``triton.testing.do_bench`` when triton imports.
  :func:`time_interleaved` times several functions round-robin, so that load from other
  processes on a shared machine hits every method alike.
- :func:`measure_peak_memory`: bytes a call adds at its peak. CUDA: ``max_memory_allocated``.
  CPU: the growth of the process's peak resident set (torch's CPU allocations are invisible to
  ``tracemalloc``); the peak is reset first through ``/proc/self/clear_refs`` where Linux allows
  it, else ``ru_maxrss`` is compared before and after, which is only meaningful in a fresh
  process. Either way, run each case in its own process with :func:`run_isolated`, so memory a
  previous case left in the allocator's free lists cannot hide a later case's growth; pass it
  :data:`EXACT_RSS_ENV` so that glibc returns every freed block of 128 KiB or more to the system
  at once, and several calls can be measured one after another in the same child.
- :func:`write_json`, :func:`markdown_table`, :func:`write_text`, :func:`result_stem`.

Importing this module imports only the standard library: no torch, faiss or triton, no CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "EXACT_RSS_ENV",
    "Column",
    "IsolatedRunError",
    "PeakMemory",
    "Timing",
    "cpu_model_name",
    "environment_info",
    "format_bytes",
    "git_commit",
    "load_average",
    "markdown_table",
    "measure_peak_memory",
    "package_versions",
    "result_stem",
    "run_isolated",
    "set_threads",
    "source_info",
    "time_function",
    "time_interleaved",
    "write_json",
    "write_text",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Environment for a child that measures RSS: fixed glibc mmap / trim thresholds (no dynamic
#: raise), so freed blocks ≥ 128 KiB leave the resident set immediately.
EXACT_RSS_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "131072",
}
#: Distributions whose versions go into every result file (first installed name wins).
_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu", "faiss"),
    "triton": ("triton",),
    "gpuann": ("gpuann",),
}


# ---------------------------------------------------------------------------- environment
def cpu_model_name() -> str:
    """The CPU model, from ``/proc/cpuinfo`` where there is one.

    Returns
    -------
    str
        E.g. ``"AMD EPYC"``; ``platform.processor()`` (or ``"unknown CPU"``) elsewhere.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def package_versions() -> dict[str, str | None]:
    """Installed versions of python, torch, numpy, faiss, triton and gpuann (``None``: absent).

    Read from package metadata, so nothing is imported.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dists in _PACKAGES.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """``HEAD``'s commit hash, with ``+dirty`` when tracked files differ; ``None`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def source_info(package: str = "gpuann") -> dict[str, Any] | None:
    """Where ``package`` is imported from and a SHA-256 of its ``.py`` files (not imported).

    The digest tells which code a result measured, also when the working tree is being edited.
    ``None`` when the package cannot be found.
    """
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    files = sorted(root.rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:  # a file being replaced right now
            digest.update(b"<unreadable>")
    return {"path": str(root), "files": len(files), "sha256": digest.hexdigest()}


def environment_info(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Everything needed to reproduce or compare a result file.

    Parameters
    ----------
    device : str
        ``"cpu"`` or a CUDA device (``"cuda"``, ``"cuda:1"``); torch is imported only for CUDA.
    threads : int, optional
        CPU threads the benchmark runs with (recorded as given).

    Returns
    -------
    dict
        ``device_kind``, ``device_name``, ``cpu_model``, ``cpu_count``, ``threads``,
        ``platform``, ``versions`` (see :func:`package_versions`), ``git_commit``, ``date``
        (ISO 8601, UTC) and ``load_average`` (1, 5, 15 min: other work on a shared machine).
    """
    kind = device.split(":", 1)[0]
    name = cpu_model_name()
    if kind == "cuda":
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
    return {
        "device_kind": kind,
        "device": device,
        "device_name": name,
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """The system load average over 1, 5 and 15 minutes (``None`` where unknown)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch and faiss, whichever of them is already imported."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)


# ---------------------------------------------------------------------------- timing
@dataclasses.dataclass(frozen=True)
class Timing:
    """Repeated timings of one call.

    Attributes
    ----------
    samples_s : list of float
        Seconds per call, every measured repetition, in order.
    method : str
        ``"perf_counter"``, ``"cuda-synchronize"`` or ``"triton.do_bench"``.
    warmup : int
        Calls made (and discarded) before the samples.
    """

    samples_s: list[float]
    method: str
    warmup: int

    @property
    def median_s(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.samples_s)

    @property
    def min_s(self) -> float:
        """Fastest call, seconds."""
        return min(self.samples_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, raw samples included."""
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "samples_s": list(self.samples_s),
            "repeats": len(self.samples_s),
            "warmup": self.warmup,
            "method": self.method,
        }


def _triton_do_bench() -> Callable[..., Any] | None:
    try:
        return importlib.import_module("triton.testing").do_bench
    except Exception:  # triton missing or broken: fall back to synchronised timing
        return None


def time_function(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    min_seconds: float = 0.0,
    max_repeats: int = 100,
) -> Timing:
    """Time ``fn()``: ``warmup`` discarded calls, then at least ``repeats`` measured ones.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    device : str
        Where ``fn`` computes. On CUDA, every sample is synchronised; when triton is importable
        ``triton.testing.do_bench`` measures instead (CUDA events, cache flush between calls).
    repeats : int
        Minimum number of measured calls.
    warmup : int
        Calls before measuring.
    min_seconds : float
        Keep measuring (up to ``max_repeats`` calls) until the samples add up to this, so that
        millisecond calls get enough samples for a stable median.
    max_repeats : int
        Upper bound on measured calls when ``min_seconds`` asks for more than ``repeats``.

    Returns
    -------
    Timing
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected at least 1, got {repeats}")
    on_cuda = device.startswith("cuda")
    if on_cuda:
        do_bench = _triton_do_bench()
        if do_bench is not None:
            for _ in range(warmup):
                fn()
            # do_bench's warmup / rep are milliseconds; with return_mode="all" it returns
            # every sample, in milliseconds.
            budget_ms = max(min_seconds * 1e3, 100.0)
            samples = do_bench(fn, warmup=25, rep=budget_ms, return_mode="all")
            return Timing([float(s) / 1e3 for s in samples], "triton.do_bench", warmup)
        import torch

        sync: Callable[[], None] = torch.cuda.synchronize
        method = "cuda-synchronize"
    else:

        def sync() -> None:
            return None

        method = "perf_counter"
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    while len(samples) < repeats or (sum(samples) < min_seconds and len(samples) < max_repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return Timing(samples, method, warmup)


def _sampler(
    fn: Callable[[], Any], device: str, round_ms: float
) -> tuple[Callable[[], float], str]:
    """A function returning one sample (seconds) of ``fn`` on ``device``, and its method."""
    if device.startswith("cuda"):
        do_bench = _triton_do_bench()
        if do_bench is not None:

            def bench() -> float:
                return float(do_bench(fn, warmup=1, rep=round_ms, return_mode="median")) / 1e3

            return bench, "triton.do_bench (median per round)"
        import torch

        def synced() -> float:
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - start

        return synced, "cuda-synchronize"

    def plain() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return plain, "perf_counter"


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    devices: dict[str, str] | str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    min_seconds: float = 0.0,
    max_repeats: int = 100,
    switch_calls: int = 1,
    switch_max_seconds: float = 0.25,
) -> dict[str, Timing]:
    """Time several functions round-robin (rotating which goes first each round).

    On a machine shared with other work, a burst of load then slows every method alike
    instead of whichever happened to be running, so ratios between methods stay fair.

    A library's thread pool keeps spinning for a while after its call returns (OpenMP's
    default wait policy: faiss's and torch's each bring one), so the method timed right after
    another library's ran on fewer free cores: on 2 cores, one query against 10⁵ × 128
    (``FlatIndex`` after faiss's ``IndexFlatIP``) took 10.9 ms timed straight after faiss's
    call and 7.4 ms after two calls of its own (faiss: 9.1 and 8.9 ms), 2026-12-07. Each
    method's turn therefore starts with ``switch_calls`` untimed calls whenever another
    method ran last, for methods whose warm-up call took at most ``switch_max_seconds`` (the
    few milliseconds of spinning do not matter to slower calls; with ``warmup=0`` there is no
    warm-up to judge by and no switch calls). Each method is then timed as a user calling
    only it sees it.

    Parameters
    ----------
    fns : dict of str to callable
        The functions, by name; each is called with no arguments.
    devices : str or dict of str to str
        Where each computes (one device for all, or per name). CUDA samples are synchronised,
        or measured by ``triton.testing.do_bench`` when triton imports.
    repeats, warmup, min_seconds, max_repeats
        As in :func:`time_function`, per function.
    switch_calls : int
        Untimed calls of a method before its sample when another method ran last.
    switch_max_seconds : float
        Methods whose slowest warm-up call took longer get no switch calls.

    Returns
    -------
    dict of str to Timing
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected at least 1, got {repeats}")
    names = list(fns)
    samplers = {}
    for name in names:
        device = devices if isinstance(devices, str) else devices.get(name, "cpu")
        samplers[name] = _sampler(fns[name], device, max(20.0, 1e3 * min_seconds / repeats))
    warm: dict[str, float] = {name: 0.0 for name in names}
    for _ in range(warmup):
        for name in names:
            start = time.perf_counter()
            fns[name]()
            warm[name] = max(warm[name], time.perf_counter() - start)
    switches = {
        name: switch_calls if warmup and warm[name] <= switch_max_seconds else 0 for name in names
    }
    samples: dict[str, list[float]] = {name: [] for name in names}
    last = None

    def wanted(name: str) -> bool:
        got = samples[name]
        return len(got) < repeats or (sum(got) < min_seconds and len(got) < max_repeats)

    round_no = 0
    while any(wanted(name) for name in names):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            if wanted(name):
                if last != name:
                    for _ in range(switches[name]):
                        fns[name]()
                samples[name].append(samplers[name][0]())
                last = name
        round_no += 1
    return {name: Timing(samples[name], samplers[name][1], warmup) for name in names}


# ---------------------------------------------------------------------------- memory
@dataclasses.dataclass(frozen=True)
class PeakMemory:
    """Memory one call added at its peak.

    Attributes
    ----------
    bytes : int
        Peak minus the level just before the call (never negative).
    baseline_bytes : int
        The level just before the call (resident set on CPU, allocated bytes on CUDA).
    method : str
        ``"cuda.max_memory_allocated"``, ``"VmHWM"`` (peak RSS reset through
        ``/proc/self/clear_refs``) or ``"ru_maxrss"`` (process high-water mark; a lower bound
        unless the process is fresh).
    """

    bytes: int
    baseline_bytes: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0); ``False`` if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def measure_peak_memory(fn: Callable[[], Any], *, device: str = "cpu") -> tuple[PeakMemory, Any]:
    """Call ``fn()`` once and measure the memory it adds at its peak.

    Parameters
    ----------
    fn : callable
        Called with no arguments; its inputs should already be resident.
    device : str
        ``"cpu"`` measures the process's resident set, CUDA devices the caching allocator.

    Returns
    -------
    peak : PeakMemory
    result : object
        What ``fn`` returned (so the call doubles as a warm-up whose result can be checked).
    """
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return PeakMemory(max(0, peak - before), before, "cuda.max_memory_allocated"), result
    if _reset_peak_rss():
        before_kib = _proc_status_kib("VmRSS") or 0
        result = fn()
        peak_kib = _proc_status_kib("VmHWM") or 0
        return PeakMemory(max(0, peak_kib - before_kib) * 1024, before_kib * 1024, "VmHWM"), result
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = fn()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return PeakMemory((peak_kib - before_kib) * 1024, before_kib * 1024, "ru_maxrss"), result


# ---------------------------------------------------------------------------- isolation
def _die_with_parent() -> None:
    """Ask Linux to stop this process when its parent dies (no orphans on Ctrl-C)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child_main(connection: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    _die_with_parent()
    try:
        result = ("ok", target(*args))
    except BaseException as error:  # report everything, KeyboardInterrupt included
        result = ("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    connection.send(result)
    connection.close()


class IsolatedRunError(RuntimeError):
    """A benchmark child process failed or died."""


def run_isolated(
    target: Callable[..., Any],
    *args: Any,
    isolate: bool = True,
    env: dict[str, str] | None = None,
) -> Any:
    """Run ``target(*args)`` in a fresh ``spawn`` child process and return its result.

    Parameters
    ----------
    target : callable
        A module-level function (it is pickled by name); its result must be picklable.
    *args
        Its arguments (pickled).
    isolate : bool
        ``False`` runs it in this process instead (quicker, but memory numbers then depend on
        what earlier cases left behind, and ``env`` is ignored).
    env : dict of str to str, optional
        Extra environment variables for the child (e.g. :data:`EXACT_RSS_ENV`).

    Returns
    -------
    object
        ``target``'s return value.

    Raises
    ------
    RuntimeError
        When ``target`` raised in the child (with its traceback) or the child died (e.g.
        killed for memory).
    """
    if not isolate:
        return target(*args)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, target, args), daemon=True)
    saved = {key: os.environ.get(key) for key in env or {}}
    try:
        os.environ.update(env or {})
        process.start()  # the child copies the environment now
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    sender.close()
    try:
        status, result = receiver.recv()
    except EOFError:
        process.join()
        raise IsolatedRunError(
            f"{getattr(target, '__name__', target)} died (exit code {process.exitcode})"
        ) from None
    finally:
        receiver.close()
    process.join()
    if status == "error":
        raise IsolatedRunError(result)
    return result


# ---------------------------------------------------------------------------- writers
def result_stem(name: str, device_kind: str, date: str | None = None) -> str:
    """File name stem of a result: ``<name>_<device kind>_<YYYY-MM-DD>``.

    >>> result_stem("bench_exact", "cpu", "2025-01-31T12:00:00+00:00")
    'bench_exact_cpu_2025-01-31'
    """
    day = (date or _dt.date.today().isoformat())[:10]
    return f"{name}_{device_kind}_{day}"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented, strict JSON (NaN/inf become ``null``); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(payload), indent=2, default=_json_default, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8), creating parent folders; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a Markdown table.

    Attributes
    ----------
    key : str
        Key of the row dicts.
    header : str
        Column title.
    fmt : callable, optional
        Formats a present value; ``None`` values print as ``—``.
    align : str
        ``"left"`` or ``"right"``.
    """

    key: str
    header: str
    fmt: Callable[[Any], str] | None = None
    align: str = "right"


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub-flavoured Markdown table of ``rows``.

    >>> columns = [Column("a", "A"), Column("b", "B", "{:.2f}".format)]
    >>> print(markdown_table([{"a": 1, "b": 0.5}], columns))
    | A | B |
    |--:|--:|
    | 1 | 0.50 |
    """
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join(":--" if c.align == "left" else "--:" for c in columns) + "|",
    ]
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c.key)
            if value is None:
                cells.append("—")
            else:
                cells.append(c.fmt(value) if c.fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_bytes(n: float) -> str:
    """Human-readable bytes in MiB (or KiB below 1 MiB).

    >>> format_bytes(3 * 2**20), format_bytes(2048)
    ('3.0 MiB', '2 KiB')
    """
    if abs(n) < 2**20:
        return f"{n / 1024:.0f} KiB"
    return f"{n / 2**20:.1f} MiB"


def preset_parser(doc: str, presets: Iterable[str]) -> argparse.ArgumentParser:
    """The command line every preset benchmark shares: ``--preset``, ``--threads`` (default
    ``OMP_NUM_THREADS`` or 2) and ``--out`` (default ``benchmarks/results``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(presets), default="quick")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    return parser
