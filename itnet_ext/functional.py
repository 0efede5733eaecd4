"""The fused entries of every strategy in one namespace (the public functional API).

Each is defined in its strategy's package, beside its oracle (``itnet_ext.reference``):

- :func:`integral_transform`: :mod:`itnet_ext.dense` (exact, tiled);
- :func:`sparse_integral_transform`: :mod:`itnet_ext.sparse` (listed pairs: Monte Carlo
  samples, neighbourhoods);
- :func:`decay_scan`, :func:`decay_scan_step`: :mod:`itnet_ext.scan`;
- :func:`lowrank_integral_transform`: :mod:`itnet_ext.lowrank`.
"""
from .dense.functional import integral_transform
from .lowrank.functional import lowrank_integral_transform
from .scan.functional import decay_scan, decay_scan_step
from .sparse.functional import sparse_integral_transform

__all__ = ["integral_transform", "sparse_integral_transform", "lowrank_integral_transform",
           "decay_scan", "decay_scan_step"]
