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
    index = gpuann.FlatIndex(6, metric=metric, device="cpu", dtype=dtype)
    index.add(torch.randn(40, 6), ids=torch.randperm(1000)[:40])
    index.remove(index.ids[:3])
    path = tmp_path / "index.gpuann"
    index.save(path)
    loaded = gpuann.load(path, device="cpu")
    assert isinstance(loaded, gpuann.FlatIndex)
    assert (loaded.dim, loaded.metric, loaded.dtype, len(loaded)) == (6, index.metric, dtype, 37)
    assert torch.equal(loaded.ids, index.ids) and loaded._rows.next_id == index._rows.next_id
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


# ---------------------------------------------------------------- robustness (issue 13)
def _write_raw(path, header: dict | bytes, payload: bytes = b"") -> None:
    """A file with valid magic, version and checksums around whatever header is given."""
    import json
    import struct
    import zlib

    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<8sIQ", b"GPUANN\x00\x1a", 1, len(raw)))
        f.write(raw)
        f.write(struct.pack("<I", zlib.crc32(raw)))
        f.write(payload)


def _header(**overrides) -> dict:
    header = {
        "kind": "FlatIndex",
        "meta": {"dim": 2, "metric": "l2", "dtype": "float32", "next_id": 0},
        "arrays": [],
        "payload_nbytes": 0,
        "payload_crc32": 0,
    }
    header.update(overrides)
    return header


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2]",
        _header(meta="dim"),
        _header(arrays=[{"name": "ids"}]),
        _header(
            arrays=[{"name": "ids", "dtype": "int64", "shape": [-1], "offset": 0, "nbytes": 0}]
        ),
        _header(meta={"dim": "two", "metric": "l2", "dtype": "float32"}),
        _header(meta={"dim": 2, "metric": "l2", "dtype": "float32"}),  # no ids array
        _header(meta={"dim": 2, "metric": "nope", "dtype": "float32"}),
        _header(kind=3),
    ],
)
def test_bad_content_behind_valid_checksums_is_an_index_file_error(tmp_path, header):
    path = tmp_path / "bad.gpuann"
    _write_raw(path, header)
    with pytest.raises(gpuann.IndexFileError):
        gpuann.load(path, device="cpu")


def test_a_header_that_disagrees_with_the_file_size_is_refused_before_reading(tmp_path):
    import tracemalloc

    path = tmp_path / "sparse.gpuann"
    _write_raw(path, _header())
    with open(path, "r+b") as f:  # a sparse 2 GiB tail the header does not declare
        f.truncate(2**31)
    tracemalloc.start()
    with pytest.raises(gpuann.IndexFileError, match="trailing bytes"):
        gpuann.load(path, device="cpu")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated to refuse the file"


def test_loading_does_not_copy_the_payload_twice(tmp_path):
    import tracemalloc

    index = gpuann.FlatIndex(256, metric="ip", device="cpu")
    index.add(torch.randn(20_000, 256))  # 20 MB of vectors
    path = tmp_path / "big.gpuann"
    index.save(path)
    size = path.stat().st_size
    tracemalloc.start()
    loaded = gpuann.load(path, device="cpu")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(loaded) == 20_000
    assert peak < 1.25 * size, f"peak {peak} bytes for a {size}-byte file"


def test_a_long_legal_file_name_can_be_saved(tmp_path):
    path = tmp_path / ("i" * 247 + ".gpuann")  # 254 characters: legal on Linux filesystems
    index = gpuann.FlatIndex(2, device="cpu")
    index.add(torch.randn(3, 2))
    index.save(path)
    assert len(gpuann.load(path, device="cpu")) == 3


def test_stale_temporaries_of_a_killed_save_are_cleaned_by_the_next_save(tmp_path):
    import hashlib

    path = tmp_path / "i.gpuann"
    tag = hashlib.sha1(path.name.encode()).hexdigest()[:12]
    stale = tmp_path / f".gpuann-{tag}.999999999.abcd1234.tmp"  # no such process
    stale.write_bytes(b"half a file")
    gpuann.FlatIndex(2, device="cpu").save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.gpuann"]
