"""examples/hard_negatives.py trains, and its loss falls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hard_negatives.py"


def test_loss_falls():
    spec = importlib.util.spec_from_file_location("hard_negatives", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.train(steps=40, batch=64, capacity=512, hard_k=8, log_every=10)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
