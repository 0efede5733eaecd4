"""Pure-PyTorch reference (oracle) for the dense integral transform.

Straightforward math, gradients by autograd, float64-capable.  Queries are
processed in chunks so that memory per chunk is O(chunk * M * (H + R)); when
gradients are needed and there is more than one chunk, each chunk is
recomputed in backward (activation checkpointing), so N = M = 8192 fits in a
few GB for forward and backward.

Computation dtype: float64 if v is float64, else float32 (half / bfloat16
inputs are upcast).  ``out`` is returned in v's dtype; ``lse`` in the
computation dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._validate import check_inputs

__all__ = ["integral_transform", "decay_scan", "decay_scan_dense"]

# Upper bound on B * chunk * M * (H + R) elements per chunk (~256 MB of float32
# for the largest per-chunk tensor).  ``chunk_size`` is further capped by it.
_ELEMENT_BUDGET = 1 << 26


def _activation(name):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    raise ValueError(f"activation: unknown {name!r}")


def integral_transform(
    q=None, k=None, v=None, *,
    u=None, t=None, W2=None, b2=None,
    activation="gelu",
    offset_table=None,
    q_pos=None, k_pos=None,
    normalize="softmax",
    key_weight=None,
    causal=False,
    window=None,
    key_padding_mask=None,
    attn_mask=None,
    scale=None,
    return_lse=False,
    chunk_size=1024,
):
    """Reference ``integral_transform``; see spec / DESIGN.md section 1."""
    p = check_inputs(
        q, k, v, u=u, t=t, W2=W2, b2=b2, activation=activation, offset_table=offset_table,
        q_pos=q_pos, k_pos=k_pos, normalize=normalize, key_weight=key_weight, causal=causal,
        window=window, key_padding_mask=key_padding_mask, attn_mask=attn_mask, scale=scale,
        return_lse=return_lse)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")

    B, H, N, M, Dv = p.B, p.H, p.N, p.M, p.Dv
    device = p.device
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32

    def cast(x):
        return None if x is None else x.to(cdt)

    qc, kc, vc = cast(q), cast(k), cast(v)
    uc, tc, W2c, b2c, Ec = cast(u), cast(t), cast(W2), cast(b2), cast(offset_table)
    wc = cast(key_weight)  # (B or 1, M)
    mask_f = attn_mask.to(cdt) if p.attn_mask_kind == "float" else None
    mask_b = attn_mask if p.attn_mask_kind == "bool" else None
    if attn_mask is not None:  # view as 4-D, broadcastable to (B, H, N, M)
        shape4 = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
        if mask_f is not None:
            mask_f = mask_f.reshape(shape4)
        else:
            mask_b = mask_b.reshape(shape4)

    # Positions (never differentiated): float64, default integer index (1, N, 1) / (1, M, 1).
    qp = kp = None
    if p.needs_positions:
        qp = (q_pos.detach().to(torch.float64) if q_pos is not None
              else torch.arange(N, device=device, dtype=torch.float64).reshape(1, N, 1))
        kp = (k_pos.detach().to(torch.float64) if k_pos is not None
              else torch.arange(M, device=device, dtype=torch.float64).reshape(1, M, 1))
    if p.window is not None:
        lo = torch.tensor([w[0] for w in p.window], dtype=torch.float64, device=device)
        hi = torch.tensor([w[1] for w in p.window], dtype=torch.float64, device=device)
    if Ec is not None:
        sizes = torch.tensor(p.offset_sizes, dtype=torch.long, device=device)
        strides = torch.tensor(p.offset_strides, dtype=torch.long, device=device)
    act = _activation(p.activation) if p.mlp else None
    j_idx = torch.arange(M, device=device)

    def chunk_fn(s, e, qc, kc, vc, uc, tc, W2c, b2c, Ec, wc, mask_f):
        n = e - s
        # ---- logits (B, H, n, M) ----
        logits = torch.zeros(B, H, n, M, dtype=cdt, device=device)
        if p.content:
            logits = logits + p.scale * torch.einsum("bhnd,bhmd->bhnm", qc[:, :, s:e], kc)
        if p.mlp:
            R = p.R
            pre = torch.zeros(1, 1, 1, R, dtype=cdt, device=device)
            if uc is not None:
                pre = pre + uc[:, s:e, None, :]                # (Bu, n, 1, R)
            if tc is not None:
                pre = pre + tc[:, None, :, :]                  # (Bt, 1, M, R)
            if Ec is not None:
                off = kp[:, None, :, :] - qp[:, s:e, None, :]  # (Bp, n, M, D)
                rel = torch.round(off - lo).long()
                rel = torch.minimum(torch.clamp(rel, min=0), sizes - 1)  # out-of-window: masked later
                idx = (rel * strides).sum(-1)                  # (Bp, n, M)
                pre = pre + Ec[idx]                            # (Bp, n, M, R)
            hid = act(pre)
            mlp_term = torch.einsum("bnmr,hr->bhnm", hid, W2c)
            if b2c is not None:
                mlp_term = mlp_term + b2c[None, :, None, None]
            logits = logits + mlp_term

        # ---- support (broadcastable to (B, H, n, M)) ----
        support = torch.ones(1, 1, n, M, dtype=torch.bool, device=device)
        if key_padding_mask is not None:
            support = support & ~key_padding_mask[:, None, None, :]
        if p.causal:
            i_idx = torch.arange(s, e, device=device)
            support = support & (j_idx[None, :] <= i_idx[:, None])
        if p.window is not None:
            off = kp[:, None, :, :] - qp[:, s:e, None, :]      # (Bp, n, M, D)
            inside = ((off >= lo) & (off <= hi)).all(-1)       # (Bp, n, M)
            support = support & inside[:, None, :, :]
        if mask_b is not None:
            mb = mask_b if mask_b.shape[2] == 1 else mask_b[:, :, s:e]
            support = support & mb
        if mask_f is not None:
            mf = mask_f if mask_f.shape[2] == 1 else mask_f[:, :, s:e]
            support = support & (mf != float("-inf"))
            # finite everywhere so masked pairs never produce inf / NaN gradients
            logits = logits + torch.where(support, mf, torch.zeros((), dtype=cdt, device=device))
        support = support.expand(B, H, n, M)

        # ---- weights and output ----
        if p.normalize == "none":
            a = logits if wc is None else logits * wc[:, None, None, :]
            a = torch.where(support, a, torch.zeros((), dtype=cdt, device=device))
            return torch.einsum("bhnm,bhmd->bhnd", a, vc), None
        z = logits if wc is None else logits + torch.log(wc)[:, None, None, :]
        z = torch.where(support, z, torch.full((), float("-inf"), dtype=cdt, device=device))
        m = z.amax(dim=-1, keepdim=True).detach() if M > 0 else \
            torch.full((B, H, n, 1), float("-inf"), dtype=cdt, device=device)
        m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=cdt, device=device))
        pexp = torch.exp(z - m)                                # exactly 0 off the support
        denom = pexp.sum(-1)                                   # (B, H, n)
        nonempty = denom > 0
        denom_safe = torch.where(nonempty, denom, torch.ones((), dtype=cdt, device=device))
        out = torch.einsum("bhnm,bhmd->bhnd", pexp, vc) / denom_safe[..., None]
        lse = torch.where(nonempty, torch.log(denom_safe) + m[..., 0],
                          torch.full((), float("-inf"), dtype=cdt, device=device))
        return out, lse

    # Chunk size: user bound, further capped by the per-chunk element budget.
    per_row = max(1, B * M * (H + p.R + 1))
    chunk = max(1, min(chunk_size, _ELEMENT_BUDGET // per_row))
    tensors = (qc, kc, vc, uc, tc, W2c, b2c, Ec, wc, mask_f)
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
        out = torch.cat(outs, dim=2)
        lse = torch.cat(lses, dim=2) if p.normalize == "softmax" else None
    else:  # N == 0
        out = torch.zeros(B, H, 0, Dv, dtype=cdt, device=device) + vc.sum() * 0
        lse = torch.zeros(B, H, 0, dtype=cdt, device=device)
    out = out.to(v.dtype)
    if return_lse:
        return out, lse
    return out



# ------------------------------------------------------------------------------------------
# decay scan (DESIGN section 2, lowrank causal with a decay): the recurrence family
# ------------------------------------------------------------------------------------------
def _scan_compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _by_channel(p, t, D):
    """phi / psi of step t, (B, G, Rk) -> (B, D, Rk): channel d uses group d // (D / G)."""
    x = p[:, t]
    return x.repeat_interleave(D // x.shape[1], dim=1)


def decay_scan(x, log_decay, phi, psi, *, skip=None, initial_state=None,
               return_final_state=False):
    r"""The decay scan as a plain sequential loop over time (the oracle of the fused op):

        h_{t,d,r} = exp(a_{t,d,r}) h_{t-1,d,r} + psi_{t,g(d),r} x_{t,d}
        y_{t,d}   = sum_r phi_{t,g(d),r} h_{t,d,r} + skip_d x_{t,d}

    Args: see ``itnet_ext._validate_scan`` (x (B, T, D); log_decay a tensor broadcasting to
    (B, T, D, Rk), a (D, Rk) tensor or the pair (dt, A) meaning dt * A; phi, psi (B, T, Rk) or
    (B, T, G, Rk); skip (D,); initial_state (B, D, Rk), default 0).

    Returns y (B, T, D) in x's dtype, and the final state (B, D, Rk) when
    ``return_final_state``. Computed in float64 for float64 inputs, else float32.
    """
    from ._validate_scan import check_scan_inputs

    p = check_scan_inputs(x, log_decay, phi, psi, skip, initial_state)
    cd = _scan_compute_dtype(p.dtype)
    B, T, D, Rk = p.B, p.T, p.D, p.Rk
    xc = x.to(cd)
    phic, psic = p.phi.to(cd), p.psi.to(cd)
    h = (initial_state.to(cd) if initial_state is not None
         else torch.zeros(B, D, Rk, dtype=cd, device=x.device))
    # Per-step operands split off once with unbind: indexing x[:, t] inside the loop would
    # make the backward write a full-size zero gradient per step (O(T^2) time).
    grp = D // p.G
    xs = xc.unbind(1)
    phis = phic.repeat_interleave(grp, dim=2).unbind(1)                 # (B, D, Rk) each
    psis = psic.repeat_interleave(grp, dim=2).unbind(1)
    if p.form == "factored":
        dts, A = p.dt.to(cd).unbind(1), p.A.to(cd)
    elif p.form == "tensor" and p.log_decay.shape[1] != 1:
        lds = p.log_decay.to(cd).unbind(1)
    else:  # constant in time
        ld0 = (p.log_decay if p.form == "static" else p.log_decay[:, 0]).to(cd)
    ys = []
    for t in range(T):
        if p.form == "factored":
            a = dts[t][..., None] * A
        elif p.form == "tensor" and p.log_decay.shape[1] != 1:
            a = lds[t]
        else:
            a = ld0
        h = torch.exp(a) * h + psis[t] * xs[t][..., None]
        ys.append((phis[t] * h).sum(-1))
    y = torch.stack(ys, 1) if T > 0 else xc.new_zeros(B, 0, D)
    if skip is not None:
        y = y + skip.to(cd) * xc
    y = y.to(x.dtype)
    return (y, h.to(x.dtype)) if return_final_state else y


def decay_scan_dense(x, log_decay, phi, psi, *, skip=None, initial_state=None,
                     return_final_state=False):
    r"""The same map evaluated as a causal integral transform, O(T^2): one head per channel,

        y_t = sum_{s <= t} kappa(t, s) x_s + phi_t . (exp(L_t) h_0) + skip x_t,
        kappa(t, s) = sum_r phi_{t,r} psi_{s,r} exp(L_{t,r} - L_{s,r}),  L_t = sum_{k <= t} a_k,

    through ``integral_transform`` (the float64 oracle) in ``none`` mode with the content
    term q_t = phi_t exp(L_t), k_s = psi_s exp(-L_s), v_s = x_s, scale 1, causal. The proof
    that the scan is the O(T) evaluation of that kernel; the factors exp(+-L) limit it to
    short sequences or mild decays (|L| well inside the exponent range).
    """
    from ._validate_scan import check_scan_inputs

    p = check_scan_inputs(x, log_decay, phi, psi, skip, initial_state)
    cd = _scan_compute_dtype(p.dtype)
    B, T, D, Rk = p.B, p.T, p.D, p.Rk
    L = torch.cumsum(p.full_decay().to(cd), dim=1)                        # (B, T, D, Rk)
    grp = D // p.G
    phid = p.phi.to(cd).repeat_interleave(grp, dim=2)                      # (B, T, D, Rk)
    psid = p.psi.to(cd).repeat_interleave(grp, dim=2)
    q = (phid * torch.exp(L)).permute(0, 2, 1, 3)                          # (B, D, T, Rk)
    k = (psid * torch.exp(-L)).permute(0, 2, 1, 3)
    v = x.to(cd).permute(0, 2, 1)[..., None]                               # (B, D, T, 1)
    out = integral_transform(q, k, v, normalize="none", causal=True, scale=1.0)
    y = out[..., 0].permute(0, 2, 1)                                       # (B, T, D)
    hT = torch.einsum("bsdr,bsd->bdr", torch.exp(L[:, -1:] - L) * psid, x.to(cd)) \
        if T > 0 else torch.zeros(B, D, Rk, dtype=cd, device=x.device)
    if initial_state is not None:
        h0 = initial_state.to(cd)
        y = y + (phid * torch.exp(L) * h0[:, None]).sum(-1)
        hT = hT + (torch.exp(L[:, -1]) * h0 if T > 0 else h0)
    if skip is not None:
        y = y + skip.to(cd) * x.to(cd)
    y = y.to(x.dtype)
    return (y, hT.to(x.dtype)) if return_final_state else y
