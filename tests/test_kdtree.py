"""KDTreeIndex: equal to exact search (FlatIndex l2), ties by lower id, protocol, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import DEVICES, assert_knn_matches

import gpuann
from gpuann import FlatIndex, KDTreeIndex


def _grid(seed: int, n: int, q: int, dim: int):
    """Integer points on a small grid: many exactly equal distances and duplicate points."""
    g = torch.Generator().manual_seed(seed)
    half_steps = 0.5 * (torch.arange(q)[:, None] % 2)
    database = torch.randint(0, 4, (n, dim), generator=g).float()
    return database, torch.randint(0, 4, (q, dim), generator=g).float() + half_steps


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("k", [1, 4, 25])
def test_ties_equal_flat_index_exactly(dim, k):
    x, q = _grid(dim, 1500, 40, dim)
    ids = torch.randperm(5000, generator=torch.Generator().manual_seed(k))[:1500]
    kd, flat = KDTreeIndex(dim), FlatIndex(dim, metric="l2", device="cpu")
    kd.add(x, ids=ids)
    flat.add(x, ids=ids)
    D, I = kd.search(q, k)
    D_flat, I_flat = flat.search(q, k)
    assert torch.equal(I, I_flat), "ids differ from FlatIndex (ties must go to the lower id)"
    assert torch.equal(D, D_flat)


def test_boundary_tie_goes_to_lower_id():
    """Here cKDTree.query(k=2) alone returns rows {1, 2} (checked with scipy 1.17, leafsize=1);
    the four points are equidistant from the origin, so the index must return ids 0 and 1."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]] + [[5.0, 5.0]] * 20)
    kd = KDTreeIndex(2, leafsize=1)
    kd.add(x)
    result = kd.search(torch.zeros((1, 2)), 2)
    assert result.ids.tolist() == [[0, 1]] and result.distances.tolist() == [[1.0, 1.0]]


def test_duplicates_resolved_to_lowest_ids():
    x = torch.zeros((64, 2))
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(0)) + 10
    kd = KDTreeIndex(2, leafsize=4)
    kd.add(x, ids=ids)
    assert kd.search(torch.zeros((1, 2)), 3).ids.tolist() == [[10, 11, 12]]


@pytest.mark.parametrize("dim", [2, 8, 16])
def test_float_data_matches_reference(dim):
    g = torch.Generator().manual_seed(dim)
    x, q = torch.randn(3000, dim, generator=g), torch.randn(30, dim, generator=g)
    kd = KDTreeIndex(dim)
    kd.add(x)
    D, I = kd.search(q, 10)
    assert D.dtype == torch.float32 and I.dtype == torch.int64
    assert_knn_matches(D, I, q, x, 10, "l2")
    flat = FlatIndex(dim, device="cpu")
    flat.add(x)
    assert_knn_matches(*flat.search(q, 10), q, x, 10, "l2")


def test_add_remove_padding_numpy(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g)
    kd = KDTreeIndex(3, device="cpu")
    kd.add(x[:25], ids=np.arange(25) * 2 + 1)
    kd.add(x[25:])  # default ids continue after the largest (49)
    assert kd.ids[-1].item() == 74 and len(kd) == 50
    assert kd.remove([1, 3]) == 2
    with pytest.raises(ValueError, match="ids: 1 id"):
        kd.remove([5, 1000])
    assert len(kd) == 48
    keep_ids = kd.ids.numpy()
    points = kd.reconstruct(kd.ids)
    D, I = kd.search(x[:4].numpy(), 60)
    assert isinstance(D, np.ndarray) and (I[:, 48:] == -1).all() and np.isinf(D[:, 48:]).all()
    assert_knn_matches(D, I, x[:4], points.float(), 60, "l2", ids=keep_ids)
    path = tmp_path / "kd.gpuann"
    kd.save(path)
    loaded = gpuann.load(path, device="cpu")
    assert isinstance(loaded, KDTreeIndex) and torch.equal(loaded.ids, kd.ids)
    for a, b in zip(loaded.search(x[:4], 5), kd.search(x[:4], 5), strict=True):
        assert torch.equal(a, b)
    assert kd.to("cpu") is kd
    # float64 points, int64 ids and the tree's int64 permutation of the points
    assert kd.nbytes == 48 * (3 * 8 + 8 + 8)
    assert repr(kd) == (
        "KDTreeIndex(n=48, dim=3, leafsize=16, metric='l2', device='cpu', memory='1.9 KiB')"
    )


def test_bad_inputs_leave_index_unchanged():
    with pytest.raises(ValueError, match="metric: KDTreeIndex supports only 'l2'"):
        KDTreeIndex(3, metric="ip")
    with pytest.raises(ValueError, match="dim: expected a positive int"):
        KDTreeIndex(0)
    kd = KDTreeIndex(3)
    kd.add(torch.randn(5, 3))
    with pytest.raises(ValueError, match="x: expected 3 columns"):
        kd.add(torch.randn(5, 4))
    with pytest.raises(ValueError, match="ids: 1 id"):
        kd.add(torch.randn(2, 3), ids=[4, 8])
    with pytest.raises(ValueError, match="x: contains NaN"):
        kd.add(torch.full((1, 3), float("nan")))
    with pytest.raises(ValueError, match="k: expected a positive int"):
        kd.search(torch.randn(1, 3), 0)
    assert len(kd) == 5 and kd.ids.tolist() == [0, 1, 2, 3, 4]
    assert KDTreeIndex(2).search(torch.zeros((2, 2)), 2).ids.tolist() == [[-1, -1], [-1, -1]]


def test_extreme_queries_raise_a_clear_error_naming_queries():
    """Issue 13: float64 queries near 1e300 raised a bare IndexError from inside the search."""
    kd = KDTreeIndex(3, device="cpu")
    kd.add(torch.randn(10, 3))
    huge = torch.full((1, 3), 1e300, dtype=torch.float64)
    with pytest.raises(ValueError, match="queries: values up to 1e\\+300 give squared distances"):
        kd.search(huge, 2)
    with pytest.raises(ValueError, match=r"queries: squared distances .* overflow float64"):
        kd.search(huge, 2, check_finite=False)
    with pytest.raises(ValueError, match="x: values up to 1e\\+300"):
        kd.add(huge)
    assert len(kd) == 10
    big = torch.full((1, 3), 1e18, dtype=torch.float64)  # squared distances fit float32: exact
    kd.add(big, ids=[100])
    assert kd.search(big, 1).ids.tolist() == [[100]]


def test_keyword_only_options_update_and_float64_reconstruct():
    with pytest.raises(TypeError):
        KDTreeIndex(3, "l2")  # the options after dim are keyword-only
    kd = KDTreeIndex(np.int64(2), device="cpu", leafsize=np.int64(4))
    kd.add(np.array([[0.0, 0.0], [1.0, 1.0]]), ids=np.array([7, 3], dtype=np.uint64))
    kd.update([7], torch.tensor([[5.0, 5.0]], dtype=torch.float64))
    assert kd.search(torch.zeros((1, 2)), 2).ids.tolist() == [[3, 7]]
    points = kd.reconstruct(np.array([7]))
    assert isinstance(points, np.ndarray) and points.dtype == np.float64
    assert kd.reconstruct([3]).dtype == torch.float64 and kd.dtype == torch.float64
    with pytest.raises(ValueError, match="ids: expected non-negative ids"):
        kd.add(torch.zeros((1, 2)), ids=[-1])


@pytest.mark.parametrize("device", DEVICES)
def test_device_is_honoured_by_to_and_load(device, tmp_path):
    """``to(device)`` and ``load(device=)`` used to ignore the device (the tree stays on CPU)."""
    kd = KDTreeIndex(3, device="cpu")
    x = torch.randn(50, 3)
    kd.add(x)
    moved = kd.to(device)
    assert moved.device == torch.device(device) or moved.device.type == device
    assert moved.ids.device.type == device and moved.reconstruct([0]).device.type == device
    assert (moved is kd) == (device == "cpu")
    D, I = moved.search(x[:3].to(device), 4)
    assert I.device.type == device and torch.equal(I.cpu(), kd.search(x[:3], 4).ids)
    kd.add(torch.randn(1, 3))  # the copy does not share the original's memory
    assert len(moved) == (51 if device == "cpu" else 50)
    path = tmp_path / "kd.gpuann"
    kd.save(path)
    loaded = KDTreeIndex.load(path, device=device)
    assert loaded.device.type == device and torch.equal(loaded.ids.cpu(), kd.ids)


def _snapshot(kd: KDTreeIndex, q: torch.Tensor):
    return kd.ids.tolist(), kd.reconstruct(kd.ids), kd.search(q, 3)


def _assert_unchanged(kd: KDTreeIndex, q: torch.Tensor, before) -> None:
    ids, points, (D, I) = before
    assert kd.ids.tolist() == ids and len(kd) == len(ids)
    assert torch.equal(kd.reconstruct(kd.ids), points)
    D2, I2 = kd.search(q, 3)
    assert torch.equal(I2, I) and torch.equal(D2, D)


def test_non_finite_points_refused_naming_x_even_unchecked():
    """Review: ``add(check_finite=False)`` with a NaN stored the rows, then scipy refused the
    tree, so the rows stayed (len, reconstruct, remove saw them) but search could not find them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=g)
    kd = KDTreeIndex(3, device="cpu")
    kd.add(x[:50])
    before = _snapshot(kd, x[50:60])
    bad = x[50:].clone()
    bad[-1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x: contains NaN or infinite values \(rows \[49\]\)"):
        kd.add(bad, check_finite=False)
    _assert_unchanged(kd, x[50:60], before)
    with pytest.raises(ValueError, match="x: contains NaN"):
        kd.update([3], torch.tensor([[float("inf"), 0.0, 0.0]]), check_finite=False)
    _assert_unchanged(kd, x[50:60], before)
    with pytest.raises(gpuann.UnknownIdError):
        kd.reconstruct([99])


@pytest.mark.parametrize("mutation", ["add", "update", "remove", "merge_from"])
def test_a_tree_scipy_refuses_leaves_the_index_as_it_was(mutation, monkeypatch):
    """The tree is built before the rows are stored: any failure to build it (here forced)
    leaves the rows and the tree as they were, and the next mutation works."""
    import scipy.spatial

    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(80, 2, generator=g), torch.randn(5, 2, generator=g)
    kd, other = KDTreeIndex(2, device="cpu"), KDTreeIndex(2, device="cpu")
    kd.add(x[:40])
    other.add(x[40:], ids=torch.arange(100, 140))
    before = _snapshot(kd, q)
    calls = {
        "add": lambda: kd.add(x[40:]),
        "update": lambda: kd.update([0, 5], x[40:42]),
        "remove": lambda: kd.remove([0, 5]),
        "merge_from": lambda: kd.merge_from(other),
    }

    def refuse(*args, **kwargs):
        raise MemoryError("no room for the tree")

    with monkeypatch.context() as patch:
        patch.setattr(scipy.spatial, "cKDTree", refuse)
        with pytest.raises(MemoryError):
            calls[mutation]()
    _assert_unchanged(kd, q, before)
    assert len(other) == 40
    calls[mutation]()
    flat = FlatIndex(2, device="cpu")
    flat.add(kd.reconstruct(kd.ids), ids=kd.ids)
    assert torch.equal(kd.search(q, 5).ids, flat.search(q, 5).ids)
