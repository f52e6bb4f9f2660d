"""Evaluating indexes: exact ground truth, recall@k, QPS sweeps and recall-vs-QPS plots.

Ground truth comes from gpuann's own exact search; recall follows ann-benchmarks' rule (a
returned neighbour counts when its true distance is within the k-th true distance + ε);
timings synchronise the GPU. Importing this package imports neither pandas nor matplotlib:
:func:`sweep` imports pandas and :func:`plot_pareto` matplotlib when called.
"""

from gpuann.eval.plot import pareto_frontier, plot_pareto
from gpuann.eval.recall import (
    DEFAULT_EPSILON,
    GroundTruth,
    ground_truth,
    neighbour_distances,
    recall_at_k,
    recall_by_distance,
)
from gpuann.eval.sweep import index_nbytes, sweep
from gpuann.eval.timing import synchronize, time_call

__all__ = [
    "DEFAULT_EPSILON",
    "GroundTruth",
    "ground_truth",
    "index_nbytes",
    "neighbour_distances",
    "pareto_frontier",
    "plot_pareto",
    "recall_at_k",
    "recall_by_distance",
    "sweep",
    "synchronize",
    "time_call",
]
