"""Large offline searches: out-of-core exact search, resumable chunked jobs, self-joins.

:func:`batch_search` and :func:`self_join` run a search in chunks of queries, streaming the
database through the device when it does not fit there, writing results to memory-mapped
``.npy`` files and a checkpoint after every chunk, so a killed job resumes where it stopped.
"""

from gpuann.batch.checkpoint import CheckpointMismatchError
from gpuann.batch.runner import ChunkInfo
from gpuann.batch.search import batch_search, self_join

__all__ = ["CheckpointMismatchError", "ChunkInfo", "batch_search", "self_join"]
