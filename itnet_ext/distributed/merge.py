"""Exact merge of partial integrals over a partition of the keys (docs/design.md section 6).

softmax: each part returns its normalised output o_b and log-sum-exp l_b; the whole is
lse = log(sum_b exp l_b) and out = sum_b exp(l_b - lse) o_b. none: out = sum_b o_b.
An empty part (l_b = -inf, o_b = 0) drops out; a row empty in every part stays 0 with
lse = -inf, never NaN.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["merge_softmax", "merge_into"]


def merge_softmax(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
                  ) -> Tuple[Tensor, Tensor]:
    """(out, lse) of the union of two disjoint key sets, from each one's (out, lse)."""
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))       # both empty: m = 0
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)              # exp(-inf) = 0
    s = wa + wb
    lse = m + torch.log(s)                                           # log 0 = -inf: empty
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    out = out_a * (wa * inv).unsqueeze(-1).to(out_a.dtype) + \
        out_b * (wb * inv).unsqueeze(-1).to(out_b.dtype)
    return out, lse


def merge_into(acc: tuple, part: tuple, softmax: bool, rows: slice) -> tuple:
    """Accumulate a part computed for the query rows ``rows`` into ``acc = (out, lse)``
    (out zeros and lse -inf before the first part), in place on the accumulator's rows."""
    out, lse = acc
    o, l = part
    if softmax:
        mo, ml = merge_softmax(out[:, :, rows], lse[:, :, rows], o.to(out.dtype), l)
        out[:, :, rows] = mo
        lse[:, :, rows] = ml
    else:
        out[:, :, rows] += o.to(out.dtype)
    return out, lse
