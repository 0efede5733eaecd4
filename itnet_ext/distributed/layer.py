"""The layer-level switch: an :class:`~itnet_ext.nn.IntegralTransform` whose keys are
sharded over a process group (docs/design.md section 6).

``shard_layer(layer, group)`` installs an evaluator on that layer object: its parameters,
state dict and call convention stay those of the single-process layer, and every rank
calls it on its shard of the sequence (``(B, N_local, E)``, the layout's order). Positions
default to the global sequence index, so the pair MLP's position features, windows and
offset tables see what the unsharded layer would. ``unshard_layer`` removes the switch.

Per method (read at call time, so ``evaluate_with`` may switch it):

- ``"dense"``: :func:`itnet_ext.distributed.integral_transform` (ring or all-gather).
- ``"neighbors"``: ``neighbors`` holds *global* key indices (a neighbourhood may cross
  the partition); the padding mask travels to every rank (B x N bytes) so that pairs at
  padded keys on other ranks are dropped; the pairs go to
  :func:`itnet_ext.distributed.sparse_integral_transform`.
- ``"lowrank"``: the feature maps run on local rows; the key stabilizer of softmax mode is
  a max over every rank's keys (one all-reduce of B x H numbers), and the state
  F x (Dh + 1) is all-reduced (:func:`itnet_ext.distributed.lowrank_integral_transform`).
  Causal needs the contiguous layout; ``comm`` is unused (the state is one all-reduce).
- ``"sampled"`` is refused: the draws would have to range over every rank's support.
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from .._common.layer_inputs import convert_masks, key_masks
from ..lowrank import evaluator as _lowrank
from ..sparse import evaluator as _sparse
from .comm import agree, world_of
from .functional import _check_mode, integral_transform, sparse_integral_transform
from .layout import global_index, unshard
from .lowrank import lowrank_integral_transform

__all__ = ["shard_layer", "unshard_layer", "SHARDED_METHODS"]

SHARDED_METHODS = ("dense", "neighbors", "lowrank")


class _ShardedEvaluator:
    """The layer's evaluation with its keys sharded over ``group``; one per layer object."""

    def __init__(self, group, layout, comm):
        self.group, self.layout, self.comm = group, layout, comm

    def forward(self, layer, query, key, value, *, query_pos, key_pos, self_attention,
                key_padding_mask, attn_mask, causal, is_batched, generator, neighbors,
                key_scores):
        method = layer._method
        if method not in SHARDED_METHODS:
            raise ValueError(_refusal(method))
        if attn_mask is not None:
            raise ValueError("attn_mask: not supported by a sharded layer; use "
                             "key_padding_mask, the layer's window or causal")
        rank, world = world_of(self.group)
        if world > 1 and layer.pos_dim == 1:
            if query_pos is None:
                query_pos = global_index(query.shape[1], rank, world, self.layout,
                                         dtype=query.dtype, device=query.device)
            if key_pos is None:
                key_pos = query_pos if self_attention else global_index(
                    key.shape[1], rank, world, self.layout, dtype=key.dtype,
                    device=key.device)
        kw = dict(query_pos=query_pos, key_pos=key_pos, self_attention=self_attention,
                  key_padding_mask=key_padding_mask, causal=causal, is_batched=is_batched,
                  neighbors=neighbors, key_scores=key_scores)
        return getattr(self, "_" + method)(layer, query, key, value, **kw)

    def _dense(self, layer, query, key, value, *, query_pos, key_pos, self_attention,
               key_padding_mask, causal, is_batched, neighbors, key_scores):
        if neighbors is not None or key_scores is not None:
            raise ValueError("neighbors / key_scores: not used by method='dense'")
        kpm, _ = convert_masks(key_padding_mask, None, query, key,
                               num_heads=layer.num_heads, is_batched=is_batched)
        ki = layer._kernel_inputs(query, key, value, query_pos=query_pos, key_pos=key_pos,
                                  self_attention=self_attention)
        return integral_transform(
            ki.q, ki.k, ki.v, u=ki.u, t=ki.t, W2=layer.kernel_W2, b2=layer.kernel_b2,
            activation=layer.activation, offset_table=layer.offset_table,
            q_pos=ki.q_pos, k_pos=ki.k_pos, normalize=layer.normalize, causal=causal,
            window=layer.window, key_padding_mask=kpm, group=self.group,
            layout=self.layout, comm=self.comm)

    def _neighbors(self, layer, query, key, value, *, query_pos, key_pos, self_attention,
                   key_padding_mask, causal, is_batched, neighbors, key_scores):
        if key_scores is not None:
            raise ValueError("key_scores is only used by method='sampled' with "
                             "proposal='saliency'")
        rank, world = world_of(self.group)
        B, N, M = query.shape[0], query.shape[1], key.shape[1]
        if world > 1:                       # equal shards before the mask all-gather
            agree(self.group, key, [("key", key), ("query", query)])
        pad, bias = key_masks(key_padding_mask, B, M, is_batched, query.dtype)
        pad, bias = self._whole_key_masks(pad, bias, B, M, query)
        if bias is not None and layer.normalize == "none":
            raise ValueError(
                "key_padding_mask: a float (additive) mask with finite non-zero entries is "
                "not supported by the sparse methods with normalize='none' (only 0 / -inf); "
                "pass a bool mask")
        rows = global_index(N, rank, world, self.layout, dtype=torch.int64,
                            device=query.device).view(N) if world > 1 else None
        pairs = _sparse.neighbor_pairs(
            neighbors, B=B, N=N, M=M * world, is_batched=is_batched, causal=causal,
            padding=pad, key_bias=bias, device=query.device, dtype=query.dtype,
            query_index=rows)
        ki = layer._kernel_inputs(query, key, value, query_pos=query_pos, key_pos=key_pos,
                                  self_attention=self_attention)
        return sparse_integral_transform(
            ki.q, ki.k, ki.v, **pairs, u=ki.u, t=ki.t, W2=layer.kernel_W2, b2=layer.kernel_b2,
            activation=layer.activation, offset_table=layer.offset_table, q_pos=ki.q_pos,
            k_pos=ki.k_pos, window=layer.window, normalize=layer.normalize,
            group=self.group, layout=self.layout, comm=self.comm)

    def _whole_key_masks(self, pad, bias, B, M, like):
        """Every rank's (padding, key bias) in the global key order: one all-gather of a
        (B, M) float per rank (-inf = padded), skipped on a group of one."""
        if world_of(self.group)[1] == 1:
            return pad, bias
        mine = torch.zeros(B, M, dtype=like.dtype, device=like.device) if bias is None \
            else bias.to(like.dtype).clone()
        if pad is not None:
            mine = mine.masked_fill(pad, float("-inf"))
        got = [torch.empty_like(mine) for _ in range(world_of(self.group)[1])]
        dist.all_gather(got, mine.contiguous(), group=self.group)
        whole = unshard(got, 1, self.layout)
        pad = torch.isneginf(whole)
        bias = whole.masked_fill(pad, 0.0)
        return (pad if bool(pad.any()) else None), (bias if bool((bias != 0).any()) else None)

    def _lowrank(self, layer, query, key, value, *, query_pos, key_pos, self_attention,
                 key_padding_mask, causal, is_batched, neighbors, key_scores):
        world = world_of(self.group)[1]
        if causal and self.layout != "contiguous" and world > 1:
            raise ValueError(f"layout: method='lowrank' with causal needs the 'contiguous' "
                             f"layout (the prefix of the per-rank states runs in rank "
                             f"order), got {self.layout!r}")

        def reduce_max(c):
            c = c.contiguous().clone()
            dist.all_reduce(c, op=dist.ReduceOp.MAX, group=self.group)
            return c
        return _lowrank.forward(
            layer, query, key, value, query_pos=query_pos, key_pos=key_pos,
            self_attention=self_attention, key_padding_mask=key_padding_mask, attn_mask=None,
            causal=causal, is_batched=is_batched, generator=None, neighbors=neighbors,
            key_scores=key_scores,
            op=functools.partial(lowrank_integral_transform, group=self.group),
            reduce_max=reduce_max if world > 1 else None)


def _refusal(method) -> str:
    return (f"layer: method={method!r} has no sharded layer (sharded: {SHARDED_METHODS}); "
            f"draw global key indices and use method='neighbors', or call "
            f"itnet_ext.distributed.sparse_integral_transform on the projected tensors")


def shard_layer(layer, group=None, *, layout: str = "contiguous", comm: str = "ring"):
    """Make ``layer`` (an IntegralTransform with method ``"dense"``, ``"neighbors"`` or
    ``"lowrank"``) evaluate over keys sharded across ``group``; returns the layer. A group
    of one rank evaluates locally (the same numbers as the unsharded layer)."""
    from ..nn import IntegralTransform
    if not isinstance(layer, IntegralTransform):
        raise ValueError(f"layer: expected an itnet_ext.nn.IntegralTransform, got "
                         f"{type(layer).__name__}")
    _check_mode(layout, comm)
    if layer._method not in SHARDED_METHODS:
        raise ValueError(_refusal(layer._method))
    layer.__dict__["_sharded_evaluator"] = _ShardedEvaluator(group, layout, comm)
    return layer


def unshard_layer(layer):
    """Remove the switch: the layer evaluates locally again; returns the layer."""
    layer.__dict__.pop("_sharded_evaluator", None)
    return layer
