"""The dense integral transform with its keys sharded over a process group
(docs/design.md section 6): ring or all-gather of the key blocks, exact merge of the partial
(out, lse), and a backward that sends dK / dV / dt / dw back around the ring.

Every rank holds its shard of the queries and of the keys, cut by the same layout
(:mod:`itnet_ext.distributed.layout`). A key block travels with everything that belongs to
its keys: k, v, t, positions, key weights, the padding mask. The query side (q, u, query
positions) and the replicated parameters (W2, b2, offset table) stay put; their gradients
are this rank's contribution (summed over ranks by the data-parallel reduction).

Backward (the flash-attention trick): with the merged out and lse of the whole support, a
block's gradients from ``dense_bwd`` are exactly its share of the whole gradient (delta =
rowsum(dO * O) - dlse and P = exp(l - lse) are global quantities), so blocks need no
second merge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..dense.op import _num_queries  # (importing it registers itnet::dense_*)
from .comm import world_of
from .layout import chunk_ids
from .merge import merge_into
from .ring import visit, visit_grad

# a key block is [k, v, t, k_pos, key_weight, key_padding_mask]; the gradients that travel
# back are those of k, v, t, key_weight (their indices in the block)
KEY_GRADS = (0, 1, 2, 4)


@dataclass
class Plan:
    group: object
    layout: str
    comm: str                 # "ring" | "allgather"
    lo: list
    hi: list
    scale: float
    act: int
    softmax: bool
    causal: bool


def _pairs(plan: Plan, rank: int, src: int, world: int, n_q: int, n_k: int):
    """(query rows, key rows, causal flag) of the calls that evaluate this rank's queries
    against ``src``'s key block. Not causal: one call. Causal: chunk by chunk, skipping a
    key chunk after the query chunk, a causal call on the same chunk (equal lengths, so
    the op's top-left aligned mask is the global one), a full call before it."""
    if not plan.causal:
        return [(slice(0, n_q), slice(0, n_k), False)]
    qi, ki = chunk_ids(rank, world, plan.layout), chunk_ids(src, world, plan.layout)
    cq, ck = n_q // len(qi), n_k // len(ki)
    out = []
    for a, ia in enumerate(qi):
        for b, ib in enumerate(ki):
            if ib <= ia:
                out.append((slice(a * cq, (a + 1) * cq), slice(b * ck, (b + 1) * ck), ib == ia))
    return out


def _rows(x: Optional[Tensor], dim: int, s: slice) -> Optional[Tensor]:
    """x's rows ``s`` along ``dim`` (a view), None for an absent argument."""
    return None if x is None else x.narrow(dim, s.start, s.stop - s.start)


def _q_side(q, u, q_pos, s):
    return _rows(q, 2, s), _rows(u, 1, s), _rows(q_pos, 1, s)


def _k_side(block, s):
    k, v, t, k_pos, kw, kpm = block
    return (_rows(k, 2, s), _rows(v, 2, s), _rows(t, 1, s), _rows(k_pos, 1, s),
            _rows(kw, 1, s), _rows(kpm, 1, s))


def _static(plan, causal):
    return (plan.lo, plan.hi, plan.scale, plan.act, plan.softmax, causal)


def _forward_block(plan, acc, qs, params, block, pairs):
    q, u, q_pos = qs
    W2, b2, off = params
    for qr, kr, causal in pairs:
        qa, ua, pa = _q_side(q, u, q_pos, qr)
        k, v, t, kp, kw, kpm = _k_side(block, kr)
        o, l = torch.ops.itnet.dense_fwd(qa, k, v, ua, t, W2, b2, off, pa, kp, kw, kpm, None,
                                         *_static(plan, causal))
        acc = merge_into(acc, (o, l), plan.softmax, qr)
    return acc


def _backward_block(plan, go, out, lse, glse, qs, params, block, pairs, q_acc, p_acc):
    """Add this block's gradient shares to the query-side / parameter accumulators; return
    the key-side ones (dk, dv, dt, dw) shaped like the block."""
    q, u, q_pos = qs
    W2, b2, off = params
    k_acc = [None if block[i] is None else torch.zeros_like(block[i]) for i in KEY_GRADS]
    for qr, kr, causal in pairs:
        qa, ua, pa = _q_side(q, u, q_pos, qr)
        k, v, t, kp, kw, kpm = _k_side(block, kr)
        g = torch.ops.itnet.dense_bwd(
            _rows(go, 2, qr), _rows(out, 2, qr), _rows(lse, 2, qr) if plan.softmax else lse,
            _rows(glse, 2, qr) if glse is not None else None,
            qa, k, v, ua, t, W2, b2, off, pa, kp, kw, kpm, None, *_static(plan, causal))
        dq, dk, dv, du, dt, dW2, db2, doff, dkw = g
        for i, (dx, dim, rows) in enumerate(((dq, 2, qr), (du, 1, qr))):
            if q_acc[i] is not None:
                _rows(q_acc[i], dim, rows).add_(dx)
        for i, dx in enumerate((dW2, db2, doff)):
            if p_acc[i] is not None:
                p_acc[i].add_(dx)
        for i, (dx, dim) in enumerate(((dk, 2), (dv, 2), (dt, 1), (dkw, 1))):
            if k_acc[i] is not None:
                _rows(k_acc[i], dim, kr).add_(dx)
    return k_acc


class _ShardedDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: Plan, q, k, v, u, t, W2, b2, off, q_pos, k_pos, kw, kpm):
        rank, world = world_of(plan.group)
        n_q = _num_queries(q, u, q_pos)
        B, H, n_k, Dv = v.shape
        out = v.new_zeros((B, H, n_q, Dv), dtype=torch.float32 if v.dtype in
                          (torch.float16, torch.bfloat16) else v.dtype)
        lse = out.new_full((B, H, n_q), float("-inf")) if plan.softmax else v.new_empty((0,))
        acc = [(out, lse)]
        qs, params = (q, u, q_pos), (W2, b2, off)

        def block_fn(block, src):
            acc[0] = _forward_block(plan, acc[0], qs, params, block,
                                    _pairs(plan, rank, src, world, n_q, n_k))
        visit(plan.group, plan.comm, [k, v, t, k_pos, kw, kpm], block_fn)
        out, lse = acc[0]
        out = out.to(v.dtype)
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, u, t, W2, b2, off, q_pos, k_pos, kw, kpm, out, lse)
        if not plan.softmax:
            ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        plan = ctx.plan
        q, k, v, u, t, W2, b2, off, q_pos, k_pos, kw, kpm, out, lse = ctx.saved_tensors
        rank, world = world_of(plan.group)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_out = grad_out.contiguous()
        glse = grad_lse.contiguous() if (plan.softmax and grad_lse is not None) else None
        n_q, n_k = out.shape[2], v.shape[2]
        q_acc = [None if x is None else torch.zeros_like(x) for x in (q, u)]
        p_acc = [None if x is None else torch.zeros_like(x) for x in (W2, b2, off)]
        qs, params = (q, u, q_pos), (W2, b2, off)

        def block_fn(block, src):
            return _backward_block(plan, grad_out, out, lse, glse, qs, params, block,
                                   _pairs(plan, rank, src, world, n_q, n_k), q_acc, p_acc)
        dk, dv, dt, dkw = visit_grad(plan.group, plan.comm, [k, v, t, k_pos, kw, kpm], block_fn)
        dq, du = q_acc
        dW2, db2, doff = p_acc
        return (None, dq, dk, dv, du, dt if t is not None else None, dW2, db2, doff, None,
                None, dkw if kw is not None else None, None)
