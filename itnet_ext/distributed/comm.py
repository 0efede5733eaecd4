"""Point-to-point ring exchange and cross-rank agreement checks over a process group.

Every rank posts its sends and receives without blocking (``isend`` / ``irecv``), computes,
then waits: the transfer of the next key block overlaps the work on the current one. The
NCCL and gloo paths are the same code.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Ring", "agree", "world_of"]


def world_of(group) -> tuple:
    """(rank in group, group size) of this process."""
    return dist.get_rank(group), dist.get_world_size(group)


class Ring:
    """Sends to the next rank of ``group`` and receives from the previous one."""

    def __init__(self, group):
        self.group = group
        rank, world = world_of(group)
        self.next = dist.get_global_rank(group, (rank + 1) % world) if group is not None \
            else (rank + 1) % world
        self.prev = dist.get_global_rank(group, (rank - 1) % world) if group is not None \
            else (rank - 1) % world

    sent_total = 0     # bytes every Ring of this process has sent (read by the benchmark)

    def start(self, tensors: Sequence[Optional[Tensor]]):
        """Post the exchange of ``tensors`` (None entries travel as None): returns
        (buffers the previous rank's tensors arrive in, a handle for :meth:`wait`)."""
        reqs, bufs, keep = [], [], []
        for x in tensors:
            if x is None:
                bufs.append(None)
                continue
            x = x.contiguous()
            keep.append(x)                     # alive until the send completes
            buf = torch.empty_like(x)
            # a pair of ranks exchanges in posting order: both sides post in the same order
            reqs.append(dist.isend(x, self.next, group=self.group))
            reqs.append(dist.irecv(buf, self.prev, group=self.group))
            bufs.append(buf)
            Ring.sent_total += x.numel() * x.element_size()
        return bufs, (reqs, keep)

    @staticmethod
    def wait(handle) -> None:
        for r in handle[0]:
            r.wait()

    def exchange(self, tensors):
        bufs, h = self.start(tensors)
        self.wait(h)
        return bufs


_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def agree(group, ref: Tensor, named: Sequence[tuple]) -> None:
    """Raise the same clear ValueError on every rank unless all ranks pass tensors of the
    same presence, shape, dtype and device type for each ``(name, tensor)``. One all-gather
    of a small int64 vector: no rank can hang waiting for a partner that raised."""
    meta: List[int] = []
    for _, x in named:
        if x is None:
            meta += [0] * 11
            continue
        shape = list(x.shape) + [-1] * (8 - x.dim())
        dt = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else 9
        meta += [1, dt, 1 if x.is_cuda else 0] + shape[:8]
    # NCCL collectives need a CUDA tensor (ref's device), gloo a CPU one
    device = ref.device if dist.get_backend(group) == "nccl" else "cpu"
    mine = torch.tensor(meta, dtype=torch.int64, device=device)
    rank, world = world_of(group)
    got = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(got, mine, group=group)
    for r, other in enumerate(got):
        for i, (name, _) in enumerate(named):
            a, b = got[0][11 * i:11 * (i + 1)].tolist(), other[11 * i:11 * (i + 1)].tolist()
            if a == b:
                continue
            what = ("presence" if a[0] != b[0] else "dtype" if a[1] != b[1] else
                    "device type" if a[2] != b[2] else "shape")
            shape = lambda m: tuple(s for s in m[3:] if s >= 0)
            raise ValueError(
                f"{name}: every rank must pass the same {what} (equal shards); rank 0 has "
                f"{'none' if not a[0] else shape(a)}{'' if not a[0] else ' ' + str(_dt(a[1]))}"
                f"{'' if not a[0] else (' cuda' if a[2] else ' cpu')}, rank {r} has "
                f"{'none' if not b[0] else shape(b)}{'' if not b[0] else ' ' + str(_dt(b[1]))}"
                f"{'' if not b[0] else (' cuda' if b[2] else ' cpu')}")


def _dt(i):
    return _DTYPES[i] if i < len(_DTYPES) else "other dtype"
