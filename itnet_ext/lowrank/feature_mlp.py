r"""Learned feature maps of the low-rank evaluation (docs/design.md section 2, lowrank).

:class:`FeatureMLP` maps per-point inputs ``[features f ; positions p]`` (B, n, C + D) to
per-head raw features ``z`` (B, H, n, F) with one hidden layer plus a linear skip path::

    z = W_o act(W_h [f; p] + b_h) + W_s [f; p] + b_o        (then split into H heads of F)

The skip path makes affine features (e.g. the content term's ``q_i`` / ``k_j``, identity-like
maps) exactly representable; the hidden layer adds the nonlinear part (positions, the pair
MLP term). :func:`positive_features` turns raw features into the transform's features:

- ``normalize="none"``: the raw features (any sign);
- ``normalize="softmax"``: ``exp(z - c)`` > 0 with a detached stabilizer ``c``: per row for
  queries (phi), per (batch, head) over all non-padded keys and features for keys (psi).
  A factor ``exp(-c_i)`` on phi_i, or one constant on all psi_j of a (b, h) slice, cancels
  in the softmax-normalized output, so the output equals the unstabilized
  ``sum_j exp(z_i).exp(w_j) v_j / sum_j exp(z_i).exp(w_j)`` (up to rounding); the exp form
  is the natural one for approximating ``exp(l(i, j))``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as TF

__all__ = ["FeatureMLP", "positive_features"]


class FeatureMLP(nn.Module):
    """Per-head learned feature map over ``[features ; positions]``.

    Args:
        in_features: feature size C of the points (``embed_dim`` for queries, ``kdim`` for keys).
        pos_dim: position dims D.
        num_heads: H.
        rank: features per head F.
        hidden: hidden width of the MLP.

    Parameters: ``hidden_layer`` (Linear(C + D, hidden)), ``out_layer`` (Linear(hidden, H F),
    with the bias), ``skip`` (Linear(C + D, H F), no bias). Activation: silu.
    """

    def __init__(self, in_features: int, pos_dim: int, num_heads: int, rank: int, hidden: int,
                 device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.pos_dim = in_features, pos_dim
        self.num_heads, self.rank, self.hidden = num_heads, rank, hidden
        d_in = in_features + pos_dim
        self.hidden_layer = nn.Linear(d_in, hidden, **fk)
        self.out_layer = nn.Linear(hidden, num_heads * rank, **fk)
        self.skip = nn.Linear(d_in, num_heads * rank, bias=False, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.hidden_layer.reset_parameters()
        self.out_layer.reset_parameters()
        self.skip.reset_parameters()
        # a small start: kernels phi.psi of order one, exp features near 1
        with torch.no_grad():
            self.out_layer.weight.mul_(0.5)
            self.skip.weight.mul_(0.5)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x (B, n, C), pos (B or 1, n, D) -> raw features (B, H, n, F)."""
        B, n, _ = x.shape
        inp = torch.cat([x, pos.to(x.dtype).expand(B, n, self.pos_dim)], dim=-1)
        z = self.out_layer(TF.silu(self.hidden_layer(inp))) + self.skip(inp)
        return z.view(B, n, self.num_heads, self.rank).transpose(1, 2)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, pos_dim={self.pos_dim}, "
                f"num_heads={self.num_heads}, rank={self.rank}, hidden={self.hidden}")


def positive_features(z: Tensor, *, is_query: bool, padding: Optional[Tensor] = None,
                      reduce_max=None) -> Tensor:
    """Softmax-mode features ``exp(z - c)`` (detached stabilizer ``c``, see the module doc).

    z (B, H, n, F); padding (B, n) bool (keys only): padded keys are left out of the key
    stabilizer (the caller zeroes their features). ``reduce_max`` (keys only): maps this
    slice's stabilizer (B, H, 1, 1) to the whole key set's, when the keys are split over
    ranks: the stabilizer cancels only if every key shares it."""
    if is_query:
        c = z.detach().amax(dim=-1, keepdim=True)
    else:
        zz = z.detach()
        if padding is not None:
            zz = zz.masked_fill(padding[:, None, :, None], -math.inf)
        # (no keys, N = 0: nothing to stabilize, and amax has no identity to return)
        c = (zz.amax(dim=(-1, -2), keepdim=True) if zz.shape[-2] > 0
             else zz.new_zeros(*zz.shape[:-2], 1, 1))
        if reduce_max is not None:
            c = reduce_max(c)
        c = torch.where(torch.isfinite(c), c, torch.zeros((), dtype=c.dtype, device=c.device))
    return torch.exp(z - c)
