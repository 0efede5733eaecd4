"""Pure-PyTorch references (oracles), one module per strategy: the dense integral transform
(dense.py), the sparse / pair-list one (sparse.py), the decay scan (scan.py) and the low-rank
one (lowrank.py).

Straightforward math, gradients by autograd, float64-capable.  Queries are
processed in chunks so that memory per chunk is O(chunk * M * (H + R)); when
gradients are needed and there is more than one chunk, each chunk is
recomputed in backward (activation checkpointing), so N = M = 8192 fits in a
few GB for forward and backward.

Computation dtype: float64 if v is float64, else float32 (half / bfloat16
inputs are upcast).  ``out`` is returned in v's dtype; ``lse`` in the
computation dtype.
"""
from .dense import integral_transform
from .lowrank import lowrank_integral_transform
from .scan import decay_scan, decay_scan_dense
from .sparse import sparse_integral_transform

__all__ = ["integral_transform", "sparse_integral_transform", "decay_scan",
           "decay_scan_dense", "lowrank_integral_transform"]
