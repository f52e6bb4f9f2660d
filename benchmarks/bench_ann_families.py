"""IVF-SQ8 (± refine), PCA + IVF-Flat and OPQ + IVF-PQ: gpuann vs the same faiss index.

Run from the repository root, as a module::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_ann_families  # quick
    python -m benchmarks.bench_ann_families --preset smoke                             # seconds

For each family, gpuann's index and faiss's index of the same factory string are each built
from scratch on the same data (trained on the same seeded sample of the database — at most
``train_points`` rows, ``opq_train_points`` for OPQ, whose training dominates: about 25 s for
5,000 rows on 2 cores — then filled with all of it; same ``nlist``) and searched with the same
queries, at the same thread count, timed round-robin
(:func:`benchmarks.harness.time_interleaved`; medians of interleaved repeats):

``IVF-SQ8``
    ``gpuann.IVFSQIndex(d, nlist, sq="SQ8")`` vs ``faiss.index_factory(d, "IVF<nlist>,SQ8")``.
``IVF-SQ8+refine``
    ``IVFSQIndex(..., refine=True)`` (re-scores ``refine_factor · k`` = 4k candidates in torch
    against kept float32 vectors) vs ``"IVF<nlist>,SQ8,RFlat"`` (``IndexRefineFlat``,
    ``k_factor`` 4).
``PCA64+IVF-Flat``
    ``gpuann.index_factory(d, "PCA64,IVF<nlist>,Flat")`` (PCA trained in torch, float64
    eigendecomposition; applied in torch) vs faiss's ``"PCA64,IVF<nlist>,Flat"`` (``PCAMatrix``
    + ``IndexIVFFlat`` in an ``IndexPreTransform``).
``OPQ16+IVF-PQ``
    ``gpuann.index_factory(d, "OPQ16_64,IVF<nlist>,PQ16x<nbits>")`` (OPQ trained through faiss,
    applied in torch) vs faiss's same string.

gpuann searches torch tensors (``index.search(q, k, nprobe=p)``: validation, finite check, tie
ordering); faiss numpy arrays with ``nprobe`` set on its IVF layer. ``ratio`` is gpuann's QPS over
faiss's (1 = parity; below 1: gpuann slower). The two recalls differ where the trained parts
differ (k-means, PCA, OPQ), not only by the wrapper.

Data sets (l2 distance):

``minilm``
    The demo's cached all-MiniLM-L6-v2 embeddings of the standard library's docstrings
    (384 dims, unit length, so l2 ranks as cosine does; queries: the demo's 500 name queries).
    Skipped, and said so, when the cache is absent (``python -m gpuann demo`` makes it).
``gauss384``
    :func:`benchmarks.bench_hnsw.gauss`: a seeded Gaussian mixture (100 clusters), 384 dims.

Threads: ``torch.set_num_threads`` and ``faiss.omp_set_num_threads`` to ``--threads``;
``OMP_WAIT_POLICY=PASSIVE`` is set when not given (before torch and faiss load), so the two
OpenMP pools do not spin against each other (see :mod:`benchmarks.bench_hnsw`). Recall@10 is
against exact float64 ground truth. Results:
``benchmarks/results/bench_ann_families_<device>_<date>.json`` (raw samples included) and ``.md``.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import harness

__all__ = ["FAMILIES", "PRESETS", "main", "run"]

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "minilm": False, "gauss_database": 1_000, "gauss_queries": 50, "gauss_nlist": 8,
        "gauss_nbits": 4, "train_points": 1_000, "opq_train_points": 1_000, "nprobes": [1, 4],
        "repeats": 2, "min_seconds": 0.0,
    },
    "quick": {
        "minilm": True, "gauss_database": 50_000, "gauss_queries": 1_000, "gauss_nlist": 256,
        "gauss_nbits": 8, "train_points": 20_000, "opq_train_points": 5_000,
        "nprobes": [1, 4, 16, 64], "repeats": 7, "min_seconds": 0.3,
    },
}  # fmt: skip
K = 10
REFINE_FACTOR = 4
PCA_DIM = 64
OPQ_M = 16
#: family -> factory string (``{nlist}``, ``{nbits}`` filled in per data set).
FAMILIES: dict[str, str] = {
    "IVF-SQ8": "IVF{nlist},SQ8",
    "IVF-SQ8+refine": "IVF{nlist},SQ8,RFlat",
    f"PCA{PCA_DIM}+IVF-Flat": f"PCA{PCA_DIM},IVF{{nlist}},Flat",
    f"OPQ{OPQ_M}+IVF-PQ": f"OPQ{OPQ_M}_{PCA_DIM},IVF{{nlist}},PQ{OPQ_M}x{{nbits}}",
}


def _build_gpuann(description: str, xt: Any, xb: Any) -> Any:
    import gpuann

    kwargs = {"refine_factor": REFINE_FACTOR} if description.endswith("RFlat") else {}
    index = gpuann.index_factory(xb.shape[1], description, metric="l2", device="cpu", **kwargs)
    index.train(xt)
    index.add(xb)
    return index


def _build_faiss(description: str, xt: np.ndarray, xb: np.ndarray) -> Any:
    import faiss

    index = faiss.index_factory(xb.shape[1], description, faiss.METRIC_L2)
    if description.endswith("RFlat"):
        faiss.downcast_index(index).k_factor = REFINE_FACTOR
    index.train(xt)
    index.add(xb)
    return index


def _timed(build: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    index = build()
    return index, time.perf_counter() - start


def bench_dataset(
    name: str, xb: np.ndarray, xq: np.ndarray, nlist: int, nbits: int, cfg: dict, threads: int
) -> list[dict[str, Any]]:
    """Rows of results (one per family and nprobe) for one data set."""
    import faiss
    import torch

    from benchmarks.bench_hnsw import exact_ids, recall

    harness.set_threads(threads)
    xb, xq = np.ascontiguousarray(xb, dtype="float32"), np.ascontiguousarray(xq, dtype="float32")
    xbt, xqt = torch.from_numpy(xb), torch.from_numpy(xq)
    truth = exact_ids(xbt, xqt, K, "l2")
    order = np.random.default_rng(0).permutation(xb.shape[0])
    rows = []
    for family, template in FAMILIES.items():
        description = template.format(nlist=nlist, nbits=nbits)
        n_train = cfg["opq_train_points" if description.startswith("OPQ") else "train_points"]
        xt = np.ascontiguousarray(xb[np.sort(order[:n_train])])
        xtt = torch.from_numpy(xt)
        ours, ours_s = _timed(lambda d=description, t=xtt: _build_gpuann(d, t, xbt))
        theirs, theirs_s = _timed(lambda d=description, t=xt: _build_faiss(d, t, xb))
        harness.set_threads(threads)
        print(
            f"{name:9s} {description}: built gpuann in {ours_s:.1f} s, faiss in {theirs_s:.1f} s",
            flush=True,
        )
        ivf = faiss.extract_index_ivf(theirs)
        for nprobe in [p for p in cfg["nprobes"] if p <= nlist]:
            ivf.nprobe = nprobe
            fns = {
                "faiss": lambda index=theirs: index.search(xq, K),
                "gpuann": lambda index=ours, p=nprobe: index.search(xqt, K, nprobe=p),
            }
            found_faiss = fns["faiss"]()[1]
            found_gpuann = fns["gpuann"]()[1].numpy()
            timings = harness.time_interleaved(
                fns, repeats=cfg["repeats"], min_seconds=cfg["min_seconds"]
            )
            nq = xq.shape[0]
            qps = {key: nq / t.median_s for key, t in timings.items()}
            rows.append(
                {
                    "dataset": name,
                    "database": xb.shape[0],
                    "queries": nq,
                    "dim": xb.shape[1],
                    "family": family,
                    "description": description,
                    "nprobe": nprobe,
                    "train_points": xt.shape[0],
                    "recall_at_10_gpuann": recall(found_gpuann, truth),
                    "recall_at_10_faiss": recall(found_faiss, truth),
                    "qps_gpuann": qps["gpuann"],
                    "qps_faiss": qps["faiss"],
                    "ratio": qps["gpuann"] / qps["faiss"],
                    "build_s_gpuann": ours_s,
                    "build_s_faiss": theirs_s,
                    "nbytes_gpuann": int(ours.nbytes),
                    "timings": {key: t.to_dict() for key, t in timings.items()},
                }
            )
            r = rows[-1]
            print(
                f"{name:9s} {family:15s} nprobe={nprobe:3d} recall@10 gpuann "
                f"{r['recall_at_10_gpuann']:.4f} faiss {r['recall_at_10_faiss']:.4f}  "
                f"q/s gpuann {r['qps_gpuann']:8.0f} faiss {r['qps_faiss']:8.0f}  "
                f"ratio {r['ratio']:.2f}",
                flush=True,
            )
    return rows


def run(preset: str, threads: int) -> dict[str, Any]:
    """Run every data set of ``preset``; returns the result payload."""
    from benchmarks.bench_hnsw import gauss, minilm_or_note

    cfg = PRESETS[preset]
    env = harness.environment_info("cpu", threads=threads)
    notes = []
    results = []
    if cfg["minilm"]:
        found = minilm_or_note(notes)
        if found is not None:
            docs, names, path = found
            from gpuann.ivf import suggest_ivf_params

            params = suggest_ivf_params(docs.shape[0], docs.shape[1])
            notes.append(
                f"minilm: real all-MiniLM-L6-v2 embeddings, {docs.shape[0]} documents, "
                f"{names.shape[0]} name queries ({path}); nlist={params.nlist} and PQ "
                f"{params.nbits} bits from suggest_ivf_params"
            )
            results += bench_dataset(
                "minilm", docs.numpy(), names.numpy(), params.nlist, params.nbits, cfg, threads
            )
    x, q = gauss(cfg["gauss_database"], cfg["gauss_queries"])
    notes.append(
        f"gauss384: synthetic seeded Gaussian mixture, {x.shape[0]} x 384, {q.shape[0]} queries; "
        f"nlist={cfg['gauss_nlist']}, PQ {cfg['gauss_nbits']} bits"
    )
    results += bench_dataset("gauss384", x, q, cfg["gauss_nlist"], cfg["gauss_nbits"], cfg, threads)
    import faiss

    return {
        "benchmark": "bench_ann_families",
        "preset": preset,
        "environment": env,
        "load_average_end": harness.load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "faiss_version": faiss.__version__,
        "parameters": {"k": K, "refine_factor": REFINE_FACTOR, "families": FAMILIES, **cfg},
        "notes": notes,
        "results": results,
    }


_GAUSS_NOTE = (
    "- gauss384's within-cluster noise is isotropic in all 384 dimensions, so no 64-dimension "
    "projection keeps its neighbour order: PCA and OPQ rows there have recall@10 ≈ 0.1 in both "
    "libraries, and measure speed only (the minilm rows show what PCA and OPQ cost on real "
    "embeddings)\n"
)


def markdown(payload: dict[str, Any]) -> str:
    """The Markdown report of a result payload."""
    columns = [
        harness.Column("dataset", "data", align="left"),
        harness.Column("database", "n"),
        harness.Column("family", "family", align="left"),
        harness.Column("nprobe", "nprobe"),
        harness.Column("recall_at_10_gpuann", "recall@10 gpuann", "{:.4f}".format),
        harness.Column("recall_at_10_faiss", "recall@10 faiss", "{:.4f}".format),
        harness.Column("qps_gpuann", "gpuann q/s", "{:.0f}".format),
        harness.Column("qps_faiss", "faiss q/s", "{:.0f}".format),
        harness.Column("ratio", "ratio", "{:.2f}".format),
    ]
    env = payload["environment"]
    builds = {}
    for row in payload["results"]:
        builds[(row["dataset"], row["description"])] = (row["build_s_gpuann"], row["build_s_faiss"])
    build_lines = "".join(
        f"| {data} | `{desc}` | {ours:.2f} | {theirs:.2f} |\n"
        for (data, desc), (ours, theirs) in builds.items()
    )
    return (
        f"# bench_ann_families ({payload['preset']}), {env.get('date', '')}\n\n"
        f"`{payload.get('command', '')}` on {env.get('device_name', 'CPU')} "
        f"({env.get('cpu_count')} cores, shared; load average {env.get('load_average')} at the "
        f"start, {payload.get('load_average_end')} at the end), {env.get('threads')} threads "
        f"(faiss and torch alike), OMP_WAIT_POLICY={payload.get('omp_wait_policy')}, "
        f"faiss {payload.get('faiss_version')}, torch {env.get('versions', {}).get('torch')}; "
        f"k={K}, batch = all queries, medians of round-robin repeats.\n\n"
        "Each family: gpuann's index and faiss's index of the same factory string, each built "
        "from scratch: trained on the same seeded sample of the database (`train_points` rows, "
        "`opq_train_points` for OPQ), then filled with all of it. `ratio` is gpuann q/s over "
        "faiss q/s (1 = parity). Recall differs where the trained parts differ (k-means, PCA, "
        "OPQ).\n\n"
        + "".join(f"- {note}\n" for note in payload["notes"])
        + (_GAUSS_NOTE if any(r["dataset"] == "gauss384" for r in payload["results"]) else "")
        + "\n"
        + harness.markdown_table(payload["results"], columns)
        + "\n\nBuild (train + add) seconds:\n\n| data | description | gpuann | faiss |\n"
        "|:--|:--|--:|--:|\n" + build_lines
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.preset_parser(__doc__, PRESETS)
    args = parser.parse_args(argv)
    if "torch" not in sys.modules and "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when OpenMP starts
    payload = run(args.preset, args.threads)
    args_given = sys.argv[1:] if argv is None else argv
    payload["command"] = (
        f"OMP_NUM_THREADS={args.threads} OMP_WAIT_POLICY={payload['omp_wait_policy']} "
        "python -m benchmarks.bench_ann_families " + shlex.join(args_given)
    ).rstrip()
    stem = harness.result_stem("bench_ann_families", "cpu", payload["environment"]["date"])
    harness.write_json(args.out / f"{stem}.json", payload)
    harness.write_text(args.out / f"{stem}.md", markdown(payload))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
