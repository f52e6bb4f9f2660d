"""Backends of every dispatched op, and the one dispatcher that chooses among them.

Importing this package registers gpuann's own backends, fastest first (nothing here imports
triton or touches CUDA):

=================  ====================================  =====================================
op                 backends                              public function
=================  ====================================  =====================================
exact_search       triton (fused kernel), torch          ``gpuann.knn``, ``exact_search``
hamming_search     triton (popcount kernel), torch       ``gpuann.binary.hamming.hamming_topk``
batched_topk       triton (top-k kernel), torch          ``gpuann.batched_topk``
=================  ====================================  =====================================

Add one with :func:`register_backend`; see why a request runs where it does with
:func:`explain`.
"""

# Each backend module registers its backends (ordered by their declared ``priority``).
from gpuann.backends import dispatch as _dispatch
from gpuann.backends import hamming, row_selection, torch_backend, triton_backend  # noqa: F401
from gpuann.backends.base import Backend, ExactBackend, SearchRequest
from gpuann.backends.dispatch import *  # noqa: F403  (the dispatcher's API, its __all__)

__all__ = ["Backend", "ExactBackend", "SearchRequest", *_dispatch.__all__]
