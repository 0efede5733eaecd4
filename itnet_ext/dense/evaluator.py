"""``IntegralTransform(method="dense")``: the layer's kernel evaluated exactly by the fused
dense op (docs/design.md section 2, dense).

The layer supplies the projections (:meth:`IntegralTransform._kernel_inputs`); this module turns
its ``nn.MultiheadAttention``-convention masks into the op's and calls
:func:`itnet_ext.dense.functional.integral_transform`, looked up at call time (so a test or a
user may swap in the oracle).
"""
from __future__ import annotations

from .._common.layer_inputs import convert_masks
from . import functional as _functional

__all__ = ["forward", "evaluate"]


def forward(layer, query, key, value, *, query_pos, key_pos, self_attention, key_padding_mask,
            attn_mask, causal, is_batched, generator, neighbors, key_scores):
    """Head outputs (B, H, N, Dh) of batch-first inputs, masks in the layer's convention."""
    if neighbors is not None:
        raise ValueError("neighbors is only used by method='neighbors' (this layer's method "
                         "is 'dense'; see evaluate_with)")
    if key_scores is not None:
        raise ValueError("key_scores is only used by method='sampled' with "
                         "proposal='saliency' (this layer's method is 'dense')")
    kpm, am = convert_masks(key_padding_mask, attn_mask, query, key,
                            num_heads=layer.num_heads, is_batched=is_batched)
    return evaluate(layer, query, key, value, query_pos=query_pos, key_pos=key_pos,
                    self_attention=self_attention, key_padding_mask=kpm, attn_mask=am,
                    causal=causal)


def evaluate(layer, query, key, value, *, query_pos, key_pos, self_attention, key_padding_mask,
             attn_mask, causal, projected=None):
    """Head outputs with the masks already in the op's convention (``key_padding_mask`` bool
    True = ignore, ``attn_mask`` bool True = takes part or additive float)."""
    ki = layer._kernel_inputs(query, key, value, query_pos=query_pos, key_pos=key_pos,
                              self_attention=self_attention, projected=projected)
    return _functional.integral_transform(
        ki.q, ki.k, ki.v, u=ki.u, t=ki.t, W2=layer.kernel_W2, b2=layer.kernel_b2,
        activation=layer.activation, offset_table=layer.offset_table, q_pos=ki.q_pos,
        k_pos=ki.k_pos, normalize=layer.normalize, causal=causal, window=layer.window,
        key_padding_mask=key_padding_mask, attn_mask=attn_mask)
