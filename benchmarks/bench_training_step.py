"""A training step's search: Q anchors against an N-entry memory bank, vs plain torch.

Run from the repository root, as a module::

    python -m benchmarks.bench_training_step            # the default grid (minutes on 2 cores)
    python -m benchmarks.bench_training_step --smoke    # one tiny case, seconds
    python -m benchmarks.bench_training_step --queries 256,4096 --bank 65536,1000000 --dim 128

Two workloads, each against what a user writes with torch alone, on the same seeded data:

``plain``
    gpuann ``MemoryBank.search(q, k)`` (cosine, the full bank scanned with its occupancy
    mask) vs ``topk(q @ bankᵀ, k)``.
``hard-negatives``
    ``MemoryBank.search(q, k, exclude_labels=labels)`` vs ``(q @ bankᵀ).masked_fill_(same
    label, -inf)`` then ``topk``.

The torch baselines materialise the (Q, N) similarity matrix in query chunks of at most
``--naive-chunk-mib`` (1 GiB by default: whole for every default case, as a user would).
Methods are timed round-robin (``harness.time_interleaved``) so that load from other jobs on
a shared machine hits each alike; the load average is recorded. ``agreement`` is the fraction
of ids equal to the baseline's (ties and float rounding may differ on a few). Results go to
``<out>/bench_training_step_<device kind>_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

__all__ = ["main", "make_bank", "run_case"]

DEFAULT_OUT = harness.REPO_ROOT / "benchmarks" / "results"
MiB = 1 << 20


def make_bank(n: int, dim: int, device: str, seed: int):
    """A full ``MemoryBank`` of ``n`` seeded embeddings with 100 labels, and the raw tensors."""
    import torch

    import gpuann

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    labels = torch.randint(0, 100, (n,), generator=g).to(device)
    bank = gpuann.MemoryBank(n, dim, device=device, metric="cosine")
    bank.add(x, labels=labels)
    return bank, x, labels


def _torch_search(q, x, k, chunk_rows, q_labels=None, labels=None):
    """What a user writes: similarity matrix (in chunks of queries), mask, ``topk``."""
    import torch

    out_v, out_i = [], []
    for s in range(0, q.shape[0], chunk_rows):
        sims = q[s : s + chunk_rows] @ x.T
        if labels is not None:
            sims.masked_fill_(q_labels[s : s + chunk_rows, None] == labels[None, :], float("-inf"))
        v, i = torch.topk(sims, k, dim=1)
        out_v.append(v)
        out_i.append(i)
    return torch.cat(out_v), torch.cat(out_i)


def run_case(q_n: int, n: int, dim: int, k: int, args: argparse.Namespace) -> list[dict]:
    """Time both workloads of one (Q, N) case; one row per workload."""
    import torch

    device = args.device
    bank, x, labels = make_bank(n, dim, device, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    q = torch.nn.functional.normalize(torch.randn(q_n, dim, generator=g), dim=1).to(device)
    q_labels = torch.randint(0, 100, (q_n,), generator=g).to(device)
    chunk_rows = max(1, min(q_n, args.naive_chunk_mib * MiB // (4 * n)))
    fns = {
        "gpuann": lambda: bank.search(q, k),
        "torch": lambda: _torch_search(q, x, k, chunk_rows),
        "gpuann_hard": lambda: bank.search(q, k, exclude_labels=q_labels),
        "torch_hard": lambda: _torch_search(q, x, k, chunk_rows, q_labels, labels),
    }
    timings = harness.time_interleaved(
        fns, devices=device, repeats=args.repeats, warmup=1, min_seconds=args.min_seconds
    )
    rows = []
    for workload, ours, theirs in (
        ("plain", "gpuann", "torch"),
        ("hard-negatives", "gpuann_hard", "torch_hard"),
    ):
        ids_ours = fns[ours]()[1]
        ids_theirs = fns[theirs]()[1]
        rows.append(
            {
                "workload": workload,
                "queries": q_n,
                "bank": n,
                "dim": dim,
                "k": k,
                "gpuann_ms": 1e3 * timings[ours].median_s,
                "torch_ms": 1e3 * timings[theirs].median_s,
                "speedup": timings[theirs].median_s / timings[ours].median_s,
                "agreement": float((ids_ours.cpu() == ids_theirs.cpu()).float().mean()),
                "torch_chunk_rows": chunk_rows,
                "timings": {ours: timings[ours].to_dict(), theirs: timings[theirs].to_dict()},
            }
        )
    return rows


COLUMNS = [
    harness.Column("workload", "workload", align="left"),
    harness.Column("queries", "Q"),
    harness.Column("bank", "N"),
    harness.Column("dim", "d"),
    harness.Column("k", "k"),
    harness.Column("gpuann_ms", "gpuann ms", "{:.1f}".format),
    harness.Column("torch_ms", "torch mm+topk ms", "{:.1f}".format),
    harness.Column("speedup", "speed-up", "{:.2f}×".format),
    harness.Column("agreement", "ids agree", "{:.4f}".format),
]


def _csv(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one tiny case (seconds)")
    p.add_argument("--queries", type=_csv, default=[256, 1024, 4096])
    p.add_argument("--bank", type=_csv, default=[65536])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--naive-chunk-mib", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        harness.set_threads(args.threads)
    if args.smoke:
        args.queries, args.bank, args.dim, args.repeats = [64], [4096], 32, 1
    env = harness.environment_info(args.device, threads=torch.get_num_threads())
    command = "python -m benchmarks.bench_training_step " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    rows = []
    for n in args.bank:
        for q_n in args.queries:
            rows.extend(run_case(q_n, n, args.dim, args.k, args))
            print(harness.markdown_table(rows[-2:], COLUMNS).splitlines()[-2:], flush=True)
    env["load_average_end"] = harness.load_average()
    payload = {"environment": env, "command": command, "note": args.note, "rows": rows}
    stem = harness.result_stem("bench_training_step", env["device_kind"], env["date"])
    if not args.smoke:
        harness.write_json(args.out / f"{stem}.json", payload)
        text = (
            f"# bench_training_step on {env['device_name']} ({env['device_kind']})\n\n"
            f"Command: `{command}`  \n"
            f"Threads: {env['threads']}; load average (1, 5, 15 min) at start "
            f"{env['load_average']}, at end {env['load_average_end']}; "
            f"torch {env['versions']['torch']}; commit {env['git_commit']}; {env['date']}.\n\n"
            "Median of round-robin repeats. gpuann: `MemoryBank.search` (cosine, full bank); "
            "torch: `topk(q @ bankᵀ)` (with a same-label `masked_fill_` for hard negatives).\n\n"
            + harness.markdown_table(rows, COLUMNS)
            + ("\n\n" + args.note if args.note else "")
            + "\n"
        )
        harness.write_text(args.out / f"{stem}.md", text)
    print(harness.markdown_table(rows, COLUMNS))
    return payload


if __name__ == "__main__":
    main()
