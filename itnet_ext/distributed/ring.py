"""Visiting every rank's key block: the ring pass and the all-gather variant, forward and
backward, shared by the sharded dense and sparse ops (docs/design.md section 6).

A key block is a list of tensors (None for absent ones) that belong to the keys of one
rank. ``visit`` calls ``fn(block, src)`` once per rank ``src``. ``visit_grad`` does the same
with ``fn`` returning that block's gradient share (a list, None for no gradient); the shares
of every rank are summed at the block's owner, which gets its own block's gradients back.
Ring: the next block's transfer overlaps ``fn`` on the current one; in the backward the
accumulated share travels one hop behind its block, and a last hop brings it home.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .comm import Ring, world_of

__all__ = ["visit", "visit_grad"]


def _gather(group, block) -> List[list]:
    """Every rank's block, indexed by rank (the all-gather variant)."""
    rank, world = world_of(group)
    per = [[None] * len(block) for _ in range(world)]
    for i, x in enumerate(block):
        if x is None:
            continue
        x = x.contiguous()
        got = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(got, x, group=group)
        Ring.sent_total += x.numel() * x.element_size() * (world - 1)   # as a ring all-gather
        for r in range(world):
            per[r][i] = got[r]
    return per


def visit(group, comm: str, block: list, fn: Callable[[list, int], None]) -> None:
    """Call ``fn(block_of_src, src)`` for every rank."""
    rank, world = world_of(group)
    if comm == "allgather":
        blocks = _gather(group, block)
        for s in range(world):
            fn(blocks[(rank - s) % world], (rank - s) % world)
        return
    ring = Ring(group)
    for step in range(world):
        handle = None
        if step < world - 1:
            nxt, handle = ring.start(block)
        fn(block, (rank - step) % world)
        if handle is not None:
            ring.wait(handle)
            block = nxt


def _add(a: list, b: list) -> list:
    return [x if y is None else y if x is None else x + y for x, y in zip(a, b)]


def visit_grad(group, comm: str, block: list,
               fn: Callable[[list, int], List[Optional[Tensor]]]) -> List[Optional[Tensor]]:
    """Call ``fn`` for every rank's block; return this rank's block's summed shares."""
    rank, world = world_of(group)
    if comm == "allgather":
        blocks = _gather(group, block)
        shares = {s: fn(blocks[s], s) for s in range(world)}
        return _reduce_to_owner(group, [shares[s] for s in range(world)])
    ring = Ring(group)
    acc_prev = None
    for step in range(world):
        kv_h = g_h = None
        if step < world - 1:
            nxt, kv_h = ring.start(block)
        if acc_prev is not None:           # the share of this block the ranks before added
            g_in, g_h = ring.start(acc_prev)
        share = fn(block, (rank - step) % world)
        if g_h is not None:
            ring.wait(g_h)
            share = _add(share, g_in)
        acc_prev = share
        if kv_h is not None:
            ring.wait(kv_h)
            block = nxt
    return ring.exchange(acc_prev)          # the last hop: every share comes home


def _reduce_to_owner(group, shares: List[list]) -> list:
    """Sum over ranks of every rank's share of each block, kept at the block's owner."""
    rank, world = world_of(group)
    out = []
    for i in range(len(shares[0])):
        if shares[0][i] is None:
            out.append(None)
            continue
        parts = [s[i].contiguous() for s in shares]
        if dist.get_backend(group) == "nccl":
            mine = torch.empty_like(parts[rank])
            dist.reduce_scatter(mine, parts, group=group)
        else:                                  # gloo has no reduce-scatter
            whole = torch.stack(parts)
            dist.all_reduce(whole, group=group)
            mine = whole[rank].clone()
        # a ring reduce-scatter sends (P - 1) / P of the stack; gloo's all-reduce twice that
        Ring.sent_total += parts[0].numel() * parts[0].element_size() * (world - 1) * \
            (1 if dist.get_backend(group) == "nccl" else 2)
        out.append(mine)
    return out
