"""Learned low-rank factorization of the ITNet kernel (DESIGN section 2, lowrank).

- :class:`FeatureMLP`: the learned per-head feature maps phi / psi of
  ``IntegralTransform(..., method="lowrank", rank=F)``;
- :func:`fit`: distill phi, psi from a trained dense layer's kernel, with a
  :class:`LowRankFitReport` of the kernel and output errors.

The low-rank layer is evaluated by :func:`itnet_ext.reference.lowrank_integral_transform`
(no fused low-rank op yet; looked up at call time so one can replace it).
"""
from .feature_mlp import FeatureMLP, positive_features
from .fit import LowRankFitReport, fit

__all__ = ["FeatureMLP", "positive_features", "fit", "LowRankFitReport"]
