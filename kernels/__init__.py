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

# This folder ships as ``gpuann._kernels``. A process started at the root of a checkout
# (``python -m pytest``, ``python -m gpuann demo``, a notebook) has that root on ``sys.path``,
# where the folder would also import as a top-level ``kernels`` and shadow the unrelated PyPI
# package of that name (huggingface's, which transformers >= 5 imports: "cannot import name
# 'CUDAProperties' from 'kernels'"). Imported under that name, it hands the name over to the
# installed package when there is one.
if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _elsewhere = [p for p in sys.path if os.path.realpath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[__name__] = _module  # what ``import kernels`` returns
        try:
            _spec.loader.exec_module(_module)
        except BaseException:
            del sys.modules[__name__]
            raise
