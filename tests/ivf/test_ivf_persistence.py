"""Save -> load -> search gives identical results; bad files raise IndexFileError."""

from __future__ import annotations

import json
import pickle
import struct
import zlib

import faiss
import numpy as np
import pytest
import torch
from ivf_helpers import build

import gpuann
from gpuann.ivf import _faiss
from gpuann.serialization import IndexFileError, read_index_file, write_index_file

KINDS = ["flat", "pq", "pq_refine"]


@pytest.fixture(scope="module")
def saved(small, tmp_path_factory):
    """One saved index per (kind, metric), with some ids removed, and its expected results."""
    folder = tmp_path_factory.mktemp("ivf")
    out = {}
    for kind in KINDS:
        for metric in ("l2", "cosine"):
            index = build(kind, metric, small[0], ids=np.arange(2000) * 2 + 1, nlist=16, nprobe=5)
            index.remove(np.arange(1, 400, 2))
            path = folder / f"{kind}-{metric}.gpuann"
            index.save(path)
            out[kind, metric] = (path, index, index.search(small[1], 10))
    return out


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_search_identical(saved, small, kind, metric):
    path, index, (d, i) = saved[kind, metric]
    for loaded in (gpuann.load(path, device="cpu"), type(index).load(path, device="cpu")):
        assert type(loaded) is type(index)
        shown = {**loaded._display_fields(), "memory": None}
        assert shown == {**index._display_fields(), "memory": None}
        assert torch.equal(loaded.ids, index.ids) and loaded.nprobe == 5
        got = loaded.search(small[1], 10)
        np.testing.assert_array_equal(got.ids, i)
        np.testing.assert_array_equal(got.distances, d)
        loaded.add(small[0][:3])  # still usable, ids continue after the largest ever used
        assert loaded.ids[-3:].tolist() == [4000, 4001, 4002]


def test_untrained_index_round_trips(tmp_path):
    index = gpuann.IVFPQIndex(16, 8, 4, nbits=5, device="cpu")
    index.save(tmp_path / "u.gpuann")
    loaded = gpuann.load(tmp_path / "u.gpuann", device="cpu")
    assert not loaded.is_trained and loaded.nbits == 5 and len(loaded) == 0


def test_wrong_kind(saved):
    path = saved["flat", "l2"][0]
    with pytest.raises(ValueError, match="holds a IVFFlatIndex, not a IVFPQIndex"):
        gpuann.IVFPQIndex.load(path)


def test_truncated_and_corrupt_files(saved, tmp_path):
    data = saved["pq", "l2"][0].read_bytes()
    bad = tmp_path / "bad.gpuann"
    for blob, match in [
        (data[:-100], "truncated"),
        (data[:30], "truncated|too short"),
        (b"not a gpuann index, just some text", "not a gpuann index file"),
        (data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:], "payload checksum"),
    ]:
        bad.write_bytes(blob)
        with pytest.raises(IndexFileError, match=match):
            gpuann.load(bad, device="cpu")


def _rewrite(path, out, edit_meta=None, edit_arrays=None):
    kind, meta, arrays = read_index_file(path)
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    write_index_file(out, kind, meta, arrays)


@pytest.mark.parametrize(
    ("edit_meta", "edit_arrays", "match"),
    [
        (lambda m: m.update(dim=8), None, "m: must divide dim=8"),
        (lambda m: m.update(dim=32), None, "dim 16"),
        (lambda m: m.update(nlist=32), None, "nlist 16"),
        (lambda m: m.update(metric="ip"), None, "metric"),
        (lambda m: m.update(ivf_layout=99), None, "IVF layout"),
        (None, lambda a: a.update(ids=a["ids"][:-1]), "ids do not match"),
        (None, lambda a: a.update(ids=a["ids"].flip(0)), "strictly ascending"),
        (
            None,
            lambda a: a.update(vectors=a["vectors"][:, :8]),
            "array 'vectors' has shape \\(1800, 8\\)",
        ),
        (None, lambda a: a.pop("vectors"), "no array 'vectors'"),
        (None, lambda a: a.update(faiss_index=a["faiss_index"][:100]), "faiss cannot read"),
        (lambda m: m.pop("next_id"), None, "inconsistent"),
    ],
)
def test_inconsistent_files(saved, tmp_path, edit_meta, edit_arrays, match):
    out = tmp_path / "x.gpuann"
    _rewrite(saved["pq_refine", "l2"][0], out, edit_meta, edit_arrays)
    with pytest.raises(IndexFileError, match=match):
        gpuann.load(out, device="cpu")


def test_a_faiss_index_of_another_type_is_refused(saved, tmp_path):
    def swap(arrays):
        other = faiss.IndexFlatL2(16)
        arrays["faiss_index"] = torch.from_numpy(faiss.serialize_index(other))

    out = tmp_path / "swap.gpuann"
    _rewrite(saved["flat", "l2"][0], out, edit_arrays=swap)
    with pytest.raises(IndexFileError, match="type IndexFlat"):
        gpuann.load(out, device="cpu")


def test_header_names_the_kind_and_version(saved):
    data = saved["flat", "l2"][0].read_bytes()
    (header_len,) = struct.unpack_from("<Q", data, 12)
    header = json.loads(data[20 : 20 + header_len])
    assert header["kind"] == "IVFFlatIndex"
    assert header["meta"]["ivf_layout"] == 2 and header["meta"]["faiss_version"]
    (crc,) = struct.unpack_from("<I", data, 20 + header_len)
    assert zlib.crc32(data[20 : 20 + header_len]) == crc


# ---------------------------------------------------------------- merging
def _halves(small, kind):
    """The whole index, and two indexes sharing its training that hold ids < 1000 and the
    rest."""
    whole = build(kind, "l2", small[0], nlist=16)
    low, high = pickle.loads(pickle.dumps(whole)), pickle.loads(pickle.dumps(whole))
    low.remove(np.arange(1000, 2000))
    high.remove(np.arange(1000))
    return whole, low, high


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["self", "other", "loaded"])
def test_merge_after_reconstruct(small, tmp_path, kind, where):
    """reconstruct builds faiss's id -> entry map, which faiss's merge_from refuses (and
    which a file kept): merging drops it, and reconstruct builds it again."""
    whole, low, high = _halves(small, kind)
    if where == "other":
        high.reconstruct([1500])
    else:
        low.reconstruct([5])
    if where == "loaded":
        low.save(tmp_path / "low.gpuann")
        low = gpuann.load(tmp_path / "low.gpuann", device="cpu")
    low.merge_from(high)
    assert len(low) == low.faiss_index.ntotal == 2000 and len(high) == 0
    expected = whole.search(small[1], 10, nprobe=8)
    got = low.search(small[1], 10, nprobe=8)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_allclose(got.distances, expected.distances, rtol=1e-6)
    np.testing.assert_array_equal(low.reconstruct([5, 1500]), whole.reconstruct([5, 1500]))


def test_failed_merge_changes_neither_index(small, monkeypatch):
    _, low, high = _halves(small, "pq_refine")
    before = [(len(x), x.search(small[1], 5, nprobe=8)) for x in (low, high)]

    def fail(*args):
        raise MemoryError("no room for the merged index")

    monkeypatch.setattr(_faiss, "index_to_device", fail)
    with pytest.raises(MemoryError):
        low.merge_from(high)
    monkeypatch.undo()
    for index, (n, (d, i)) in zip((low, high), before, strict=True):
        assert len(index) == index.faiss_index.ntotal == n
        after = index.search(small[1], 5, nprobe=8)
        np.testing.assert_array_equal(after.ids, i)
        np.testing.assert_array_equal(after.distances, d)
