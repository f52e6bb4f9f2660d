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

Launchers describe a launch with :class:`KernelLaunch` (see ``gpuann._triton.knn``), so the
checks compile what the launchers run, not a copy of their logic.
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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

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
]

#: Compute capabilities checked: sm_90 (H100/H200) and sm_80 (A100).
ARCHS = (90, 80)
#: Largest dynamic shared memory one block may use (bytes).
SHARED_PER_BLOCK = {90: 227 * 1024, 80: 163 * 1024}
#: Shared memory of one multiprocessor (bytes); each resident block also reserves 1 KiB.
SHARED_PER_SM = {90: 228 * 1024, 80: 164 * 1024}
_REGISTERS_PER_SM = 65536
_MAX_WARPS_PER_SM = 64
_MAX_BLOCKS_PER_SM = 32
_MAX_REGISTERS_PER_THREAD = 255

_PTXAS_RE = {
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "registers": re.compile(r"Used (\d+) registers"),
}
#: triton's SASS listing (``CompiledKernel.asm["sass"]``): ``ctrl<TAB>[@P] OPCODE ops;`` lines
#: and ``LBBn:`` labels.
_SASS_INSTR = re.compile(r"^[^\t]*\t(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[A-Z0-9_.]+)?([^;]*);")
_SASS_LABEL = re.compile(r"^(\w+):\s*$")


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch, without tensors: what decides how the kernel compiles.

    Attributes
    ----------
    kernel : str
        ``"<module>:<function>"`` of a kernel in ``gpuann._kernels`` (e.g.
        ``"fused_knn:fused_knn_kernel"``).
    grid : tuple of int
    args : tuple of (name, value)
        The runtime (non-constexpr) arguments: ints and floats as passed, pointers as the
        ``torch.dtype`` of the tensor passed.
    constexprs : tuple of (name, value)
    num_warps, num_stages : int
    """

    kernel: str
    grid: tuple[int, ...]
    args: tuple[tuple[str, Any], ...]
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int
    num_stages: int

    @classmethod
    def make(
        cls,
        kernel: str,
        grid: Sequence[int],
        args: Mapping[str, Any],
        constexprs: Mapping[str, Any],
        num_warps: int,
        num_stages: int,
    ) -> KernelLaunch:
        """Build from mappings (kept in the given order)."""
        return cls(
            kernel,
            tuple(int(g) for g in grid),
            tuple(args.items()),
            tuple(constexprs.items()),
            int(num_warps),
            int(num_stages),
        )

    def kwargs(self) -> dict[str, Any]:
        """Scalar arguments, constexprs and launch options as keyword arguments of a launch."""
        out = {n: v for n, v in self.args if not isinstance(v, torch.dtype)}
        out.update(self.constexprs)
        out["num_warps"] = self.num_warps
        out["num_stages"] = self.num_stages
        return out

    def pointer_dtypes(self) -> dict[str, torch.dtype]:
        """Pointer arguments and the dtype of the tensor each receives."""
        return {n: v for n, v in self.args if isinstance(v, torch.dtype)}

    def launch(self, fn: Any, tensors: Mapping[str, torch.Tensor], **floats: float) -> None:
        """Launch ``fn`` (the jit function named by ``kernel``) with these tensors.

        ``floats`` replace float arguments of the plan (their values never specialise a
        compilation, so plans hold a placeholder).
        """
        expected = self.pointer_dtypes()
        if set(tensors) != set(expected):
            raise ValueError(f"{self.kernel}: tensors {sorted(tensors)} != {sorted(expected)}")
        for name, tensor in tensors.items():
            if tensor.dtype != expected[name]:
                raise ValueError(
                    f"{self.kernel}: {name} is {tensor.dtype}, planned {expected[name]}"
                )
        kwargs = self.kwargs()
        for name, value in floats.items():
            if not isinstance(kwargs.get(name), float):
                raise ValueError(f"{self.kernel}: {name} is not a float argument")
            kwargs[name] = float(value)
        fn[self.grid](**tensors, **kwargs)

    def compile_key(self) -> str:
        """What the compiled code depends on (the grid does not enter)."""
        args = [
            (n, str(v) if isinstance(v, torch.dtype) else _spec_of_int(v)) for n, v in self.args
        ]
        return json.dumps(
            [
                self.kernel,
                args,
                [list(c) for c in self.constexprs],
                self.num_warps,
                self.num_stages,
            ],
            default=str,
        )

    def label(self) -> str:
        """Short human-readable description: constexprs that are not flags, and options."""
        parts = [f"{n}={v}" for n, v in self.constexprs if not isinstance(v, bool)]
        flags = [n for n, v in self.constexprs if v is True]
        text = " ".join([*parts, f"w{self.num_warps}", f"s{self.num_stages}"])
        return text + (" [" + ",".join(flags) + "]" if flags else "")


def _spec_of_int(value: Any) -> str:
    """How triton's binder specialises a scalar: 1 → constexpr, %16 → 'D', width."""
    if isinstance(value, bool) or not isinstance(value, int):
        return repr(value)
    width = "i32" if -(2**31) <= value < 2**31 else "i64"
    if value == 1:
        return "one"
    return width + ("D" if value % 16 == 0 else "")


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one compiled kernel needs on its target.

    Attributes
    ----------
    arch : int
        Compute capability (90, 80).
    registers : int
        Registers per thread.
    spill_stores, spill_loads, stack : int
        Bytes per thread (``ptxas -v``): spill stores, spill loads, stack frame.
    shared : int
        Shared memory per block, bytes.
    num_warps : int
    tensor_core : str or None
        ``"wgmma"`` (Hopper warpgroup MMA), ``"mma"`` (``mma.sync``) or None, from the PTX.
    sass : dict of str to int, or None
        SASS opcode counts (only when asked for); ``"total"`` is their sum.
    error : str or None
        Why it did not compile (the other fields are 0 then).
    """

    arch: int
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    shared: int = 0
    num_warps: int = 0
    tensor_core: str | None = None
    sass: dict[str, int] | None = None
    error: str | None = None

    @property
    def spills(self) -> int:
        """Spill bytes per thread, stores and loads together."""
        return self.spill_stores + self.spill_loads

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with ``resident_warps`` added."""
        out = dataclasses.asdict(self)
        out["resident_warps"] = resident_warps(self) if self.error is None else 0
        return out


def resident_warps(res: Resources) -> int:
    """Warps of this kernel one multiprocessor holds at once (registers, shared memory, caps)."""
    if res.error is not None or res.num_warps <= 0:
        return 0
    regs = -(-max(res.registers, 1) // 8) * 8  # allocated in units of 8 per thread (256/warp)
    by_regs = _REGISTERS_PER_SM // (regs * 32 * res.num_warps)
    by_warps = _MAX_WARPS_PER_SM // res.num_warps
    by_shared = SHARED_PER_SM[res.arch] // (res.shared + 1024) if res.shared else _MAX_BLOCKS_PER_SM
    return max(0, min(by_regs, by_warps, by_shared, _MAX_BLOCKS_PER_SM)) * res.num_warps


#: Spill bytes per thread (stores + loads) tolerated below the register limit: ptxas trades a
#: few spilled words for occupancy on its own (e.g. 96 registers and 8 B spilled, where
#: ``maxnreg=255`` gives 166 registers and none), which is not register pressure.
SPILL_TOLERANCE = 64


def problems(res: Resources, *, allow_spills: bool = False) -> list[str]:
    """Why a launch could not run (or runs badly) on its target; empty when fine.

    A spill counts unless ``allow_spills``, except ptxas's own occupancy trade-off: registers
    below 255 and at most ``SPILL_TOLERANCE`` bytes per thread.
    """
    if res.error is not None:
        return [f"does not compile: {res.error}"]
    out = []
    limit = SHARED_PER_BLOCK[res.arch]
    if res.shared > limit:
        out.append(f"needs {res.shared / 1024:.1f} KiB of shared memory > {limit // 1024} KiB")
    if res.registers > _MAX_REGISTERS_PER_THREAD:
        out.append(f"{res.registers} registers per thread")
    pressure = res.registers >= _MAX_REGISTERS_PER_THREAD or res.spills > SPILL_TOLERANCE
    if not allow_spills and res.spills and pressure:
        out.append(f"spills {res.spill_stores} B stores / {res.spill_loads} B loads per thread")
    return out


# ---------------------------------------------------------------------------- caching
def kernel_source_digest() -> str:
    """SHA-256 of every kernel source file and of the triton version (the cache's key)."""
    import importlib.metadata

    import gpuann._kernels as kernels

    h = hashlib.sha256(importlib.metadata.version("triton").encode())
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
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


def sass_summary(sass: str) -> dict[str, int]:
    """Static SASS counts: every opcode, ``total``, and the tile loop's structure.

    ``loop``: instructions in the largest loop (the tile loop: a backward branch's range);
    ``branch``: the largest range a forward conditional branch inside it skips (e.g. the
    merge of a tile into the running top-k); ``steady``: ``loop - branch``, what every tile
    costs when that branch is not taken. Counts are per warp and static (each executes once
    per pass).
    """
    instructions = []  # (opcode, predicated, operands)
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        label = _SASS_LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _SASS_INSTR.match(line)
        if match:
            instructions.append((match.group(2), bool(match.group(1)), match.group(3).strip()))
    counts: dict[str, int] = {}
    for opcode, _, _ in instructions:
        counts[opcode] = counts.get(opcode, 0) + 1
    out = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    out["total"] = len(instructions)
    loops, forwards = [], []
    for i, (opcode, predicated, operands) in enumerate(instructions):
        if opcode != "BRA" or operands.split(" ")[-1] not in labels:
            continue
        j = labels[operands.split(" ")[-1]]
        if j <= i:
            loops.append((j, i))
        elif predicated:
            forwards.append((i, j))
    if loops:
        start, end = max(loops, key=lambda r: r[1] - r[0])
        inside = [j - i for i, j in forwards if start <= i and j <= end + 1]
        out["loop"] = end - start + 1
        out["branch"] = max(inside, default=0)
        out["steady"] = out["loop"] - out["branch"]
    return out


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2])
