"""Packaging: environment.yml agrees with pyproject.toml; the wheel ships kernels inside gpuann."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
#: pip name -> conda-forge name where they differ.
CONDA_NAME = {"torch": "pytorch-gpu", "faiss-gpu-cu12": "faiss-gpu", "ray": "ray-data"}
#: CPU-only pip packages that the CUDA conda environment replaces by their GPU builds.
REPLACED_ON_GPU = {"faiss-cpu"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section, "environment.yml must install gpuann itself from the checkout"
    conda |= {_name(d) for d in pip_section if not d.startswith("-")}
    wanted = {_name(d) for d in project["dependencies"]}
    for extra in ("gpu", "test", "notebooks", "demo"):
        wanted |= {_name(d) for d in project["optional-dependencies"][extra]}
    wanted = {CONDA_NAME.get(n, n) for n in wanted - REPLACED_ON_GPU}
    assert conda == wanted, (
        f"only in environment.yml: {conda - wanted}; only in pyproject: {wanted - conda}"
    )


def test_python_and_torch_floors():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    assert "torch>=2.6" in project["dependencies"]


@pytest.mark.slow
def test_wheel_ships_kernels_inside_gpuann(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("gpuann-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("kernels/")], (
        "a top-level kernels package must not ship"
    )
    on_disk = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "gpuann").rglob("__init__.py")}
    shipped_packages = {str(Path(n).parent) for n in names if n.endswith("/__init__.py")}
    assert on_disk <= shipped_packages, (
        f"packages missing from the wheel: {on_disk - shipped_packages}"
    )
    kernels = [n for n in names if n.startswith("gpuann/_kernels/")]
    if (ROOT / "kernels").is_dir():
        shipped = {Path(n).name for n in kernels}
        expected = {p.name for p in (ROOT / "kernels").glob("*.py")}
        assert expected <= shipped, f"kernels missing from the wheel: {expected - shipped}"


def test_checkout_root_does_not_shadow_the_pypi_kernels_package():
    """From a checkout's root (on ``sys.path`` under ``python -m``), ``import kernels`` gets the
    installed PyPI package of that name (transformers >= 5 imports it; the demo's model load
    failed with "cannot import name 'CUDAProperties' from 'kernels'"), and ``gpuann._kernels``
    still imports from this folder."""
    probe = (
        "import importlib.metadata as md, json, kernels, gpuann._kernels.bitonic as b\n"
        "try:\n    dist = md.distribution('kernels').locate_file('kernels')\n"
        "except md.PackageNotFoundError:\n    dist = None\n"
        "print(json.dumps([kernels.__file__, b.__file__, dist and str(dist)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    import json

    imported, bitonic, installed = json.loads(out.stdout)
    assert Path(bitonic).resolve() == (ROOT / "kernels" / "bitonic.py").resolve()
    if installed is None:  # no such package installed: the folder itself is harmless
        assert Path(imported).resolve() == (ROOT / "kernels" / "__init__.py").resolve()
    else:
        assert Path(imported).resolve().parent == Path(installed).resolve()
