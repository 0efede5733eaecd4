"""The integration domain split across ranks (context / sequence parallelism) on
torch.distributed: the integral is additive over a partition of the keys, so partial
(out, lse) merge exactly (docs/design.md section 6).

    out = itnet_ext.distributed.integral_transform(q_shard, k_shard, v_shard, ...,
                                                   group=pg, layout="zigzag", causal=True)
"""
from .functional import COMMS, integral_transform, sparse_integral_transform
from .layer import shard_layer, unshard_layer
from .lowrank import lowrank_integral_transform
from .layout import LAYOUTS, chunk_ids, global_index, num_chunks, shard, unshard
from .merge import merge_softmax

__all__ = ["integral_transform", "sparse_integral_transform", "lowrank_integral_transform",
           "shard_layer", "unshard_layer", "shard", "unshard", "chunk_ids", "num_chunks",
           "global_index", "merge_softmax", "LAYOUTS", "COMMS"]
