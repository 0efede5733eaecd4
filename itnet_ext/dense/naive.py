"""The dense integral transform's oracle (docs/design.md section 1)."""
from __future__ import annotations

import torch

from .._common.kernel_args import check_inputs
from .._common.naive import (_ELEMENT_BUDGET, _masked_softmax, _mlp_logits, _offset_rows,
                             _run_chunks, check_chunk_size, kernel_setup)


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
    """Reference ``integral_transform``; see docs/design.md section 1."""
    kw = dict(locals())  # the arguments by name (one spelling of the list: the signature)
    del kw["chunk_size"]  # the oracle's own evaluation choice
    p = check_inputs(**kw)
    check_chunk_size(chunk_size)

    B, H, N, M, Dv = p.B, p.H, p.N, p.M, p.Dv
    device = p.device
    ks = kernel_setup(p, q=q, k=k, v=v, u=u, t=t, W2=W2, b2=b2, offset_table=offset_table,
                      q_pos=q_pos, k_pos=k_pos)
    cdt, qp, kp, lo, hi, sizes, strides, act = (ks.cdt, ks.qp, ks.kp, ks.lo, ks.hi, ks.sizes,
                                                ks.strides, ks.act)
    if key_padding_mask is not None:
        # padded keys take part in no pair: their k, v and t rows must not reach any result,
        # not even as 0 * NaN in the products below (the fused ops never read them)
        def unpad(x, pad):
            return None if x is None else torch.where(pad, torch.zeros((), dtype=cdt), x)

        kpm4 = key_padding_mask[:, None, :, None]
        ks.kc, ks.vc = unpad(ks.kc, kpm4), unpad(ks.vc, kpm4)
        ks.tc = unpad(ks.tc, key_padding_mask[:, :, None])
    wc = None if key_weight is None else key_weight.to(cdt)  # (B or 1, M)
    mask_f = attn_mask.to(cdt) if p.attn_mask_kind == "float" else None
    mask_b = attn_mask if p.attn_mask_kind == "bool" else None
    if attn_mask is not None:  # view as 4-D, broadcastable to (B, H, N, M)
        shape4 = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
        if mask_f is not None:
            mask_f = mask_f.reshape(shape4)
        else:
            mask_b = mask_b.reshape(shape4)

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
        # normalized first and exactly 0 off the support: a NaN row's 1 / denom then never
        # reaches, through 0 * NaN, the keys outside that row's support (nor their gradients)
        a = torch.where(support, pexp / denom_safe[..., None], torch.zeros((), dtype=cdt, device=device))
        out = torch.einsum("bhnm,bhmd->bhnd", a, vc)
        return out, lse

    # Chunk size: user bound, further capped by the per-chunk element budget.
    per_row = max(1, B * M * (H + p.R + 1))
    chunk = max(1, min(chunk_size, _ELEMENT_BUDGET // per_row))
    tensors = (ks.qc, ks.kc, ks.vc, ks.uc, ks.tc, ks.W2c, ks.b2c, ks.Ec, wc, mask_f)
    out, lse = _run_chunks(chunk_fn, N, chunk, tensors, (B, H, Dv), p.normalize == "softmax")
    out = out.to(v.dtype)
    return (out, lse) if return_lse else out
