"""``IntegralTransform(..., method="lowrank", rank=F)``: the layer's learned factorization
a_h(i, j) ∝ phi_i^h . psi_j^h (docs/design.md section 2, lowrank), with phi, psi from the
layer's :class:`~itnet_ext.lowrank.FeatureMLP` maps ``lowrank_phi`` / ``lowrank_psi``,
evaluated by :func:`itnet_ext.lowrank.functional.lowrank_integral_transform` (looked up at call
time) with the identity map on the learned features.

The feature maps: phi = ``lowrank_phi([f_i; p_i])`` and psi = ``lowrank_psi([f_j; p_j])``
(:class:`itnet_ext.lowrank.FeatureMLP`: one hidden
layer plus a linear skip, ``rank`` features per head, hidden width ``lowrank_hidden``,
default max(32, 2 rank)). ``normalize="softmax"``: positive features exp(z - c) with a
detached stabilizer that cancels, y_i = sum_j (phi_i.psi_j) v_j / sum_j phi_i.psi_j;
``"none"``: features of any sign, y_i = sum_j (phi_i.psi_j) v_j. Cost O((N + M) rank Dh).
Honors ``causal`` / ``is_causal`` (j <= i, prefix sums) and a bool ``key_padding_mask``
(psi of padded keys = 0; a float mask only with 0 / -inf entries). ``window`` and
``offset_embedding`` are rejected at construction, ``attn_mask`` in forward (ValueError).
The features are exponentials of MLP outputs: in float32 keep positions at a moderate scale (e.g. in
[0, 1), not raw indices up to N), or the features span more e-folds than float32 holds
and rows lose their support (measured at N = 3000 with integer positions: 0.5 relative
error against float64, 2.5e-7 with positions in [0, 1)). The value and output projections are the
layer's usual ones; the q/k projections and the pair MLP are still built (same names and
shapes as the dense layer) but unused by the low-rank forward (no gradient reaches them;
``evaluate_with(method="dense")`` evaluates them exactly, e.g. the teacher kept by
:func:`itnet_ext.lowrank.fit`, and ``evaluate_with(method="lowrank")`` switches back).
State dicts: a low-rank layer holds every key of the dense layer with the same
configuration plus ``lowrank_phi.*`` / ``lowrank_psi.*``. So
``lowrank.load_state_dict(dense.state_dict(), strict=False)`` loads all shared
parameters and reports exactly the ``lowrank_*`` keys as missing, and
``dense.load_state_dict(lowrank.state_dict(), strict=False)`` reports exactly them as
unexpected; strict loading between the two fails (as for any architecture change).
With DDP, freeze the unused dense parameters or pass ``find_unused_parameters=True``.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._common.layer_inputs import key_masks
from . import functional as _functional
from .feature_mlp import positive_features

__all__ = ["check_config", "forward", "features"]


def check_config(lowrank: bool, rank, lowrank_hidden, offset_embedding: bool, window,
                 method) -> None:
    """The constructor's low-rank settings: ``rank`` (required) and ``lowrank_hidden`` with
    ``method="lowrank"``, no offset embedding or window there; neither on another method."""
    if lowrank:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int (features per head) with "
                             f"method='lowrank', got {rank!r}")
        if lowrank_hidden is not None and (isinstance(lowrank_hidden, bool) or not isinstance(
                lowrank_hidden, int) or lowrank_hidden < 1):
            raise ValueError(f"lowrank_hidden must be None or a positive int, got {lowrank_hidden!r}")
        if offset_embedding:
            raise ValueError("offset_embedding is not supported by method='lowrank'")
        if window is not None:
            raise ValueError("window is not supported by method='lowrank' (the factorized "
                             "kernel has global support); use method='dense' or 'sampled'")
    elif rank is not None or lowrank_hidden is not None:
        raise ValueError(f"rank / lowrank_hidden are only used by method='lowrank' (got "
                         f"method={method!r})")


def features(layer, query: Tensor, key: Tensor, p_q: Tensor, p_k: Tensor,
             padding: Optional[Tensor], reduce_max=None):
    """phi (B, H, N, F), psi (B, H, M, F) of batch-first inputs and positions; padded keys
    (``padding`` (B, M) bool) get psi = 0. Softmax mode: stabilized exp features
    (``reduce_max``: see :func:`positive_features`)."""
    phi = layer.lowrank_phi(query, p_q)
    psi = layer.lowrank_psi(key, p_k)
    if layer.normalize == "softmax":
        phi = positive_features(phi, is_query=True)
        psi = positive_features(psi, is_query=False, padding=padding, reduce_max=reduce_max)
    if padding is not None:
        psi = psi.masked_fill(padding[:, None, :, None], 0.0)
    return phi, psi


def forward(layer, query, key, value, *, query_pos, key_pos, self_attention, key_padding_mask,
            attn_mask, causal, is_batched, generator, neighbors, key_scores, op=None,
            reduce_max=None):
    """Head outputs (B, H, N, Dh): y_i = sum_j (phi_i . psi_j) v_j [/ sum_j phi_i . psi_j]
    over the support (j <= i when causal; padded keys have psi_j = 0). Float32 accumulation
    for float32 / half inputs, float64 for float64. ``generator`` is unused (nothing is
    drawn). ``op`` / ``reduce_max``: the op on the features and the key stabilizer's
    reduction, replaced when the keys are sharded (itnet_ext.distributed.shard_layer)."""
    if attn_mask is not None:
        raise ValueError("attn_mask is not supported by method='lowrank' (the factorized "
                         "kernel cannot drop arbitrary pairs); use causal / is_causal, a "
                         "bool key_padding_mask, or method='dense'")
    if neighbors is not None:
        raise ValueError("neighbors is only used by method='neighbors' (this layer's method "
                         "is 'lowrank')")
    if key_scores is not None:
        raise ValueError("key_scores is only used by method='sampled' with "
                         "proposal='saliency' (this layer's method is 'lowrank')")
    B, N, _ = query.shape
    M = key.shape[1]
    padding, key_bias = key_masks(key_padding_mask, B, M, is_batched, query.dtype)
    if key_bias is not None:
        raise ValueError("key_padding_mask: a float (additive) mask with finite non-zero "
                         "entries is not supported by method='lowrank' (only 0 / -inf); "
                         "pass a bool mask")
    p_q, p_k = layer._query_key_positions(query, key, query_pos, key_pos, self_attention)
    phi, psi = features(layer, query, key, p_q, p_k, padding, reduce_max)
    v = layer._value_projection(value)
    phi, psi = phi.to(v.dtype), psi.to(v.dtype)
    op = _functional.lowrank_integral_transform if op is None else op
    return op(phi, psi, v, feature_map="identity", normalize=layer.normalize, causal=causal)
