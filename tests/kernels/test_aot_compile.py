"""Ahead-of-time GPU compile checks, on a machine without a GPU.

Every ``@triton.jit`` kernel is compiled for sm_90 (H100/H200) and sm_80 (A100) at the launches
its launcher makes (``gpuann._triton.catalog``: the plan functions the launchers run): it must
compile, fit the per-block shared memory, and — at default configurations — not spill.
Autotune candidates must compile and fit (they may spill: the tuner times them). The
interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``) hides all of this; the
compilations run in worker processes without it (``gpuann._triton.aot``).

The representative grid runs here; the whole grid, and the cost model, are in
``python -m benchmarks.kernel_report``. ``slow`` adds every autotune candidate.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from gpuann._env import env_flag
from gpuann._triton import aot, catalog
from gpuann._triton import launch as kernel_launch
from gpuann._triton.config import TileConfig, knn_programs_per_sm
from gpuann._triton.knn import plan_fused_knn

ARCHS = aot.ARCHS


def _failures(cases, arch, *, allow_spills=None):
    results = aot.compile_launches([c.launch for c in cases], arch)
    out = []
    for case, res in zip(cases, results, strict=True):
        spills_ok = (not case.default) if allow_spills is None else allow_spills
        for problem in aot.problems(res, allow_spills=spills_ok):
            out.append(f"sm_{arch} {case.describe()}: {problem}")
    return out


def _exclude_plan(config=None):
    return plan_fused_knn(
        64,
        4096,
        128,
        10,
        storage_dtype=torch.float16,
        query_dtype=torch.float16,
        l2=True,
        has_sqnorms=True,
        filters=(True, False, False, False),
        n_exclude=3,
        sm_count=catalog.SM_COUNT[90],
        config=config,
    )


def test_exclude_without_labels_compiles_for_the_gpu():
    # Regression: ``eligible`` was (1, BN) before the exclusion loop and (BM, BN) in it, which
    # only the GPU compiler rejects ("Loop-carried variable eligible has initial type ...").
    (res,) = aot.compile_launches([_exclude_plan().partial], 90)
    assert res.error is None, res.error


@pytest.mark.parametrize("arch", ARCHS)
def test_default_launches_compile_fit_and_do_not_spill(arch):
    cases = [c for c in catalog.all_cases(catalog.REPRESENTATIVE, arch) if c.default]
    assert len(cases) > 30
    failures = _failures([c for c in cases if c.op != "hamming"], arch)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_knn_residency_matches_the_split_rule(arch):
    # knn_splits fills whole waves of sm_count x knn_programs_per_sm programs: tall tiles must
    # hold exactly one program per multiprocessor (two would leave half the slots idle). The
    # few-query tiles hold one to four (registers vary with k, d, dtype and the float32 dot);
    # the rule's two then means two full waves, one, or 16 resident warps of a memory-bound
    # scan.
    cases = [
        c
        for c in catalog.all_cases(catalog.REPRESENTATIVE, arch)
        if c.default and c.op == "fused_knn"
    ]
    results = aot.compile_launches([c.launch for c in cases], arch)
    seen = set()
    for case, res in zip(cases, results, strict=True):
        constexprs = dict(case.launch.constexprs)
        tiles = TileConfig(constexprs["BM"], constexprs["BN"], constexprs["BD"])
        programs = aot.resident_warps(res) // case.launch.num_warps
        assumed = knn_programs_per_sm(tiles)
        if assumed == 1:
            assert programs == 1, f"sm_{arch} {case.describe()}: {programs} programs per SM"
        else:
            assert 1 <= programs <= 4, f"sm_{arch} {case.describe()}: {programs}"
        seen.add(assumed)
    assert seen == {1, 2}


@pytest.mark.parametrize("arch", ARCHS)
def test_hamming_default_launches(arch):
    cases = [c for c in catalog.all_cases(catalog.REPRESENTATIVE, arch) if c.op == "hamming"]
    failures = _failures(cases, arch)
    # Regression: the launcher picked 32 queries per block at K_PAD=128 (255 registers and a
    # spill on sm_90); it now keeps BLOCK_Q × K_PAD at 2048.
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_autotune_candidates_compile_and_fit_smoke_grid():
    """Every candidate list, at one k per kernel, for sm_90 (the whole grid is below)."""
    cases = catalog.all_cases(catalog.CANDIDATES_SMOKE, 90, candidates=True)
    candidates = [c for c in cases if not c.default]
    assert len(candidates) > 10
    failures = _failures(candidates, 90)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.skipif(
    not env_flag("GPUANN_AOT_FULL", False),
    reason="every autotune candidate for both archs: tens of minutes of compiles on a CPU; "
    "GPUANN_AOT_FULL=1 runs it",
)
@pytest.mark.parametrize("arch", ARCHS)
def test_autotune_candidates_compile_and_fit(arch):
    cases = catalog.all_cases(catalog.CANDIDATES, arch, candidates=True)
    failures = _failures([c for c in cases if not c.default], arch)
    assert not failures, "\n".join(failures)


def test_results_are_cached_in_the_process(monkeypatch):
    launch = _exclude_plan().partial
    aot.compile_launches([launch], 90)

    def no_workers(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(aot, "_run_workers", no_workers)
    first, second = aot.compile_launches([launch, launch], 90)
    assert first is second and first.error is None


def test_a_launch_that_cannot_fit_is_reported():
    # 16 x 256 x 128 fp16 tiles of the loop over d pipelined 8 deep (k=1: a cheap compile):
    # over 512 KiB of shared memory, far beyond the 163 KiB of sm_80.
    plan = plan_fused_knn(
        64,
        4096,
        768,
        1,
        storage_dtype=torch.float16,
        query_dtype=torch.float16,
        l2=True,
        has_sqnorms=True,
        sm_count=catalog.SM_COUNT[80],
        config=TileConfig(16, 256, 128, 4, 8),
    )
    (res,) = aot.compile_launches([plan.partial], 80)
    found = aot.problems(res)
    assert any("shared memory" in p for p in found), found


def test_specialisation_follows_the_runtime_binder():
    assert kernel_launch._spec_of_int(1) == "one"
    assert kernel_launch._spec_of_int(4096) == "i32D"
    assert kernel_launch._spec_of_int(100) == "i32"
    assert kernel_launch._spec_of_int(2**31 + 16) == "i64D"


def test_resident_warps():
    res = aot.Resources(arch=90, registers=128, shared=64 * 1024, num_warps=8)
    # registers: 65536 / (128 * 256) = 2 blocks; shared: 228 KiB / 65 KiB = 3 blocks.
    assert aot.resident_warps(res) == 16
    assert aot.resident_warps(aot.Resources(arch=80, error="x")) == 0


def test_sass_summary_finds_the_tile_loop_and_its_branch():
    sass = "\n".join(
        [
            "Function:k",
            "--:-:-:-:1\tMOV R1, R2;",
            "LBB0:",
            "--:-:-:-:1\tHGMMA.64x32x16.F32 R24, gdesc[UR4], R24;",
            "--:-:-:-:5\t@!P0 BRA LBB1;",
            "--:-:-:-:1\tIMNMX R3, R3, R4, PT;",
            "--:-:-:-:1\tIMNMX R5, R5, R6, PT;",
            "LBB1:",
            "--:-:-:-:1\tIADD3 R7, R7, 0x1, RZ;",
            "--:-:-:-:5\t@P1 BRA LBB0;",
            "--:-:-:-:1\tEXIT;",
        ]
    )
    s = aot.sass_summary(sass)
    assert s["total"] == 8 and s["HGMMA"] == 1 and s["IMNMX"] == 2
    assert (s["loop"], s["branch"], s["steady"]) == (6, 3, 3)
    assert (s["inner"], s["inner_loop"], s["fast"], s["slow"], s["d_loop"]) == (0, 0, 0, 0, 0)
    assert s["chunk"] == 0


def test_sass_summary_finds_the_loop_over_d():
    # Tile loop LBB0..; a loop over chunks of d (LBB1..) before the append branch.
    sass = "\n".join(
        [
            "Function:k",
            "LBB0:",
            "--:-:-:-:1\tIADD3 R7, R7, 0x1, RZ;",
            "LBB1:",
            "--:-:-:-:1\tHMMA.1684.F32.TF32 R24, R4, R8, R24;",
            "--:-:-:-:1\tHMMA.1684.F32.TF32 R24, R5, R8, R24;",
            "--:-:-:-:5\t@P2 BRA LBB1;",
            "--:-:-:-:5\t@!P0 BRA LBB2;",
            "--:-:-:-:1\tIMNMX R3, R3, R4, PT;",
            "LBB2:",
            "--:-:-:-:5\t@P1 BRA LBB0;",
            "--:-:-:-:1\tEXIT;",
        ]
    )
    s = aot.sass_summary(sass)
    assert (s["loop"], s["branch"], s["steady"], s["d_loop"]) == (7, 2, 5, 3)


def test_sass_summary_finds_the_merge_and_the_two_appends():
    # Tile loop LBB0..; append branch (@!P0 -> LBB9) holding a merge (@!P2 -> LBB5, over a
    # loop at LBB4) and an if/else (@P1 -> LBB2 over the "then" side, whose jump to LBB3
    # skips the 3-instruction "else").
    lines = [
        "Function:k",
        "LBB0:",
        "--:-:-:-:1\tFFMA R1, R2, R3, R4;",
        "--:-:-:-:5\t@!P0 BRA LBB9;",
    ]
    lines += ["--:-:-:-:5\t@!P2 BRA LBB5;", "LBB4:", "--:-:-:-:1\tIMNMX R3, R3, R4, PT;"]
    lines += ["--:-:-:-:5\t@P3 BRA LBB4;", "LBB5:", "--:-:-:-:5\t@P1 BRA LBB2;"]
    lines += ["--:-:-:-:1\tSTG.E.64 [R2], R4;", "--:-:-:-:5\tBRA LBB3;", "LBB2:"]
    lines += ["--:-:-:-:1\tSHFL.UP R1, R2, 0x1, RZ;"] * 3
    lines += ["LBB3:", "LBB9:", "--:-:-:-:5\t@P4 BRA LBB0;", "--:-:-:-:1\tEXIT;"]
    s = aot.sass_summary("\n".join(lines))
    assert (s["loop"], s["branch"], s["steady"]) == (12, 10, 2)
    assert (s["inner"], s["inner_loop"]) == (3, 2)
    assert (s["fast"], s["slow"]) == (2, 3)  # the "then" side counts its closing jump


def test_sass_summary_finds_the_chunk_a_merge_skips_when_empty():
    # Tile loop LBB0..; append branch (@!P0 -> LBB9) holding a merge (@!P2 -> LBB5) whose loop
    # over rows (LBB4..) merges two chunks, the second under its own branch (@!P5 -> LBB6:
    # a chunk of 3 instructions, skipped where no buffer holds a key there).
    lines = ["Function:k", "LBB0:", "--:-:-:-:1\tFFMA R1, R2, R3, R4;"]
    lines += ["--:-:-:-:5\t@!P0 BRA LBB9;", "--:-:-:-:5\t@!P2 BRA LBB5;", "LBB4:"]
    lines += ["--:-:-:-:1\tIMNMX R3, R3, R4, PT;"] * 4
    lines += ["--:-:-:-:5\t@!P5 BRA LBB6;"]
    lines += ["--:-:-:-:1\tIMNMX R5, R5, R6, PT;"] * 2
    lines += ["LBB6:", "--:-:-:-:5\t@P3 BRA LBB4;", "LBB5:", "LBB9:"]
    lines += ["--:-:-:-:5\t@P4 BRA LBB0;", "--:-:-:-:1\tEXIT;"]
    s = aot.sass_summary("\n".join(lines))
    assert (s["inner"], s["inner_loop"], s["chunk"]) == (9, 8, 3)
