"""How a sequence is split over the ranks of a process group (docs/design.md section 6).

The keys (and the queries, for self-attention) are cut into equal chunks along the
sequence. ``contiguous``: rank r holds chunk r of P. ``zigzag``: the sequence is cut into 2P
chunks and rank r holds chunks r and 2P-1-r, so under a causal mask every rank does the
same work (rank 0 holds the cheapest and the most expensive chunk, rank P-1 the two
middle ones): the load balancing of ring attention's causal variants.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

LAYOUTS = ("contiguous", "zigzag")

__all__ = ["LAYOUTS", "chunk_ids", "num_chunks", "shard", "unshard", "global_index"]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


def num_chunks(world: int, layout: str) -> int:
    """Chunks the whole sequence is cut into."""
    _check_layout(layout)
    return world if layout == "contiguous" else 2 * world


def chunk_ids(rank: int, world: int, layout: str) -> List[int]:
    """The global chunk indices rank ``rank`` holds, in the order of its local shard."""
    _check_layout(layout)
    return [rank] if layout == "contiguous" else [rank, 2 * world - 1 - rank]


def shard(x: Tensor, dim: int, rank: int, world: int, layout: str) -> Tensor:
    """Rank ``rank``'s shard of the whole tensor ``x`` along ``dim`` (a length divisible by
    the number of chunks)."""
    n, c = x.shape[dim], num_chunks(world, layout)
    if n % c:
        raise ValueError(f"shard: length {n} along dim {dim} is not divisible by the "
                         f"{c} chunks of the {layout!r} layout over {world} ranks")
    parts = x.chunk(c, dim)
    return torch.cat([parts[i] for i in chunk_ids(rank, world, layout)], dim)


def unshard(shards: Sequence[Tensor], dim: int, layout: str) -> Tensor:
    """The whole tensor from every rank's shard (in rank order): the inverse of
    :func:`shard`."""
    world = len(shards)
    per = len(chunk_ids(0, world, layout))
    chunks = [None] * num_chunks(world, layout)
    for r, s in enumerate(shards):
        for i, part in zip(chunk_ids(r, world, layout), s.chunk(per, dim)):
            chunks[i] = part
    return torch.cat(chunks, dim)


def global_index(n_local: int, rank: int, world: int, layout: str, *, dtype, device) -> Tensor:
    """Positions (1, n_local, 1): the global sequence index of each local element (the
    positions the single-process op defaults to)."""
    ids = chunk_ids(rank, world, layout)
    if n_local % len(ids):
        raise ValueError(f"global_index: {n_local} local elements do not split into "
                         f"{len(ids)} equal chunks")
    c = n_local // len(ids)
    idx = torch.cat([torch.arange(i * c, (i + 1) * c, device=device) for i in ids])
    return idx.to(dtype).view(1, n_local, 1)
