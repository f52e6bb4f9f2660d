"""The benchmark harness's round-robin timing."""

from __future__ import annotations

import time

from benchmarks import harness


def _logged(log: list[str], name: str, sleep: float = 0.0):
    def fn() -> None:
        log.append(name)
        if sleep:
            time.sleep(sleep)

    return fn


def test_each_turn_starts_with_untimed_calls_after_another_method_ran():
    log: list[str] = []
    fns = {"a": _logged(log, "a"), "b": _logged(log, "b")}
    timings = harness.time_interleaved(fns, repeats=3, warmup=1, switch_calls=2)
    assert [len(timings[n].samples_s) for n in fns] == [3, 3]
    # warm-up a, b; then rounds a-first, b-first, a-first: every turn after a switch is
    # 2 untimed calls and the sample (b, b, b then b again: b ran last, no switch calls)
    turns = ["a"] * 3 + ["b"] * 3 + ["b"] + ["a"] * 3 + ["a"] + ["b"] * 3
    assert log == ["a", "b", *turns]


def test_slow_methods_and_no_warmup_get_no_switch_calls():
    log: list[str] = []
    fns = {"fast": _logged(log, "fast"), "slow": _logged(log, "slow", sleep=0.1)}
    harness.time_interleaved(fns, repeats=2, warmup=1, switch_calls=1, switch_max_seconds=0.05)
    assert log.count("fast") == 1 + 2 * 2 and log.count("slow") == 1 + 2
    log.clear()
    harness.time_interleaved(fns, repeats=2, warmup=0, switch_calls=1)
    assert log.count("fast") == 2 and log.count("slow") == 2
