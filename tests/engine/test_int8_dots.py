"""Exact int8 dot products: every path gives the integer dot, rounded once to float32."""

from __future__ import annotations

import pytest
import torch

from gpuann.engine import int8_dots
from gpuann.engine.int8_dots import EXACT_FLOAT32_MAX_DIM, EXACT_INT32_MAX_DIM, int8_scores


def _codes(rows: int, dim: int, seed: int, extreme: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if extreme:  # every product at its largest: the float32 bound is tight
        return torch.full((rows, dim), -128, dtype=torch.int8)
    return torch.randint(-128, 128, (rows, dim), generator=g, dtype=torch.int8)


@pytest.mark.parametrize("path", ["int_mm", "float"])
@pytest.mark.parametrize(
    "shape", [(1, 37, 1), (5, 83, 19), (17, 64, 128), (3, 10, EXACT_FLOAT32_MAX_DIM)], ids=str
)
@pytest.mark.parametrize("extreme", [False, True])
def test_scores_are_the_integer_dot_times_the_scale(path, shape, extreme, monkeypatch):
    if path == "float":
        monkeypatch.setattr(int8_dots, "_int_mm_ok", lambda q, c: False)
    n_q, n, d = shape
    q, c = _codes(n_q, d, 0, extreme), _codes(n, d, 1, extreme)
    scale = torch.ldexp(torch.ones(n_q, 1), torch.randint(-9, 3, (n_q, 1)))
    out = int8_scores(q, c, scale, torch.empty(n_q, n))
    exact = (q.double() @ c.double().T).float() * scale  # < 2**24: exact in float32
    assert torch.equal(out, exact)


def test_beyond_the_float32_bound_both_paths_round_the_exact_integer_once(monkeypatch):
    d = EXACT_FLOAT32_MAX_DIM * 3
    q, c = _codes(4, d, 2), _codes(9, d, 3)
    scale = torch.ones(4, 1)
    ints = q.long() @ c.long().T
    expected = ints.float()  # int64 -> float32: one round-to-nearest-even
    fast = int8_scores(q, c, scale, torch.empty(4, 9))
    monkeypatch.setattr(int8_dots, "_int_mm_ok", lambda q, c: False)
    slow = int8_scores(q, c, scale, torch.empty(4, 9))
    assert torch.equal(fast, expected) and torch.equal(slow, expected)


@pytest.mark.parametrize("d", [EXACT_INT32_MAX_DIM, EXACT_INT32_MAX_DIM + 1])
def test_no_int32_overflow_at_the_largest_dots(d):
    # Regression: past d = 131 071 every product at -128 · -128 sums beyond 2**31 - 1, and
    # int32 accumulation (``_int_mm``) wrapped to a negative dot; there the float64 path runs.
    q, c = _codes(1, d, 0, extreme=True), _codes(3, d, 0, extreme=True)
    out = int8_scores(q, c, torch.ones(1, 1), torch.empty(1, 3))
    assert torch.equal(out, torch.full((1, 3), float(128 * 128 * d)))


def test_int_mm_is_probed_and_not_used_where_it_is_wrong():
    # Regression: oneDNN's int8 GEMM behind CPU ``_int_mm`` is wrong without VNNI; capping
    # oneDNN's instruction set reproduces such a CPU. The probe must then route to the float
    # path, whose dots are exact.
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from gpuann.engine import int8_dots\n"
        "g = torch.Generator().manual_seed(0)\n"
        "q = torch.randint(-128, 128, (40, 96), generator=g, dtype=torch.int8)\n"
        "c = torch.randint(-128, 128, (300, 96), generator=g, dtype=torch.int8)\n"
        "out = int8_dots.int8_scores(q, c, torch.ones(40, 1), torch.empty(40, 300))\n"
        "assert torch.equal(out, (q.double() @ c.double().T).float()), 'wrong dots'\n"
        "print(int8_dots._cpu_int_mm_exact())\n"
    )
    env = {**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
