"""The names of the kernels' integer codes, in code order: the pair-MLP activations, the
low-rank feature maps and the FAVOR+ stabilizers, in one place for the whole package
(interim: a copy of the C++ enums until the compiled library exports its table).
"""
from __future__ import annotations

from typing import Dict, Tuple

_TABLE = {"activation": ("relu", "gelu", "silu"),
          "feature_map": ("identity", "elu+1", "relu", "favor+"),
          "stabilizer": ("none", "row", "slice")}


def _names(kind: str) -> Tuple[str, ...]:
    return _TABLE[kind]


def codes(names: Tuple[str, ...]) -> Dict[str, int]:
    """name -> integer code (the position in the table)."""
    return {n: i for i, n in enumerate(names)}


ACTIVATIONS: Tuple[str, ...] = _names("activation")
FEATURE_MAPS: Tuple[str, ...] = _names("feature_map")
STABILIZERS: Tuple[str, ...] = _names("stabilizer")

__all__ = ["ACTIVATIONS", "FEATURE_MAPS", "STABILIZERS", "codes"]
