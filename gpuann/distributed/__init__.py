"""Search across the ranks of a ``torch.distributed`` process group (NCCL on GPU, gloo on CPU).

Only torch.distributed collectives are used (``all_gather``); ``torch.distributed`` is
imported by this subpackage, which ``import gpuann`` loads only on first access of
``gpuann.distributed``.

Classes
-------
ShardedIndex
    Each rank holds a shard (with global ids); a search returns the exact global top-k.
ReplicatedIndex
    Every rank holds everything; the same queries are split across ranks and the results
    gathered.
DistributedMemoryBank
    A ``MemoryBank`` whose ``add`` all-gathers the step's embeddings from every rank first.
"""

from gpuann.distributed.memory_bank import DistributedMemoryBank
from gpuann.distributed.sharded import ReplicatedIndex, ShardedIndex

__all__ = ["DistributedMemoryBank", "ReplicatedIndex", "ShardedIndex"]
