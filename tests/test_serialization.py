"""Index files: round trips, atomic saves, versioned and checksummed, no code execution."""

from __future__ import annotations

import os
import pathlib
import struct

import pytest
import torch

import gpuann
from gpuann.serialization import FORMAT_VERSION, MAGIC, read_index_file

FIXTURES = pathlib.Path(__file__).parent / "data"


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_round_trip_is_exact(tmp_path, metric, dtype):
    index = gpuann.FlatIndex(6, metric, device="cpu", dtype=dtype)
    index.add(torch.randn(40, 6), ids=torch.randperm(1000)[:40])
    index.remove(index.ids[:3])
    path = tmp_path / "index.gpuann"
    index.save(path)
    loaded = gpuann.load(path, device="cpu")
    assert isinstance(loaded, gpuann.FlatIndex)
    assert (loaded.dim, loaded.metric, loaded.dtype, len(loaded)) == (6, index.metric, dtype, 37)
    assert torch.equal(loaded.ids, index.ids) and loaded._next_id == index._next_id
    q = torch.randn(4, 6)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.search(q, 7), index.search(q, 7), strict=True)
    )
    assert torch.equal(
        gpuann.FlatIndex.load(path).reconstruct(index.ids), index.reconstruct(index.ids)
    )


def test_empty_index_round_trip(tmp_path):
    gpuann.FlatIndex(3, device="cpu").save(tmp_path / "e")
    assert len(gpuann.load(tmp_path / "e")) == 0


def _saved(tmp_path) -> pathlib.Path:
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(10, 4))
    path = tmp_path / "i.gpuann"
    index.save(path)
    return path


def test_truncated_file_raises(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    for cut in (5, 30, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(gpuann.IndexFileError, match=r"truncated|too short"):
            gpuann.load(path)


def test_corrupt_payload_and_header_raise(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(gpuann.IndexFileError, match="payload checksum"):
        gpuann.load(path)
    data[-3] ^= 0xFF
    data[30] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(gpuann.IndexFileError, match="header checksum"):
        gpuann.load(path)


def test_not_an_index_and_future_version(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x80\x04pickle-looking bytes, never unpickled" * 3)
    with pytest.raises(gpuann.IndexFileError, match="not a gpuann index file"):
        gpuann.load(path)
    path.write_bytes(struct.pack("<8sIQ", MAGIC, FORMAT_VERSION + 1, 0) + b"\0" * 8)
    with pytest.raises(gpuann.IndexFileError, match="format version 2"):
        gpuann.load(path)
    with pytest.raises(FileNotFoundError, match="path: no index file"):
        gpuann.load(tmp_path / "missing")


def test_failed_save_leaves_previous_file(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(99, 4))

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.gpuann"]  # no temporary left


def test_save_into_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gpuann.FlatIndex(2, device="cpu").save(tmp_path / "nope" / "x")


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("flat_v*.gpuann")), ids=lambda p: p.name)
def test_every_released_format_still_loads(fixture):
    """tests/data holds an index saved by every file-format version (made by make_fixtures.py)."""
    index = gpuann.load(fixture, device="cpu")
    assert len(index) == 5 and index.dim == 3 and index.dtype == torch.float16
    assert index.ids.tolist() == [2, 4, 6, 8, 10]
    D, I = index.search(torch.tensor([[1.0, 1.0, 1.0]]), 2)
    assert I.tolist() == [[8, 6]]


def test_fixture_for_the_current_version_exists():
    assert (FIXTURES / f"flat_v{FORMAT_VERSION}.gpuann").is_file()
    kind, meta, arrays = read_index_file(FIXTURES / f"flat_v{FORMAT_VERSION}.gpuann")
    assert kind == "FlatIndex" and set(arrays) == {"vectors", "ids"}


@pytest.mark.parametrize(
    "cls", ["FlatIndex", "KDTreeIndex", "LSHIndex", "BinaryFlatIndex", "IVFFlatIndex", "IVFPQIndex"]
)
def test_each_class_load_refuses_another_kind(tmp_path, cls):
    path = _saved(tmp_path)  # a FlatIndex
    if cls == "FlatIndex":
        assert isinstance(gpuann.FlatIndex.load(path), gpuann.FlatIndex)
        return
    with pytest.raises(ValueError, match=f"holds a FlatIndex, not a {cls}"):
        getattr(gpuann, cls).load(path)
