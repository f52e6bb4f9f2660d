"""Triton ``@triton.jit`` kernels of gpuann, shipped as ``gpuann._kernels``.

Only jit code lives here: tile sizes, allocation, grids and dispatch are in ``gpuann._triton``.
Importing a module of this package imports triton; ``import gpuann`` never does.

Modules
-------
bitonic
    Packed (score, position) int64 keys and a min/max bitonic network to select on them.
fused_knn
    Distance tiles with ``tl.dot`` and a running top-k per query, never the (Q, N) matrix.
topk
    Batched top-k of a float matrix, and the merge of partial top-k lists.
"""
