"""Linear recurrent layers evaluated by the decay scan (:func:`itnet_ext.functional.decay_scan`):
the exact recurrence special cases of ITNet's causal low-rank strategy (docs/design.md section 3).

Each layer has ``forward`` over a whole sequence (optionally from / to a state) and ``step``
for one token (generation) through :func:`itnet_ext.functional.decay_scan_step`.
"""
from .mamba import MambaMixer
from .mingru import MinGRU, MinLSTM
from .s4d import S4D

__all__ = ["S4D", "MambaMixer", "MinGRU", "MinLSTM"]
