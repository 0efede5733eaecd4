"""``method="scan"``: the causal low-rank kernel with a learned decay, as a token mixer.

docs/design.md section 2 (lowrank, causal with a decay): with features at both points and a
per-step log-decay lambda_t <= 0,

    kappa(t, s) = sum_r phi_{t,r} psi_{s,r} exp(L_{t,r} - L_{s,r}),  L_t = sum_{k<=t} lambda_k

and y_t = sum_{s<=t} kappa(t, s) v_s, evaluated in O(T) by :func:`itnet_ext.scan.decay_scan`.
Here, per channel d, lambda_{t,d,r} = dt_{t,d} A_{d,r} with an input-dependent step
dt = softplus(W_dt x + b) > 0 and A = -exp(A_log) < 0 (so the kernel decays with the
"distance" sum of dt between the points, as in Mamba's selective scan), phi / psi linear
maps of the token with one group of ``rank`` features per head, scan input dt * v and a
learned direct term skip * v.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as TF

from ..scan.functional import decay_scan

__all__ = ["ScanMixer"]


class ScanMixer(nn.Module):
    r"""Causal integral transform with a low-rank, decaying kernel (the selective-scan family).

    Args:
        embed_dim: channels ``E`` (input and output).
        num_heads: groups ``G`` of the features phi / psi (channels ``E / G`` per group).
        rank: states per channel ``Rk``.
        dt_min, dt_max: range of the initial step ``softplus(b)`` (log-uniform).

    ``forward(x (B, T, E), padding_mask=None)``: ``padding_mask`` (B, T) bool, True = padded
    token; a padded token neither contributes (its scan input is 0) nor decays the state
    (its step is 0), so left and right padding both leave the other tokens' outputs as
    they are without it.
    """

    def __init__(self, embed_dim: int, num_heads: int, rank: int = 16, *,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, device=None, dtype=None):
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min!r}, {dt_max!r}")
        fk = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.rank = embed_dim, num_heads, rank
        self.v_proj = nn.Linear(embed_dim, embed_dim, **fk)
        self.phi_proj = nn.Linear(embed_dim, num_heads * rank, bias=False, **fk)
        self.psi_proj = nn.Linear(embed_dim, num_heads * rank, bias=False, **fk)
        self.dt_proj = nn.Linear(embed_dim, embed_dim, **fk)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **fk)
        # S4D-real initialisation of the decay rates (A_r = -r) and a step in [dt_min, dt_max]
        self.A_log = nn.Parameter(torch.log(torch.arange(1, rank + 1, **fk).float()).to(
            dtype or torch.get_default_dtype()).repeat(embed_dim, 1))
        self.skip = nn.Parameter(torch.ones(embed_dim, **fk))
        with torch.no_grad():
            dt = torch.exp(torch.rand(embed_dim, **fk) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # softplus^-1(dt)
            self.dt_proj.weight.mul_(0.1)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, rank={self.rank}"

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x: expected (B, T, {self.embed_dim}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x)}")
        B, T, E = x.shape
        dt = TF.softplus(self.dt_proj(x))
        if padding_mask is not None:
            if padding_mask.shape != (B, T) or padding_mask.dtype != torch.bool:
                raise ValueError(f"padding_mask: expected a bool (B, T) = ({B}, {T}) tensor, "
                                 f"got {padding_mask.dtype} {tuple(padding_mask.shape)}")
            dt = dt.masked_fill(padding_mask[..., None], 0.0)
        phi = self.phi_proj(x).view(B, T, self.num_heads, self.rank)
        psi = self.psi_proj(x).view(B, T, self.num_heads, self.rank)
        A = -torch.exp(self.A_log)
        v = self.v_proj(x)
        y = decay_scan(dt * v, (dt, A), phi, psi)
        # the direct term multiplies v (as Mamba's D multiplies x), not the scan input dt * v
        return self.out_proj(y + self.skip * v)
