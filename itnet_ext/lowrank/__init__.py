"""The low-rank strategy (docs/design.md section 2, lowrank): l(i, j) ~= phi_i . psi_j.

- :func:`lowrank_integral_transform` (functional.py): the fused op ``itnet::lowrank_fwd`` /
  ``lowrank_bwd`` (non-causal) and the features op plus the decay scan (causal);
  :mod:`naive`: its float64 oracle;
- :mod:`feature_maps`: identity, elu+1, relu and FAVOR+ (:class:`PositiveRandomFeatures`);
- :class:`FeatureMLP`: the learned per-head feature maps of
  ``IntegralTransform(..., method="lowrank", rank=F)``, evaluated by :mod:`evaluator`;
- :func:`fit`: distill phi, psi from a trained dense layer's kernel, with a
  :class:`LowRankFitReport` of the kernel and output errors.
"""
from . import feature_maps, naive, op  # noqa: F401
from .feature_mlp import FeatureMLP, positive_features
from .fit import LowRankFitReport, fit
from .functional import lowrank_integral_transform

__all__ = ["lowrank_integral_transform", "naive", "feature_maps", "FeatureMLP",
           "positive_features", "fit", "LowRankFitReport"]
