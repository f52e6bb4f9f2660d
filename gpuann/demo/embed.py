"""A hashed TF-IDF bag-of-words embedding: no model, no download, deterministic."""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence

import torch

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"[a-z][a-z0-9]+")
_STOP = frozenset(
    [
        "the",
        "a",
        "an",
        "of",
        "to",
        "and",
        "or",
        "in",
        "is",
        "it",
        "for",
        "on",
        "by",
        "be",
        "as",
        "with",
        "this",
        "that",
        "are",
        "from",
    ]
)


def _tokens(text: str) -> list[str]:
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
    stems = [w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words]
    return stems + [f"{a} {b}" for a, b in itertools.pairwise(stems)]


class HashingEmbedder:
    """Texts → L2-normalised float32 vectors of unigram and bigram counts, hashed into ``dim``
    buckets and weighted by inverse document frequency learned with :meth:`fit`.

    >>> emb = HashingEmbedder(dim=64).fit(["sort a list", "parse json text"])
    >>> emb(["sort the list"]).shape
    torch.Size([1, 64])
    """

    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim
        self.idf = torch.ones(dim)

    def _bucket(self, token: str) -> int:
        return zlib.crc32(token.encode()) % self.dim

    def fit(self, texts: Sequence[str]) -> HashingEmbedder:
        """Learn inverse document frequencies from ``texts``."""
        df = torch.zeros(self.dim)
        for text in texts:
            for bucket in {self._bucket(t) for t in _tokens(text)}:
                df[bucket] += 1
        self.idf = torch.log((1 + len(texts)) / (1 + df)) + 1
        return self

    def __call__(self, texts: Sequence[str], device: str | torch.device = "cpu") -> torch.Tensor:
        """Embed ``texts`` as a (len(texts), dim) float32 tensor on ``device``."""
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for token, count in Counter(_tokens(text)).items():
                out[row, self._bucket(token)] += 1 + math.log(count)
        out *= self.idf
        return torch.nn.functional.normalize(out, dim=1).to(device)
