"""Pure-PyTorch references (oracles): the dense integral transform, the sparse (pair-list)
integral transform and the decay scan.

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

__all__ = ["integral_transform", "sparse_integral_transform", "decay_scan",
           "decay_scan_dense"]

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
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=cdt, device=device))
    pexp = torch.exp(z - m)                                    # exactly 0 off the support
    denom = pexp.sum(-1)
    nonempty = denom > 0
    denom_safe = torch.where(nonempty, denom, torch.ones((), dtype=cdt, device=device))
    lse = torch.where(nonempty, torch.log(denom_safe) + m[..., 0],
                      torch.full((), float("-inf"), dtype=cdt, device=device))
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
            e_ij = None
            if Ec is not None:
                off = kp[:, None, :, :] - qp[:, s:e, None, :]  # (Bp, n, M, D)
                e_ij = Ec[_offset_rows(off, lo, sizes, strides)]  # (Bp, n, M, R)
            logits = logits + _mlp_logits(
                p.R, act, W2c, b2c,
                u_i=None if uc is None else uc[:, s:e, None, :],  # (Bu, n, 1, R)
                t_j=None if tc is None else tc[:, None, :, :],    # (Bt, 1, M, R)
                e_ij=e_ij)

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
        pexp, denom_safe, lse = _masked_softmax(z, support)
        out = torch.einsum("bhnm,bhmd->bhnd", pexp, vc) / denom_safe[..., None]
        return out, lse

    # Chunk size: user bound, further capped by the per-chunk element budget.
    per_row = max(1, B * M * (H + p.R + 1))
    chunk = max(1, min(chunk_size, _ELEMENT_BUDGET // per_row))
    out, lse = _run_chunks(chunk_fn, N, chunk, (qc, kc, vc, uc, tc, W2c, b2c, Ec, wc, mask_f),
                           (B, H, Dv), p.normalize == "softmax")
    out = out.to(v.dtype)
    return (out, lse) if return_lse else out



# ------------------------------------------------------------------------------------------
# sparse integral transform (DESIGN section 2, sampled / neighbourhoods): listed pairs only
# ------------------------------------------------------------------------------------------
def _csr_to_padded(row_ptr, col_idx, log_w):
    """CSR pair lists -> padded (B, N, S), S the longest row over the batch.

    Returns (keys, log_w or None, listed): slot s of row (b, i) holds entry row_ptr[b, i] + s
    when listed[b, i, s]; other slots read entry 0 (masked by the caller). log_w is gathered,
    so its gradient flows back to the (B, E) tensor."""
    B, N = row_ptr.shape[0], row_ptr.shape[1] - 1
    lens = row_ptr[:, 1:] - row_ptr[:, :-1]                       # (B, N)
    S = int(lens.max()) if lens.numel() > 0 else 0
    slot = torch.arange(S, device=row_ptr.device)
    listed = slot < lens[..., None]                               # (B, N, S)
    entry = torch.where(listed, row_ptr[:, :-1, None] + slot, 0).reshape(B, N * S)
    keys = col_idx.gather(1, entry).reshape(B, N, S)
    lw = None if log_w is None else log_w.gather(1, entry).reshape(B, N, S)
    return keys, lw, listed


def _gather_keys(x, keys):
    """Rows of a key-side tensor x (B or 1, M, ...) at keys (B, n, S) -> (B, n, S, ...)."""
    if x.shape[0] == 1:
        return x[0][keys]
    bsel = torch.arange(x.shape[0], device=keys.device)[:, None, None]
    return x[bsel, keys]


def sparse_integral_transform(
    q=None, k=None, v=None, *,
    idx=None, log_w=None, row_ptr=None, col_idx=None,
    u=None, t=None, W2=None, b2=None,
    activation="gelu",
    offset_table=None,
    q_pos=None, k_pos=None,
    window=None,
    normalize="softmax",
    scale=None,
    return_lse=False,
    chunk_size=1024,
):
    r"""Reference sparse integral transform: the dense kernel evaluated on listed pairs only.

    The pairs are given padded (``idx`` (B, N, S), ``log_w`` (B, N, S), -inf = absent) or as
    CSR (``row_ptr`` (B, N + 1), ``col_idx`` (B, E), ``log_w`` (B, E)); see
    ``itnet_ext._validate_sparse`` for the layouts. The kernel arguments are those of
    :func:`integral_transform`; the pair list replaces causal / masks / key_weight (fold a
    key weight w_j into log_w as log w_j). For the pairs s of query i (keys j_s, logits
    l_h(i, j_s) exactly as the dense op's):

        softmax: y_i = sum_s exp(l + log_w_s) v_{j_s} / sum_s exp(l + log_w_s)
        none:    y_i = sum_s l * exp(log_w_s) v_{j_s}

    A repeated key is a separate pair. A pair whose offset lies outside ``window`` is
    excluded, as the dense op excludes it from the support. A row without a pair outputs 0
    (lse -inf) with zero gradients. With log_w = log(w_s / (S q(j_s | i))) this is the
    importance-sampling estimate of DESIGN section 2 (self-normalized for softmax, where
    the constant 1/S cancels).

    Differentiable w.r.t. q, k, v, u, t, W2, b2, offset_table and log_w (pathwise; the
    log_w gradient of an absent pair is 0); not w.r.t. positions or indices. Computed in
    float64 for float64 v, else float32; ``out`` in v's dtype, ``lse`` (B, H, N) in the
    computation dtype. Queries are processed in chunks (checkpointed when gradients are
    needed), as in the dense reference.
    """
    from ._validate_sparse import check_sparse_inputs

    sp = check_sparse_inputs(
        q, k, v, idx=idx, log_w=log_w, row_ptr=row_ptr, col_idx=col_idx, u=u, t=t, W2=W2,
        b2=b2, activation=activation, offset_table=offset_table, q_pos=q_pos, k_pos=k_pos,
        window=window, normalize=normalize, scale=scale, return_lse=return_lse)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    p = sp.kernel
    B, H, N, M, Dv = p.B, p.H, p.N, p.M, p.Dv
    device = p.device
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32

    def cast(x):
        return None if x is None else x.to(cdt)

    qc, kc, vc = cast(q), cast(k), cast(v)
    uc, tc, W2c, b2c, Ec = cast(u), cast(t), cast(W2), cast(b2), cast(offset_table)

    # ---- the pair list, padded (B, N, S) ----
    if sp.form == "padded":
        keys, lw, listed = idx, log_w, None
    else:
        keys, lw, listed = _csr_to_padded(row_ptr, col_idx, log_w)
    present = torch.ones(keys.shape, dtype=torch.bool, device=device) if listed is None \
        else listed
    if lw is not None:
        present = present & (lw.detach() != float("-inf"))
    if M == 0:  # every pair is absent (validated); drop them so that no gather reads a key
        keys, present = keys[..., :0], present[..., :0]
        lw = None if lw is None else lw[..., :0]
    S = keys.shape[-1]
    keys = torch.where(present, keys, torch.zeros((), dtype=keys.dtype, device=device))
    # Absent pairs get log-weight 0 here and are masked below: -inf never enters the
    # arithmetic, so no inf - inf or 0 * inf reaches the output or the gradients.
    lwc = None if lw is None else \
        torch.where(present, lw.to(cdt), torch.zeros((), dtype=cdt, device=device))

    # Positions (never differentiated): float64, default integer index (1, N, 1) / (1, M, 1).
    qp = kp = None
    if p.needs_positions:
        qp = (q_pos.detach().to(torch.float64) if q_pos is not None
              else torch.arange(N, device=device, dtype=torch.float64).reshape(1, N, 1))
        kp = (k_pos.detach().to(torch.float64) if k_pos is not None
              else torch.arange(M, device=device, dtype=torch.float64).reshape(1, M, 1))
        lo = torch.tensor([w[0] for w in p.window], dtype=torch.float64, device=device)
        hi = torch.tensor([w[1] for w in p.window], dtype=torch.float64, device=device)
    if Ec is not None:
        sizes = torch.tensor(p.offset_sizes, dtype=torch.long, device=device)
        strides = torch.tensor(p.offset_strides, dtype=torch.long, device=device)
    act = _activation(p.activation) if p.mlp else None

    def chunk_fn(s, e, qc, kc, vc, uc, tc, W2c, b2c, Ec, lwc):
        n = e - s
        kj = keys[:, s:e]                                         # (B, n, S)
        support = present[:, s:e]                                 # (B, n, S)
        if p.needs_positions:
            off = _gather_keys(kp, kj) - qp[:, s:e, None, :]      # (B, n, S, D)
            support = support & ((off >= lo) & (off <= hi)).all(-1)
        # ---- logits (B, H, n, S): the dense op's terms on the gathered keys ----
        logits = torch.zeros(B, H, n, S, dtype=cdt, device=device)
        if p.content:
            k_g = _gather_keys(kc.transpose(1, 2), kj)            # (B, n, S, H, Dk)
            logits = logits + p.scale * torch.einsum("bhnd,bnshd->bhns", qc[:, :, s:e], k_g)
        if p.mlp:
            logits = logits + _mlp_logits(
                p.R, act, W2c, b2c,
                u_i=None if uc is None else uc[:, s:e, None, :],  # (Bu, n, 1, R)
                t_j=None if tc is None else _gather_keys(tc, kj),  # (B, n, S, R)
                e_ij=None if Ec is None else Ec[_offset_rows(off, lo, sizes, strides)])
        support = support[:, None]                                # (B, 1, n, S)
        v_g = _gather_keys(vc.transpose(1, 2), kj)                # (B, n, S, H, Dv)

        # ---- weights and output ----
        if p.normalize == "none":
            a = logits if lwc is None else logits * torch.exp(lwc[:, None, s:e])
            a = torch.where(support, a, torch.zeros((), dtype=cdt, device=device))
            return torch.einsum("bhns,bnshd->bhnd", a, v_g), None
        z = logits if lwc is None else logits + lwc[:, None, s:e]
        pexp, denom_safe, lse = _masked_softmax(z, support)
        out = torch.einsum("bhns,bnshd->bhnd", pexp, v_g) / denom_safe[..., None]
        return out, lse

    # Chunk size: user bound, further capped by the per-chunk element budget (the gathered
    # key-side rows dominate: B * S * (H * (Dk + Dv + 1) + R + D) per query).
    per_row = max(1, B * S * (H * (p.Dk + Dv + 1) + p.R + p.D + 1))
    chunk = max(1, min(chunk_size, _ELEMENT_BUDGET // per_row))
    out, lse = _run_chunks(chunk_fn, N, chunk, (qc, kc, vc, uc, tc, W2c, b2c, Ec, lwc),
                           (B, H, Dv), p.normalize == "softmax")
    out = out.to(v.dtype)
    return (out, lse) if return_lse else out


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
