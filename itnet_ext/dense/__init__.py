"""The dense strategy (docs/design.md section 2, dense): exact, by tiled kernel fusion.

- :func:`integral_transform` (functional.py): the fused op ``itnet::dense_fwd`` / ``dense_bwd``;
- :mod:`naive`: its float64 oracle, :func:`naive.integral_transform`, same signature;
- :mod:`op`: the ops' fake kernels and autograd; :mod:`evaluator`: what
  ``IntegralTransform(method="dense")`` calls.
"""
from . import naive, op  # noqa: F401
from .functional import integral_transform

__all__ = ["integral_transform", "naive"]
