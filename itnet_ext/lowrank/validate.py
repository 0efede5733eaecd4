"""Argument checks of the low-rank transform, shared by the fused op
(``functional.lowrank_integral_transform``) and its oracle
(``reference.lowrank_integral_transform``), so both reject the same inputs with the same
messages."""
from __future__ import annotations

from typing import Tuple

import torch

from .._common.checks import NORMALIZATIONS, _require_dim, _require_tensor


def check_lowrank_inputs(q, k, v, normalize, causal, eps) -> Tuple[int, ...]:
    """Checks q (B, H, N, Dk), k (B, H, M, Dk), v (B, H, M, Dv) (one floating dtype, one
    device), normalize, causal and eps; returns (B, H, N, M, Dk, Dv)."""
    _require_tensor("v", v, 4, "(B, H, M, Dv)")
    if not v.is_floating_point():
        raise ValueError(f"v: expected a floating-point tensor, got dtype {v.dtype}")
    B, H, M, Dv = v.shape
    _require_tensor("q", q, 4, "(B, H, N, Dk)")
    _require_tensor("k", k, 4, "(B, H, M, Dk)")
    for name, x in (("q", q), ("k", k)):
        if x.dtype != v.dtype:
            raise ValueError(f"{name}: expected dtype {v.dtype} (same as v), got {x.dtype}")
        if x.device != v.device:
            raise ValueError(f"{name}: expected all tensors on the same device as v "
                             f"({v.device}), got {x.device}")
    _require_dim("q", q, 0, B, "B (from v)", "(B, H, N, Dk)")
    _require_dim("q", q, 1, H, "H (from v)", "(B, H, N, Dk)")
    _require_dim("k", k, 0, B, "B (from v)", "(B, H, M, Dk)")
    _require_dim("k", k, 1, H, "H (from v)", "(B, H, M, Dk)")
    _require_dim("k", k, 2, M, "M (from v)", "(B, H, M, Dk)")
    N, Dk = q.shape[2], q.shape[3]
    _require_dim("k", k, 3, Dk, "Dk (from q)", "(B, H, M, Dk)")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal: expected a bool, got {type(causal).__name__}")
    if (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0
            or eps == float("inf")):
        raise ValueError(f"eps: expected a finite real number >= 0, got {eps!r}")
    return B, H, N, M, Dk, Dv
