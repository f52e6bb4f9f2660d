"""The Hamming k-NN kernel (Triton; interpreter on CPU) and the torch fallback vs a reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _binary_reference import reference_hamming, tie_heavy_codes

from gpuann import BackendUnavailableError
from gpuann.binary.codes import to_words
from gpuann.binary.hamming import _hamming_topk_op, hamming_topk, select_hamming_backend

#: (queries, database rows, bytes per code, k): odd code lengths, k = 1, 3, above the
#: interpreter's 32-row tile, above N (padding).
CASES = [(3, 50, 1, 1), (5, 70, 3, 3), (4, 37, 5, 40), (6, 130, 9, 16), (2, 9, 2, 64)]


def _check(queries, database, k, backend, device="cpu", tie_heavy=False):
    D, I = hamming_topk(
        to_words(queries).to(device), to_words(database).to(device), k, backend=backend
    )
    D_ref, I_ref = reference_hamming(queries, database, k)
    assert D.dtype == torch.int32 and I.dtype == torch.int64 and D.shape == (queries.shape[0], k)
    np.testing.assert_array_equal(D.cpu().numpy(), D_ref)
    np.testing.assert_array_equal(I.cpu().numpy(), I_ref, err_msg="ids (ties by lower row) differ")


def _codes(seed, q, n, nbytes, tie_heavy):
    g = torch.Generator().manual_seed(seed)
    if tie_heavy:
        return tie_heavy_codes(g, q, nbytes), tie_heavy_codes(g, n, nbytes)
    return (
        torch.randint(0, 256, (q, nbytes), dtype=torch.uint8, generator=g),
        torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, generator=g),
    )


def _faiss_installed() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


FAISS = pytest.param(
    "faiss", marks=pytest.mark.skipif(not _faiss_installed(), reason="faiss not installed")
)


@pytest.mark.parametrize("backend", ["triton", FAISS, "torch"])
@pytest.mark.parametrize("tie_heavy", [False, True])
@pytest.mark.parametrize(("q", "n", "nbytes", "k"), CASES)
def test_matches_reference(q, n, nbytes, k, tie_heavy, backend):
    queries, database = _codes(q * 1000 + n, q, n, nbytes, tie_heavy)
    _check(queries, database, k, backend)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(("q", "n", "nbytes", "k"), [*CASES, (300, 5000, 32, 100)])
def test_matches_reference_cuda(q, n, nbytes, k, backend):
    queries, database = _codes(q + n, q, n, nbytes, tie_heavy=True)
    _check(queries, database, k, backend, device="cuda")


def test_empty_database_and_no_queries():
    words = torch.zeros((3, 2), dtype=torch.int32)
    D, I = hamming_topk(words, words[:0], 4, backend="torch")
    assert (I == -1).all() and (D == 2**31 - 1).all()
    D, I = hamming_topk(words[:0], words, 4, backend="triton")
    assert D.shape == (0, 4)


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    assert select_hamming_backend("auto", cpu, 10) == ("faiss" if _faiss_installed() else "torch")
    with pytest.raises(ValueError, match="backend: expected one of"):
        select_hamming_backend("cuda", cpu, 10)
    with pytest.raises(BackendUnavailableError, match="above the kernel's limit"):
        select_hamming_backend("triton", cpu, 5000)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        select_hamming_backend("triton", cpu, 10)


def test_rejects_bad_words():
    with pytest.raises(TypeError, match="int32 words"):
        hamming_topk(
            torch.zeros((2, 2), dtype=torch.uint8), torch.zeros((2, 2), dtype=torch.uint8), 1
        )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    queries, database = _codes(1, 4, 40, 6, tie_heavy=True)
    args = (to_words(queries), to_words(database), 5, backend, 0)
    torch.library.opcheck(_hamming_topk_op, args)


def test_compiles_fullgraph():
    queries, database = _codes(2, 3, 30, 4, tie_heavy=False)
    q, x = to_words(queries), to_words(database)
    fn = torch.compile(
        lambda a, b: hamming_topk(a, b, 4, backend="torch"), backend="aot_eager", fullgraph=True
    )
    D, I = fn(q, x)
    D_ref, I_ref = reference_hamming(queries, database, 4)
    np.testing.assert_array_equal(I.numpy(), I_ref)


@pytest.mark.skipif(not _faiss_installed(), reason="faiss not installed")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("q", "n", "nbytes", "k"), [(1, 3000, 8, 10), (70, 4000, 4, 100)])
def test_faiss_backend_ties_by_lower_row_at_any_thread_count(q, n, nbytes, k, threads):
    """Tie-heavy codes (few distinct distances, many duplicates) across faiss's 65 536-row
    blocks would expose any tie order other than (distance, row)."""
    queries, database = _codes(q + n + threads, q, n, nbytes, tie_heavy=True)
    database = database.repeat(200, 1)  # > 65 536 rows in blocks; Q = 1: parallel parts
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(queries, database, k, "faiss")
    finally:
        torch.set_num_threads(before)


def test_faiss_backend_declares_itself_missing(monkeypatch, request):
    from gpuann.backends import faiss_hamming

    monkeypatch.setattr(faiss_hamming, "_faiss_module", lambda: None)
    faiss_hamming._install_reasons.cache_clear()
    request.addfinalizer(faiss_hamming._install_reasons.cache_clear)
    with pytest.raises(BackendUnavailableError, match="faiss is not installed"):
        select_hamming_backend("faiss", torch.device("cpu"), 10)
    assert select_hamming_backend("auto", torch.device("cpu"), 10) == "torch"


def test_torch_backend_stays_within_its_memory_budget(tmp_path):
    """Issue 13: the torch Hamming tiles overshot a 64 MiB budget (75 MiB at k = 10)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(
        "import gc, torch\n"
        "torch.set_num_threads(1)\n"
        "from gpuann.binary import BinaryFlatIndex\n"
        "def status(f):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(f): return int(line.split()[1]) * 1024\n"
        "g = torch.Generator().manual_seed(0)\n"
        "db = torch.randint(0, 256, (200_000, 32), dtype=torch.uint8, generator=g)\n"
        "q = torch.randint(0, 256, (2048, 32), dtype=torch.uint8, generator=g)\n"
        "index = BinaryFlatIndex(256, device='cpu', memory_budget=64 << 20)\n"
        "index.add(db)\n"
        "index.search(q[:10], 10, backend='torch')\n"
        "gc.collect()\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS')\n"
        "index.search(q, 10, backend='torch')\n"
        "print((status('VmHWM') - base) / 2**20)\n"
    )
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, check=True
    )
    grown = float(out.stdout.strip().splitlines()[-1])
    assert grown < 64, f"the search grew the process by {grown:.1f} MiB on a 64 MiB budget"
