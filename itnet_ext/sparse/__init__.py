"""The sparse strategy (docs/design.md section 2, sampled and neighbourhoods): the dense kernel
evaluated on an explicit list of (query, key) pairs, with per-pair log-weights.

- :func:`sparse_integral_transform` (functional.py): the fused op ``itnet::sparse_fwd`` /
  ``sparse_bwd``; :mod:`naive`: its float64 oracle; :mod:`validate`: the pair-list layouts
  and their checks;
- :mod:`samplers`: the Monte Carlo proposals and importance weights; :mod:`neighbors`:
  radius / k-nearest graphs for point clouds;
- :mod:`evaluator`: what ``IntegralTransform(method="sampled" | "neighbors")`` calls.
"""
from . import naive, neighbors, op, samplers  # noqa: F401
from .functional import sparse_integral_transform
from .neighbors import knn_graph, radius_graph

__all__ = ["sparse_integral_transform", "naive", "samplers", "neighbors", "knn_graph",
           "radius_graph"]
