"""Property-based tests of the public index API (hypothesis, seeded).

A random sequence of calls — ``add`` (with good and bad ids), ``remove``, ``update``,
``reconstruct``, ``search`` (with good and bad k) — runs against an index and a plain Python
model of it. Every call either succeeds with a result equal to a float64 reference computed
from the model, or raises a gpuann error whose message names the argument, and then leaves the
index exactly as it was.

Vectors have small integer coordinates, so float32 scores are exact and ties are frequent: the
reference orders equal distances by lower id, as gpuann promises.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import gpuann

DIM = 4
ERRORS = (ValueError, TypeError, OverflowError)
_coords = st.integers(min_value=-3, max_value=3)
_vector = st.lists(_coords, min_size=DIM, max_size=DIM)
_ids = st.integers(min_value=-2, max_value=40)


def _reference(model: dict[int, np.ndarray], queries: np.ndarray, k: int, metric: str):
    """(distances, ids) of shape (Q, k), float64, ties by lower id, -1 padding."""
    ids = np.array(sorted(model), dtype=np.int64)
    out_d = np.full((len(queries), k), np.inf if metric == "l2" else -np.inf)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    if not len(ids):
        return out_d, out_i
    data = np.stack([model[i] for i in ids]).astype(np.float64)
    for row, q in enumerate(queries.astype(np.float64)):
        if metric == "l2":
            scores = ((data - q) ** 2).sum(axis=1)
            order = np.lexsort((ids, scores))
        else:
            scores = data @ q
            order = np.lexsort((ids, -scores))
        take = order[:k]
        out_d[row, : len(take)] = scores[take]
        out_i[row, : len(take)] = ids[take]
    return out_d, out_i


class IndexMachine(RuleBasedStateMachine):
    metric = "l2"

    def make(self):
        return gpuann.FlatIndex(DIM, metric=self.metric, device="cpu")

    def __init__(self) -> None:
        super().__init__()
        self.index = self.make()
        self.model: dict[int, np.ndarray] = {}
        self.next_id = 0

    def _snapshot(self):
        return len(self.index), self.index.ids.clone()

    def _expect_unchanged(self, before) -> None:
        n, ids = before
        assert len(self.index) == n and torch.equal(self.index.ids, ids)

    def _attempt(self, call, argument: str) -> bool:
        """Run ``call``; on a gpuann error check it names ``argument`` and changed nothing."""
        before = self._snapshot()
        try:
            call()
        except ERRORS as err:
            assert str(err).startswith(f"{argument}:"), f"{err!r} does not name {argument}"
            self._expect_unchanged(before)
            return False
        return True

    @rule(vectors=st.lists(_vector, min_size=0, max_size=5), data=st.data())
    def add(self, vectors, data):
        x = torch.tensor(vectors, dtype=torch.float32).reshape(-1, DIM)
        given = data.draw(st.none() | st.lists(_ids, min_size=len(vectors), max_size=len(vectors)))
        ok = self._attempt(lambda: self.index.add(x, ids=given), "ids")
        valid = given is None or (
            len(set(given)) == len(given)
            and min(given, default=0) >= 0
            and not set(given) & set(self.model)
        )
        assert ok == valid
        if ok:
            if given is None:
                given = list(range(self.next_id, self.next_id + len(vectors)))
            self.next_id = max([self.next_id, *(i + 1 for i in given)])
            for i, v in zip(given, vectors, strict=True):
                self.model[i] = np.array(v)

    @rule(ids=st.lists(_ids, max_size=4), strict=st.booleans())
    def remove(self, ids, strict):
        known = [i for i in set(ids) if i in self.model]
        result = []
        ok = self._attempt(lambda: result.append(self.index.remove(ids, strict=strict)), "ids")
        assert ok == (not strict or len(known) == len(set(ids)))
        if ok:
            assert result == [len(known)]
            for i in known:
                del self.model[i]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def update(self, data):
        some = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=3))
        some = sorted(set(some)) + data.draw(st.lists(_ids, max_size=1))
        vectors = data.draw(st.lists(_vector, min_size=len(some), max_size=len(some)))
        x = torch.tensor(vectors, dtype=torch.float32)
        ok = self._attempt(lambda: self.index.update(some, x), "ids")
        assert ok == (len(set(some)) == len(some) and all(i in self.model for i in some))
        if ok:
            for i, v in zip(some, vectors, strict=True):
                self.model[i] = np.array(v)

    @rule(queries=st.lists(_vector, min_size=1, max_size=3), k=st.integers(-1, 8))
    def search(self, queries, k):
        q = np.array(queries, dtype=np.float32)
        out = []
        ok = self._attempt(lambda: out.append(self.index.search(q, k)), "k")
        assert ok == (k > 0)
        if ok:
            distances, ids = out[0]
            ref_d, ref_i = _reference(self.model, q, k, self.metric)
            np.testing.assert_array_equal(ids, ref_i)
            np.testing.assert_array_equal(distances, ref_d.astype(np.float32))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def reconstruct(self, data):
        some = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=3))
        out = self.index.reconstruct(np.array(some))
        np.testing.assert_array_equal(out, np.stack([self.model[i] for i in some]))

    @invariant()
    def ids_match_the_model(self):
        assert self.index.ids.tolist() == sorted(self.model)


class InnerProductMachine(IndexMachine):
    metric = "ip"


class KDTreeMachine(IndexMachine):
    def make(self):
        return gpuann.KDTreeIndex(DIM, device="cpu")


_settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    "machine",
    [IndexMachine, InnerProductMachine, KDTreeMachine],
    ids=["flat-l2", "flat-ip", "kdtree"],
)
def test_every_call_succeeds_exactly_or_fails_cleanly(machine):
    machine.TestCase.settings = _settings
    machine.TestCase().runTest()
