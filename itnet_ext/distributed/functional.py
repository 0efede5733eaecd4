"""Public entry of the sharded dense integral transform (docs/design.md section 6)."""
from __future__ import annotations

import torch

from .._common.checks import window_bounds
from .._common.kernel_args import check_inputs
from .._common.names import ACTIVATIONS
from ..dense.functional import integral_transform as _local
from .comm import agree, world_of
from .dense import Plan, _ShardedDense
from .layout import LAYOUTS, chunk_ids, global_index

__all__ = ["integral_transform", "sparse_integral_transform"]

COMMS = ("ring", "allgather")


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
    group=None,
    layout="contiguous",
    comm="ring",
):
    r""":func:`itnet_ext.functional.integral_transform` over keys sharded across ``group``.

    Every rank passes its shard, cut by ``layout`` (:func:`itnet_ext.distributed.shard`):
    q, u, q_pos its queries; k, v, t, k_pos, key_weight, key_padding_mask its keys. The
    result is this rank's rows of the single-process op on the whole sequence: outputs
    equal to rounding, gradients of the sharded inputs likewise. The replicated W2, b2 and
    offset_table get this rank's contribution (the data-parallel all-reduce sums them).

    Args (beyond the single-process op's):
        group: the process group (None: the default group). Size 1: the local op.
        layout: ``"contiguous"`` or ``"zigzag"`` (causal load balancing).
        comm: ``"ring"`` (P2P pass of key blocks, overlapped with compute) or
            ``"allgather"`` (every key block gathered at once; less latency, P times the
            key memory).

    Positions default to the global sequence index of the layout. ``causal`` is index
    based on that global index and needs equal query and key shards. ``attn_mask`` is
    not supported (its key columns would have to be sharded too): pass a padding mask,
    a window or key weights.
    """
    _check_mode(layout, comm)
    kwargs = dict(u=u, t=t, W2=W2, b2=b2, activation=activation, offset_table=offset_table,
                  q_pos=q_pos, k_pos=k_pos, normalize=normalize, key_weight=key_weight,
                  causal=causal, window=window, key_padding_mask=key_padding_mask,
                  attn_mask=attn_mask, scale=scale, return_lse=return_lse)
    rank, world = world_of(group)
    if world == 1:
        return _local(q, k, v, **kwargs)
    if attn_mask is not None:
        raise ValueError("attn_mask: not supported with sharded keys; express it as "
                         "key_padding_mask, window or key_weight")
    prob = check_inputs(q=q, k=k, v=v, **kwargs)
    if v.shape[2] % len(chunk_ids(rank, world, layout)):
        raise ValueError(f"v: the {layout!r} layout needs a shard length divisible by "
                         f"{len(chunk_ids(rank, world, layout))}, got {v.shape[2]} keys")
    n_q = prob.N
    if causal and n_q != v.shape[2]:
        raise ValueError(f"causal: needs equal query and key shards, got {n_q} queries and "
                         f"{v.shape[2]} keys on rank {rank}")
    if prob.window is not None and q_pos is None and k_pos is None:
        q_pos = global_index(n_q, rank, world, layout, dtype=v.dtype, device=v.device)
        k_pos = global_index(v.shape[2], rank, world, layout, dtype=v.dtype, device=v.device)
    agree(group, v,
          [("q", q), ("k", k), ("v", v), ("u", u), ("t", t), ("W2", W2), ("b2", b2),
           ("offset_table", offset_table), ("q_pos", q_pos), ("k_pos", k_pos),
           ("key_weight", key_weight), ("key_padding_mask", key_padding_mask)])
    lo, hi = window_bounds(prob.window)
    plan = Plan(group, layout, comm, lo, hi, float(prob.scale),
                ACTIVATIONS.index(prob.activation), prob.normalize == "softmax", bool(causal))
    out, lse = _ShardedDense.apply(plan, q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos,
                                   key_weight, key_padding_mask)
    return (out, lse) if return_lse else out


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
    group=None,
    layout="contiguous",
    comm="ring",
):
    r""":func:`itnet_ext.functional.sparse_integral_transform` with its keys sharded over
    ``group``: this rank's queries (q, u, q_pos, and their pairs ``idx`` / ``row_ptr``,
    ``col_idx``, ``log_w``) and its keys (k, v, t, k_pos). The pair lists hold *global* key
    indices, in the unsharded order of ``layout``; a pair may point at a key on any rank.
    The result is this rank's rows of the single-process op on the whole key set.
    ``group``, ``layout``, ``comm``: as in :func:`integral_transform`.
    """
    from ..sparse.functional import sparse_integral_transform as _local_sparse
    from ..sparse.validate import check_sparse_inputs
    from .sparse import SparsePlan, _ShardedSparse, split_pairs
    _check_mode(layout, comm)
    kwargs = dict(idx=idx, log_w=log_w, row_ptr=row_ptr, col_idx=col_idx, u=u, t=t, W2=W2,
                  b2=b2, activation=activation, offset_table=offset_table, q_pos=q_pos,
                  k_pos=k_pos, window=window, normalize=normalize, scale=scale,
                  return_lse=return_lse)
    rank, world = world_of(group)
    if world == 1:
        return _local_sparse(q, k, v, **kwargs)
    # shapes and kinds (the index values are global: checked below against the whole set)
    sp = check_sparse_inputs(q=q, k=k, v=v, **kwargs, check_values=False)
    prob = sp.kernel
    n_k = v.shape[2]
    per = len(chunk_ids(rank, world, layout))
    if n_k % per:
        raise ValueError(f"v: the {layout!r} layout needs a shard length divisible by {per}, "
                         f"got {n_k} keys")
    if sp.form == "padded":
        B, N, S = idx.shape
        row_ptr = (torch.arange(N + 1, device=idx.device, dtype=torch.int64) * S).expand(B, N + 1)
        col_idx = idx.reshape(B, N * S)
        log_w = None if log_w is None else log_w.reshape(B, N * S)
    _check_global_pairs(row_ptr, col_idx, log_w, n_k * world, padded=sp.form == "padded")
    if prob.window is not None and q_pos is None and k_pos is None:
        q_pos = global_index(prob.N, rank, world, layout, dtype=v.dtype, device=v.device)
        k_pos = global_index(n_k, rank, world, layout, dtype=v.dtype, device=v.device)
    agree(group, v,
          [("k", k), ("v", v), ("t", t), ("W2", W2), ("b2", b2),
           ("offset_table", offset_table), ("k_pos", k_pos), ("log_w", _kind(log_w))])
    parts = split_pairs(row_ptr, col_idx, log_w, n_k, world, layout)
    lo, hi = window_bounds(prob.window)
    plan = SparsePlan(group, layout, comm, lo, hi, float(prob.scale),
                      ACTIVATIONS.index(prob.activation), prob.normalize == "softmax")
    out, lse = _ShardedSparse.apply(plan, parts, q, k, v, u, t, W2, b2, offset_table, q_pos,
                                    k_pos, log_w)
    return (out, lse) if return_lse else out


def _kind(x):
    """A stand-in with x's presence and dtype only (its shape may differ across ranks)."""
    return None if x is None else x.new_empty((0,))


def _check_mode(layout, comm):
    import torch.distributed as dist
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if comm not in COMMS:
        raise ValueError(f"comm: expected one of {COMMS}, got {comm!r}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group first (or use "
                           "the single-process op in itnet_ext.functional)")


def _check_global_pairs(row_ptr, col_idx, log_w, n_total, padded):
    """The data-dependent checks of the pair list against the whole key set."""
    if row_ptr.numel() and not bool((row_ptr[:, 0] == 0).all()):
        raise ValueError("row_ptr: expected row_ptr[b, 0] = 0")
    if row_ptr.shape[1] > 1 and not bool((row_ptr[:, 1:] >= row_ptr[:, :-1]).all()):
        raise ValueError("row_ptr: expected non-decreasing rows")
    E = col_idx.shape[1]
    if row_ptr.numel() and int(row_ptr[:, -1].max()) > E:
        raise ValueError(f"row_ptr: expected row_ptr[b, N] <= E = {E} (the width of col_idx)")
    listed = torch.arange(E, device=col_idx.device)[None] < row_ptr[:, -1:]
    if log_w is not None and padded:
        listed = listed & ~torch.isneginf(log_w)
    bad = listed & ((col_idx < 0) | (col_idx >= n_total))
    if bool(bad.any()):
        name = "idx" if padded else "col_idx"
        raise ValueError(f"{name}: expected global key indices in [0, {n_total}) (the keys of "
                         f"every rank), got {int(col_idx[bad][0])}")
    if log_w is not None and bool((torch.isnan(log_w) | torch.isposinf(log_w)).any()):
        raise ValueError("log_w: expected finite values or -inf (absent pair), got NaN or +inf")
