"""A text corpus that ships with every Python: the standard library's docstrings."""

from __future__ import annotations

import importlib
import inspect
import sys

__all__ = ["MODULES", "stdlib_docstrings"]

#: Fixed, so the corpus (and the demo's output) is the same on every machine of one Python.
MODULES = (
    "argparse", "array", "base64", "bisect", "builtins", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "enum", "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html", "http.client", "io", "ipaddress", "itertools", "json", "logging", "math",
    "operator", "os", "os.path", "pathlib", "pickle", "pprint", "queue", "random", "re",
    "secrets", "shlex", "shutil", "socket", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time", "typing",
    "unittest", "urllib.parse", "uuid", "zipfile", "zlib",
)  # fmt: skip


def _summary(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _from_stdlib(obj: object) -> bool:
    """Whether ``obj`` is defined by the standard library (or says nothing of its module)."""
    root = (getattr(obj, "__module__", None) or "").split(".")[0]
    return not root or root in sys.stdlib_module_names


def stdlib_docstrings(modules: tuple[str, ...] = MODULES) -> list[tuple[str, str]]:
    """``(qualified name, first paragraph of its docstring)`` for public functions, classes
    and methods of ``modules``, in a stable order, without duplicates.

    >>> entries = stdlib_docstrings(("json",))
    >>> ("json.dumps", ) == entries[[n for n, _ in entries].index("json.dumps")][:1]
    True
    """
    seen: set[int] = set()
    entries: list[tuple[str, str]] = []

    def visit(name: str, obj: object) -> None:
        summary = _summary(inspect.getdoc(obj))
        if summary and len(summary) > 20 and id(obj) not in seen:
            seen.add(id(obj))
            entries.append((name, summary))

    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a Python built without sqlite3, say
            continue
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            if not _from_stdlib(obj):  # e.g. what a Jupyter kernel injects into builtins
                continue
            visit(f"{module_name}.{attr}", obj)
            if inspect.isclass(obj):
                for method_name, method in sorted(vars(obj).items()):
                    if not method_name.startswith("_") and callable(method):
                        visit(f"{module_name}.{attr}.{method_name}", method)
    return entries
