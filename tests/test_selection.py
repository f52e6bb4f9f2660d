"""gpuann.batched_topk: the Triton kernel (interpreter on CPU) against the torch selection."""

from __future__ import annotations

import pytest
import torch
from reference import DEVICES

import gpuann
from gpuann._triton.topk import triton_topk

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows, n, k): a single column, k = n, k not a power of two, k above the 64-column tile.
SHAPES = [(1, 1, 1), (3, 50, 50), (5, 130, 7), (2, 300, 100)]


def _hard_data(rows: int, n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Few distinct values (many ties), with NaN, ±inf and -0.0 sprinkled in."""
    x = torch.randint(-4, 5, (rows, n), device=device).float()
    x[torch.rand(rows, n, device=device) < 0.1] = float("nan")
    x[torch.rand(rows, n, device=device) < 0.05] = float("inf")
    x[torch.rand(rows, n, device=device) < 0.05] = float("-inf")
    x[x == 0] = -0.0
    return x.to(dtype)


def _assert_same(got, expected):
    assert got[0].dtype == expected[0].dtype and got[1].dtype == torch.int64
    assert torch.equal(got[1], expected[1]), (got[1], expected[1])
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_triton_matches_torch_with_ties_and_nan(device, largest, dtype, shape):
    rows, n, k = shape
    x = _hard_data(rows, n, dtype, device)
    got = gpuann.batched_topk(x, k, largest, backend="triton")
    _assert_same(got, gpuann.batched_topk(x, k, largest, backend="torch"))


@pytest.mark.parametrize("splits", [2, 5])
def test_split_columns_merge_like_one_pass(splits):
    x = _hard_data(3, 400, torch.float32, "cpu")
    got = triton_topk(x, 33, splits=splits)
    _assert_same(got, gpuann.batched_topk(x, 33, backend="torch"))


def test_agrees_with_torch_topk_without_ties():
    x = torch.randn(4, 257)
    values, indices = gpuann.batched_topk(x, 9, largest=True, backend="triton")
    expected = torch.topk(x, 9, largest=True)
    assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)


def test_nan_ranks_last_in_both_directions():
    x = torch.tensor([[float("nan"), 1.0, -2.0, float("nan"), 3.0]])
    for largest, order in ((False, [2, 1, 4, 0, 3]), (True, [4, 1, 2, 0, 3])):
        _, indices = gpuann.batched_topk(x, 5, largest, backend="triton")
        assert indices.tolist() == [order]


def test_one_dimensional_and_non_contiguous_input():
    x = torch.randn(40, 6).T  # rows with a column stride of 6
    _assert_same(
        gpuann.batched_topk(x, 4, backend="triton"), gpuann.batched_topk(x, 4, backend="torch")
    )
    v, i = gpuann.batched_topk(x[0], 3, backend="triton")
    assert v.shape == (3,) and torch.equal(i, torch.topk(x[0], 3, largest=False).indices)


def test_validation(monkeypatch):
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="k: expected"):
        gpuann.batched_topk(x, 6)
    with pytest.raises(ValueError, match="backend"):
        gpuann.batched_topk(x, 2, backend="cuda")
    with pytest.raises(TypeError):
        gpuann.batched_topk(torch.arange(5), 2)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        gpuann.batched_topk(x, 2, backend="triton")


def test_numpy_integer_k_is_accepted_and_bad_k_names_itself():
    import numpy as np

    x = torch.randn(3, 9)
    expected = gpuann.batched_topk(x, 4, backend="torch")
    for k in (np.int64(4), np.int32(4), np.uint8(4)):
        _assert_same(gpuann.batched_topk(x, k, backend="torch"), expected)
        assert gpuann.batched_topk(x[0], k, backend="torch")[1].shape == (4,)
    for bad, error in ((True, TypeError), (4.0, TypeError), (np.float64(4), TypeError)):
        with pytest.raises(error, match=r"^k: expected an int"):
            gpuann.batched_topk(x, bad)
    with pytest.raises(ValueError, match=r"^k: expected an int in \[1, 9\], got 10"):
        gpuann.batched_topk(x, np.int64(10))


def test_auto_uses_torch_on_cpu(monkeypatch):
    import gpuann.selection as selection

    def fail(*args):
        raise AssertionError("auto ran the Triton kernel on a CPU tensor")

    monkeypatch.setattr(selection, "_triton_topk_impl", fail)
    gpuann.batched_topk(torch.randn(2, 8), 3)


def test_custom_op_passes_opcheck():
    x = _hard_data(3, 70, torch.float32, "cpu").nan_to_num(nan=1.5)
    for largest in (False, True):
        torch.library.opcheck(torch.ops.gpuann.triton_topk.default, (x, 5, largest))


def test_compiles_without_graph_break():
    x = torch.randn(3, 90)

    def f(t):
        values, indices = gpuann.batched_topk(t * 2.0, 6, backend="triton")
        return values + 1.0, indices

    values, indices = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    expected = gpuann.batched_topk(x * 2.0, 6, backend="torch")
    assert torch.equal(indices, expected[1]) and torch.equal(values, expected[0] + 1.0)
