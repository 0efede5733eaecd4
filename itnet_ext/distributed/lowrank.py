"""The low-rank op with its keys sharded over a process group (docs/design.md section 6).

The keys enter only through the state S = sum_j psi_j [v_j, 1]^T (F x (Dv + 1) per batch
and head; the ones channel is the softmax denominator). Non-causal: S is all-reduced, once,
and every rank reads its queries against the whole. Causal (contiguous layout): rank r's
queries see the exclusive prefix of the per-rank states (ranks before r) plus the causal
prefix inside its own shard. The communication is the state, independent of the sequence
length: F (Dv + 1) per batch and head, all-reduced (non-causal) or all-gathered (causal).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..lowrank.functional import features, lowrank_integral_transform as _local
from ..lowrank.validate import check_lowrank_inputs
from .comm import Ring, agree, world_of


def _count_all_reduce(x, group):
    """Bytes a rank sends in a ring all-reduce of x: 2 (P - 1) / P of it."""
    world = world_of(group)[1]
    Ring.sent_total += 2 * (world - 1) * x.numel() * x.element_size() // world


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's term is the sum of the ranks' output
    gradients (each rank's loss reads the same sum)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.contiguous().clone()
        dist.all_reduce(y, group=group)
        _count_all_reduce(y, group)
        return y

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        _count_all_reduce(g, ctx.group)
        return g, None


class _AllGatherStack(torch.autograd.Function):
    """(world, ...) stack of every rank's x; backward: the summed gradients of my slot."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        rank, world = world_of(group)
        ctx.rank = rank
        got = [torch.empty_like(x.contiguous()) for _ in range(world)]
        dist.all_gather(got, x.contiguous(), group=group)
        Ring.sent_total += (world - 1) * x.numel() * x.element_size()
        return torch.stack(got)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        _count_all_reduce(g, ctx.group)
        return g[ctx.rank], None


def _sync_projection(fm, group) -> None:
    """A FAVOR+ module redraws its projection per rank: make every rank use rank 0's."""
    proj = getattr(fm, "projection", None)
    if isinstance(proj, Tensor):
        dist.broadcast(proj.data, dist.get_global_rank(group, 0) if group is not None else 0,
                       group=group)


def lowrank_integral_transform(q, k, v, *, feature_map="identity", normalize="none",
                               causal=False, key_feature_map=None, eps=0.0, group=None):
    r""":func:`itnet_ext.functional.lowrank_integral_transform` over keys sharded across
    ``group`` (contiguous layout: rank r holds the r-th slice of the sequence). Same
    arguments; this rank's q, k, v shards. Returns this rank's rows of the single-process
    result. FAVOR+ maps are redrawn as usual and rank 0's projection is broadcast; FAVOR+
    with ``normalize="softmax"`` is refused (its key stabilizer is a max over the local
    slice, which would differ between ranks)."""
    from .functional import _check_mode
    _check_mode("contiguous", "ring")
    rank, world = world_of(group)
    kw = dict(feature_map=feature_map, normalize=normalize, causal=causal,
              key_feature_map=key_feature_map, eps=eps)
    if world == 1:
        return _local(q, k, v, **kw)
    B, H, N, M, Dk, Dv = check_lowrank_inputs(q, k, v, normalize, causal, eps)
    if causal and N != M:
        raise ValueError(f"causal: needs equal query and key shards, got {N} queries and "
                         f"{M} keys on rank {rank}")
    softmax = normalize == "softmax"
    maps = [feature_map] + ([key_feature_map] if key_feature_map is not None else [])
    for fm in {id(m): m for m in maps}.values():
        if softmax and type(fm).__name__ == "PositiveRandomFeatures":
            raise ValueError("feature_map: FAVOR+ with normalize='softmax' is not supported "
                             "with sharded keys (its key stabilizer is a per-slice max); "
                             "use normalize='none' or a deterministic map")
        if hasattr(fm, "maybe_redraw"):
            fm.maybe_redraw()
            _sync_projection(fm, group)
    agree(group, v,
          [("q", q), ("k", k), ("v", v)])
    phi, psi, cdt = features(q, k, v, feature_map=feature_map,
                             key_feature_map=key_feature_map, normalize=normalize)
    vc = v.to(cdt)
    if softmax:
        vc = torch.cat([vc, vc.new_ones(B, H, M, 1)], -1)
    state = torch.einsum("bhmf,bhmd->bhfd", psi, vc)              # this rank's keys
    if not causal:
        num = torch.einsum("bhnf,bhfd->bhnd", phi, _AllReduceSum.apply(state, group))
    else:
        before = _AllGatherStack.apply(state, group)[:rank].sum(0)
        inside = _local(phi, psi, vc, feature_map="identity", normalize="none", causal=True)
        num = inside + torch.einsum("bhnf,bhfd->bhnd", phi, before)
    if not softmax:
        return num.to(v.dtype)
    den = num[..., Dv:]
    keep = den.abs() > eps
    safe = torch.where(keep, den, torch.ones_like(den))
    return torch.where(keep, num[..., :Dv] / safe, torch.zeros_like(safe)).to(v.dtype)
