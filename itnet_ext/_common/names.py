"""The names of the kernels' integer codes, in code order: the pair-MLP activations, the
low-rank feature maps and the FAVOR+ stabilizers. One table, kept in C++ beside the formulas
(csrc/common/activation.h, csrc/lowrank/params.h); Python reads it from the compiled library
(``torch.ops.itnet.enum_names``), so no list here is synced by hand.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .. import _C  # noqa: F401  (registers torch.ops.itnet.*)


def _names(kind: str) -> Tuple[str, ...]:
    return tuple(torch.ops.itnet.enum_names(kind))


def codes(names: Tuple[str, ...]) -> Dict[str, int]:
    """name -> integer code (the position in the table)."""
    return {n: i for i, n in enumerate(names)}


ACTIVATIONS: Tuple[str, ...] = _names("activation")
FEATURE_MAPS: Tuple[str, ...] = _names("feature_map")
STABILIZERS: Tuple[str, ...] = _names("stabilizer")

__all__ = ["ACTIVATIONS", "FEATURE_MAPS", "STABILIZERS", "codes"]
