"""The decay scan (docs/design.md section 2, lowrank causal with a decay): the causal low-rank
kernel with a per-step decay, evaluated in O(T); the recurrences of :mod:`itnet_ext.recurrence`
run on it.

- :func:`decay_scan`, :func:`decay_scan_step` (functional.py): the fused op
  ``itnet::decay_scan_fwd`` / ``decay_scan_bwd`` and one step for generation;
- :mod:`naive`: the oracles, the sequential loop :func:`naive.decay_scan` and the quadratic
  :func:`naive.decay_scan_dense`; :mod:`validate`: the log-decay forms and their checks.
"""
from . import naive, op  # noqa: F401
from .functional import decay_scan, decay_scan_step

__all__ = ["decay_scan", "decay_scan_step", "naive"]
