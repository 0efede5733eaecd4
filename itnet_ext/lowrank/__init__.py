"""Learned low-rank factorization of the ITNet kernel (DESIGN section 2, lowrank).

- :class:`FeatureMLP`: the learned per-head feature maps phi / psi of
  ``IntegralTransform(..., method="lowrank", rank=F)``;
- :func:`fit`: distill phi, psi from a trained dense layer's kernel, with a
  :class:`LowRankFitReport` of the kernel and output errors.

The low-rank layer is evaluated by the fused
:func:`itnet_ext.functional.lowrank_integral_transform` (identity map on the learned
features); :func:`itnet_ext.reference.lowrank_integral_transform` is its float64 oracle.
"""
from .feature_mlp import FeatureMLP, positive_features
from .fit import LowRankFitReport, fit

__all__ = ["FeatureMLP", "positive_features", "fit", "LowRankFitReport"]
