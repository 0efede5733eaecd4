"""The dense integral transform's oracle (DESIGN section 1)."""
from __future__ import annotations

import torch

from .._common.kernel_args import check_inputs
from .._common.naive import (_ELEMENT_BUDGET, _activation, _masked_softmax, _mlp_logits,
                      _offset_rows, _run_chunks)


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
