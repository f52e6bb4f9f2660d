"""gpuann benchmarks: a shared harness and one script per workload.

Run the scripts as modules from the repository root, e.g. ``python -m benchmarks.bench_exact``;
see ``benchmarks/README.md``.
"""
