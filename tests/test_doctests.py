"""Every ``>>>`` example in gpuann's docstrings runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gpuann

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(gpuann.__path__, "gpuann.")
    if not m.name.startswith("gpuann._kernels") and m.name != "gpuann.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {"torch": __import__("torch"), "np": __import__("numpy"), "gpuann": gpuann}
    globs.update(vars(module))
    result = doctest.testmod(
        module, globs=globs, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0
