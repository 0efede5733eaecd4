"""The sparse evaluation methods of :class:`~itnet_ext.nn.IntegralTransform` (DESIGN section 2).

The layer's kernel (same parameters) is evaluated on a list of (query, key) pairs by
:func:`itnet_ext.functional.sparse_integral_transform`. This module builds that list:

- :func:`check_method_config`: the ``method`` / ``samples`` / ``proposal`` / ``sigma`` /
  ``near_window`` settings, checked together;
- :func:`key_masks`: the layer's ``key_padding_mask`` (``nn.MultiheadAttention``
  convention) as a bool padding mask plus an optional additive per-key log-weight;
- :func:`sampled_pairs`: draws of a proposal of :mod:`itnet_ext.nn.samplers` over the
  support, with the importance log-weights of DESIGN section 2;
- :func:`neighbor_pairs`: a user neighbourhood (CSR or padded) with the pairs outside the
  support (padded keys, ``j > i`` when causal) made absent (log-weight -inf).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import samplers as _samplers
from ._inputs import layer_window

__all__ = ["METHODS", "PROPOSALS", "check_method_config", "key_masks", "sampled_pairs",
           "neighbor_pairs", "check_key_scores"]

METHODS = ("dense", "sampled", "neighbors")
PROPOSALS = ("uniform", "local", "saliency", "stratified")
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def check_method_config(method, samples, proposal, sigma, near_window, pos_dim: int):
    """Validate the evaluation settings together; returns them normalized
    ``(method, samples, proposal, sigma, near_window)``.

    ``samples`` must be an int >= 1 when given, and is required by ``method="sampled"``;
    ``sigma`` (a number > 0 or ``pos_dim`` of them) is required by ``proposal="local"`` and
    ``near_window`` (the layer's window forms) by ``proposal="stratified"``, when
    ``method="sampled"``. Options that the current method does not use are still checked
    when given, so that a later switch cannot fail on a value set earlier."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, Integral) or samples < 1:
            raise ValueError(f"samples must be a positive int (keys drawn per query), got {samples!r}")
        samples = int(samples)
    if sigma is not None:
        sig = (sigma,) * pos_dim if isinstance(sigma, Real) and not isinstance(sigma, bool) \
            else sigma
        if isinstance(sig, Tensor):
            sig = tuple(sig.tolist()) if sig.dim() == 1 else None
        if (sig is None or isinstance(sig, (str, bytes)) or not isinstance(sig, Sequence)
                or len(sig) != pos_dim
                or not all(isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)
                           and x > 0 for x in sig)):
            raise ValueError(f"sigma must be a finite number > 0 or pos_dim = {pos_dim} of them "
                             f"(the local proposal's standard deviation per position dim), "
                             f"got {sigma!r}")
        sigma = tuple(float(x) for x in sig)
    if near_window is not None:
        try:
            near_window = layer_window(near_window, pos_dim)
        except ValueError as e:
            raise ValueError(f"near_window (the stratified proposal's near field): {e}") from None
    if method == "sampled":
        if samples is None:
            raise ValueError("samples is required with method='sampled' (keys drawn per query, "
                             "an int >= 1)")
        if proposal == "local" and sigma is None:
            raise ValueError("sigma is required with proposal='local' (the Gaussian's standard "
                             "deviation in position units, a number or one per position dim)")
        if proposal == "stratified" and near_window is None:
            raise ValueError("near_window is required with proposal='stratified' (the window "
                             "evaluated exactly; the far field is sampled), e.g. near_window=8 "
                             "or (-8, 0)")
    return method, samples, proposal, sigma, near_window


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
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
    if bool(torch.isnan(kpm).any()) or bool((kpm == float("inf")).any()):
        raise ValueError("key_padding_mask: a float mask must not hold NaN or +inf")
    pad = kpm == _NEG_INF
    bias = torch.where(pad, torch.zeros((), dtype=kpm.dtype, device=kpm.device), kpm)
    if not bool((bias != 0).any()):
        return pad, None
    return pad, bias.to(dtype)


def _gather_key_bias(key_bias: Tensor, keys: Tensor) -> Tensor:
    """key_bias (B, M) at keys (B, ...) (any value; out-of-range ones are clamped: their
    pair is absent or rejected by the op)."""
    B, M = key_bias.shape
    flat = keys.reshape(B, -1).clamp(0, max(M - 1, 0))
    return key_bias.gather(1, flat).reshape(keys.shape)


# --------------------------------------------------------------------------------------------
# sampled
# --------------------------------------------------------------------------------------------
def check_key_scores(key_scores, B: int, M: int, is_batched: bool, device) -> Tensor:
    """``key_scores`` (B or 1, M) (``(M,)`` unbatched) -> (B, M) on ``device``."""
    want = f"(B, M) = ({B}, {M}) or (1, M)" if is_batched else f"(M,) = ({M},)"
    if not isinstance(key_scores, Tensor):
        raise ValueError(f"key_scores must be a tensor of shape {want} (a log-score per key), "
                         f"got {type(key_scores).__name__}")
    s = key_scores if is_batched else key_scores.reshape(1, -1) if key_scores.dim() == 1 \
        else None
    if s is None or s.dim() != 2 or s.shape[1] != M or s.shape[0] not in (1, B):
        raise ValueError(f"key_scores must have shape {want}, got {tuple(key_scores.shape)}")
    if not s.is_floating_point():
        raise ValueError(f"key_scores must be floating point, got {s.dtype}")
    if s.device != device:
        raise ValueError(f"key_scores is on {s.device} but the input is on {device}")
    s = s.detach()
    if not bool(torch.isfinite(s).all()):
        raise ValueError("key_scores must be finite (exclude keys with key_padding_mask)")
    return s.expand(B, M)


def sampled_pairs(*, proposal: str, samples: int, sigma, near_window, normalize: str,
                  B: int, N: int, M: int, causal: bool, window, padding: Optional[Tensor],
                  key_bias: Optional[Tensor], q_pos: Optional[Tensor], k_pos: Optional[Tensor],
                  key_scores: Optional[Tensor], generator, device, dtype):
    """``(idx (B, N, S'), log_w (B, N, S'))`` of the importance-sampling estimate.

    ``uniform`` / ``local`` / ``saliency``: S = ``samples`` i.i.d. draws from the proposal
    over the support (padding, causal, window), log_w = -log q (softmax, self-normalized)
    or -log q - log S (none, unbiased). ``stratified``: every support key inside
    ``near_window`` once (weight 1) plus ``samples`` uniform draws from the rest of the
    support (padding, causal, window), weight n_far / S.
    ``key_bias`` (softmax only) is added to the log-weight of each pair."""
    common = dict(causal=causal, key_padding_mask=padding, q_pos=q_pos, k_pos=k_pos,
                  generator=generator, device=device)
    S = samples
    if proposal == "stratified":
        idx, log_w = _samplers.stratified(B, N, M, S, window=near_window, support_window=window,
                                          dtype=dtype, **common)
    else:
        if proposal == "uniform":
            idx, log_q = _samplers.uniform(B, N, M, S, window=window, **common)
        elif proposal == "local":
            idx, log_q = _samplers.local(B, N, M, S, sigma=list(sigma), window=window, **common)
        elif proposal == "saliency":
            idx, log_q = _samplers.saliency(key_scores, N, S, window=window, **common)
        else:  # pragma: no cover - validated by check_method_config
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
        log_w = _samplers.importance_log_weights(log_q, normalize, dtype=dtype)
    if key_bias is not None:
        log_w = log_w + _gather_key_bias(key_bias, idx)
    return idx, log_w


# --------------------------------------------------------------------------------------------
# neighbours
# --------------------------------------------------------------------------------------------
def _index_arg(x, what: str, ndim: int, layout: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != ndim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"neighbors: {what} must be a {ndim}-D int64 tensor {layout}, got {got}")
    if x.dtype != torch.int64:
        raise ValueError(f"neighbors: {what} must have dtype torch.int64, got {x.dtype}")
    return x


def neighbor_pairs(neighbors, *, B: int, N: int, M: int, is_batched: bool, causal: bool,
                   padding: Optional[Tensor], key_bias: Optional[Tensor], device, dtype) -> dict:
    """The keyword arguments (``idx``/``log_w`` or ``row_ptr``/``col_idx``/``log_w``) of
    ``sparse_integral_transform`` for a user neighbourhood.

    ``neighbors`` (batch-major whatever ``batch_first``; unbatched: drop the B dim):
    ``idx`` (B, N, S) int64 or ``(idx, log_w)`` (padded form), or ``(row_ptr, col_idx)`` /
    ``(row_ptr, col_idx, log_w)`` with row_ptr (B, N + 1), col_idx (B, E), log_w (B, E) (CSR
    form, e.g. from :func:`~itnet_ext.nn.radius_graph`). log_w (default 0) is a per-pair
    log-weight (-inf = absent pair); it is cast to the layer's dtype. Pairs with a padded key
    or, when causal, with j > i get log_w = -inf; the op drops pairs outside the window."""
    layout_hint = ("idx (B, N, S), (idx, log_w), (row_ptr, col_idx) or "
                   "(row_ptr, col_idx, log_w)")
    if not is_batched:
        layout_hint = layout_hint.replace("(B, ", "(")
    if neighbors is None:
        raise ValueError(f"neighbors is required with method='neighbors': {layout_hint} "
                         f"int64 key indices (see radius_graph / knn_graph)")
    if isinstance(neighbors, Tensor):
        parts = (neighbors,)
    elif isinstance(neighbors, (tuple, list)) and 1 <= len(neighbors) <= 3:
        parts = tuple(neighbors)
    else:
        raise ValueError(f"neighbors must be {layout_hint}, got {type(neighbors).__name__}")
    first = parts[0]
    if not isinstance(first, Tensor):
        raise ValueError(f"neighbors must be {layout_hint}, got a {type(first).__name__} first")
    b = 1 if is_batched else 0  # batch dims present
    padded = first.dim() == 2 + b
    if padded:
        if len(parts) > 2:
            raise ValueError(f"neighbors: the padded form is idx or (idx, log_w), got {len(parts)} "
                             f"tensors (the CSR form starts with a {1 + b}-D row_ptr)")
        idx = _index_arg(first, "idx", 2 + b, "(B, N, S)" if is_batched else "(N, S)")
        log_w = parts[1] if len(parts) == 2 else None
        if not is_batched:
            idx = idx.unsqueeze(0)
        if idx.shape[0] != B or idx.shape[1] != N:
            raise ValueError(f"neighbors: idx must have shape (B, N, S) with B = {B}, N = {N}, "
                             f"got {tuple(idx.shape)}")
        keys, rows = idx, torch.arange(N, device=idx.device).view(1, N, 1)
        pair_shape = tuple(first.shape)
    elif first.dim() == 1 + b:
        if len(parts) < 2:
            raise ValueError("neighbors: the CSR form needs (row_ptr, col_idx) or (row_ptr, "
                             "col_idx, log_w)")
        row_ptr = _index_arg(first, "row_ptr", 1 + b, "(B, N + 1)" if is_batched else "(N + 1,)")
        col_idx = _index_arg(parts[1], "col_idx", 1 + b, "(B, E)" if is_batched else "(E,)")
        log_w = parts[2] if len(parts) == 3 else None
        if not is_batched:
            row_ptr, col_idx = row_ptr.unsqueeze(0), col_idx.unsqueeze(0)
        if row_ptr.shape[0] != B or row_ptr.shape[1] != N + 1:
            raise ValueError(f"neighbors: row_ptr must have shape (B, N + 1) with B = {B}, "
                             f"N + 1 = {N + 1}, got {tuple(row_ptr.shape)}")
        if col_idx.shape[0] != B:
            raise ValueError(f"neighbors: col_idx must have shape (B, E) with B = {B}, got "
                             f"{tuple(col_idx.shape)}")
        keys = col_idx
        E = col_idx.shape[1]
        # the row of each entry (entries past row_ptr[b, N] are padding: any row, never read)
        ends = row_ptr[:, 1:].contiguous()
        entries = torch.arange(E, device=row_ptr.device).expand(B, E).contiguous()
        rows = torch.searchsorted(ends, entries, right=True).clamp_max(max(N - 1, 0)) \
            if N > 0 else torch.zeros_like(entries)
        pair_shape = tuple(parts[1].shape)
    else:
        raise ValueError(f"neighbors must be {layout_hint}; got a first tensor of shape "
                         f"{tuple(first.shape)}")
    if first.device != device:
        raise ValueError(f"neighbors is on {first.device} but the input is on {device}")
    if log_w is not None:
        if not isinstance(log_w, Tensor) or tuple(log_w.shape) != pair_shape:
            got = tuple(log_w.shape) if isinstance(log_w, Tensor) else type(log_w).__name__
            raise ValueError(f"neighbors: log_w must have the shape of "
                             f"{'idx' if padded else 'col_idx'} {pair_shape}, got {got}")
        if not log_w.is_floating_point():
            raise ValueError(f"neighbors: log_w must be floating point, got {log_w.dtype}")
        log_w = log_w.to(dtype)
        if not is_batched:
            log_w = log_w.unsqueeze(0)

    # pairs outside the support: padded keys, j > i when causal
    out_of_support = None
    if causal:
        out_of_support = keys > rows
    if padding is not None and M > 0:
        pad = padding.gather(1, keys.reshape(B, -1).clamp(0, M - 1)).reshape(keys.shape)
        out_of_support = pad if out_of_support is None else out_of_support | pad
    if key_bias is not None:
        bias = _gather_key_bias(key_bias, keys)
        log_w = bias if log_w is None else log_w + bias
    if out_of_support is not None:
        base = log_w if log_w is not None else torch.zeros(keys.shape, dtype=dtype, device=device)
        log_w = torch.where(out_of_support, torch.full((), _NEG_INF, dtype=dtype, device=device),
                            base)
    if padded:
        return dict(idx=keys, log_w=log_w)
    return dict(row_ptr=row_ptr, col_idx=col_idx, log_w=log_w)
