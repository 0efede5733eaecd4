"""The dense integral transform, fused (docs/design.md section 2, dense): the public entry
of ``itnet::dense_fwd`` / ``dense_bwd``.

Same signature and semantics as :func:`itnet_ext.dense.naive.integral_transform` (the float64
oracle), evaluated by the fused C++ kernels: tiled over query and key blocks, online softmax,
never materializing N x M x R or N x M x H tensors; the backward recomputes the logits tile by
tile from the saved per-row log-sum-exp.
"""
import torch

from .._common.checks import check_cpu_dtype, values_checkable, window_bounds
from .._common.kernel_args import check_inputs
from .._common.names import ACTIVATIONS
from . import op  # noqa: F401  (registers the fake kernel and autograd of itnet::dense_*)

__all__ = ["integral_transform"]


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
):
    r"""y_i^h = sum_{j in S(i)} a_h(i, j) v_j^h with the learnable kernel of docs/design.md section 1.

    Logit of the pair (i, j) for head h (terms enabled by their arguments)::

        l_h(i,j) = scale * <q_i^h, k_j^h>                                  (q, k)
                 + sum_r W2[h,r] act(u_{i,r} + t_{j,r} + E[o(i,j), r]) + b2[h]   (W2)

    Args:
        q, k: (B, H, N, Dk), (B, H, M, Dk); content term (give both or neither).
        v: (B, H, M, Dv), required.
        u, t: (B or 1, N, R), (B or 1, M, R); per-point first layer of the kernel
            MLP (None = 0). W2 (H, R), b2 (H,): its head projection; the MLP
            term is on iff W2 is given.
        activation: "relu", "gelu" (tanh form) or "silu".
        offset_table: (O, R) learned embedding of the integer offset
            k_pos[j] - q_pos[i] inside ``window`` (row-major over the window box).
        q_pos, k_pos: (B or 1, N | M, D) positions; default the integer index.
        normalize: "softmax" (a = exp(l) w / sum exp(l) w) or "none" (a = l w).
        key_weight: (B or 1, M) positive per-key weights w.
        causal: drop keys j > i.
        window: D pairs (lo_d, hi_d): keep pairs with lo_d <= p_j,d - p_i,d <= hi_d.
        key_padding_mask: bool (B, M), True = ignore that key.
        attn_mask: bool (True = take part) or additive float, broadcastable to
            (B, H, N, M).
        scale: content scale, default 1/sqrt(Dk).
        return_lse: also return the per-row log-sum-exp (B, H, N) (softmax only).

    Returns:
        out (B, H, N, Dv), or (out, lse). A query with an empty support gives 0.
    """
    # the arguments by name, as check_inputs takes them (one spelling of the list: the signature)
    # data-dependent checks need a host sync; under torch.compile the op itself performs them
    check_cpu_dtype(v)
    prob = check_inputs(**locals(), check_values=values_checkable(v))
    if attn_mask is not None and attn_mask.requires_grad:
        raise ValueError("attn_mask: gradients w.r.t. the attention mask are not supported by "
                         "the fused op; pass attn_mask.detach() or use itnet_ext.reference")
    lo, hi = window_bounds(prob.window)
    out, lse = torch.ops.itnet.dense_fwd(
        q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight, key_padding_mask,
        attn_mask, lo, hi, float(prob.scale), ACTIVATIONS.index(prob.activation),
        prob.normalize == "softmax", bool(prob.causal))
    return (out, lse) if return_lse else out
