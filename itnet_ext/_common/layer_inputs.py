"""Input handling shared by the layers (:class:`IntegralTransform` and the converters).

- :func:`layer_window`: the ``window`` constructor argument (the forms of
  :func:`itnet_ext._common.checks.normalize_window` plus a number ``w`` and a broadcast pair).
- :func:`batch_first_inputs`: ``query`` / ``key`` / ``value`` in the module's layout
  (``nn.MultiheadAttention`` conventions) checked and turned into batch-first ``(B, L, C)``.
- :func:`convert_masks`: ``nn.MultiheadAttention``-convention masks in the functional's convention.
- :func:`key_masks`: a ``key_padding_mask`` as a bool padding mask plus an optional additive
  per-key log-weight (the sparse and low-rank evaluations, which take no ``attn_mask``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .checks import Window, data_check, normalize_window

__all__ = ["layer_window", "layer_positions", "batch_first_inputs", "convert_masks",
           "key_masks"]

_NEG_INF = float("-inf")


def layer_window(window, pos_dim: int) -> Optional[Window]:
    """Normalize the layer's ``window`` to a tuple of ``pos_dim`` pairs ``(lo, hi)``.

    Accepted: ``None``; a number ``w`` (``(-w, w)`` in every dim); one pair
    ``(lo, hi)`` (used for every dim); a sequence of ``pos_dim`` pairs.
    Integer-valued bounds are ints, the others floats.
    """
    win = normalize_window(window, pos_dim, scalar=True, broadcast=True, dim_label="pos_dim")
    if win is None:
        return None
    return tuple(tuple(int(b) if b.is_integer() else b for b in pair) for pair in win)


def position_dtype(like: Tensor) -> torch.dtype:
    """At least float32: float16 / bfloat16 cannot hold integer positions past 2048 / 256,
    and windows / offset tables compare them exactly."""
    return torch.promote_types(like.dtype, torch.float32)


def layer_positions(pos: Optional[Tensor], name: str, batch: int, length: int, like: Tensor,
                    pos_dim: int) -> Tensor:
    """A layer's ``query_pos`` / ``key_pos`` as (B or 1, length, pos_dim) in
    :func:`position_dtype`; None is the integer index (pos_dim 1 only)."""
    D = pos_dim
    if pos is None:
        if D != 1:
            raise ValueError(
                f"{name} is required when pos_dim={D} > 1 (the default is the integer index, 1-D only)"
            )
        return torch.arange(length, device=like.device, dtype=position_dtype(like)).view(1, length, 1)
    if not isinstance(pos, Tensor):
        raise ValueError(f"{name} must be a tensor of shape (B or 1, {length}, {D})")
    p = pos
    if p.dim() == 1 and D == 1:
        p = p.view(1, -1, 1)
    elif p.dim() == 2:
        p = p.unsqueeze(0)
    if p.dim() != 3 or p.shape[1] != length or p.shape[2] != D or p.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} must have shape (B or 1, {length}, {D}) = (batch or 1, length, pos_dim) "
            f"(always batch-first), got {tuple(pos.shape)}"
        )
    if p.device != like.device:
        raise ValueError(f"{name} is on {p.device} but the input is on {like.device}")
    return p.to(position_dtype(like))


def _to_batch_first(x: Tensor, name: str, feat: int, is_batched: bool, batch_first: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor")
    if x.dim() != (3 if is_batched else 2):
        raise ValueError(
            f"{name} must be {'3-D' if is_batched else '2-D'} like query "
            f"({'(B, L, C)' if batch_first else '(L, B, C)'} batched or (L, C) unbatched), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[-1] != feat:
        raise ValueError(f"{name} must have {feat} features in the last dim, got shape {tuple(x.shape)}")
    if not is_batched:
        return x.unsqueeze(0)
    return x if batch_first else x.transpose(0, 1)


def batch_first_inputs(layer, query: Tensor, key: Tensor, value: Tensor):
    """Check ``query``, ``key``, ``value`` against ``layer`` and return them batch-first.

    ``layer`` gives ``embed_dim``, ``kdim``, ``vdim`` (feature sizes) and ``batch_first``
    (the input layout). Inputs are ``(L, B, C)`` (``(B, L, C)`` with ``batch_first``) or
    unbatched ``(L, C)``, all alike. Returns ``(q, k, v, is_batched)`` with ``(B, L, C)``
    tensors; key and value must have the same length and all three the same batch size.
    """
    if not isinstance(query, Tensor):
        raise ValueError("query must be a tensor")
    if query.dim() not in (2, 3):
        raise ValueError(f"query must be 3-D (batched) or 2-D (unbatched), got shape {tuple(query.shape)}")
    is_batched = query.dim() == 3
    bf = layer.batch_first
    q_in = _to_batch_first(query, "query", layer.embed_dim, is_batched, bf)
    k_in = _to_batch_first(key, "key", layer.kdim, is_batched, bf)
    v_in = _to_batch_first(value, "value", layer.vdim, is_batched, bf)
    B, M = q_in.shape[0], k_in.shape[1]
    if k_in.shape[0] != B or v_in.shape[0] != B:
        raise ValueError(
            f"query, key and value must have the same batch size, got {B}, {k_in.shape[0]}, {v_in.shape[0]}"
        )
    if v_in.shape[1] != M:
        raise ValueError(f"key and value must have the same length, got {M} and {v_in.shape[1]}")
    # the projections' dtype and device (under autocast the projections cast for themselves)
    p = next(layer.parameters(), None)
    if p is not None:
        for name, x in (("query", q_in), ("key", k_in), ("value", v_in)):
            if x.device != p.device:
                raise ValueError(f"{name} must be on {p.device} (the layer's device), got {x.device}")
            if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
                raise ValueError(f"{name} must have dtype {p.dtype} (the layer's parameters), "
                                 f"got {x.dtype}")
    return q_in, k_in, v_in, is_batched


def convert_masks(
    key_padding_mask: Optional[Tensor],
    attn_mask: Optional[Tensor],
    query: Tensor,
    key: Tensor,
    *,
    num_heads: int,
    is_batched: bool,
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Turn nn.MultiheadAttention-convention masks into the functional's convention.

    ``query`` (B, N, E) and ``key`` (B, M, kdim) are the batch-first inputs (they give the
    sizes and the dtype of additive masks).
    MHA: ``key_padding_mask`` (B, M) bool True = ignore, or float additive;
    ``attn_mask`` (N, M) or (B*H, N, M), bool True = NOT allowed, or float additive.
    Functional: ``key_padding_mask`` bool (B, M) True = ignore; ``attn_mask`` bool
    True = takes part, or float additive, broadcastable to (B, H, N, M).
    """
    batch, tgt_len = query.shape[0], query.shape[1]
    src_len = key.shape[1]
    dtype = query.dtype
    kpm_out = None
    kpm_add = None  # float key padding mask, folded into the additive attn mask
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor):
            raise ValueError("key_padding_mask must be a tensor")
        want = (batch, src_len) if is_batched else (src_len,)
        if tuple(key_padding_mask.shape) != want:
            raise ValueError(
                f"key_padding_mask must have shape {want} (batch, source length), "
                f"got {tuple(key_padding_mask.shape)}"
            )
        kpm = key_padding_mask.reshape(batch, src_len)
        if kpm.dtype == torch.bool:
            kpm_out = kpm
        elif kpm.is_floating_point():
            check_float_key_mask(kpm.detach())
            kpm_add = kpm.to(dtype).view(batch, 1, 1, src_len)
        else:
            raise ValueError(
                f"key_padding_mask must be bool (True = ignore) or floating (additive), got {kpm.dtype}"
            )

    am_out = None
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise ValueError("attn_mask must be a tensor")
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise ValueError(
                    f"2-D attn_mask must have shape (target length, source length) = "
                    f"{(tgt_len, src_len)}, got {tuple(attn_mask.shape)}"
                )
            am = attn_mask
        elif attn_mask.dim() == 3:
            want = (batch * num_heads, tgt_len, src_len)
            if tuple(attn_mask.shape) != want:
                raise ValueError(
                    f"3-D attn_mask must have shape (batch * num_heads, target length, source length) = "
                    f"{want}, got {tuple(attn_mask.shape)}"
                )
            am = attn_mask.reshape(batch, num_heads, tgt_len, src_len)
        else:
            raise ValueError(f"attn_mask must be 2-D or 3-D, got a {attn_mask.dim()}-D tensor")
        if am.dtype == torch.bool:
            if kpm_add is None:
                am_out = ~am  # functional convention: True = takes part
            else:
                am_out = torch.zeros(am.shape, dtype=dtype, device=am.device).masked_fill_(am, float("-inf"))
        elif am.is_floating_point():
            am_out = am.to(dtype)
        else:
            raise ValueError(
                f"attn_mask must be bool (True = not allowed) or floating (additive), got {am.dtype}"
            )
    if kpm_add is not None:
        am_out = kpm_add if am_out is None else am_out + kpm_add
    return kpm_out, am_out


def check_float_key_mask(kpm: Tensor) -> None:
    """The rule for a float ``key_padding_mask``, in every method: finite values or -inf (a
    padded key), never NaN or +inf (checks.data_check: an asynchronous assert under compile)."""
    data_check(torch.isnan(kpm) | (kpm == float("inf")),
               "key_padding_mask: a float mask must not hold NaN or +inf")


def key_masks(key_padding_mask: Optional[Tensor], B: int, M: int, is_batched: bool,
              dtype: torch.dtype) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``key_padding_mask`` in the layer's convention (``(B, M)``, ``(M,)`` unbatched; bool
    True = padding, or float additive) -> ``(padding (B, M) bool or None, key_bias (B, M)
    float or None)``. A float mask's -inf entries become padding; its finite entries become
    ``key_bias`` (an additive logit per key, kept only when some entry is non-zero)."""
    if key_padding_mask is None:
        return None, None
    if not isinstance(key_padding_mask, Tensor):
        raise ValueError("key_padding_mask must be a tensor")
    want = (B, M) if is_batched else (M,)
    if tuple(key_padding_mask.shape) != want:
        raise ValueError(f"key_padding_mask must have shape {want} (batch, source length), "
                         f"got {tuple(key_padding_mask.shape)}")
    kpm = key_padding_mask.reshape(B, M)
    if kpm.dtype == torch.bool:
        return kpm, None
    if not kpm.is_floating_point():
        raise ValueError(f"key_padding_mask must be bool (True = ignore) or floating (additive), "
                         f"got {kpm.dtype}")
    kpm = kpm.detach()
    check_float_key_mask(kpm)
    pad = kpm == _NEG_INF
    bias = torch.where(pad, torch.zeros((), dtype=kpm.dtype, device=kpm.device), kpm)
    if not bool((bias != 0).any()):
        return pad, None
    return pad, bias.to(dtype)
