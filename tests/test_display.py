"""repr and _repr_html_: the right fields, and no GPU sync (no tensor value is ever read)."""

from __future__ import annotations

import pytest
import torch
from reference import DEVICES

import gpuann
from gpuann.display import Bytes, DisplayMixin, format_bytes, html_repr, text_repr

DIM = 16

_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


def _refuse(*args, **kwargs):
    raise AssertionError("displaying an index read a tensor value (a GPU sync)")


@pytest.fixture
def no_value_reads(monkeypatch):
    """Call it to make any later read of a tensor's values raise (until the test ends)."""

    def activate() -> None:
        for name in (*_READS, "__repr__", "__str__", "__format__"):
            monkeypatch.setattr(torch.Tensor, name, _refuse)

    return activate


def _flat(device: str) -> gpuann.FlatIndex:
    index = gpuann.FlatIndex(8, metric="ip", device=device, dtype=torch.float16)
    index.add(torch.randn(5, 8, device=device))
    return index


@pytest.mark.parametrize("device", DEVICES)
def test_flat_repr_and_html_read_no_tensor_value(device, no_value_reads):
    index = _flat(device)
    no_value_reads()
    text, page = repr(index), index._repr_html_()
    assert text == (
        f"FlatIndex(n=5, dim=8, metric='ip', dtype=float16, device='{index.device}', "
        "memory='24.0 KiB')"
    )
    for shown in ("FlatIndex", ">5<", ">8<", ">ip<", ">float16<", ">24.0 KiB<"):
        assert shown in page, shown
    assert f">{index.device}<" in page


def _vectors(n: int, device: str) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(n)).to(device)


def _ivf_flat(device: str):
    index = gpuann.IVFFlatIndex(DIM, nlist=4, device=device)
    index.train(_vectors(700, device))
    index.add(_vectors(700, device))
    return index


def _ivf_pq_refine(device: str):
    index = gpuann.IVFPQIndex(DIM, nlist=4, m=4, nbits=4, refine=True, device=device)
    index.train(_vectors(700, device))
    index.add(_vectors(700, device))
    return index


def _binary_flat(device: str):
    index = gpuann.BinaryFlatIndex(32, device=device)
    codes = torch.randint(0, 256, (50, 4), generator=torch.Generator().manual_seed(0))
    index.add(codes.to(torch.uint8).to(device))
    return index


def _lsh(device: str):
    index = gpuann.LSHIndex(DIM, 16, metric="l2", device=device, refine=True, projection="itq")
    index.train(_vectors(300, device))
    index.add(_vectors(300, device))
    return index


def _kdtree(device: str):
    index = gpuann.KDTreeIndex(3)
    index.add(torch.randn(40, 3, device=device))
    return index


#: Every index type: (builder, the fields it shows, in order).
INDEXES = {
    "FlatIndex": (_flat, ["n", "dim", "metric", "dtype", "device", "memory"]),
    "IVFFlatIndex": (
        _ivf_flat,
        ["n", "dim", "nlist", "metric", "nprobe", "trained", "device", "memory"],
    ),
    "IVFPQIndex": (
        _ivf_pq_refine,
        [
            "n",
            "dim",
            "nlist",
            "m",
            "nbits",
            "refine",
            "metric",
            "nprobe",
            "trained",
            "device",
            "memory",
        ],
    ),
    "BinaryFlatIndex": (_binary_flat, ["n", "nbits", "metric", "device", "memory"]),
    "LSHIndex": (
        _lsh,
        [
            "n",
            "dim",
            "nbits",
            "metric",
            "projection",
            "refine",
            "refine_factor",
            "trained",
            "dtype",
            "device",
            "memory",
        ],
    ),
    "KDTreeIndex": (_kdtree, ["n", "dim", "leafsize", "metric", "device", "memory"]),
}


def _build(name: str, device: str):
    if name.startswith("IVF"):
        pytest.importorskip("faiss")
        if device == "cuda":
            from gpuann.ivf._faiss import faiss_gpu_available

            if not faiss_gpu_available():
                pytest.skip("IVF indexes on CUDA need faiss-gpu")
    return INDEXES[name][0](device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(INDEXES))
def test_every_index_displays_without_reading_a_tensor_value(name, device, no_value_reads):
    index = _build(name, device)
    n, nbytes = len(index), index.nbytes
    no_value_reads()
    text, page = repr(index), index._repr_html_()
    fields = index._display_fields()
    assert type(index).__name__ == name and list(fields) == INDEXES[name][1]
    assert fields["n"] == n and n > 0 and fields["memory"] == nbytes > 0
    assert fields.get("trained", True) is True
    assert text == text_repr(index, fields) and page == html_repr(index, fields)
    assert text.startswith(f"{name}(n={n}, ") and text.endswith(f"memory='{format_bytes(nbytes)}')")
    assert f"<code>{format_bytes(nbytes)}</code>" in page and f"<code>{n}</code>" in page


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(INDEXES))
def test_every_index_display_does_not_sync_cuda(name):
    index = _build(name, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        repr(index)
        index._repr_html_()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_check_catches_a_value_read(no_value_reads):
    """The fixture is not vacuous: showing a tensor's value trips it."""
    no_value_reads()
    with pytest.raises(AssertionError, match="GPU sync"):
        repr(torch.ones(2))
    with pytest.raises(AssertionError, match="GPU sync"):
        torch.ones(1).item()


@pytest.mark.cuda
def test_flat_display_does_not_sync_cuda():
    index = _flat("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        repr(index)
        index._repr_html_()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_memory_is_the_index_bytes():
    index = gpuann.FlatIndex(4, device="cpu")
    index.add(torch.randn(3000, 4))
    # capacity grows to 3000 rows: vectors 4 x 4 B, ids 8 B, squared norms 4 B per row
    assert index.nbytes == 3000 * (16 + 8 + 4)
    assert f"memory='{format_bytes(index.nbytes)}'" in repr(index)


def test_html_escapes_and_matches_the_text():
    class Toy(DisplayMixin):
        def _display_fields(self):
            return {"name": "<b>&", "n": 3, "memory": Bytes(2048), "device": torch.device("cpu")}

    toy = Toy()
    assert repr(toy) == "Toy(name='<b>&', n=3, memory='2.0 KiB', device='cpu')"
    page = toy._repr_html_()
    assert "<b>&" not in page and "&lt;b&gt;&amp;" in page
    assert 'title="Toy(name=&#x27;&lt;b&gt;&amp;&#x27;, n=3,' in page
    assert html_repr(toy) == page and text_repr(toy) == repr(toy)


def test_tensor_fields_are_refused():
    class Leaky(DisplayMixin):
        def _display_fields(self):
            return {"n": torch.tensor(3)}

    with pytest.raises(TypeError, match="must not be tensors"):
        repr(Leaky())


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (11 * 2**19, "5.5 MiB"), (2**40, "1.0 TiB")],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_memory_bank_displays_without_reading_a_tensor_value(no_value_reads):
    bank = gpuann.MemoryBank(64, 8, device="cpu", metric="l2")
    bank.add(torch.randn(10, 8))
    nbytes = bank.nbytes
    no_value_reads()
    text, page = repr(bank), bank._repr_html_()
    assert text == (
        f"MemoryBank(capacity=64, dim=8, metric='l2', dtype=float32, device='cpu', "
        f"memory='{format_bytes(nbytes)}')"
    )
    assert (
        "<code>64</code>" in page and nbytes == 64 * 8 * 4 + 64 * (8 + 8 + 1 + 4) + 8 + 8
    )  # count and next_id
