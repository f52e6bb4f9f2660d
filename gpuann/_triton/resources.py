"""What a compiled kernel needs on its GPU, and whether that fits: :class:`Resources`.

The ahead-of-time checks (``gpuann._triton.aot``) fill a :class:`Resources` per compiled
launch from ``ptxas -v`` and the PTX/SASS; here are the targets' limits, the occupancy they
allow (:func:`resident_warps`), the verdict (:func:`problems`) and the static summary of a SASS
listing (:func:`sass_summary`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

__all__ = [
    "ARCHS",
    "SHARED_PER_BLOCK",
    "SHARED_PER_SM",
    "SPILL_TOLERANCE",
    "Resources",
    "problems",
    "resident_warps",
    "sass_summary",
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

#: triton's SASS listing (``CompiledKernel.asm["sass"]``): ``ctrl<TAB>[@P] OPCODE ops;`` lines
#: and ``LBBn:`` labels.
_SASS_INSTR = re.compile(r"^[^\t]*\t(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[A-Z0-9_.]+)?([^;]*);")
_SASS_LABEL = re.compile(r"^(\w+):\s*$")


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


def sass_summary(sass: str) -> dict[str, int]:
    """Static SASS counts: every opcode, ``total``, and the tile loop's structure.

    ``loop``: instructions in the tile loop, the first outermost loop (a backward branch's
    range not inside another; the fused k-NN scans whole tiles there, then the last partial
    tile in a second copy); ``branch``: the largest range a forward conditional branch at
    the top of it skips (the fused k-NN's append of candidates, the batched top-k's merge of
    a tile); ``steady``: ``loop - branch``, what every tile costs when that branch is not
    taken; ``inner``: the largest forward branch inside ``branch`` that holds a loop (the
    fused k-NN's merge of the candidate buffers) and ``inner_loop``: the largest loop inside
    it (its loop over rows of lists, run ``BM / RB`` times); ``chunk``: the smallest forward
    branch inside that loop (the merge of one chunk of a buffer, skipped where the chunk holds
    no key), 0 without one; ``fast`` and ``slow``: the
    smaller and the larger side of the largest if/else inside ``branch`` outside ``inner``
    (the fused k-NN's one-candidate-per-query append and its cumsum append), 0 without one;
    ``d_loop``: the largest loop in the tile loop outside ``branch`` (the fused k-NN's loop
    over chunks of d, run ``ceil(d / BD)`` times per tile), 0 without one.
    Counts are per warp and static (each executes once per pass).
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
    loops, forwards, jumps = [], [], {}
    for i, (opcode, predicated, operands) in enumerate(instructions):
        if opcode != "BRA" or operands.split(" ")[-1] not in labels:
            continue
        j = labels[operands.split(" ")[-1]]
        if j <= i:
            loops.append((j, i))
        elif predicated:
            forwards.append((i, j))
        else:
            jumps[i] = j
    outer = [r for r in loops if not any(o != r and o[0] <= r[0] and r[1] <= o[1] for o in loops)]
    if outer:
        start, end = min(outer)
        inside = [(i, j) for i, j in forwards if start <= i and j <= end + 1]
        out["loop"] = end - start + 1
        top = max(inside, key=lambda r: r[1] - r[0], default=None)
        out["branch"] = top[1] - top[0] if top else 0
        out["steady"] = out["loop"] - out["branch"]
        # A loop inside the tile loop but outside its branch: the loop over chunks of d (run
        # ceil(d / BD) times per tile when the query block is not one tile).
        in_steady = [
            b - a + 1
            for a, b in loops
            if start < a and b < end and not (top and top[0] <= a and b < top[1])
        ]
        out["d_loop"] = max(in_steady, default=0)
        nested = [r for r in inside if top and top[0] < r[0] and r[1] <= top[1]]

        def holds_loop(r: tuple[int, int]) -> bool:
            return any(r[0] < a and b < r[1] for a, b in loops)

        inner = max(filter(holds_loop, nested), key=lambda r: r[1] - r[0], default=None)
        out["inner"] = inner[1] - inner[0] if inner else 0
        inner_loops = [(a, b) for a, b in loops if inner and inner[0] < a and b < inner[1]]
        row_loop = max(inner_loops, key=lambda r: r[1] - r[0], default=None)
        out["inner_loop"] = row_loop[1] - row_loop[0] + 1 if row_loop else 0
        # The chunks a merge takes only when they hold keys (``if c0 < filled``): the
        # smallest forward branch inside the loop over rows, the last chunk's.
        chunk_ifs = [
            j - i for i, j in forwards if row_loop and row_loop[0] < i and j <= row_loop[1]
        ]
        out["chunk"] = min(chunk_ifs, default=0)
        sides = []  # if/else: a conditional branch over the "then" side, which ends in a jump
        for i, j in nested:  # over the "else" side
            end = jumps.get(j - 1)
            outside = not inner or not inner[0] <= i < inner[1]
            if end is not None and end > j and outside and not holds_loop((i, end)):
                sides.append(sorted((j - i - 1, end - j)))
        fast, slow = max(sides, key=sum, default=(0, 0))
        out["fast"], out["slow"] = fast, slow
    return out
