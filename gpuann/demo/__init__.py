"""The demo behind ``python -m gpuann demo``: search Python's own documentation.

Needs no download: the corpus is the docstrings of a fixed list of standard-library modules,
embedded with a hashed TF-IDF bag of words (a stand-in for a neural embedding model).
"""

from gpuann.demo.corpus import stdlib_docstrings
from gpuann.demo.embed import HashingEmbedder
from gpuann.demo.run import run_demo

__all__ = ["HashingEmbedder", "run_demo", "stdlib_docstrings"]
