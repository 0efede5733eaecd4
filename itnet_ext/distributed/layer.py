"""The layer-level switch: an :class:`~itnet_ext.nn.IntegralTransform` whose keys are
sharded over a process group (docs/design.md section 6).

``shard_layer(layer, group)`` installs an evaluator on that layer object: its parameters,
state dict and call convention stay those of the single-process layer, and every rank
calls it on its shard of the sequence (``(B, N_local, E)``, the layout's order). Positions
default to the global sequence index, so the pair MLP's position features, windows and
offset tables see what the unsharded layer would. ``unshard_layer`` removes the switch.
"""
from __future__ import annotations

import torch.distributed as dist

from .._common.layer_inputs import convert_masks
from .comm import world_of
from .functional import _check_mode, integral_transform
from .layout import global_index

__all__ = ["shard_layer", "unshard_layer"]


class _ShardedDenseEvaluator:
    """``method="dense"`` evaluated by :func:`itnet_ext.distributed.integral_transform`."""

    def __init__(self, group, layout, comm):
        self.group, self.layout, self.comm = group, layout, comm

    def forward(self, layer, query, key, value, *, query_pos, key_pos, self_attention,
                key_padding_mask, attn_mask, causal, is_batched, generator, neighbors,
                key_scores):
        if neighbors is not None or key_scores is not None:
            raise ValueError("neighbors / key_scores: not used by method='dense'")
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


def shard_layer(layer, group=None, *, layout: str = "contiguous", comm: str = "ring"):
    """Make ``layer`` (an IntegralTransform with ``method="dense"``) evaluate over keys
    sharded across ``group``; returns the layer. A group of one rank evaluates locally
    (the same numbers as the unsharded layer)."""
    from ..nn import IntegralTransform
    if not isinstance(layer, IntegralTransform):
        raise ValueError(f"layer: expected an itnet_ext.nn.IntegralTransform, got "
                         f"{type(layer).__name__}")
    _check_mode(layout, comm)
    if layer._method != "dense":
        raise ValueError(f"layer: method={layer._method!r} has no sharded layer yet; call "
                         f"itnet_ext.distributed.sparse_integral_transform / "
                         f"lowrank_integral_transform on the projected tensors, or use "
                         f"method='dense'")
    layer.__dict__["_sharded_evaluator"] = _ShardedDenseEvaluator(group, layout, comm)
    return layer


def unshard_layer(layer):
    """Remove the switch: the layer evaluates locally again; returns the layer."""
    layer.__dict__.pop("_sharded_evaluator", None)
    return layer
