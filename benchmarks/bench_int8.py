"""int8 exact search: ``FlatIndex(dtype=torch.int8)`` (± refine) vs faiss's SQ8 flat index.

Run from the repository root, as a module::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_int8   # ~1 minute
    python -m benchmarks.bench_int8 --preset smoke                             # seconds

Methods, all cosine (inner product over normalised vectors), k = 10, the same queries:

``float32``           ``gpuann.FlatIndex(d, metric="cosine")``: the exact baseline.
``gpuann int8``       ``FlatIndex(d, metric="cosine", dtype=torch.int8)``, ranges from ``train``.
``gpuann int8+refine``  the same with ``refine=True``, ``refine_factor`` F (exact re-scoring).
``…, int8 queries``   the same with ``int8_queries=True`` (int8 × int8 products, int32 sums).
``faiss SQ8``         ``faiss.IndexScalarQuantizer(d, QT_8bit, METRIC_INNER_PRODUCT)``.
``faiss SQ8+refine``  ``faiss.IndexRefineFlat`` over it with ``k_factor`` F.

Recall@10 is against exact float64 ground truth (``gpuann.eval``); memory is each index's bytes
(``nbytes``; faiss: codes plus, for refine, its float32 copy). Timings are medians of
round-robin runs (:func:`benchmarks.harness.time_interleaved`) at equal threads.
Results: ``benchmarks/results/bench_int8_<device>_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from benchmarks import harness

__all__ = ["PRESETS", "main", "run"]

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"gauss": (3_000, 50), "factors": [2], "repeats": 2, "minilm": False},
    "quick": {"gauss": (50_000, 500), "factors": [1, 2, 4], "repeats": 5, "minilm": True},
}
K = 10


def _gauss(n: int, nq: int, d: int = 384, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(256, d, generator=g)
    data = centers[torch.randint(0, 256, (n + nq,), generator=g)]
    data = data + 0.5 * torch.randn(n + nq, d, generator=g)
    return data[:n].contiguous(), data[n:].contiguous()


def bench_dataset(name: str, x: torch.Tensor, q: torch.Tensor, cfg: dict) -> list[dict]:
    import faiss

    import gpuann
    from gpuann.eval import ground_truth, recall_at_k

    d = x.shape[1]
    truth = ground_truth(q, x, k=K, metric="cosine")
    xn = torch.nn.functional.normalize(x, dim=1).numpy()
    qn = torch.nn.functional.normalize(q, dim=1).numpy()
    flat = gpuann.FlatIndex(d, metric="cosine", device="cpu")
    flat.add(x)
    methods: dict[str, tuple[Any, int]] = {"float32": (lambda: flat.search(q, K), flat.nbytes)}
    int8 = gpuann.FlatIndex(d, metric="cosine", dtype=torch.int8, device="cpu")
    int8.train(x)
    int8.add(x)
    methods["gpuann int8"] = (lambda: int8.search(q, K), int8.nbytes)
    int8q = gpuann.FlatIndex(d, metric="cosine", dtype=torch.int8, int8_queries=True, device="cpu")
    int8q.train(x)
    int8q.add(x)
    methods["gpuann int8, int8 queries"] = (lambda: int8q.search(q, K), int8q.nbytes)
    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(xn)
    sq.add(xn)
    methods["faiss SQ8"] = (lambda: sq.search(qn, K), sq.sa_code_size() * sq.ntotal)
    refined = gpuann.FlatIndex(d, metric="cosine", dtype=torch.int8, refine=True, device="cpu")
    refined.train(x)
    refined.add(x)
    refined_q = gpuann.FlatIndex(
        d, metric="cosine", dtype=torch.int8, refine=True, int8_queries=True, device="cpu"
    )
    refined_q.train(x)
    refined_q.add(x)
    for factor in cfg["factors"]:
        methods[f"gpuann int8+refine F={factor}"] = (
            lambda f=factor: refined.search(q, K, refine_factor=f),
            refined.nbytes,
        )
        methods[f"gpuann int8+refine F={factor}, int8 queries"] = (
            lambda f=factor: refined_q.search(q, K, refine_factor=f),
            refined_q.nbytes,
        )
        base = faiss.IndexScalarQuantizer(
            d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        rf = faiss.IndexRefineFlat(base)
        rf.train(xn)
        rf.add(xn)
        rf.k_factor = factor
        methods[f"faiss SQ8+refine F={factor}"] = (
            lambda r=rf: r.search(qn, K),
            base.sa_code_size() * base.ntotal + 4 * d * rf.ntotal,
        )
    timings = harness.time_interleaved(
        {name: fn for name, (fn, _) in methods.items()}, repeats=cfg["repeats"]
    )
    rows = []
    for method, (fn, nbytes) in methods.items():
        ids = fn()[1]
        ids = ids.numpy() if isinstance(ids, torch.Tensor) else ids
        timing = timings[method]
        rows.append(
            {
                "dataset": name,
                "database": x.shape[0],
                "queries": q.shape[0],
                "method": method,
                "recall_at_10": recall_at_k(torch.as_tensor(ids), truth),
                "qps": q.shape[0] / timing.median_s,
                "nbytes": nbytes,
                "bytes_vs_float32": nbytes / flat.nbytes,
                "timing": timing.to_dict(),
            }
        )
    by_name = {row["method"]: row for row in rows}
    for row in rows:
        twin = row["method"].replace("gpuann int8", "faiss SQ8").removesuffix(", int8 queries")
        if row["method"].startswith("gpuann") and twin in by_name:
            row["qps_vs_faiss"] = row["qps"] / by_name[twin]["qps"]
    return rows


def run(preset: str, threads: int) -> dict[str, Any]:
    """Run ``preset``; returns the result payload."""
    harness.set_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    cfg = PRESETS[preset]
    notes, results = [], []
    if cfg["minilm"]:
        from benchmarks.bench_hnsw import minilm_or_note

        found = minilm_or_note(notes)
        if found is not None:
            docs, names, path = found
            notes.append(f"minilm: {docs.shape[0]} documents, {names.shape[0]} queries ({path})")
            results += bench_dataset("minilm", torch.as_tensor(docs).float(),
                                     torch.as_tensor(names).float(), cfg)  # fmt: skip
    x, q = _gauss(*cfg["gauss"])
    notes.append(f"gauss384: a seeded Gaussian mixture, {x.shape[0]} × 384, {q.shape[0]} queries")
    results += bench_dataset("gauss384", x, q, cfg)
    return {
        "benchmark": "bench_int8",
        "preset": preset,
        "command": " ".join(["python -m benchmarks.bench_int8", *sys.argv[1:]]),
        "environment": harness.environment_info("cpu", threads=threads),
        "notes": notes,
        "results": results,
    }


def markdown(payload: dict[str, Any]) -> str:
    """The Markdown report of a result payload."""
    columns = [
        harness.Column("dataset", "data", align="left"),
        harness.Column("method", "method", align="left"),
        harness.Column("recall_at_10", "recall@10", "{:.4f}".format),
        harness.Column("qps", "q/s", "{:.0f}".format),
        harness.Column("qps_vs_faiss", "vs faiss", lambda v: "" if v is None else f"{v:.2f}×"),
        harness.Column("bytes_vs_float32", "memory vs float32", "{:.3f}".format),
    ]
    env = payload["environment"]
    return (
        f"# bench_int8 ({payload['preset']}), {env.get('date', '')}\n\n"
        f"`{payload['command']}` on {env.get('device_name', 'CPU')} "
        f"({env.get('cpu_count')} cores, load average {env.get('load_average')} at the start), "
        f"{env.get('threads')} threads for torch and faiss; cosine, k={K}; medians of "
        "round-robin runs. `vs faiss`: gpuann's queries per second over faiss's SQ8 twin.\n\n"
        + "".join(f"- {note}\n" for note in payload["notes"])
        + "\n"
        + harness.markdown_table(payload["results"], columns)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.preset_parser(__doc__, PRESETS)
    args = parser.parse_args(argv)
    payload = run(args.preset, args.threads)
    stem = harness.result_stem("bench_int8", "cpu")
    if args.preset != "smoke":
        harness.write_json(args.out / f"{stem}.json", payload)
        harness.write_text(args.out / f"{stem}.md", markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
