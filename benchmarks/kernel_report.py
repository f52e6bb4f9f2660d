"""Resource and cost report of gpuann's Triton kernels, compiled ahead of time (no GPU needed).

Run from the repository root::

    python -m benchmarks.kernel_report                     # sm_90 and sm_80, the report grid
    python -m benchmarks.kernel_report --grid full         # the issue's whole grid (long)
    python -m benchmarks.kernel_report --arch 90 --grid representative --no-replay   # quick

For every default launch of ``gpuann._triton.catalog`` (the launchers' own plans over a grid
of shapes) it compiles the kernel for the architecture with the triton wheel's ``ptxas`` and
records registers, spill bytes, shared memory, resident warps per SM, the tensor-core
instruction used (``wgmma``/``mma`` in the PTX; HGMMA/HMMA in the SASS) and SASS instruction
counts — in all, in the tile loop, in its largest conditional branch (the merge of a tile into
the running top-k) and in the rest (``steady``).

Then, for the headline fused k-NN shapes (k up to 2048), it measures how often the fused
kernel's branches run by replaying its scan order in torch (same blocks of queries, splits,
tiles and candidate buffers: a tile *appends* when a query of the block has a score at or
below its threshold, the block's buffers are *merged* when one would overflow) on seeded
random data and on clustered data (a mixture of Gaussians: neighbours concentrate, as in
real embeddings), and on the demo's cached MiniLM embeddings when present (their own small
shape: frequencies only). It turns the counts into an issue-bound time **estimate**:
warp-instructions / (SMs × 4 schedulers × clock). Beside it, the same kind of estimate for
torch ``mm + topk`` (FLOPs at peak + the score matrix written and read at HBM bandwidth), the
tensor-core floor and the L2 floor (the database re-read by every block of queries, at a
round L2 bandwidth). These are models, never measurements: ``benchmarks.gpu_suite``
measures on a GPU.

Writes ``<out>/kernel_report_sm<arch>.json`` and ``.md`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = [
    "GPUS",
    "HEADLINE",
    "estimate",
    "main",
    "replay_presets",
    "replay_selection",
    "with_merge",
    "with_presets",
]

#: Per architecture: the GPU modelled (SMs, boost clock, dense 16-bit and TF32 tensor FLOP/s,
#: float32 FMA FLOP/s, dense int8 tensor OP/s, HBM B/s).
#: ``l2_bw`` (L2 to SM bandwidth) is a round model constant, not a data-sheet figure.
GPUS = {
    90: {
        "name": "H100 SXM",
        "sms": 132,
        "clock_hz": 1.98e9,
        "flops16": 989e12,
        "flops_tf32": 494e12,
        "flops32": 67e12,
        "ops_int8": 1979e12,
        "bw": 3.35e12,
        "l2_bw": 5.5e12,
    },
    80: {
        "name": "A100 SXM 80GB",
        "sms": 108,
        "clock_hz": 1.41e9,
        "flops16": 312e12,
        "flops_tf32": 156e12,
        "flops32": 19.5e12,
        "ops_int8": 624e12,
        "bw": 2.04e12,
        "l2_bw": 4.0e12,
    },
}
#: Headline fused k-NN shapes of the estimate (float16 storage and queries, squared L2).
HEADLINE = (
    [
        {"queries": 4096, "rows": 1_000_000, "dim": 128, "k": k, "dtype": "float16"}
        for k in (10, 100, 1000, 2048)
    ]
    + [
        {"queries": 4096, "rows": 1_000_000, "dim": 128, "k": k, "dtype": dtype}
        for dtype in ("float32", "int8")
        for k in (10, 100)
    ]
    + [  # large k without preset thresholds (GPUANN_TRITON_PRESET=off): the comparison
        {
            "queries": 4096,
            "rows": 1_000_000,
            "dim": 128,
            "k": k,
            "dtype": "float16",
            "preset": False,
        }
        for k in (1000, 2048)
    ]
)
#: Queries replayed per shape (whole blocks of the kernel, so block-wide branches are exact).
REPLAY_QUERIES = 128


def replay_selection(
    queries: Any,
    database: Any,
    k: int,
    block_m: int,
    block_n: int,
    per_split: int,
    cap: int,
    preset: Any = None,
    chunk: int | None = None,
) -> dict[str, float]:
    """How often the fused kernel's branches run, replaying its scan order in torch.

    Each program (a block of ``block_m`` queries over one split of ``per_split`` rows) scans
    its rows in tiles of ``block_n``. A tile *appends* when any query of the block has a
    score at or below its threshold (the k-th of its list at the last merge; every score
    while the list holds fewer than k); the block's buffers are *merged* when one of them
    would overflow its ``cap`` keys, and once at the end. With ``preset`` (Q,) thresholds
    (the kernel's ``HAS_THR``; NaN: none) a query's threshold is never above its preset.
    With ``chunk`` < ``cap`` (the kernel's ``CHUNK``) a merge takes the buffers in chunks of
    that many keys, only those holding a key of some query of the block.

    Returns
    -------
    dict
        ``append``: fraction of (program, tile) pairs that append; ``single``: of appends,
        the fraction where no query has more than one candidate; ``merge``: merges per
        (program, tile) pair, the final ones included; ``chunks``: chunks merged per merge
        (1 where ``chunk`` is None or ``cap``: the whole buffer); ``query_tiles``: of (query, tile)
        pairs with a candidate; ``scores``: of scores that are candidates; ``short``: of
        queries, those whose splits admitted fewer than k scores in all (with a preset:
        their blocks run again without presets).
    """
    import torch

    n_q, n_rows = queries.shape[0], database.shape[0]
    n_blocks = n_q // block_m
    sq = (database.float() ** 2).sum(1)
    appends = singles = merges = tiles = query_hits = score_hits = chunks = 0
    chunk = cap if chunk is None else chunk

    def merged_chunks(blocks):  # chunks each merging block takes: its fullest buffer's
        return int(torch.ceil(count.view(n_blocks, block_m).max(1).values[blocks] / chunk).sum())

    admitted = torch.zeros(n_q, dtype=torch.int64)
    ceiling = torch.full((n_q,), math.inf)  # +inf: every (finite) score is a candidate
    if preset is not None:
        ceiling = torch.where(torch.isnan(preset), math.inf, preset.float())
    for start in range(0, n_rows, per_split):
        stop = min(start + per_split, n_rows)
        scores = sq[start:stop][None, :] - 2.0 * (queries @ database[start:stop].T)
        lists = torch.full((n_q, k), math.inf)
        thr = ceiling.clone()
        buffer = torch.full((n_q, cap + 1), math.inf)  # column ``cap``: where non-hits go
        count = torch.zeros(n_q, dtype=torch.int64)
        for t0 in range(0, stop - start, block_n):
            tile = scores[:, t0 : t0 + block_n]
            tiles += n_blocks
            hit = tile <= thr[:, None]
            row_hit = hit.any(1)
            if not row_hit.any():
                continue
            block_hit = row_hit.view(n_blocks, block_m).any(1)
            appends += int(block_hit.sum())
            n_hit = hit.sum(1)
            single = (n_hit.view(n_blocks, block_m).max(1).values <= 1) & block_hit
            singles += int(single.sum())
            query_hits += int(row_hit.sum())
            score_hits += int(n_hit.sum())
            admitted += n_hit
            over = ((count + n_hit) > cap).view(n_blocks, block_m).any(1)
            if over.any():
                merges += int(over.sum())
                chunks += merged_chunks(over)
                rows = over.repeat_interleave(block_m)
                both = torch.cat([lists[rows], buffer[rows, :cap]], dim=1)
                lists[rows] = torch.topk(both, k, dim=1, largest=False, sorted=True).values
                thr[rows] = torch.minimum(lists[rows, k - 1], ceiling[rows])
                buffer[rows] = math.inf
                count[rows] = 0  # the tile's hits, found with the old thresholds, go in
            place = torch.where(hit, count[:, None] + hit.cumsum(1) - 1, cap)
            buffer.scatter_(1, place, torch.where(hit, tile, math.inf))
            buffer[:, cap] = math.inf
            count += n_hit
        last = (count.view(n_blocks, block_m) > 0).any(1)  # the final merges
        merges += int(last.sum())
        chunks += merged_chunks(last)
    total_tiles = tiles // max(n_blocks, 1)
    return {
        "append": appends / max(tiles, 1),
        "single": singles / max(appends, 1),
        "merge": merges / max(tiles, 1),
        "chunks": chunks / max(merges, 1),
        "query_tiles": query_hits / max(n_q * total_tiles, 1),
        "scores": score_hits / max(n_q * n_rows, 1),
        "short": float((admitted < min(k, n_rows)).float().mean()),
    }


def replay_presets(queries: Any, database: Any, stride: int, k_seed: int) -> Any:
    """The preset thresholds (Q,) of the sample pass: each query's ``k_seed``-th best score
    over every ``stride``-th row (the kernel's score, ``‖x‖² − 2⟨q, x⟩``)."""
    sample = database[::stride].float()
    scores = (sample**2).sum(1)[None, :] - 2.0 * (queries @ sample.T)
    return scores.kthvalue(k_seed, dim=1).values


def _data(kind: str, n_rows: int, dim: int, n_queries: int) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    if kind == "random":
        x = torch.randn(n_rows, dim, generator=gen)
        q = torch.randn(n_queries, dim, generator=gen)
    else:  # clustered: 1000 Gaussian clusters, queries drawn like the rows
        centers = torch.randn(1000, dim, generator=gen) * 2.0
        x = centers[torch.randint(0, 1000, (n_rows,), generator=gen)]
        x += torch.randn(n_rows, dim, generator=gen)
        q = centers[torch.randint(0, 1000, (n_queries,), generator=gen)]
        q += torch.randn(n_queries, dim, generator=gen)
    return q.half().float(), x.half().float()


def estimate(
    shape: dict[str, Any],
    plan: Any,
    sass: dict[str, int] | None,
    freq: dict[str, float],
    gpu: dict,
) -> dict[str, Any]:
    """Issue-bound time estimate of the fused kernel, and the torch ``mm + topk`` model.

    Per warp: every tile costs ``steady``; a tile that appends adds ``branch - inner`` with
    its one-candidate side (``fast``) taken for the ``single`` share and the cumsum side
    (``slow``) for the rest; a merge costs ``inner`` with its loop over rows of lists
    (``inner_loop``) run ``BM / RB`` times, where a buffer is merged in chunks (``CHUNK <
    CAP``) with ``chunk`` per chunk for the replayed ``chunks`` merged instead of all
    ``CAP / CHUNK``. ``freq`` is :func:`replay_selection`'s.

    With ``dim > BD`` the loop over chunks of d (``d_loop``) runs ``ceil(dim / BD)`` times per
    tile; the static ``steady`` count holds it once.

    Whole programs: each multiprocessor issues the instructions of ``ceil(programs / SMs)``
    programs (however many it holds at once, they share its 4 schedulers), so a launch whose
    programs do not divide evenly over the SMs costs its busiest SM's share.

    Float32 storage on the tensor cores (``TF32X3``) adds the float64 re-scoring of the
    winners: about 28 bytes per query × k × d element at HBM bandwidth.
    """
    q, n, d = shape["queries"], shape["rows"], shape["dim"]
    launch = plan.partial
    n_blocks, n_splits = launch.grid
    per_split = dict(launch.args)["rows_per_split"]
    constexprs = dict(launch.constexprs)
    block_n, block_m, rows = constexprs["BN"], constexprs["BM"], constexprs["RB"]
    out: dict[str, Any] = {
        "p_append": freq.get("append"),
        "p_single": freq.get("single"),
        "merges_per_tile": freq.get("merge"),
    }
    issue_rate = gpu["sms"] * 4 * gpu["clock_hz"]
    if sass and "steady" in sass:
        tiles = n_blocks * n_splits * math.ceil(per_split / block_n)
        if not constexprs.get("SINGLE_D", True):  # the loop over chunks of d, per tile
            chunks = math.ceil(d / constexprs["BD"])
            sass = {**sass, "steady": sass["steady"] + (chunks - 1) * sass.get("d_loop", 0)}
        fast, slow, single = sass.get("fast", 0), sass.get("slow", 0), freq.get("single", 0.0)
        append = sass["branch"] - sass["inner"] - fast - slow + single * fast
        append += (1.0 - single) * slow
        row = sass["inner_loop"]
        cap, chunk = constexprs.get("CAP"), constexprs.get("CHUNK")
        if sass.get("chunk") and cap and chunk and chunk < cap and "chunks" in freq:
            # Only the chunks holding keys are merged: the static count holds all cap / chunk.
            row += (freq["chunks"] - cap // chunk) * sass["chunk"]
        merge = sass["inner"] - sass["inner_loop"] + row * (block_m // rows)
        per_tile = sass["steady"] + freq.get("append", 0.0) * append
        per_tile += freq.get("merge", 0.0) * merge
        programs = n_blocks * n_splits
        per_sm = math.ceil(programs / gpu["sms"])
        # Issue time of the launch as if its programs spread evenly, stretched to the
        # busiest multiprocessor's share.
        stretch = per_sm * gpu["sms"] / programs
        out["programs"], out["programs_per_sm"], out["wave_stretch"] = programs, per_sm, stretch
        out["fused_estimate_ms"] = 1e3 * tiles * launch.num_warps * per_tile / issue_rate
        out["fused_estimate_ms"] *= stretch
        if constexprs.get("TF32X3"):
            out["rescore_estimate_ms"] = 1e3 * 28.0 * q * shape["k"] * d / gpu["bw"]
            out["fused_estimate_ms"] += out["rescore_estimate_ms"]
        out["fused_steady_estimate_ms"] = (
            1e3 * tiles * launch.num_warps * sass["steady"] / issue_rate * stretch
        )
        out["sass_steady"], out["sass_append"] = sass["steady"], round(append)
        out["sass_merge"] = merge
    flops = 2.0 * q * n * d
    if shape.get("dtype", "float16") == "float32":
        # torch: cuBLAS float32 FMA (TF32 off by default) and float32 scores; the kernel's
        # floor: three TF32 products per score (TF32X3), or FMA dots.
        item = 4
        out["torch_mm_topk_estimate_ms"] = 1e3 * (
            flops / gpu["flops32"] + 2 * q * n * 4 / gpu["bw"]
        )
        tf32x3 = constexprs.get("TF32X3", False)
        rate = gpu["flops_tf32"] / 3 if tf32x3 else gpu["flops32"]
        out["tensor_core_floor_ms"] = 1e3 * flops / rate
    elif shape.get("dtype") == "int8":
        # torch: ``_int_mm`` (cuBLASLt int8) writes int32 scores that topk reads.
        item = 1
        out["torch_mm_topk_estimate_ms"] = 1e3 * (
            flops / gpu["ops_int8"] + 2 * q * n * 4 / gpu["bw"]
        )
        out["tensor_core_floor_ms"] = 1e3 * flops / gpu["ops_int8"]
    else:
        item = 2
        score_bytes = 2.0 * q * n * 2  # float16 scores written by mm, read by topk
        out["torch_mm_topk_estimate_ms"] = 1e3 * (flops / gpu["flops16"] + score_bytes / gpu["bw"])
        out["tensor_core_floor_ms"] = 1e3 * flops / gpu["flops16"]
    out["hbm_floor_ms"] = 1e3 * (n + q) * d * item / gpu["bw"]
    out["l2_floor_ms"] = 1e3 * n_blocks * n * d * item / gpu["l2_bw"]
    out["floor_ms"] = max(out["tensor_core_floor_ms"], out["l2_floor_ms"])
    out["l2_reread_note"] = f"database read by {n_blocks} query blocks (through L2)"
    return out


def with_merge(
    est: dict[str, Any],
    shape: dict[str, Any],
    plan: Any,
    merge_sass: dict[str, int] | None,
    gpu: dict,
) -> dict[str, Any]:
    """``est`` plus the launch that merges the splits' lists into the k results.

    Its time is the larger of its issue bound (per program the code outside the loop over
    splits once, the loop ``n_splits`` times; programs spread evenly, there are many) and its
    memory bound (every list read, k values and positions written, at HBM bandwidth).
    """
    out = dict(est)
    launch = plan.merge
    n_splits = dict(launch.args)["n_splits"]
    k_pad = dict(launch.constexprs)["K"]
    q, k = shape["queries"], shape["k"]
    bytes_ = q * n_splits * k_pad * 8 + q * k * (4 + 8)
    memory_ms = 1e3 * bytes_ / gpu["bw"]
    issue_ms = 0.0
    if merge_sass and "total" in merge_sass:
        loop = merge_sass.get("loop", 0)
        per_program = merge_sass["total"] - loop + n_splits * loop
        programs = math.prod(launch.grid)
        issue_ms = 1e3 * programs * launch.num_warps * per_program
        issue_ms /= gpu["sms"] * 4 * gpu["clock_hz"]
    out["merge_launch_estimate_ms"] = max(memory_ms, issue_ms)
    if out.get("fused_estimate_ms") is not None:
        out["fused_estimate_ms"] += out["merge_launch_estimate_ms"]
    return out


def with_presets(
    est: dict[str, Any],
    shape: dict[str, Any],
    plan: Any,
    sample_sass: dict[str, int] | None,
    freq: dict[str, Any],
    gpu: dict,
) -> dict[str, Any]:
    """``est`` (the main pass with presets) plus the sample pass, the check between the two
    launches and the blocks that run again.

    The sample pass is :func:`estimate` of its own plan on its replayed frequencies
    (``freq["sample"]``); the check finds each list's length by a binary search (one
    32-byte sector per probe, ``log2(K) + 1`` probes), ``kthvalue`` reads the sample's lists
    and the lists of the blocks run again are emptied by a pass that reads and writes every
    list (bytes at HBM bandwidth); a
    block runs again when one of its ``BM`` queries is short (``freq["short"]``), at the
    cost of the main pass without presets at most (charged at the main pass's estimate).
    """
    out = dict(est)
    seed = plan.preset
    sample_shape = {**shape, "rows": math.ceil(shape["rows"] / plan.preset_stride)}
    sample_shape["k"] = plan.preset_k
    sample = estimate(sample_shape, seed, sample_sass, freq.get("sample", {}), gpu)
    probes = shape["queries"] * plan.n_splits * (math.log2(plan.k_pad) + 1)
    keys = shape["queries"] * seed.n_splits * seed.k_pad  # the sample's lists, read
    keys += 2 * shape["queries"] * plan.n_splits * plan.k_pad  # every list, read and written
    check_ms = 1e3 * (32 * probes + 8 * keys) / gpu["bw"]
    block_m = dict(plan.partial.constexprs)["BM"]
    p_redo = 1.0 - (1.0 - freq.get("short", 0.0)) ** block_m
    main = est.get("fused_estimate_ms")
    out.update(
        sample_estimate_ms=sample.get("fused_estimate_ms"),
        preset_check_ms=check_ms,
        p_redo_block=p_redo,
        preset=f"1 row in {plan.preset_stride}, k'={plan.preset_k}",
    )
    if main is not None and sample.get("fused_estimate_ms") is not None:
        out["main_estimate_ms"] = main
        out["fused_estimate_ms"] = main * (1.0 + p_redo) + sample["fused_estimate_ms"] + check_ms
    return out


def _rows(cases: list[Any], results: list[Any]) -> list[dict[str, Any]]:
    from gpuann._triton import aot

    rows = []
    for case, res in zip(cases, results, strict=True):
        sass = res.sass or {}
        row = {
            "op": case.op,
            **dict(case.params),
            "config": case.launch.label(),
            **res.to_dict(),
            "sass_total": sass.get("total"),
            "sass_loop": sass.get("loop"),
            "sass_steady": sass.get("steady"),
            "sass_branch": sass.get("branch"),
            "sass_tensor": sass.get("HGMMA", 0) + sass.get("HMMA", 0),
            "problems": aot.problems(res),
        }
        row.pop("sass", None)
        row["sass_opcodes"] = {op: c for op, c in sass.items() if op.isupper()}
        rows.append(row)
    return rows


COLUMNS = [
    harness.Column("op", "op", align="left"),
    harness.Column("Q", "Q"),
    harness.Column("rows", "rows"),
    harness.Column("d", "d"),
    harness.Column("words", "words"),
    harness.Column("k", "k"),
    harness.Column("dtype", "dtype", align="left"),
    harness.Column("metric", "metric", align="left"),
    harness.Column("filters", "filters", align="left"),
    harness.Column("config", "config", align="left"),
    harness.Column("registers", "regs"),
    harness.Column("spill_stores", "spill st B"),
    harness.Column("spill_loads", "spill ld B"),
    harness.Column("shared", "smem KiB", lambda s: f"{s / 1024:.0f}"),
    harness.Column("resident_warps", "warps/SM"),
    harness.Column("tensor_core", "MMA", align="left"),
    harness.Column("sass_total", "SASS"),
    harness.Column("sass_steady", "steady"),
    harness.Column("sass_branch", "branch"),
    harness.Column("problems", "problems", lambda p: "; ".join(p) or "ok", align="left"),
]
ESTIMATE_COLUMNS = [
    harness.Column("dtype", "dtype", align="left"),
    harness.Column("k", "k"),
    harness.Column("data", "data", align="left"),
    harness.Column("config", "config", align="left"),
    harness.Column("p_append", "P(append) block", "{:.4f}".format),
    harness.Column("p_single", "single share", "{:.3f}".format),
    harness.Column("merges_per_tile", "merges/tile", "{:.5f}".format),
    harness.Column("p_query_tiles", "P(cand.) query", "{:.4f}".format),
    harness.Column("p_scores", "P(cand.) score", "{:.5f}".format),
    harness.Column("programs", "programs"),
    harness.Column("programs_per_sm", "per SM"),
    harness.Column("sass_steady", "SASS steady"),
    harness.Column("sass_append", "SASS append"),
    harness.Column("sass_merge", "SASS merge"),
    harness.Column("preset", "preset", align="left"),
    harness.Column("sample_estimate_ms", "sample pass est. ms", "{:.2f}".format),
    harness.Column("merge_launch_estimate_ms", "split merge est. ms", "{:.3f}".format),
    harness.Column("p_redo_block", "P(block again)", "{:.4f}".format),
    harness.Column("fused_estimate_ms", "fused est. ms", "{:.2f}".format),
    harness.Column("fused_steady_estimate_ms", "steady-only est. ms", "{:.2f}".format),
    harness.Column("torch_mm_topk_estimate_ms", "torch est. ms", "{:.2f}".format),
    harness.Column("tensor_core_floor_ms", "TC floor ms", "{:.2f}".format),
    harness.Column("l2_floor_ms", "L2 floor ms", "{:.2f}".format),
    harness.Column("hbm_floor_ms", "HBM floor ms", "{:.3f}".format),
    harness.Column("replayed_for", "replayed for", align="left"),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="90,80", help="compute capabilities, e.g. 90,80")
    p.add_argument("--grid", choices=("report", "full", "representative"), default="report")
    p.add_argument("--out", type=Path, default=harness.REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--workers", type=int, default=None, help="compiling processes")
    p.add_argument("--no-replay", action="store_true", help="skip the branch-frequency replay")
    args = p.parse_args(argv)
    args.arch = [int(a) for a in args.arch.split(",") if a]
    return args


def _replays(arch: int, no_replay: bool, memo: dict[Any, Any]) -> list[dict[str, Any]]:
    """Plans of the headline shapes and their replayed branch frequencies.

    ``memo`` keeps frequencies across architectures: the second architecture reuses the
    first one's replay (same tiles; its split differs with the SM count, noted in the output).
    """
    import torch

    from gpuann._triton import catalog
    from gpuann._triton.knn import plan_fused_knn

    out = []
    for shape in HEADLINE:
        dtype = getattr(torch, shape["dtype"])
        plan = plan_fused_knn(
            shape["queries"],
            shape["rows"],
            shape["dim"],
            shape["k"],
            storage_dtype=dtype,
            query_dtype=dtype,
            l2=True,
            has_sqnorms=True,
            sm_count=catalog.SM_COUNT[arch],
            preset=shape.get("preset"),
        )
        entry = {"shape": shape, "plan": plan, "freq": {}}
        if not no_replay:
            cfg = plan.config
            per_split = dict(plan.partial.args)["rows_per_split"]
            n_q = max(cfg.block_m, REPLAY_QUERIES // cfg.block_m * cfg.block_m)
            kinds = ("random", "clustered") if shape["k"] <= 100 else ("random",)
            if shape["dtype"] in ("float32", "int8"):  # (int8: replayed on the float scores)
                kinds = ("random",)
            for kind in kinds:
                key = (shape["k"], kind, cfg.block_m, cfg.block_n, plan.cap, per_split)
                key += (dict(plan.partial.constexprs)["CHUNK"],)
                key += (plan.preset_stride, plan.preset_k)
                if key in memo:
                    entry["freq"][kind] = {**memo[key], "replayed_for": memo[key]["replayed_for"]}
                    continue
                q, x = _data(kind, shape["rows"], shape["dim"], n_q)
                t0 = time.perf_counter()
                preset = None
                if plan.preset is not None:  # the sample pass, then the presets it gives
                    seed = plan.preset
                    sample = x[:: plan.preset_stride]
                    freq_seed = replay_selection(
                        q,
                        sample,
                        plan.preset_k,
                        seed.config.block_m,
                        seed.config.block_n,
                        dict(seed.partial.args)["rows_per_split"],
                        seed.cap,
                        chunk=dict(seed.partial.constexprs)["CHUNK"],
                    )
                    preset = replay_presets(q, x, plan.preset_stride, plan.preset_k)
                chunk = dict(plan.partial.constexprs)["CHUNK"]
                freq = replay_selection(
                    q, x, shape["k"], cfg.block_m, cfg.block_n, per_split, plan.cap, preset, chunk
                )
                if preset is not None:
                    freq["sample"] = freq_seed
                freq["replay_s"] = time.perf_counter() - t0
                freq["replayed_for"] = f"sm_{arch} (rows_per_split={per_split})"
                memo[key] = freq
                entry["freq"][kind] = freq
                print(f"  replay sm_{arch} k={shape['k']} {kind}: {freq}", flush=True)
        out.append(entry)
    return out


def _demo_frequencies() -> list[dict[str, Any]]:
    """Replayed branch frequencies on the demo's cached embeddings (empty without a cache)."""
    import torch

    from benchmarks.bench_hnsw import minilm_embeddings
    from gpuann._triton import catalog
    from gpuann._triton.knn import plan_fused_knn

    found = minilm_embeddings()
    if found is None:
        return []
    docs, names, _ = found
    out = []
    for k in (10, 100):
        plan = plan_fused_knn(
            REPLAY_QUERIES,
            docs.shape[0],
            docs.shape[1],
            k,
            storage_dtype=torch.float16,
            query_dtype=torch.float16,
            l2=True,
            has_sqnorms=True,
            sm_count=catalog.SM_COUNT[90],
            splits=1,  # one program scans all 2141 rows (as one split of a large database)
        )
        cfg = plan.config
        per_split = dict(plan.partial.args)["rows_per_split"]
        q, x = names[:REPLAY_QUERIES].half().float(), docs.half().float()
        freq = replay_selection(q, x, k, cfg.block_m, cfg.block_n, per_split, plan.cap)
        shape = f"Q={REPLAY_QUERIES}, N={docs.shape[0]}, d={docs.shape[1]}, {plan.n_splits} splits"
        out.append({"k": k, "shape": shape, **freq})
        print(f"  replay demo k={k}: {freq}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from gpuann._triton import aot, catalog

    grid = {"full": catalog.FULL, "report": catalog.REPORT}.get(args.grid, catalog.REPRESENTATIVE)
    env = harness.environment_info("cpu")
    memo: dict[Any, Any] = {}
    demo = [] if args.no_replay else _demo_frequencies()
    for arch in args.arch:
        t0 = time.perf_counter()
        cases = [c for c in catalog.all_cases(grid, arch) if c.default]
        print(f"sm_{arch}: compiling {len(cases)} default launches", flush=True)
        results = aot.compile_launches(
            [c.launch for c in cases], arch, sass=True, workers=args.workers
        )
        rows = _rows(cases, results)
        replays = _replays(arch, args.no_replay, memo)
        gpu = GPUS[arch]
        estimates = []
        heads = aot.compile_launches([r["plan"].partial for r in replays], arch, sass=True)
        merges = aot.compile_launches([r["plan"].merge for r in replays], arch, sass=True)
        seeds = [r["plan"].preset for r in replays if r["plan"].preset is not None]
        seed_res = iter(aot.compile_launches([p.partial for p in seeds], arch, sass=True))
        for entry, res, merge_res in zip(replays, heads, merges, strict=True):
            sample_res = next(seed_res) if entry["plan"].preset is not None else None
            for kind, freq in entry["freq"].items() or [("none", {})]:
                est = estimate(entry["shape"], entry["plan"], res.sass, freq, gpu)
                if sample_res is not None:
                    est = with_presets(
                        est, entry["shape"], entry["plan"], sample_res.sass, freq, gpu
                    )
                est = with_merge(est, entry["shape"], entry["plan"], merge_res.sass, gpu)
                est.update(
                    dtype=entry["shape"]["dtype"],
                    k=entry["shape"]["k"],
                    data=kind,
                    p_query_tiles=freq.get("query_tiles"),
                    p_scores=freq.get("scores"),
                    config=entry["plan"].partial.label(),
                    replayed_for=freq.get("replayed_for"),
                )
                estimates.append(est)
        bad = [r for r in rows if r["problems"]]
        payload = {
            "arch": arch,
            "gpu_model": gpu,
            "environment": env,
            "grid": args.grid,
            "seconds": time.perf_counter() - t0,
            "note": (
                "Compiled ahead of time on a machine without a GPU. Times are issue-bound "
                "ESTIMATES from static SASS counts and replayed branch frequencies, not "
                "measurements."
            ),
            "launches": rows,
            "estimates": estimates,
            "demo_frequencies": demo,
        }
        stem = f"kernel_report_sm{arch}"
        harness.write_json(args.out / f"{stem}.json", payload)
        text = [
            f"# Kernel report, sm_{arch} ({gpu['name']} model)",
            "",
            f"triton {env['versions'].get('triton')}, {env['date']}, grid `{args.grid}`: "
            f"{len(rows)} default launches, {len(bad)} with problems. Compiled ahead of time "
            "without a GPU; nothing here was run on one.",
            "",
            "## Estimates (issue-bound model, not measurements)",
            "",
            f"Headline: Q=4096, N=10⁶, d=128, L2, float16, float32 and int8 storage (int8: "
            f"branch frequencies replayed on the float scores; torch's `_int_mm` at "
            f"{gpu['ops_int8'] / 1e12:.0f} TOP/s plus int32 scores). Issue rate "
            f"{gpu['sms']} SMs × 4 × {gpu['clock_hz'] / 1e9:.2f} GHz, the busiest SM's share "
            f"of whole programs; torch: FLOPs at {gpu['flops16'] / 1e12:.0f} TFLOP/s (float32: "
            f"{gpu['flops32'] / 1e12:.1f} TFLOP/s FMA, TF32 off as in torch's default) + the "
            f"score matrix written and read at {gpu['bw'] / 1e12:.2f} TB/s; tensor-core floor "
            f"for float32 storage: three TF32 products at {gpu['flops_tf32'] / 1e12:.0f} "
            f"TFLOP/s; L2 floor: the database read once per query block at "
            f"{gpu['l2_bw'] / 1e12:.1f} TB/s (a round model constant).",
            "",
            harness.markdown_table(estimates, ESTIMATE_COLUMNS),
            "",
            "Branch frequencies on the demo's MiniLM embeddings (their own shape, sm_90 plan): "
            + (
                "; ".join(
                    f"k={f['k']}: P(append) {f['append']:.4f}, single share {f['single']:.3f}, "
                    f"merges/tile {f['merge']:.5f}, "
                    f"P(cand.) score {f['scores']:.5f} ({f['shape']})"
                    for f in demo
                )
                or "not replayed (no cached demo embeddings, or --no-replay)."
            ),
            "",
            "## Default launches",
            "",
            harness.markdown_table(rows, COLUMNS),
            "",
        ]
        harness.write_text(args.out / f"{stem}.md", "\n".join(text))
        print(f"sm_{arch}: {len(bad)} problems; wrote {args.out / stem}.json/.md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
