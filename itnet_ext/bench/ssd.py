"""Chunked SSD-style evaluation of the decay scan in plain PyTorch (a benchmark baseline).

The algorithm of Mamba-2's minimal chunked SSD ("ssd_minimal_discrete", Dao & Gu 2024),
written from its description and generalized to this project's decay scan

    h_{t,d,r} = exp(a_{t,d,r}) h_{t-1,d,r} + psi_{t,g(d),r} x_{t,d}
    y_{t,d}   = sum_r phi_{t,g(d),r} h_{t,d,r} + skip_d x_{t,d}

Split T into chunks of Lc steps; per chunk

1. intra-chunk (exact, quadratic): y_t += sum_r phi_{t,r} sum_{s<=t} exp(a_{s+1}+...+a_t) psi_{s,r} x_s,
   the decay kernel exp(segsum(a)) built with the stable segment sum (a cumulative sum of
   masked copies, never a difference of two long prefix sums);
2. chunk states: the state each chunk alone leaves at its end;
3. inter-chunk recurrence: the state entering each chunk, from the chunk states and the
   chunk's total log-decays (segment sum over chunks, as in the minimal algorithm);
4. state to output: y_t += sum_r phi_{t,r} exp(a_{c0}+...+a_t) h_{entering, r}.

Mamba-2 shares one scalar decay per head across its state dimension, which makes the
intra-chunk term a (Lc, Lc) matmul per head. Here every (channel, state) pair has its own
decay, so the decay kernel is (Lc, Lc) per (channel, state): B * T * D * Rk * Lc elements
over the whole problem. Memory is capped by evaluating blocks of channels (about
``_BLOCK_ELEMENTS`` kernel elements per block); under autograd every block is wrapped in
activation checkpointing, so the backward recomputes a block's kernels instead of keeping
every block's kernels alive until the backward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..scan.validate import check_scan_inputs

__all__ = ["auto_chunk", "ssd_chunked"]

# elements of one block's (B, chunks, channels, Rk, Lc, Lc) decay kernel; a few such
# tensors are alive at once (segment sums, their exp), about 64 MiB each in float32
_BLOCK_ELEMENTS = 1 << 24


def _decay_kernel(a):
    """exp of the stable segment sums: out[..., i, j] = exp(a[..., j+1] + ... + a[..., i]) for
    j <= i, else 0.

    The segment sums are cumulative sums of masked copies of ``a`` down the rows, never
    cumsum(a)[i] - cumsum(a)[j], which cancels catastrophically once the prefix sums are large.
    """
    n = a.shape[-1]
    strict = torch.ones(n, n, dtype=a.dtype, device=a.device).tril(-1)
    lower = torch.ones(n, n, dtype=a.dtype, device=a.device).tril(0)
    # (products with 0 / 1 masks: cheaper than torch.where on CPU)
    seg = torch.cumsum(a[..., :, None] * strict, dim=-2)
    # above the diagonal every term is masked, seg = 0: zero the kernel there by a product
    # instead of taking exp(-inf), which keeps the backward free of inf * 0
    return torch.exp(seg) * lower


def _block(x, a, phi, psi, chunk):
    """y (B, T, Db) of one channel block: x (B, T, Db), a (B, T, Db, Rk), phi / psi (B, T, Db, Rk).

    T is a multiple of ``chunk`` (zero-padded by the caller: a padded step has log-decay 0 and
    input 0, so it changes no state and its outputs are dropped).
    """
    B, T, Db, Rk = a.shape
    nc = T // chunk

    def chunks(t):  # (B, T, Db, Rk) -> (B, nc, Db, Rk, Lc): time last, per (chunk, channel, state)
        return t.reshape(B, nc, chunk, Db, Rk).permute(0, 1, 3, 4, 2)

    a, phi = chunks(a), chunks(phi)
    u = chunks(psi * x[..., None])                                # psi_s x_s: the input to the state
    acum = torch.cumsum(a, dim=-1)                                # log-decay from chunk start to t

    # 1. intra-chunk: the state at every step from this chunk's inputs alone, (Lc, Lc) per (d, r)
    kernel = _decay_kernel(a)                                     # (B, nc, Db, Rk, Lc, Lc)
    h_intra = torch.matmul(kernel, u[..., None])[..., 0]          # (B, nc, Db, Rk, Lc)
    # 2. chunk states: decay from step s to the chunk's end
    states = (torch.exp(acum[..., -1:] - acum) * u).sum(-1)       # (B, nc, Db, Rk)
    # 3. inter-chunk: the state entering chunk c, sum over c' < c of the decayed chunk states
    totals = F.pad(acum[..., -1].permute(0, 2, 3, 1), (1, 0))     # (B, Db, Rk, nc + 1)
    across = _decay_kernel(totals)                                # (B, Db, Rk, nc+1, nc+1)
    states = F.pad(states.permute(0, 2, 3, 1), (1, 0))            # zero initial state first
    entering = torch.matmul(across, states[..., None])[..., :-1, 0]  # (B, Db, Rk, nc)
    # 4. state to output
    h = h_intra + torch.exp(acum) * entering.permute(0, 3, 1, 2)[..., None]
    y = (phi * h).sum(3)                                          # (B, nc, Db, Lc)
    return y.permute(0, 1, 3, 2).reshape(B, T, Db)


def auto_chunk(T):
    """A chunk length for T steps: the power of two nearest (2 T)^(1/3), at least 4.

    With per-state decays the intra-chunk kernels cost ~ T * Lc and the across-chunk kernel
    (the minimal algorithm's segment sum over chunks) ~ (T / Lc)^2 per (channel, state);
    their sum is smallest near Lc = (2 T)^(1/3): 16 for T = 1024 and 4096, 32 for 16384.
    """
    return max(4, 2 ** round(math.log2(max(2 * T, 1)) / 3))


def ssd_chunked(x, log_decay, phi, psi, *, skip=None, chunk=64, channel_block=None):
    """The decay scan by Mamba-2's chunked SSD algorithm; same arguments and result as
    ``itnet_ext.reference.decay_scan`` (no initial / final state).

    x (B, T, D); log_decay a tensor broadcasting to (B, T, D, Rk), a (D, Rk) tensor or the
    pair (dt, A); phi, psi (B, T, Rk) or (B, T, G, Rk); skip (D,). ``chunk``: the chunk
    length Lc; ``channel_block``: channels per block (default: as many as fit the kernel
    budget). Differentiable by autograd; computed in x's dtype. Log-decays must be finite
    (the kernels mask by products with 0 / 1, and -inf * 0 is nan).
    """
    p = check_scan_inputs(x, log_decay, phi, psi, skip, None)
    B, T, D, Rk, G = p.B, p.T, p.D, p.Rk, p.G
    if chunk < 1:
        raise ValueError(f"chunk: expected a positive chunk length, got {chunk}")
    if T == 0:
        return x.new_zeros(B, 0, D) if skip is None else skip * x
    Lc = min(chunk, T)
    pad = -T % Lc
    Tp = T + pad
    if channel_block is None:  # per channel: the intra-chunk and the across-chunk kernels
        per_channel = B * Rk * (Tp * Lc + (Tp // Lc + 1) ** 2)
        channel_block = max(1, _BLOCK_ELEMENTS // per_channel)
    channel_block = min(channel_block, D)
    group_of = torch.arange(D, device=x.device) // (D // G)

    def run_block(xb, lo, hi, *decay):
        # the block's log-decay is built here, so that checkpointing saves only the
        # (small) inputs, never the (B, T, Db, Rk) or larger intermediates
        if p.form == "factored":
            dtb, A = decay
            ab = dtb[..., None] * A[lo:hi]
        elif p.form == "static":
            ab = decay[0][lo:hi].expand(B, T, hi - lo, Rk)
        else:
            ab = decay[0][:, :, lo:hi].expand(B, T, hi - lo, Rk)
        g = group_of[lo:hi]
        phib, psib = p.phi[:, :, g], p.psi[:, :, g]               # (B, T, Db, Rk)
        if pad:
            xb, ab, phib, psib = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
                                  for t in (xb, ab, phib, psib))
        return _block(xb, ab, phib, psib, Lc)[:, :T]

    decay = (p.dt, p.A) if p.form == "factored" else (p.log_decay,)
    tensors = (x, *decay, p.phi, p.psi)
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    ys = []
    for lo in range(0, D, channel_block):
        hi = min(lo + channel_block, D)
        xb = x[:, :, lo:hi]
        dec = (p.dt[:, :, lo:hi], p.A) if p.form == "factored" else decay
        if recompute:
            ys.append(checkpoint(run_block, xb, lo, hi, *dec, use_reentrant=False))
        else:
            ys.append(run_block(xb, lo, hi, *dec))
    y = torch.cat(ys, dim=2)
    return y if skip is None else y + skip * x
