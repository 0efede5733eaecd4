"""The GNO baseline of ``python -m itnet_ext.bench --sparse``: neuraloperator's graph
integral transform written here in plain PyTorch, and the same map through the fused op.

neuraloperator's ``IntegralTransform`` (``neuralop/layers/integral_transform.py``) with
``transform_type="linear"`` computes, for the points x_i (outputs) and y_j (inputs) and the
neighbourhoods A(x_i) given as a CSR graph,

    out_i = reduce_{j in A(x_i)} k(x_i, y_j) * f(y_j)        (channel-wise product)

with the kernel an MLP of the concatenated coordinates, ``k = MLP([y_j, x_i])`` (its
``agg_features = torch.cat([rep_features, self_features])``: neighbour first), and the
reduction a CSR segment sum (with quadrature weights) or mean (without). Per edge it
materializes the concatenated coordinates (E, 2D), the hidden layer (E, R) before and after
the activation, the kernel (E, C), the gathered f (E, C) and their product (E, C), then
reduces; here with ``torch.segment_reduce`` (neuraloperator uses ``torch_scatter``'s
``segment_csr`` or its own fallback; the per-edge tensors are the same).

The MLP is Linear(2D, R) -> activation -> Linear(R, C), C = the channels of f. Split the first
layer's weight W1 = [A_y | A_x] (R, D) each, bias b1; the kernel of channel c is

    k_c(x_i, y_j) = sum_r W2[c, r] act(u_{i,r} + t_{j,r}) + b2[c],
    u = x A_x^T + b1 (N, R),  t = y A_y^T (M, R)

which is exactly the MLP term of the integral transform's pair logit with one head per
channel (H = C), Dv = 1, v^c_j = f_c(y_j), ``normalize="none"`` and no content term:
:func:`gno_fused` evaluates it with ``itnet_ext.functional.sparse_integral_transform`` on the
same CSR graph, without any per-edge tensor. The "mean" reduction is the sum with the pair
log-weight -log |A(x_i)|.

Activation: the fused op's ``"gelu"`` is the tanh approximation
(``F.gelu(x, approximate="tanh")``); neuraloperator's default is the exact (erf) GELU. The
baseline uses the op's activation so that the two compute the same map (the cost of either
GELU is the same elementwise pass over (E, R)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as _fused

__all__ = ["GNOKernel", "fused_parameters", "gno_baseline", "gno_fused", "radius_for_degree", "row_lengths"]

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # the fused op's "gelu"
    "relu": F.relu,
    "silu": F.silu,
}


class GNOKernel(nn.Module):
    """The kernel MLP of neuraloperator's GNO: Linear(2 D, R) -> act -> Linear(R, C).

    Its input is ``cat([y_j, x_i])`` (neighbour coordinates first, as neuraloperator).
    """

    def __init__(self, dim: int, hidden: int, channels: int, activation: str = "gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.dim, self.hidden, self.channels, self.activation = dim, hidden, channels, activation
        self.lin1 = nn.Linear(2 * dim, hidden)
        self.lin2 = nn.Linear(hidden, channels)

    def forward(self, agg):
        return self.lin2(_ACTIVATIONS[self.activation](self.lin1(agg)))


def row_lengths(row_ptr):
    """(N,) neighbour counts of a CSR ``row_ptr`` (N + 1,) or (1, N + 1)."""
    rp = row_ptr.reshape(-1)
    return rp[1:] - rp[:-1]


def _graph(row_ptr, col_idx):
    rp, ci = row_ptr.reshape(-1), col_idx.reshape(-1)
    if row_ptr.dim() == 2 and row_ptr.shape[0] != 1:
        raise ValueError("the GNO graph is shared over the batch: row_ptr (N + 1,) or (1, N + 1)")
    return rp, ci[: int(rp[-1])]


def gno_baseline(x, y, f, row_ptr, col_idx, kernel: GNOKernel, reduce: str = "sum"):
    """neuraloperator's GNO ``IntegralTransform`` (transform_type="linear") in plain PyTorch.

    Args:
        x: (N, D) output points; y: (M, D) input points; f: (B, M, C) or (M, C) input function.
        row_ptr, col_idx: CSR graph (N + 1,), (E,) (or with a leading 1), neighbours of x_i
            are y[col_idx[row_ptr[i]:row_ptr[i + 1]]].
        kernel: the MLP; reduce: "sum" or "mean" over each neighbourhood.

    Returns (B, N, C) (or (N, C) for 2-D f).
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce: expected 'sum' or 'mean', got {reduce!r}")
    rp, ci = _graph(row_ptr, col_idx)
    lengths = rp[1:] - rp[:-1]
    rep_features = y[ci]                                          # (E, D)
    self_features = torch.repeat_interleave(x, lengths, dim=0)    # (E, D)
    agg = torch.cat([rep_features, self_features], dim=-1)        # (E, 2D)
    k = kernel(agg)                                               # (E, C)
    batched = f.dim() == 3
    in_features = f[:, ci] if batched else f[ci]                  # (B, E, C) / (E, C)
    rep = k * in_features
    # initial=0: an empty neighbourhood gives 0 (as torch_scatter's segment_csr), not NaN (mean)
    if batched:
        lens = lengths.expand(f.shape[0], -1).contiguous()
        return torch.segment_reduce(rep, reduce, lengths=lens, axis=1, unsafe=True, initial=0)
    return torch.segment_reduce(rep, reduce, lengths=lengths, axis=0, unsafe=True, initial=0)


def fused_parameters(x, y, kernel: GNOKernel):
    """(u (1, N, R), t (1, M, R), W2 (C, R), b2 (C,)) of the fused op for the GNO kernel."""
    D = kernel.dim
    W1, b1 = kernel.lin1.weight, kernel.lin1.bias                 # (R, 2D): [A_y | A_x]
    A_y, A_x = W1[:, :D], W1[:, D:]
    u = torch.addmm(b1, x, A_x.t())[None]                          # (1, N, R)
    t = (y @ A_y.t())[None]                                       # (1, M, R)
    return u, t, kernel.lin2.weight, kernel.lin2.bias


def gno_fused(x, y, f, row_ptr, col_idx, kernel: GNOKernel, reduce: str = "sum"):
    """The same map as :func:`gno_baseline` through ``sparse_integral_transform``: one head per
    channel, Dv = 1, ``normalize="none"``, the MLP term only; (B, N, C) (or (N, C))."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce: expected 'sum' or 'mean', got {reduce!r}")
    rp, ci = _graph(row_ptr, col_idx)
    batched = f.dim() == 3
    fb = f if batched else f[None]
    u, t, W2, b2 = fused_parameters(x, y, kernel)
    v = fb.transpose(1, 2)[..., None]                             # (B, C, M, 1)
    Bsz = fb.shape[0]
    rp = rp[None].expand(Bsz, -1)
    ci = ci[None].expand(Bsz, -1)
    log_w = None
    if reduce == "mean":
        lengths = (rp[0, 1:] - rp[0, :-1]).to(v.dtype)
        # -log |A(x_i)| on each edge of row i (an empty row has no edge: output 0, as segment mean)
        lw = -torch.log(lengths.clamp_min(1))
        log_w = torch.repeat_interleave(lw, rp[0, 1:] - rp[0, :-1])[None].expand(Bsz, -1)
    out = _fused.sparse_integral_transform(
        None, None, v, row_ptr=rp, col_idx=ci, log_w=log_w, u=u, t=t, W2=W2, b2=b2,
        activation=kernel.activation, normalize="none")           # (B, C, N, 1)
    out = out[..., 0].transpose(1, 2)                             # (B, N, C)
    return out if batched else out[0]


def radius_for_degree(pos, degree: float):
    """The radius r at which the mean number of points within distance r of a point of ``pos``
    (N, D) (itself included) is ``degree``: the (degree * N)-th smallest pairwise distance."""
    N = pos.shape[0]
    k = max(1, min(N * N, int(round(degree * N))))
    d2 = torch.cdist(pos.double(), pos.double()).pow_(2).reshape(-1)
    d2k = torch.kthvalue(d2, k).values
    return math.sqrt(float(d2k))
