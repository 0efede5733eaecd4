"""The sparse (pair-list) integral transform's oracle (docs/design.md section 2, sampled /
neighbourhoods): the dense kernel evaluated on listed pairs only."""
from __future__ import annotations

import torch

from .validate import check_sparse_inputs
from .._common.naive import (_ELEMENT_BUDGET, _masked_softmax, _mlp_logits, _offset_rows,
                             _run_chunks, check_chunk_size, kernel_setup)


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
    ``itnet_ext.sparse.validate`` for the layouts. The kernel arguments are those of
    :func:`integral_transform`; the pair list replaces causal / masks / key_weight (fold a
    key weight w_j into log_w as log w_j). For the pairs s of query i (keys j_s, logits
    l_h(i, j_s) exactly as the dense op's):

        softmax: y_i = sum_s exp(l + log_w_s) v_{j_s} / sum_s exp(l + log_w_s)
        none:    y_i = sum_s l * exp(log_w_s) v_{j_s}

    A repeated key is a separate pair. A pair whose offset lies outside ``window`` is
    excluded, as the dense op excludes it from the support. A row without a pair outputs 0
    (lse -inf) with zero gradients. With log_w = log(w_s / (S q(j_s | i))) this is the
    importance-sampling estimate of docs/design.md section 2 (self-normalized for softmax, where
    the constant 1/S cancels).

    Differentiable w.r.t. q, k, v, u, t, W2, b2, offset_table and log_w (pathwise; the
    log_w gradient of an absent pair is 0); not w.r.t. positions or indices. Computed in
    float64 for float64 v, else float32; ``out`` in v's dtype, ``lse`` (B, H, N) in the
    computation dtype. Queries are processed in chunks (checkpointed when gradients are
    needed), as in the dense reference.
    """
    kw = dict(locals())  # the arguments by name (one spelling of the list: the signature)
    del kw["chunk_size"]  # the oracle's own evaluation choice
    sp = check_sparse_inputs(**kw)
    check_chunk_size(chunk_size)
    p = sp.kernel
    B, H, N, M, Dv = p.B, p.H, p.N, p.M, p.Dv
    device = p.device
    ks = kernel_setup(p, q=q, k=k, v=v, u=u, t=t, W2=W2, b2=b2, offset_table=offset_table,
                      q_pos=q_pos, k_pos=k_pos)
    cdt, qp, kp, lo, hi, sizes, strides, act = (ks.cdt, ks.qp, ks.kp, ks.lo, ks.hi, ks.sizes,
                                                ks.strides, ks.act)

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
    tensors = (ks.qc, ks.kc, ks.vc, ks.uc, ks.tc, ks.W2c, ks.b2c, ks.Ec, lwc)
    out, lse = _run_chunks(chunk_fn, N, chunk, tensors, (B, H, Dv), p.normalize == "softmax")
    out = out.to(v.dtype)
    return (out, lse) if return_lse else out
