"""Every launch the Triton launchers make, over a grid of shapes: what the AOT checks compile.

Each :class:`Case` pairs a shape (as a dict of named parameters) with the
:class:`~gpuann._triton.launch.KernelLaunch` the launcher's own plan function produces for it —
``plan_fused_knn``, ``plan_topk``, ``plan_merge`` — at the default configuration and, with
``candidates=True``, at every autotune candidate. The Hamming kernel's launcher lives in
``gpuann.backends.hamming``; its launches are rebuilt here from that module's fixed and autotune
configurations (kept in step by ``tests/kernels/test_aot_compile.py``).

Grids: ``REPRESENTATIVE`` (what pytest compiles, a couple of minutes on 2 cores),
``CANDIDATES`` (the slow test: every autotune candidate at the headline shapes), ``REPORT``
(``python -m benchmarks.kernel_report``'s default) and ``FULL`` (``--grid full``: the issue's
whole grid, long on 2 cores).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from gpuann._triton import MAX_K, TOPK_MAX_K, cdiv, next_power_of_2
from gpuann._triton.config import knn_candidates, topk_candidates
from gpuann._triton.launch import KernelLaunch

__all__ = [
    "CANDIDATES",
    "FULL",
    "REPORT",
    "REPRESENTATIVE",
    "SM_COUNT",
    "Case",
    "dedupe",
    "fused_knn_cases",
    "hamming_cases",
    "topk_cases",
]

#: Multiprocessors of the GPUs each architecture is checked for (H100 SXM, A100).
SM_COUNT = {90: 132, 80: 108}
#: Database rows of every fused k-NN case (splits and divisibility follow from it).
N_ROWS = 1_000_000
#: The filter flags (excluded rows, allowed rows, labels, row rank): none, each alone, all.
FILTER_SETS = (
    (False, False, False, False),
    (True, False, False, False),
    (False, True, False, False),
    (False, False, True, False),
    (False, False, False, True),
    (True, True, True, True),
)

REPRESENTATIVE: dict[str, Any] = {
    "queries": (1, 4096),
    "dims": (128,),
    "k": (1, 10, 100),
    "dtypes": ("float16", "float32", "float32>float16"),
    "metrics": ("l2",),
    "filters": FILTER_SETS[:1],
    # One shape each: d > BD (a loop over d), an unaligned d, bfloat16, the largest fused k,
    # every filter, inner product.
    "extra": (
        {"queries": 4096, "dim": 768, "k": 100, "dtype": "float16"},
        {"queries": 4096, "dim": 768, "k": 10, "dtype": "float32>float16"},
        {"queries": 1, "dim": 768, "k": 100, "dtype": "float16"},
        {"queries": 4096, "dim": 100, "k": 10, "dtype": "float16"},
        {"queries": 4096, "dim": 100, "k": 10, "dtype": "float32"},
        {"queries": 1, "dim": 100, "k": 100, "dtype": "float32"},
        {"queries": 4096, "dim": 128, "k": 100, "dtype": "bfloat16"},
        {"queries": 4096, "dim": 128, "k": MAX_K, "dtype": "float16"},
        {"queries": 4096, "dim": 128, "k": 10, "dtype": "float16", "filters": FILTER_SETS},
        {"queries": 4096, "dim": 128, "k": 10, "dtype": "bfloat16", "metric": "ip"},
        # int8 storage (exact int32 dots): tall and few-query blocks, an unaligned d, ip.
        {"queries": 4096, "dim": 128, "k": 20, "dtype": "int8"},
        {"queries": 1, "dim": 100, "k": 20, "dtype": "int8"},
        {"queries": 4096, "dim": 768, "k": 40, "dtype": "int8", "metric": "ip"},
        # Preset thresholds (k >= 256): their sample passes, every filter (the sample's own
        # allowed rows and labels), half-size buffers merged in chunks, float32 on the tensor
        # cores, few queries, int8 and ip.
        {"queries": 4096, "dim": 128, "k": 1000, "dtype": "float16", "filters": FILTER_SETS[-1:]},
        {"queries": 4096, "dim": 128, "k": 1000, "dtype": "float32"},
        {"queries": 1, "dim": 768, "k": 300, "dtype": "int8", "metric": "ip"},
    ),
    "topk": {"rows": (1024,), "cols": (1_000_000,), "k": (16, 256, 2048), "dtypes": ("float32",)},
    "hamming": {"queries": (4096,), "words": (8,), "k": (10, 100)},
}

#: The report's default grid: the product over d ∈ {100, 128, 768} and bfloat16 too.
REPORT: dict[str, Any] = {
    **REPRESENTATIVE,
    "dims": (100, 128, 768),
    "dtypes": ("float16", "bfloat16", "float32", "float32>float16", "int8"),
    "extra": REPRESENTATIVE["extra"][-9:-6] + REPRESENTATIVE["extra"][-3:],
    "topk": {**REPRESENTATIVE["topk"], "rows": (1, 1024), "k": (1, 16, 256, 1000, TOPK_MAX_K)},
    "hamming": {"queries": (4096,), "words": (8,), "k": (1, 10, 100, 1000)},
}

#: The autotune candidates' grid (the slow test): headline shapes, every candidate.
CANDIDATES: dict[str, Any] = {
    "queries": (4096,),
    "dims": (128,),
    "k": (10, 100, MAX_K),
    "dtypes": ("float16", "float32", "int8"),
    "metrics": ("l2",),
    "filters": FILTER_SETS[:1],
    "topk": {"rows": (1024,), "cols": (1_000_000,), "k": (16, 256, 2048), "dtypes": ("float32",)},
    "hamming": {"queries": (4096,), "words": (8,), "k": (10, 100)},
}

#: A subset of :data:`CANDIDATES` for the test suite (one k per kernel, fp16): every candidate
#: list is still compiled once, in a minute or two on a CPU.
CANDIDATES_SMOKE: dict[str, Any] = {
    **CANDIDATES,
    "k": (10,),
    "dtypes": ("float16",),
    "topk": {**CANDIDATES["topk"], "k": (256,)},
    "hamming": {**CANDIDATES["hamming"], "k": (10,)},
}

FULL: dict[str, Any] = {
    "queries": (1, 100, 4096),
    "dims": (64, 100, 128, 384, 768),
    "k": (1, 10, 100, 256, 1000, MAX_K),
    "dtypes": ("float16", "bfloat16", "float32", "float32>float16", "float32>bfloat16", "int8"),
    "metrics": ("l2", "ip"),
    "filters": FILTER_SETS[:1],
    "extra": tuple(
        {"queries": 4096, "dim": 128, "k": k, "dtype": dt, "filters": FILTER_SETS}
        for k in (10, 100, MAX_K)
        for dt in ("float16", "float32")
    ),
    "topk": {
        "rows": (1, 64, 1024),
        "cols": (100_000, 1_000_000),
        "k": (1, 16, 64, 256, 1000, TOPK_MAX_K),
        "dtypes": ("float32", "float16"),
    },
    "hamming": {"queries": (1, 4096), "words": (2, 8, 32), "k": (1, 10, 100, 1000)},
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One launch to check.

    Attributes
    ----------
    op : str
        ``"fused_knn"``, ``"merge"``, ``"topk"`` or ``"hamming"``.
    params : tuple of (name, value)
        The shape and options it stands for.
    launch : KernelLaunch
    default : bool
        A default configuration (must not spill) rather than an autotune candidate.
    """

    op: str
    params: tuple[tuple[str, Any], ...]
    launch: KernelLaunch
    default: bool = True

    def describe(self) -> str:
        """``op(name=value, ...)`` followed by the launch's constexprs and options."""
        shape = ", ".join(f"{n}={v}" for n, v in self.params)
        return f"{self.op}({shape}) {self.launch.label()}"


def _dtypes(name: str) -> tuple[torch.dtype, torch.dtype]:
    """``"float16"`` → (float16, float16); ``"float32>float16"``: float32 queries, fp16 storage."""
    query, _, storage = name.partition(">")
    return getattr(torch, storage or query), getattr(torch, query)


def fused_knn_cases(
    grid: Mapping[str, Any], arch: int, *, candidates: bool = False
) -> Iterator[Case]:
    """Fused k-NN launches (their merges, and the sample passes of preset thresholds) over
    ``grid`` for a GPU of ``arch``."""
    from gpuann._triton.knn_plan import plan_fused_knn

    base = itertools.product(
        grid["queries"], grid["dims"], grid["k"], grid["dtypes"], grid["metrics"], grid["filters"]
    )
    extra = (
        (e["queries"], e["dim"], e["k"], e["dtype"], e.get("metric", "l2"), flags)
        for e in grid.get("extra", ())
        for flags in e.get("filters", FILTER_SETS[:1])
    )
    for q, d, k, dtype, metric, flags in itertools.chain(base, extra):
        storage, query = _dtypes(dtype)
        if storage == torch.float32:  # the FMA dots of GPUANN_TRITON_FP32=ieee as well
            params = (("Q", q), ("N", N_ROWS), ("d", d), ("k", k), ("dtype", f"{dtype} ieee"))
            params += (("metric", metric), ("filters", _flag_names(flags)))
            plan = plan_fused_knn(
                q,
                N_ROWS,
                d,
                k,
                storage_dtype=storage,
                query_dtype=query,
                l2=metric == "l2",
                has_sqnorms=metric == "l2",
                filters=flags,
                n_exclude=4 if flags[0] else 0,
                sm_count=SM_COUNT[arch],
                fp32_dot="ieee",
            )
            yield Case("fused_knn", params, plan.partial)
        params = (("Q", q), ("N", N_ROWS), ("d", d), ("k", k), ("dtype", dtype))
        params += (("metric", metric), ("filters", _flag_names(flags)))
        kwargs = {
            "storage_dtype": storage,
            "query_dtype": query,
            "l2": metric == "l2",
            "has_sqnorms": metric == "l2",
            "filters": flags,
            "n_exclude": 4 if flags[0] else 0,
            "sm_count": SM_COUNT[arch],
            "fp32_dot": "tf32x3",
        }
        plan = plan_fused_knn(q, N_ROWS, d, k, **kwargs)
        yield Case("fused_knn", params, plan.partial)
        yield Case("merge", params, plan.merge)
        if plan.preset is not None:  # the sample pass behind its preset thresholds
            sample = (("pass", f"sample of every {plan.preset_stride}th row, k={plan.preset_k}"),)
            yield Case("fused_knn", params + sample, plan.preset.partial)
        if candidates:
            tf32x3 = storage == torch.float32
            for cfg in knn_candidates(q, d, plan.k_pad, storage, tf32x3=tf32x3):
                cand = plan_fused_knn(q, N_ROWS, d, k, config=cfg, **kwargs)
                yield Case("fused_knn", params, cand.partial, default=False)


def topk_cases(grid: Mapping[str, Any], arch: int, *, candidates: bool = False) -> Iterator[Case]:
    """Batched top-k launches (and their merges) over ``grid`` for a GPU of ``arch``."""
    from gpuann._triton.topk import plan_topk

    for rows, cols, k, dtype in itertools.product(
        grid["rows"], grid["cols"], grid["k"], grid["dtypes"]
    ):
        params = (("rows", rows), ("n", cols), ("k", k), ("dtype", dtype))
        kwargs = {"dtype": getattr(torch, dtype), "sm_count": SM_COUNT[arch]}
        partial, merge = plan_topk(rows, cols, k, **kwargs)
        yield Case("topk", params, partial)
        yield Case("merge", params, merge)
        if candidates:
            for cfg in topk_candidates(next_power_of_2(k)):
                yield Case("topk", params, plan_topk(rows, cols, k, config=cfg, **kwargs)[0], False)


def hamming_launch(
    n_queries: int,
    n_database: int,
    n_words: int,
    k: int,
    block_q: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
    sm_count: int,
) -> KernelLaunch:
    """The launch ``gpuann.binary.hamming`` makes on CUDA with these tiles."""
    k_pad = next_power_of_2(k)
    blocks = cdiv(n_queries, block_q)
    tiles = max(1, cdiv(n_database, block_n))
    splits = max(1, min(tiles, cdiv(4 * sm_count, blocks)))
    return KernelLaunch.make(
        "hamming:hamming_topk_kernel",
        (blocks, splits),
        {
            "q_ptr": torch.int32,
            "db_ptr": torch.int32,
            "out_ptr": torch.int64,
            "n_queries": n_queries,
            "n_database": n_database,
            "n_words": n_words,
            "rows_per_split": cdiv(n_database, splits),
            "stride_q": n_words,
            "stride_db": n_words,
            "stride_out_split": n_queries * k_pad,
            "stride_out_q": k_pad,
            "K": k,
        },
        {"K_PAD": k_pad, "BLOCK_Q": block_q, "BLOCK_N": block_n, "USE_POPC": True},
        num_warps,
        num_stages,
    )


def hamming_cases(
    grid: Mapping[str, Any], arch: int, *, candidates: bool = False
) -> Iterator[Case]:
    """Hamming top-k launches: the fixed config (``GPUANN_AUTOTUNE=0``) and the tuned ones."""
    hamming = _hamming_launcher()
    for q, words, k in itertools.product(grid["queries"], grid["words"], grid["k"]):
        k_pad = next_power_of_2(k)
        params = (("Q", q), ("N", N_ROWS), ("words", words), ("k", k))
        fixed = hamming._fixed_config(torch.device("cuda"), k_pad)
        yield Case(
            "hamming",
            params,
            hamming_launch(
                q,
                N_ROWS,
                words,
                k,
                fixed["BLOCK_Q"],
                fixed["BLOCK_N"],
                fixed["num_warps"],
                3,
                SM_COUNT[arch],
            ),
        )
        if candidates:
            tuner = hamming._autotuned_kernel()
            configs = tuner.configs
            prune = getattr(tuner, "early_config_prune", None) or (lambda c, a, **kw: c)
            for c in prune(configs, {"K_PAD": k_pad}, K_PAD=k_pad):
                launch = hamming_launch(
                    q,
                    N_ROWS,
                    words,
                    k,
                    c.kwargs["BLOCK_Q"],
                    c.kwargs["BLOCK_N"],
                    c.num_warps,
                    c.num_stages,
                    SM_COUNT[arch],
                )
                yield Case("hamming", params, launch, default=False)


def all_cases(grid: Mapping[str, Any], arch: int, *, candidates: bool = False) -> list[Case]:
    """Every case of ``grid`` (fused k-NN, top-k, Hamming), one per compiled variant."""
    cases = itertools.chain(
        fused_knn_cases(grid, arch, candidates=candidates),
        topk_cases(grid["topk"], arch, candidates=candidates),
        hamming_cases(grid["hamming"], arch, candidates=candidates),
    )
    return dedupe(cases)


def dedupe(cases: Iterable[Case]) -> list[Case]:
    """The first case of each distinct compilation (a default wins over a candidate)."""
    seen: dict[str, Case] = {}
    for case in cases:
        key = case.launch.compile_key()
        if key not in seen or (case.default and not seen[key].default):
            seen[key] = case
    return list(seen.values())


def _hamming_launcher() -> Any:
    """The module holding the Hamming launcher's configs (``_fixed_config``, autotune list)."""
    import importlib

    for name in ("gpuann.backends.hamming", "gpuann.binary.hamming"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_fixed_config"):
            return module
    raise ImportError("no Hamming launcher with _fixed_config found")


def _flag_names(flags: Sequence[bool]) -> str:
    names = ("exclude", "allowed", "labels", "rank")
    return "+".join(n for n, f in zip(names, flags, strict=False) if f) or "none"
