"""The decay scan's oracles (docs/design.md section 2, low-rank causal with a decay): the sequential
loop and the same kernel evaluated densely through the dense oracle."""
from __future__ import annotations

import torch

from .._common.checks import compute_dtype
from ..dense.naive import integral_transform
from .validate import check_scan_inputs


def decay_scan(x, log_decay, phi, psi, *, skip=None, initial_state=None,
               return_final_state=False):
    r"""The decay scan as a plain sequential loop over time (the oracle of the fused op):

        h_{t,d,r} = exp(a_{t,d,r}) h_{t-1,d,r} + psi_{t,g(d),r} x_{t,d}
        y_{t,d}   = sum_r phi_{t,g(d),r} h_{t,d,r} + skip_d x_{t,d}

    Args: see ``itnet_ext.scan.validate`` (x (B, T, D); log_decay a tensor broadcasting to
    (B, T, D, Rk), a (D, Rk) tensor or the pair (dt, A) meaning dt * A; phi, psi (B, T, Rk) or
    (B, T, G, Rk); skip (D,); initial_state (B, D, Rk), default 0).

    Returns y (B, T, D) in x's dtype, and the final state (B, D, Rk) when
    ``return_final_state``. Computed in float64 for float64 inputs, else float32.
    """
    p = check_scan_inputs(x, log_decay, phi, psi, skip, initial_state)
    cd = compute_dtype(p.dtype)
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
    p = check_scan_inputs(x, log_decay, phi, psi, skip, initial_state)
    cd = compute_dtype(p.dtype)
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
