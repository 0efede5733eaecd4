"""Pure-PyTorch references (oracles) of every fused op in one namespace; each lives beside its
op, in its strategy's ``naive.py``: the dense integral transform (itnet_ext.dense.naive), the
sparse / pair-list one (itnet_ext.sparse.naive), the decay scan (itnet_ext.scan.naive) and the
low-rank one (itnet_ext.lowrank.naive).

Straightforward math, gradients by autograd, float64-capable.  Queries are
processed in chunks so that memory per chunk is O(chunk * M * (H + R)); when
gradients are needed and there is more than one chunk, each chunk is
recomputed in backward (activation checkpointing), so N = M = 8192 fits in a
few GB for forward and backward.

Computation dtype: float64 if v is float64, else float32 (half / bfloat16
inputs are upcast).  ``out`` is returned in v's dtype; ``lse`` in the
computation dtype.
"""
from .dense.naive import integral_transform
from .lowrank.naive import lowrank_integral_transform
from .scan.naive import decay_scan, decay_scan_dense
from .sparse.naive import sparse_integral_transform

__all__ = ["integral_transform", "sparse_integral_transform", "decay_scan",
           "decay_scan_dense", "lowrank_integral_transform"]
