"""Ahead-of-time compilation of gpuann's kernels for GPUs this machine does not have.

``triton.compile`` runs the whole pipeline (TTIR → TTGIR → LLVM → PTX → cubin, with the
wheel's own ``ptxas``) without a GPU, for any target. This module compiles a kernel exactly as
a launcher would launch it — same constexprs, same ``num_warps``/``num_stages``, and the same
argument specialisation as triton's runtime binder (an int equal to 1 becomes a constexpr,
ints and pointers divisible by 16 get the divisibility hint) — and reads back what the GPU
would need: registers, spill bytes, stack, shared memory, the tensor-core instructions used
and, on request, SASS instruction counts.

Compilation runs in worker processes (``python -m gpuann._triton.aot``) whose environment has
``TRITON_INTERPRET=0``: under the
interpreter (as in CPU test runs) ``@triton.jit`` makes interpreted functions that cannot be
compiled. Results are cached in the process by (kernel source digest, launch, target), and on
disk under ``GPUANN_AOT_CACHE`` (default ``~/.cache/gpuann/aot``; ``0`` turns the disk cache
off).

Launchers describe a launch with :class:`~gpuann._triton.launch.KernelLaunch` (see
``gpuann._triton.knn_plan``), so the checks compile what the launchers run, not a copy of
their logic; what a compiled launch needs is a :class:`~gpuann._triton.resources.Resources`,
judged by :func:`~gpuann._triton.resources.problems` (both modules' names are re-exported
here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from gpuann._triton.launch import KernelLaunch
from gpuann._triton.resources import (
    ARCHS,
    SHARED_PER_BLOCK,
    SPILL_TOLERANCE,
    Resources,
    problems,
    resident_warps,
    sass_summary,
)

__all__ = [
    "ARCHS",
    "SHARED_PER_BLOCK",
    "SPILL_TOLERANCE",
    "KernelLaunch",
    "Resources",
    "compile_launches",
    "kernel_source_digest",
    "problems",
    "resident_warps",
    "sass_summary",
]

#: What ``ptxas -v`` reports, by :class:`Resources` field.
_PTXAS_RE = {
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "registers": re.compile(r"Used (\d+) registers"),
}


# ---------------------------------------------------------------------------- caching
def kernel_source_digest() -> str:
    """SHA-256 of every kernel source file, of the module that summarises the compiles
    (a cached summary must have today's fields) and of the triton version (the cache's key)."""
    import importlib.metadata

    import gpuann._kernels as kernels
    from gpuann._triton import resources

    h = hashlib.sha256(importlib.metadata.version("triton").encode())
    for path in [*sorted(Path(kernels.__file__).parent.glob("*.py")), Path(resources.__file__)]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


_MEMORY: dict[str, Resources] = {}


def _disk_cache_dir() -> Path | None:
    from gpuann._env import aot_cache_dir

    return aot_cache_dir()


def _cache_key(digest: str, launch: KernelLaunch, arch: int, sass: bool) -> str:
    text = f"{digest}|{arch}|{sass}|{launch.compile_key()}"
    return hashlib.sha256(text.encode()).hexdigest()


def _read_disk(folder: Path | None, key: str) -> Resources | None:
    if folder is None:
        return None
    path = folder / f"{key}.json"
    try:
        return Resources(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_disk(folder: Path | None, key: str, res: Resources) -> None:
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(res)))
        tmp.replace(folder / f"{key}.json")
    except OSError:
        pass


# ---------------------------------------------------------------------------- compiling
def compile_launches(
    launches: Iterable[KernelLaunch],
    arch: int,
    *,
    sass: bool = False,
    workers: int | None = None,
) -> list[Resources]:
    """Compile each launch for ``sm_<arch>`` and return what it needs, in the given order.

    Parameters
    ----------
    launches : iterable of KernelLaunch
    arch : int
        Compute capability, e.g. 90 or 80.
    sass : bool
        Also disassemble and count SASS opcodes (slower).
    workers : int, optional
        Compiling processes (default: the cores this process may use, at most 4).

    A launch that does not compile gives a :class:`Resources` with ``error`` set; nothing
    raises for a kernel's sake.
    """
    launches = list(launches)
    digest = kernel_source_digest()
    folder = _disk_cache_dir()
    keys = [_cache_key(digest, launch, arch, sass) for launch in launches]
    todo: dict[str, KernelLaunch] = {}
    for key, launch in zip(keys, launches, strict=True):
        if key in _MEMORY or key in todo:
            continue
        cached = _read_disk(folder, key)
        if cached is not None:
            _MEMORY[key] = cached
        else:
            todo[key] = launch
    if todo:
        n = workers or min(4, len(os.sched_getaffinity(0)))
        payloads = [_payload(launch, arch, sass) for launch in todo.values()]
        results = _run_workers(payloads, max(1, min(n, len(payloads))))
        for key, result in zip(todo, results, strict=True):
            res = Resources(**result)
            _MEMORY[key] = res
            _write_disk(folder, key, res)
    return [_MEMORY[key] for key in keys]


def _cost(payload: dict[str, Any]) -> int:
    """Rough compile cost (the selection network grows with K and the block height)."""
    c = dict(payload["constexprs"])
    return int(c.get("K", c.get("K_PAD", 1))) * int(c.get("BM", c.get("BR", c.get("BLOCK_Q", 1))))


def _run_workers(payloads: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Compile payloads in ``n`` fresh interpreters (``TRITON_INTERPRET=0``), in order."""
    order = sorted(range(len(payloads)), key=lambda i: -_cost(payloads[i]))
    shares = [order[w::n] for w in range(n)]
    env = dict(os.environ, TRITON_INTERPRET="0")
    results: list[dict[str, Any]] = [{} for _ in payloads]
    with tempfile.TemporaryDirectory(prefix="gpuann-aot-") as tmp:
        procs = []
        for w, share in enumerate(shares):
            src, dst = Path(tmp) / f"in{w}.json", Path(tmp) / f"out{w}.json"
            src.write_text(json.dumps([payloads[i] for i in share], default=str))
            cmd = [sys.executable, "-m", "gpuann._triton.aot", str(src), str(dst)]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append((share, dst, proc))
        for share, dst, proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                tail = err.decode(errors="replace")[-2000:]
                raise RuntimeError(f"AOT compile worker failed ({proc.returncode}):\n{tail}")
            for i, result in zip(share, json.loads(dst.read_text()), strict=True):
                results[i] = result
    return results


def _worker_main(src: str, dst: str) -> None:
    """``python -m gpuann._triton.aot IN OUT``: compile the payloads of IN, write OUT."""
    import warnings

    warnings.filterwarnings("ignore")
    payloads = json.loads(Path(src).read_text())
    Path(dst).write_text(json.dumps([_compile_payload(p) for p in payloads]))


def _payload(launch: KernelLaunch, arch: int, sass: bool) -> dict[str, Any]:
    return {
        "kernel": launch.kernel,
        "args": [(n, str(v) if isinstance(v, torch.dtype) else v) for n, v in launch.args],
        "constexprs": list(launch.constexprs),
        "num_warps": launch.num_warps,
        "num_stages": launch.num_stages,
        "arch": arch,
        "sass": sass,
    }


def _compile_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Compile one launch (in a worker process); a dict of :class:`Resources` fields."""
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import native_specialize_impl

    arch = payload["arch"]
    module_name, fn_name = payload["kernel"].split(":")
    fn = getattr(importlib.import_module(f"gpuann._kernels.{module_name}"), fn_name)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    args = dict(payload["args"])
    constexprs = dict(payload["constexprs"])
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], Any] = {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, str) and value.startswith("torch."):
            value = torch.empty(16, dtype=getattr(torch, value.removeprefix("torch.")))
        param = fn.params[i]  # as the runtime binder: honour do_not_specialize(_on_alignment)
        specialize = not param.do_not_specialize
        align = not param.do_not_specialize_on_alignment
        kind, spec = native_specialize_impl(backend, value, False, specialize, align)
        if kind == "constexpr":
            signature[name] = "constexpr"
            constexprs[name] = spec
        else:
            signature[name] = kind
            if isinstance(spec, str) and spec:
                attrs[(i,)] = backend.parse_attr(spec)
    options = {"num_warps": payload["num_warps"], "num_stages": payload["num_stages"]}
    out: dict[str, Any] = {"arch": arch, "num_warps": payload["num_warps"]}
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # the ptxas log is only printed when it runs
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                target=target,
                options=options,
            )
    except Exception as exc:  # the compile error is the result
        message = str(exc).strip().splitlines()
        out["error"] = f"{type(exc).__name__}: " + " | ".join(message[-3:])[:600]
        return out
    text = log.getvalue()
    for field, pattern in _PTXAS_RE.items():
        found = pattern.findall(text)
        out[field] = int(found[-1]) if found else 0
    out["shared"] = int(compiled.metadata.shared or 0)
    ptx = compiled.asm["ptx"]
    out["tensor_core"] = (
        "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else None
    )
    if payload["sass"]:
        out["sass"] = sass_summary(compiled.asm["sass"])
    return out


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2])
