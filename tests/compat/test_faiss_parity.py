"""faiss parity: the same small scripts run against faiss-cpu and ``gpuann.compat.faiss``.

Each script takes the module as ``faiss`` and returns what a caller observes — results, the
returned types' names, the exceptions raised — and :func:`assert_same` compares the two runs:
ids exactly, distances to float32 round-off, exceptions by class (the shim's must be an
instance of faiss's). Range-search results are compared per query as sets (faiss does not
order them; the shim does).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpuann.compat.faiss as shim

real = pytest.importorskip("faiss")


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    before = real.omp_get_max_threads()
    real.omp_set_num_threads(1)
    yield
    real.omp_set_num_threads(before)


def _data(n: int = 300, d: int = 8, nq: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d), dtype=np.float32), rng.standard_normal(
        (nq, d), dtype=np.float32
    )


def outcome(call):
    """``call()``'s value, or the exception it raised."""
    try:
        return call()
    except Exception as err:  # the class is what is compared
        return err


def ranges(lims, D, I):
    """Per query, ``(id, distance)`` pairs ordered by id (faiss's order is unspecified)."""
    lims = np.asarray(lims)
    out = []
    for i in range(len(lims) - 1):
        ids, dist = I[lims[i] : lims[i + 1]], D[lims[i] : lims[i + 1]]
        order = np.argsort(ids, kind="stable")
        out.append((ids[order], dist[order]))
    return out


def assert_same(expected, got, where="result"):
    """Recursive comparison of a faiss run (``expected``) with a shim run (``got``)."""
    if isinstance(expected, BaseException):
        assert isinstance(got, type(expected)), f"{where}: faiss raised {expected!r}, shim {got!r}"
        return
    assert not isinstance(got, BaseException), f"{where}: shim raised {got!r}, faiss {expected!r}"
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray), f"{where}: {type(got)} is not an ndarray"
        assert got.shape == expected.shape, f"{where}: shape {got.shape} != {expected.shape}"
        assert got.dtype == expected.dtype, f"{where}: dtype {got.dtype} != {expected.dtype}"
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4, err_msg=where)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=where)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), f"{where}: length {len(got)} != {len(expected)}"
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            assert_same(e, g, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same(expected[key], got[key], f"{where}.{key}")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5), f"{where}: {got} != {expected}"
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def both(script, *args):
    """Run ``script(module, *args)`` with faiss and with the shim, and compare."""
    assert_same(script(real, *args), script(shim, *args), script.__name__)


# ---------------------------------------------------------------- scripts
def flat_search(faiss, metric):
    xb, xq = _data()
    index = faiss.IndexFlat(8, metric)
    index.add(xb[:5])
    out = {"few": index.search(xq, 7), "type": type(index).__name__}
    index.add(xb[5:])
    out["search"] = index.search(xq, 10)
    out["assign"] = index.assign(xq, 3)
    out["reconstruct"] = (index.reconstruct(7), index.reconstruct_n(3, 4))
    out["batch"] = index.reconstruct_batch(np.array([5, 1, 5]))
    D, I, R = index.search_and_reconstruct(xq, 3)
    out["search_and_reconstruct"] = (D, I, R)
    radius = 6.0 if metric == faiss.METRIC_L2 else 2.0
    lims, D, I = index.range_search(xq, radius)
    out["range"] = (lims.dtype.name, lims[-1], ranges(lims, D, I))
    out["removed"] = index.remove_ids(np.array([3, 3, 10, 9999]))
    out["after_remove"] = (index.ntotal, index.search(xq, 5))
    return out


def missing_results(faiss, metric):
    xb, xq = _data()
    index = faiss.IndexFlat(8, metric)
    empty = index.search(xq, 3)
    index.add(xb[:2])
    return empty, index.search(xq, 4), faiss.knn(xq, xb[:2], 3, metric)


def conversions(faiss):
    xb, _ = _data()
    index = faiss.IndexFlatL2(8)
    index.add(np.round(xb * 10).astype(np.int8))  # converted to float32, as faiss does
    index.add(np.ones((3, 8), dtype=np.uint8))
    index.add(xb[:3].astype(np.float64))
    id_map = faiss.IndexIDMap(faiss.IndexFlatL2(8))
    id_map.add_with_ids(xb[:4], np.array([1.9, 2.0, 7.5, -3.2]))  # float ids truncated
    return (
        index.ntotal,
        index.search(np.zeros((2, 8), dtype=np.int64), 3),
        faiss.vector_to_array(id_map.id_map),
    )


def errors(faiss, tmp_path):
    xb, xq = _data()
    index = faiss.IndexFlatL2(8)
    index.add(xb)
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"not an index at all")
    untrained = faiss.IndexFlatL2(8)
    untrained.is_trained = False
    id_map = faiss.IndexIDMap(faiss.IndexFlatL2(8))
    return [
        outcome(lambda: index.search(xq, 0)),
        outcome(lambda: index.search(xq[:, :5], 1)),
        outcome(lambda: index.add(xb[:, :5])),
        outcome(lambda: index.reconstruct(10**6)),
        outcome(lambda: index.add_with_ids(xb[:2], np.arange(2))),
        outcome(lambda: faiss.read_index(str(tmp_path / "missing"))),
        outcome(lambda: faiss.read_index(str(corrupt))),
        outcome(lambda: untrained.add(xb)),
        untrained.is_trained,
        outcome(lambda: id_map.add(xb)),
        outcome(lambda: id_map.add_with_ids(xb[:3], np.arange(2))),
        outcome(lambda: id_map.reconstruct(0)),
        outcome(lambda: faiss.IndexBinaryFlat(16).add(np.zeros((2, 2), dtype=np.int64))),
    ]


def id_maps(faiss, cls):
    xb, xq = _data()
    index = getattr(faiss, cls)(faiss.IndexFlatIP(8))
    index.add_with_ids(xb[:50], np.arange(50) * 3)
    index.add_with_ids(xb[50:60], np.full(10, 3))  # existing id: accepted, as faiss
    out = [index.search(xq, 12), index.ntotal]
    out.append(index.remove_ids(np.array([3, 3, 6, 10**9])))
    out += [index.search(xq, 12), index.ntotal, faiss.vector_to_array(index.id_map)]
    out.append(index.remove_ids(faiss.IDSelectorRange(0, 30)))
    out.append(index.search(xq, 5))
    if cls == "IndexIDMap2":
        out.append(index.reconstruct(int(faiss.vector_to_array(index.id_map)[4])))
        out.append(outcome(lambda: index.reconstruct(10**9)))
    return out


def selectors(faiss, cls):
    xb, xq = _data()
    if cls == "IndexFlat":
        index = faiss.IndexFlatL2(8)
        index.add(xb)
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatL2(8))
        index.add_with_ids(xb, np.arange(300) * 7)
    batch = faiss.IDSelectorBatch(np.array([1, 7, 14, 21, 70, 299]))
    chosen = [
        batch,
        faiss.IDSelectorRange(20, 120),
        faiss.IDSelectorArray(np.array([14, 21, 28])),
        faiss.IDSelectorNot(batch),
    ]
    return [index.search(xq, 5, params=faiss.SearchParameters(sel=sel)) for sel in chosen]


def merging(faiss):
    xb, xq = _data()
    a, b = faiss.IndexFlatL2(8), faiss.IndexFlatL2(8)
    a.add(xb[:100])
    b.add(xb[100:])
    a.merge_from(b)
    m1 = faiss.IndexIDMap(faiss.IndexFlatL2(8))
    m2 = faiss.IndexIDMap(faiss.IndexFlatL2(8))
    m1.add_with_ids(xb[:100], np.arange(100) + 1000)
    m2.add_with_ids(xb[100:], np.arange(200))
    m1.merge_from(m2, 5)
    other_d = faiss.IndexFlatL2(4)
    return [
        (a.ntotal, b.ntotal, a.search(xq, 5)),
        (m1.ntotal, m2.ntotal, m1.search(xq, 5), faiss.vector_to_array(m1.id_map)),
        outcome(lambda: a.merge_from(other_d)),
    ]


def pickling(faiss):
    xb, xq = _data()
    flat = faiss.IndexFlatIP(8)
    flat.add(xb)
    id_map = faiss.IndexIDMap2(faiss.IndexFlatL2(8))
    id_map.add_with_ids(xb, np.arange(300)[::-1].copy())
    graph = faiss.IndexHNSWFlat(8, 8)
    graph.add(xb)
    out = []
    for index in (flat, id_map, graph):
        again = pickle.loads(pickle.dumps(index))
        out.append((type(again).__name__, again.ntotal, again.search(xq, 4)))
    return out


def factory(faiss):
    out = []
    for description in (
        "Flat",
        "IDMap,Flat",
        "IDMap2,Flat",
        "IVF8,Flat",
        "IVF8,PQ4x4",
        "IVF8,PQ4x4,RFlat",
        "HNSW16",
        "HNSW8,Flat",
        "HNSW",
        "IDMap,HNSW16",
        "IDMap2,HNSW8,Flat",
    ):
        index = faiss.index_factory(16, description, faiss.METRIC_INNER_PRODUCT)
        out.append((type(index).__name__, index.d, index.metric_type, index.is_trained))
        if description.startswith("HNSW"):
            out.append(index.hnsw.nb_neighbors(1))  # M
        if "HNSW" in description and description.startswith("IDMap"):
            out.append(type(faiss.downcast_index(index.index)).__name__)
        if description.endswith("RFlat"):
            out.append(index.k_factor)
    return out


def hnsw(faiss, metric):
    xb, xq = _data(400, 8)
    index = faiss.IndexHNSWFlat(8, 16, metric)
    index.hnsw.efConstruction = 20
    out = {"type": type(index).__name__, "empty": index.search(xq, 3)}
    index.add(xb)
    out["search"] = index.search(xq, 10)
    index.hnsw.efSearch = 8
    out["ef"] = (index.hnsw.efSearch, index.hnsw.efConstruction, index.search(xq, 10))
    params = faiss.SearchParametersHNSW(efSearch=64)
    out["params"] = (index.search(xq, 10, params=params), index.hnsw.efSearch)
    out["graph"] = (index.hnsw.max_level, index.hnsw.entry_point, index.ntotal, index.d)
    out["levels"] = faiss.vector_to_array(index.hnsw.levels)  # a faiss vector, through faiss
    radius = 6.0 if metric == faiss.METRIC_L2 else 1.0
    lims, D, I = index.range_search(xq, radius)
    out["range"] = (lims.dtype.name, lims, ranges(lims, D, I))
    lims, D, I = index.range_search(xq, radius, params=faiss.SearchParametersHNSW(efSearch=64))
    out["range_ef"] = (lims, ranges(lims, D, I))  # more candidates, more found
    out["reconstruct"] = (index.reconstruct(7), index.reconstruct_n(3, 4))
    out["remove"] = outcome(lambda: index.remove_ids(np.array([1])))
    out["add_with_ids"] = outcome(lambda: index.add_with_ids(xb[:2], np.array([5, 6])))
    other = faiss.IndexHNSWFlat(8, 16, metric)
    other.add(xb[:3])
    out["merge"] = (outcome(lambda: index.merge_from(other)), index.ntotal)
    index.add(xb[:50] + 0.5)  # levels drawn after the first adds: the same generator
    out["more"] = (index.ntotal, index.search(xq, 5))
    index.reset()
    out["reset"] = (index.ntotal, index.search(xq, 2))
    return out


def id_map_hnsw(faiss, cls):
    xb, xq = _data(400, 8)
    index = getattr(faiss, cls)(faiss.IndexHNSWFlat(8, 16))
    index.add_with_ids(xb, np.arange(400) * 3 + 7)
    out = {"type": type(index).__name__, "search": index.search(xq, 5)}
    params = faiss.SearchParametersHNSW(efSearch=64)
    out["params"] = index.search(xq, 5, params=params)
    out["ids"] = faiss.vector_to_array(index.id_map)[:5]
    out["remove"] = (outcome(lambda: index.remove_ids(np.array([7]))), index.ntotal)
    other = getattr(faiss, cls)(faiss.IndexHNSWFlat(8, 16))
    out["merge"] = (outcome(lambda: index.merge_from(other)), index.ntotal)
    flat = getattr(faiss, cls)(faiss.IndexFlatL2(8))
    flat.add_with_ids(xb[:5], np.arange(5))
    out["merge_into_flat"] = (outcome(lambda: flat.merge_from(index)), flat.ntotal, index.ntotal)
    params = faiss.SearchParametersHNSW(efSearch=48)
    lims, D, I = index.range_search(xq, 6.0, params=params)
    out["range"] = (lims, ranges(lims, D, I))
    out["search_and_reconstruct"] = outcome(lambda: index.search_and_reconstruct(xq, 3))
    if cls == "IndexIDMap2":
        out["reconstruct"] = index.reconstruct(10)
    again = pickle.loads(pickle.dumps(index))
    out["pickled"] = (type(again).__name__, again.search(xq, 5))
    return out


def ivf(faiss, kind):
    xb, xq = _data(2000, 16, 10, seed=1)
    quantizer = faiss.IndexFlatL2(16)
    if kind == "flat":
        index = faiss.IndexIVFFlat(quantizer, 16, 8)
    else:
        index = faiss.IndexIVFPQ(quantizer, 16, 8, 4, 6)
    out = [quantizer.ntotal, quantizer.is_trained]
    index.train(xb)
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    out += [quantizer.ntotal, centroids[np.lexsort(centroids.T[::-1])]]
    index.add(xb[:1000])
    index.add_with_ids(xb[1000:], np.arange(1000, 2000) * 2)
    index.nprobe = 3
    D, I = index.search(xq, 10)
    out += [np.sort(I, axis=1), np.sort(D, axis=1)]
    params = faiss.SearchParametersIVF(nprobe=8)
    out.append(np.sort(index.search(xq, 10, params=params)[1], axis=1))
    out.append(index.assign(xq, 1).shape)
    out.append(index.remove_ids(np.array([0, 0, 1, 2002, 123456])))
    if kind == "flat":
        lims, D, I = index.range_search(xq, 2.0)
        out.append((lims.dtype.name, ranges(lims, D, I)))
    twin = faiss.deserialize_index(faiss.serialize_index(index))
    twin.reset()
    twin.add_with_ids(xb[:10], np.arange(10) + 10**6)
    index.merge_from(twin, 0)
    out += [index.ntotal, twin.ntotal, np.sort(index.search(xq, 10)[1], axis=1)]
    if kind == "flat":
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        out.append(index.reconstruct(2004))
    return out


def ivf_selectors(faiss, kind):
    """IVF search with ``SearchParametersIVF(sel=..., nprobe=...)``: faiss's list scan skips
    the unselected ids; the shim's native ``allow_ids`` must give the same results."""
    xb, xq = _data(2000, 16, 10, seed=4)
    quantizer = faiss.IndexFlatL2(16)
    if kind == "flat":
        index = faiss.IndexIVFFlat(quantizer, 16, 8)
    else:
        index = faiss.IndexIVFPQ(quantizer, 16, 8, 4, 6)
    index.train(xb)
    index.add_with_ids(xb, np.arange(2000) * 3 + 1)
    index.nprobe = 2
    batch = faiss.IDSelectorBatch(np.arange(1, 6000, 7))
    chosen = [
        batch,
        faiss.IDSelectorRange(300, 2400),
        faiss.IDSelectorArray(np.array([4, 13, 5998, 10**9])),
        faiss.IDSelectorNot(batch),
        faiss.IDSelectorAnd(batch, faiss.IDSelectorRange(0, 3000)),
    ]
    out = []
    for sel in chosen:
        for params in (
            faiss.SearchParametersIVF(sel=sel, nprobe=8),
            faiss.SearchParametersIVF(sel=sel, nprobe=3),
            faiss.SearchParametersIVF(sel=sel),  # faiss's default nprobe, 1
        ):
            D, I = index.search(xq, 10, params=params)
            out += [np.sort(I, axis=1), np.sort(D, axis=1)]
    out.append(np.sort(index.search(xq, 10)[1], axis=1))  # index.nprobe, no filter: unchanged
    return out


def binary(faiss):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (200, 4), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(32)
    index.add(codes[:3])
    out = [index.search(codes[:2], 5)]
    index.add(codes[3:])
    out += [index.search(codes[:5], 4)[1], index.reconstruct(7), index.remove_ids(np.array([1, 1]))]
    out.append(index.search(codes[:5], 4)[1])
    return out


def write(faiss, kind, path):
    """Build a small index of ``kind`` with ``faiss`` and write it to ``path``."""
    xb, _ = _data(1000, 8, seed=2)
    if kind == "flat":
        index = faiss.IndexFlatIP(8)
        index.add(xb)
    elif kind in ("idmap", "idmap_dense"):
        index = faiss.IndexIDMap(faiss.IndexFlatL2(8))
        ids = np.arange(1000) if kind == "idmap_dense" else np.arange(1000) * 5 + 3
        index.add_with_ids(xb, ids)
    elif kind == "idmap_hnsw":
        index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(8, 12))
        index.add_with_ids(xb, np.arange(1000) * 5 + 3)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(8, 12, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 24
        index.add(xb)
        index.hnsw.efSearch = 20
    elif kind == "binary":
        index = faiss.IndexBinaryFlat(64)
        index.add(np.random.default_rng(4).integers(0, 256, (300, 8), dtype=np.uint8))
        faiss.write_index_binary(index, str(path))
        return
    else:
        description = {"ivfflat": "IVF4,Flat", "ivfpq": "IVF4,PQ4x4", "refine": "IVF4,PQ2x4,RFlat"}
        index = faiss.index_factory(8, description[kind])
        index.train(xb)
        index.add(xb)
        if kind == "refine":
            index.k_factor = 3
    faiss.write_index(index, str(path))


def read(faiss, kind, path):
    """What a caller sees of the index in ``path``."""
    if kind == "binary":
        index = faiss.read_index_binary(str(path))
        queries = np.random.default_rng(4).integers(0, 256, (3, 8), dtype=np.uint8)
    else:
        index = faiss.read_index(str(path))
        queries = _data(1000, 8, seed=2)[0][:3] + 0.01
    if kind.startswith("ivf"):
        index.nprobe = 4
    out = [type(index).__name__, index.ntotal, index.search(queries, 5)]
    if kind == "idmap_hnsw":
        inner = type(faiss.downcast_index(index.index)).__name__
        out.append((inner, faiss.vector_to_array(index.id_map)[:5]))
        out.append(index.reconstruct(8))
    elif kind.startswith("idmap"):
        out.append(faiss.vector_to_array(index.id_map)[:5])
        out.append(index.remove_ids(np.array([3, 8])))
        out.append(index.search(queries, 5)[1])
    if kind == "refine":
        out.append(index.k_factor)
    if kind == "hnsw":
        out.append((index.hnsw.efSearch, index.hnsw.efConstruction, index.hnsw.max_level))
        index.add(queries)  # into the graph read from the file
        out.append(index.search(queries, 5))
        index.reset()  # the level generator as faiss's: the same graph again
        index.add(_data(1000, 8, seed=5)[0])
        out.append((index.search(queries, 5), faiss.vector_to_array(index.hnsw.levels)))
    return out


def ivf_large_training(faiss, kind):
    """More training vectors than 256 per list: faiss samples them itself (the shim passed
    its own sample, other vectors: other centroids, other results)."""
    xb, xq = _data(4097, 16, 10, seed=2)
    if kind == "flat":
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 8)
    else:
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(16), 16, 16, 4, 4)  # 256 · 2⁴ = 4096
    index.train(xb)
    index.add(xb)
    index.nprobe = 2
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    return centroids[np.lexsort(centroids.T[::-1])], index.search(xq, 5)


def ivf_nprobe(faiss):
    """nprobe above nlist visits every list (it raised ValueError); 0 fails at search; the
    value is kept and written to files as faiss keeps it."""
    xb, xq = _data(1000, 8, 4, seed=3)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4)
    index.train(xb)
    index.add(xb)
    out = []
    for value in (64, 0, -1, 2.5):
        out.append(outcome(lambda v=value: setattr(index, "nprobe", v)))
        out.append(index.nprobe)
        out.append(outcome(lambda: index.search(xq, 3)))
    index.nprobe = 64
    out.append(faiss.deserialize_index(faiss.serialize_index(index)).nprobe)
    out.append(index.search(xq, 3, params=faiss.SearchParametersIVF(nprobe=50)))
    out.append(outcome(lambda: index.search(xq, 3, params=faiss.SearchParametersIVF(nprobe=0))))
    return out


def runtime_errors(faiss):
    """What faiss's C++ layer refuses with RuntimeError (the shim raised ValueError)."""
    xb, _ = _data(100, 16, 1)
    small = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 200)
    return [
        outcome(lambda: small.train(xb)),
        outcome(lambda: faiss.IndexIVFPQ(faiss.IndexFlatL2(16), 16, 4, 5, 8)),
        outcome(lambda: faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 16, 4)),
        outcome(lambda: faiss.IndexLSH(16, 32, False)),
        outcome(lambda: faiss.IndexBinaryFlat(12)),
        outcome(lambda: faiss.index_factory(16, "IVF8,PQ5")),
    ]


def refine_edges(faiss):
    """IndexRefineFlat searched empty (raised UnknownIdError), its range search (refused),
    reversed query arrays (crashed), contiguous ids (were not)."""
    xb, xq = _data(2000, 8, 3, seed=4)
    out = []
    for description in ("Flat,RFlat", "HNSW16,RFlat", "IVF8,PQ2x4,RFlat"):
        index = faiss.index_factory(8, description)
        index.train(xb)
        out.append(index.search(xq, 3))
        index.add(xb)
        index.k_factor = 4
        D, I = index.search(xq[::-1], 5)
        out += [D, I, I.flags.c_contiguous]
        lims, D, I = index.range_search(xb[:3] + 0.01, 2.0)
        out.append((lims.dtype.name, ranges(lims, D, I)))
        index.reset()
        out.append(index.search(xq, 3))
    return out


def empty_ivf_files(faiss, tmp_path):
    """An IVF file written trained and empty (faiss's "train once, add later") or untrained
    is read back (an empty ids array raised inside torch)."""
    xb, xq = _data(1000, 8, 3, seed=5)
    out = []
    for description in ("IVF8,Flat", "IVF8,PQ4x4"):
        for train in (True, False):
            index = faiss.index_factory(8, description)
            if train:
                index.train(xb)
            path = str(tmp_path / f"{faiss.__name__}-{description}-{train}.index")
            faiss.write_index(index, path)
            copy = faiss.deserialize_index(faiss.serialize_index(index))
            for back in (faiss.read_index(path), copy):
                out.append((back.ntotal, back.is_trained))
                if not train:
                    back.train(xb)
                back.add(xb)
                back.nprobe = 8
                out.append(back.search(xq, 3))
    return out


def small_names(faiss):
    """Binary range distances as float32, ParameterSpace, extract_index_ivf, base classes."""
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, (300, 4), dtype=np.uint8)
    binary = faiss.IndexBinaryFlat(32)
    binary.add(codes)
    lims, D, I = binary.range_search(codes[:3], 12)
    out = [ranges(lims, D, I), isinstance(binary, faiss.IndexBinary), faiss.get_num_gpus()]
    xb, xq = _data(1000, 8, 3, seed=7)
    refine = faiss.IndexRefineFlat(faiss.index_factory(8, "IVF4,Flat"))
    refine.train(xb)
    refine.add(xb)
    space = faiss.ParameterSpace()
    space.set_index_parameters(refine, "nprobe=3,k_factor_rf=2.5")  # faiss keeps int(2.5)
    out += [faiss.extract_index_ivf(refine).nprobe, refine.k_factor, refine.search(xq, 4)]
    for name in ("efSearch", "k_factor", "bogus"):
        out.append(outcome(lambda n=name: space.set_index_parameter(refine, n, 3)))
    graph = faiss.IndexIDMap(faiss.IndexHNSWFlat(8, 8))
    space.set_index_parameter(graph, "efSearch", 41)
    inner = faiss.downcast_index(graph.index)
    out += [inner.hnsw.efSearch, isinstance(inner, faiss.IndexHNSW)]
    out.append(outcome(lambda: faiss.extract_index_ivf(graph)))
    return out


def unknown_attributes(faiss):
    """An attribute faiss's class lacks raises AttributeError (the shim kept it: a typo such
    as ``nprobes``, or ``nprobe`` on a refine wrapper, was silently ignored)."""
    xb, _ = _data(300, 8, 1, seed=9)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 2)
    refine = faiss.IndexRefineFlat(faiss.IndexFlatL2(8))
    flat = faiss.IndexFlatL2(8)
    out = []
    for obj, name in ((ivf, "efSearch"), (ivf, "nprobes"), (refine, "nprobe"), (flat, "nprobe")):
        out.append(outcome(lambda o=obj, n=name: setattr(o, n, 3)))
    ivf.nprobe, ivf.verbose, refine.k_factor = 2, False, 2.0
    out.append((ivf.nprobe, refine.k_factor))
    return out


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("metric", [real.METRIC_L2, real.METRIC_INNER_PRODUCT])
def test_flat_search(metric):
    both(flat_search, metric)


@pytest.mark.parametrize("metric", [real.METRIC_L2, real.METRIC_INNER_PRODUCT])
def test_missing_results(metric):
    both(missing_results, metric)


def test_conversions():
    both(conversions)


def test_errors(tmp_path):
    both(errors, tmp_path)


@pytest.mark.parametrize("cls", ["IndexIDMap", "IndexIDMap2"])
def test_id_maps(cls):
    both(id_maps, cls)


@pytest.mark.parametrize("cls", ["IndexFlat", "IndexIDMap"])
def test_selectors(cls):
    both(selectors, cls)


def test_merging():
    both(merging)


def test_pickling():
    both(pickling)


def test_factory():
    both(factory)


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_ivf(kind):
    both(ivf, kind)


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_ivf_selectors(kind):
    both(ivf_selectors, kind)


@pytest.mark.parametrize("metric", [real.METRIC_L2, real.METRIC_INNER_PRODUCT])
def test_hnsw(metric):
    both(hnsw, metric)


@pytest.mark.parametrize("cls", ["IndexIDMap", "IndexIDMap2"])
def test_id_map_over_hnsw(cls):
    both(id_map_hnsw, cls)


def test_factory_refuses_what_the_shim_cannot_build():
    # "PCA4,Flat" gave an 8-dimensional IndexFlat (the PCA silently dropped) and "HNSW32" or
    # "IVF8,SQ8" a KeyError; now faiss's RuntimeError (also a ValueError) names the string
    refused = ("PCA4,Flat", "OPQ2,IVF8,PQ2", "IVF8,SQ8", "HNSW8,SQ8", "IDMap,IVF8,Flat")
    for description in (*refused, "IDMap2,HNSW8,RFlat", "IDMap,Flat,RFlat"):
        with pytest.raises(RuntimeError, match=r"counterpart|IDMap is supported"):
            shim.index_factory(8, description)
    with pytest.raises(ValueError, match="Bogus"):
        shim.index_factory(8, "Bogus")
    with pytest.raises(RuntimeError):
        real.index_factory(8, "Bogus")


def test_binary():
    both(binary)


KINDS = ["flat", "idmap", "idmap_dense", "binary", "ivfflat", "ivfpq", "refine", "hnsw"]
KINDS += ["idmap_hnsw"]


@pytest.mark.parametrize("kind", KINDS)
def test_files_either_way(tmp_path, kind):
    """Written by faiss or the shim, read by faiss or the shim: the same index every way."""
    for writer in (real, shim):
        path = tmp_path / f"{kind}-{writer.__name__}"
        write(writer, kind, path)
        expected = read(real, kind, path)
        assert_same(expected, read(shim, kind, path), f"{kind} written by {writer.__name__}")
    assert_same(
        read(real, kind, tmp_path / f"{kind}-faiss"),
        read(real, kind, tmp_path / f"{kind}-gpuann.compat.faiss"),
        f"{kind}: the shim's file",
    )


def test_shim_as_sys_modules_faiss(tmp_path):
    """Code that imports faiss itself, handed the shim: IVF, the factory and files work (the
    real faiss is used underneath), with no recursion."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import gpuann.compat.faiss as shim
        sys.modules["faiss"] = shim
        import faiss
        assert faiss is shim
        x = np.random.default_rng(0).standard_normal((500, 8), dtype=np.float32)
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4)
        index.train(x)
        index.add(x)
        pq = faiss.index_factory(8, "IVF4,PQ2x4")
        pq.train(x)
        faiss.write_index(index, {str(tmp_path / "ivf")!r})
        again = faiss.read_index({str(tmp_path / "ivf")!r}, faiss.IO_FLAG_MMAP)
        assert type(again) is faiss.IndexIVFFlat and again.ntotal == 500
        assert sys.modules["faiss"] is shim
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.parametrize("order", ["faiss, then shim", "shim, then faiss"])
def test_shim_substituted_after_real_faiss_was_imported(order):
    """A process that imported the real faiss before handing the shim out as ``faiss`` (a
    library imported faiss first): gpuann reuses that faiss. Importing it a second time
    re-ran faiss's class wrappers (IVF constructors recursed until RecursionError) and left
    two faiss modules, whose HNSW parameters the other's indexes refused."""
    first, second = (
        ("import faiss as real", "import gpuann.compat.faiss as shim")
        if order == "faiss, then shim"
        else ("import gpuann.compat.faiss as shim", "import faiss as real")
    )
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        {first}
        {second}
        sys.modules["faiss"] = shim
        from gpuann.ivf._faiss import import_faiss
        assert import_faiss() is real
        x = np.random.default_rng(0).standard_normal((500, 8), dtype=np.float32)
        index = shim.IndexIVFFlat(shim.IndexFlatL2(8), 8, 4)
        index.train(x)
        index.add(x)
        assert index.search(x[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
        hnsw = real.IndexHNSWFlat(8, 16)
        hnsw.add(x)
        params = import_faiss().SearchParametersHNSW(efSearch=32)
        assert hnsw.search(x[:2], 1, params=params)[1][:, 0].tolist() == [0, 1]
        assert sys.modules["faiss"] is shim
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_ivf_trained_on_more_than_faiss_samples(kind):
    both(ivf_large_training, kind)


def test_ivf_nprobe_as_faiss_keeps_it():
    both(ivf_nprobe)


def test_what_faiss_refuses_with_runtime_error():
    both(runtime_errors)


def test_refine_empty_reversed_and_range_search():
    both(refine_edges)


def test_empty_and_untrained_ivf_files(tmp_path):
    both(empty_ivf_files, tmp_path)


def test_small_names():
    both(small_names)


def test_max_codes_is_refused_not_ignored():
    """faiss stops scanning after max_codes codes; the shim scans every code of its lists, so
    it refuses the option (it was silently ignored)."""
    xb, xq = _data(1000, 8, 2, seed=8)
    index = shim.IndexIVFFlat(shim.IndexFlatL2(8), 8, 4)
    index.train(xb)
    index.add(xb)
    with pytest.raises(NotImplementedError, match="max_codes"):
        index.search(xq, 3, params=shim.SearchParametersIVF(nprobe=2, max_codes=50))
    index.max_codes = 50
    with pytest.raises(NotImplementedError, match="max_codes"):
        index.search(xq, 3)


def test_unknown_attributes_raise_as_faiss():
    both(unknown_attributes)
