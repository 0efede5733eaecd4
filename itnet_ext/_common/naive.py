"""Pieces shared by the strategies' float64 oracles (their naive.py): the pair MLP's
activations, the per-pair logit terms, the masked softmax and the query-chunk runner."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .checks import compute_dtype
from .names import ACTIVATIONS

# Upper bound on B * chunk * M * (H + R) elements per chunk (~256 MB of float32
# for the largest per-chunk tensor).  ``chunk_size`` is further capped by it.
_ELEMENT_BUDGET = 1 << 26


# The pair-MLP activations' PyTorch formulas (the oracle side of csrc/common/activation.h),
# by their names in the kernels' table.
ACTIVATION_FORMULAS = {
    "relu": F.relu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}
if set(ACTIVATION_FORMULAS) != set(ACTIVATIONS):
    raise ImportError(f"itnet_ext: the kernels' activations {ACTIVATIONS} and the oracle's "
                      f"{tuple(ACTIVATION_FORMULAS)} differ: the compiled library does not match "
                      f"this Python package (rebuild it)")


def _activation(name):
    if name not in ACTIVATION_FORMULAS:
        raise ValueError(f"activation: unknown {name!r}")
    return ACTIVATION_FORMULAS[name]


def check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")


def kernel_setup(p, *, q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos):
    """What the dense and the sparse oracle both start from, for a checked ``Problem`` p:
    the kernel inputs in the compute dtype (``qc``, ``kc``, ``vc``, ``uc``, ``tc``, ``W2c``,
    ``b2c``, ``Ec``; None where absent), float64 positions ``qp`` / ``kp`` (never
    differentiated; default the integer index (1, N, 1) / (1, M, 1); None when nothing reads
    them), the window bounds ``lo`` / ``hi``, the offset box ``sizes`` / ``strides`` and the
    activation ``act``."""
    device = p.device
    cdt = compute_dtype(v.dtype)

    def cast(x):
        return None if x is None else x.to(cdt)

    ks = SimpleNamespace(cdt=cdt, qc=cast(q), kc=cast(k), vc=cast(v), uc=cast(u), tc=cast(t),
                         W2c=cast(W2), b2c=cast(b2), Ec=cast(offset_table), qp=None, kp=None,
                         lo=None, hi=None, sizes=None, strides=None,
                         act=_activation(p.activation) if p.mlp else None)
    if p.needs_positions:
        ks.qp = (q_pos.detach().to(torch.float64) if q_pos is not None
                 else torch.arange(p.N, device=device, dtype=torch.float64).reshape(1, p.N, 1))
        ks.kp = (k_pos.detach().to(torch.float64) if k_pos is not None
                 else torch.arange(p.M, device=device, dtype=torch.float64).reshape(1, p.M, 1))
    if p.window is not None:
        ks.lo = torch.tensor([w[0] for w in p.window], dtype=torch.float64, device=device)
        ks.hi = torch.tensor([w[1] for w in p.window], dtype=torch.float64, device=device)
    if offset_table is not None:
        ks.sizes = torch.tensor(p.offset_sizes, dtype=torch.long, device=device)
        ks.strides = torch.tensor(p.offset_strides, dtype=torch.long, device=device)
    return ks


def _offset_rows(off, lo, sizes, strides):
    """Offset-table row of each integer offset ``off`` (..., D) (float64), row-major over the
    window box. Offsets outside the window are clamped into the box: those pairs are off the
    support, and the caller masks them."""
    rel = torch.round(off - lo).long()
    rel = torch.minimum(torch.clamp(rel, min=0), sizes - 1)
    return (rel * strides).sum(-1)


def _mlp_logits(R, act, W2, b2, *, u_i=None, t_j=None, e_ij=None):
    """MLP term of the pair logit, sum_r W2[h, r] act(u_i + t_j + e_o(i,j)) + b2[h], for the
    dense and the sparse reference alike. u_i, t_j, e_ij are (Bx, n, m, R) up to broadcasting
    (n queries, m keys or pairs per query); returns (Bx, H, n, m)."""
    pre = torch.zeros(1, 1, 1, R, dtype=W2.dtype, device=W2.device)
    if u_i is not None:
        pre = pre + u_i
    if t_j is not None:
        pre = pre + t_j
    if e_ij is not None:
        pre = pre + e_ij
    out = torch.einsum("bnmr,hr->bhnm", act(pre), W2)
    if b2 is not None:
        out = out + b2[None, :, None, None]
    return out


def _masked_softmax(z, support):
    """Softmax over the last dim restricted to ``support`` (bool, broadcastable to z).

    Returns (pexp, denom, lse): pexp = exp(z - m) with m the detached row max over the
    support, exactly 0 off the support; denom = sum of pexp, 1 on a row with empty support
    (so pexp / denom is 0 there, never NaN, with zero gradients); lse the row log-sum-exp,
    -inf on an empty row."""
    cdt, device = z.dtype, z.device
    z = torch.where(support, z, torch.full((), float("-inf"), dtype=cdt, device=device))
    m = z.amax(dim=-1, keepdim=True).detach() if z.shape[-1] > 0 else \
        torch.full(z.shape[:-1] + (1,), float("-inf"), dtype=cdt, device=device)
    # only an empty row's -inf max becomes 0: a NaN max (NaN in the row) stays NaN, so that
    # the row is NaN in the output and the gradients as in the fused ops, not exp(z) unshifted
    m = torch.where(m == float("-inf"), torch.zeros((), dtype=cdt, device=device), m)
    # exactly 0 off the support (also where m is NaN: -inf - NaN would be NaN)
    pexp = torch.where(support, torch.exp(z - m), torch.zeros((), dtype=cdt, device=device))
    denom = pexp.sum(-1)
    empty = denom == 0
    denom_safe = torch.where(empty, torch.ones((), dtype=cdt, device=device), denom)
    lse = torch.where(empty, torch.full((), float("-inf"), dtype=cdt, device=device),
                      torch.log(denom_safe) + m[..., 0])
    return pexp, denom_safe, lse


def _run_chunks(chunk_fn, N, chunk, tensors, out_dims, softmax):
    """Runs chunk_fn(s, e, *tensors) -> (out (B, H, e - s, Dv), lse) over query chunks and
    concatenates; with gradients needed and more than one chunk, each chunk is checkpointed
    (recomputed in the backward) so that memory stays at one chunk's worth. out_dims =
    (B, H, Dv) for N = 0, where the output stays attached to the graph through v
    (tensors[2])."""
    use_ckpt = (N > chunk and torch.is_grad_enabled()
                and any(x is not None and x.requires_grad for x in tensors))
    outs, lses = [], []
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        if use_ckpt:
            o, l = checkpoint(chunk_fn, s, e, *tensors, use_reentrant=False)
        else:
            o, l = chunk_fn(s, e, *tensors)
        outs.append(o)
        lses.append(l)
    if outs:
        return torch.cat(outs, dim=2), (torch.cat(lses, dim=2) if softmax else None)
    B, H, Dv = out_dims
    vc = tensors[2]
    out = torch.zeros(B, H, 0, Dv, dtype=vc.dtype, device=vc.device) + vc.sum() * 0
    return out, torch.zeros(B, H, 0, dtype=vc.dtype, device=vc.device)
