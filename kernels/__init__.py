"""Triton ``@triton.jit`` kernels of gpuann, shipped as ``gpuann._kernels``.

Only jit code lives here: tile sizes, allocation, grids and dispatch are in ``gpuann._triton``.
Importing a module of this package imports triton; ``import gpuann`` never does. Every kernel
is compiled for sm_90 and sm_80 at its launchers' default configurations by
``tests/kernels/test_aot_compile.py`` (no GPU needed; see ``gpuann._triton.aot``).

Modules
-------
bitonic
    Packed (score, position) int64 keys and a min/max bitonic network to select on them.
fused_knn
    Distance tiles with ``tl.dot``, a per-query threshold and candidate buffers merged into
    running top-k lists in global scratch; never the (Q, N) matrix.
hamming
    Hamming-distance top-k over packed binary codes (popcount of XORed int32 words).
topk
    Batched top-k of a float matrix, and the merge of partial top-k lists.
"""
