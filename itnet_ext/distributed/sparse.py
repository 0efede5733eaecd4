"""The sparse (pair-list) op with its keys sharded over a process group (docs/design.md
section 6): a neighbourhood graph over a partitioned point cloud, whose pairs point at keys
on other ranks.

The pair list of this rank's queries holds global key indices (in the unsharded order of
the layout). Once per call it is split by the key's owner into one compact CSR list per
rank (local key indices, the pairs in their original order); each key block then meets
only its own pairs. Merge and backward as the dense op: partial (out, lse) merge exactly,
and ``sparse_bwd`` with the merged out / lse gives each block's exact share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

from ..dense.op import _num_queries
from ..sparse import op as _op  # noqa: F401  (registers itnet::sparse_*)
from .comm import world_of
from .layout import chunk_ids, num_chunks
from .merge import merge_into
from .ring import visit, visit_grad


@dataclass
class SparsePlan:
    group: object
    layout: str
    comm: str
    lo: list
    hi: list
    scale: float
    act: int
    softmax: bool


@dataclass
class Part:
    """The pairs of this rank's queries whose keys one rank owns (compact CSR)."""
    row_ptr: Tensor               # (B, N + 1)
    col_idx: Tensor               # (B, E_src) local key indices; entries >= row_ptr[:, N] pad
    log_w: Optional[Tensor]       # (B, E_src)
    perm: Tensor                  # (B, E_src) each entry's position in the caller's list
    listed: Tensor                # (B, E_src) bool: a real pair (not padding)


def split_pairs(row_ptr: Tensor, col_idx: Tensor, log_w: Optional[Tensor], n_keys: int,
                world: int, layout: str) -> List[Optional[Part]]:
    """The per-owner compact lists (None for an owner without pairs). ``n_keys``: keys
    per rank."""
    B, E = col_idx.shape
    N = row_ptr.shape[1] - 1
    per = len(chunk_ids(0, world, layout))
    C = n_keys // per
    owner_of = torch.empty(num_chunks(world, layout), dtype=torch.int64)
    slot_of = torch.empty_like(owner_of)
    for r in range(world):
        for slot, c in enumerate(chunk_ids(r, world, layout)):
            owner_of[c], slot_of[c] = r, slot
    owner_of, slot_of = owner_of.to(col_idx.device), slot_of.to(col_idx.device)
    e = torch.arange(E, device=col_idx.device).expand(B, E)
    listed = e < row_ptr[:, -1:]
    if log_w is not None:                  # an absent pair of the padded form
        listed = listed & ~torch.isneginf(log_w)
    col = torch.where(listed, col_idx, torch.zeros_like(col_idx))
    chunk = col // C
    owner = torch.where(listed, owner_of[chunk], torch.full_like(col, -1))
    local = slot_of[chunk] * C + col % C
    row = torch.searchsorted(row_ptr[:, 1:].contiguous(), e.contiguous(), right=True)
    parts = []
    for src in range(world):
        sel = owner == src
        counts = torch.zeros(B, N + 1, dtype=torch.int64, device=col.device)
        counts.scatter_add_(1, row.clamp(max=N), sel.long())
        total = counts[:, :N].sum(1)
        width = int(total.max()) if B else 0
        if width == 0:
            parts.append(None)
            continue
        rp = torch.cat([torch.zeros(B, 1, dtype=torch.int64, device=col.device),
                        counts[:, :N].cumsum(1)], 1)
        perm = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :width]
        keep = torch.arange(width, device=col.device)[None] < total[:, None]
        parts.append(Part(rp, local.gather(1, perm).contiguous(),
                          None if log_w is None else log_w.gather(1, perm).contiguous(),
                          perm, keep))
    return parts


class _ShardedSparse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: SparsePlan, parts, q, k, v, u, t, W2, b2, off, q_pos, k_pos, log_w):
        rank, world = world_of(plan.group)
        n_q = _num_queries(q, u, q_pos)
        B, H, _, Dv = v.shape
        out = v.new_zeros((B, H, n_q, Dv))
        lse = out.new_full((B, H, n_q), float("-inf")) if plan.softmax else v.new_empty((0,))
        acc = [(out, lse)]
        rows = slice(0, n_q)

        def block_fn(block, src):
            p = parts[src]
            if p is None:
                return
            kb, vb, tb, kpb = block
            o, l = torch.ops.itnet.sparse_fwd(q, kb, vb, u, tb, W2, b2, off, q_pos, kpb,
                                              p.row_ptr, p.col_idx, p.log_w, plan.lo,
                                              plan.hi, plan.scale, plan.act, plan.softmax)
            acc[0] = merge_into(acc[0], (o, l), plan.softmax, rows)
        visit(plan.group, plan.comm, [k, v, t, k_pos], block_fn)
        out, lse = acc[0]
        ctx.plan, ctx.parts = plan, parts
        ctx.has_log_w = log_w is not None
        ctx.log_w_shape = None if log_w is None else log_w.shape
        ctx.save_for_backward(q, k, v, u, t, W2, b2, off, q_pos, k_pos, out, lse)
        if not plan.softmax:
            ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        plan, parts = ctx.plan, ctx.parts
        q, k, v, u, t, W2, b2, off, q_pos, k_pos, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_out = grad_out.contiguous()
        glse = grad_lse.contiguous() if (plan.softmax and grad_lse is not None) else None
        local = [None if x is None else torch.zeros_like(x) for x in (q, u, W2, b2, off)]
        dlw = torch.zeros(ctx.log_w_shape, dtype=v.dtype, device=v.device) \
            if ctx.has_log_w else None

        def block_fn(block, src):
            p = parts[src]
            kb, vb, tb, kpb = block
            share = [torch.zeros_like(kb) if kb is not None else None, torch.zeros_like(vb),
                     torch.zeros_like(tb) if tb is not None else None]
            if p is None:
                return share
            g = torch.ops.itnet.sparse_bwd(grad_out, out, lse, glse, q, kb, vb, u, tb, W2, b2,
                                           off, q_pos, kpb, p.row_ptr, p.col_idx, p.log_w,
                                           plan.lo, plan.hi, plan.scale, plan.act,
                                           plan.softmax)
            dq, dk, dv, du, dt, dW2, db2, doff, dl = g
            for acc, dx in zip(local, (dq, du, dW2, db2, doff)):
                if acc is not None:
                    acc.add_(dx)
            if dlw is not None:
                dlw.scatter_add_(1, p.perm, torch.where(p.listed, dl, torch.zeros_like(dl)))
            return [s if s is None else s + d for s, d in zip(share, (dk, dv, dt))]
        dk, dv, dt = visit_grad(plan.group, plan.comm, [k, v, t, k_pos], block_fn)
        dq, du, dW2, db2, doff = local
        return (None, None, dq, dk, dv, du, dt, dW2, db2, doff, None, None, dlw)

