"""``IntegralTransform(method="sampled" | "neighbors")``: the layer's kernel (same parameters)
evaluated on a list of (query, key) pairs by
:func:`itnet_ext.sparse.functional.sparse_integral_transform` (docs/design.md section 2,
sampled), looked up at call time. This module builds that list:

- :func:`forward` / :func:`evaluate`: the layer's evaluation (masks, pairs, the op call);
- :func:`check_method_config`: the ``method`` / ``samples`` / ``proposal`` / ``sigma`` /
  ``near_window`` settings, checked together;
- :func:`sampled_pairs`: draws of a proposal of :mod:`itnet_ext.sparse.samplers` over the
  support, with the importance log-weights of docs/design.md section 2;
- :func:`neighbor_pairs`: a user neighbourhood (CSR or padded) with the pairs outside the
  support (padded keys, ``j > i`` when causal) made absent (log-weight -inf).

Estimators (``method="sampled"``): with draws j_1..j_S ~ q(. | i),
``normalize="none"`` gives the unbiased (1/S) sum_s l(i, j_s) v_{j_s} / q(j_s | i), i.e.
per-pair log-weight -log q - log S; ``"softmax"`` the self-normalized
sum_s rho_s v_{j_s} / sum_s rho_s with rho_s = exp(l(i, j_s)) / q(j_s | i) (consistent,
bias O(1/S)). Gradients are pathwise (through kernel values and values, not through the
draws). A query with an empty support outputs ``out_proj.bias`` as in the dense method.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Optional

import torch
from torch import Tensor

from .._common.checks import data_check
from .._common.layer_inputs import key_masks, layer_window
from . import functional as _functional
from . import samplers as _samplers

__all__ = ["METHODS", "PROPOSALS", "forward", "evaluate", "check_method_config",
           "sampled_pairs", "neighbor_pairs", "check_key_scores"]

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
# the layer's evaluation
# --------------------------------------------------------------------------------------------
def forward(layer, query, key, value, *, query_pos, key_pos, self_attention, key_padding_mask,
            attn_mask, causal, is_batched, generator, neighbors, key_scores):
    """Head outputs (B, H, N, Dh) of batch-first inputs, masks in the layer's convention."""
    if attn_mask is not None:
        raise ValueError(
            f"attn_mask is not supported by method={layer.method!r}: the sparse methods "
            "take the support from key_padding_mask, causal / is_causal and window; use "
            "method='dense' (evaluate_with) for an arbitrary attn_mask")
    kpm, key_bias = key_masks(key_padding_mask, query.shape[0], key.shape[1], is_batched,
                              query.dtype)
    sparse = dict(generator=generator, neighbors=neighbors, key_scores=key_scores,
                  is_batched=is_batched, key_bias=key_bias)
    return evaluate(layer, query, key, value, query_pos=query_pos, key_pos=key_pos,
                    self_attention=self_attention, key_padding_mask=kpm, attn_mask=None,
                    causal=causal, sparse=sparse)


def evaluate(layer, query, key, value, *, query_pos, key_pos, self_attention, key_padding_mask,
             attn_mask, causal, projected=None, sparse: Optional[dict] = None):
    """Head outputs with ``key_padding_mask`` a bool (B, M) padding mask. ``sparse``: the
    forward's ``generator``, ``neighbors``, ``key_scores``, ``is_batched`` and ``key_bias``
    (a float key_padding_mask's finite part, (B, M)); ``attn_mask`` must be None."""
    if attn_mask is not None:
        raise ValueError(
            f"attn_mask is not supported by method={layer.method!r} (nor a float "
            "key_padding_mask folded into it); use causal / is_causal, window, a bool "
            "key_padding_mask, or method='dense'")
    B, N, M = query.shape[0], query.shape[1], key.shape[1]
    # the sampler needs the positions for a window, a local or stratified proposal
    sampler_pos = layer.method == "sampled" and (
        layer.window is not None or layer.proposal in ("local", "stratified"))
    ki = layer._kernel_inputs(query, key, value, query_pos=query_pos, key_pos=key_pos,
                              self_attention=self_attention, projected=projected,
                              sampler_pos=sampler_pos)
    default_pos = query_pos is None and key_pos is None
    pairs = _pairs(layer, dict(sparse or {}), B=B, N=N, M=M, causal=causal,
                   key_padding_mask=key_padding_mask,
                   p_q=None if default_pos else ki.p_q, p_k=None if default_pos else ki.p_k,
                   v=ki.v)
    return _functional.sparse_integral_transform(
        ki.q, ki.k, ki.v, **pairs, u=ki.u, t=ki.t, W2=layer.kernel_W2, b2=layer.kernel_b2,
        activation=layer.activation, offset_table=layer.offset_table, q_pos=ki.q_pos,
        k_pos=ki.k_pos, window=layer.window, normalize=layer.normalize)


def _pairs(layer, sparse: dict, *, B, N, M, causal, key_padding_mask, p_q, p_k, v) -> dict:
    """The pair-list arguments of the sparse op for the layer's method."""
    generator = sparse.get("generator")
    neighbors = sparse.get("neighbors")
    key_scores = sparse.get("key_scores")
    is_batched = sparse.get("is_batched", True)
    key_bias = sparse.get("key_bias")
    if key_bias is not None and layer.normalize == "none":
        raise ValueError(
            "key_padding_mask: a float (additive) mask with finite non-zero entries is not "
            "supported by the sparse methods with normalize='none' (only 0 / -inf); pass a "
            "bool mask")
    if layer.method == "neighbors":
        if key_scores is not None:
            raise ValueError("key_scores is only used by method='sampled' with "
                             "proposal='saliency'")
        return neighbor_pairs(
            neighbors, B=B, N=N, M=M, is_batched=is_batched, causal=causal,
            padding=key_padding_mask, key_bias=key_bias, device=v.device, dtype=v.dtype)
    # sampled
    if neighbors is not None:
        raise ValueError(f"neighbors is only used by method='neighbors' (this layer's "
                         f"method is {layer.method!r})")
    if layer.proposal == "saliency":
        if key_scores is None:
            raise ValueError(
                "key_scores is required with proposal='saliency': a per-key log-score "
                "(B, M) ((M,) unbatched); keys are drawn with q(j | i) = softmax over the "
                "support of the scores")
        key_scores = check_key_scores(key_scores, B, M, is_batched, v.device)
    elif key_scores is not None:
        raise ValueError(f"key_scores is only used by proposal='saliency' (this layer's "
                         f"proposal is {layer.proposal!r})")
    return dict(zip(("idx", "log_w"), sampled_pairs(
        proposal=layer.proposal, samples=layer.samples, sigma=layer.sigma,
        near_window=layer.near_window, normalize=layer.normalize, B=B, N=N, M=M,
        causal=causal, window=layer.window, padding=key_padding_mask, key_bias=key_bias,
        q_pos=p_q, k_pos=p_k, key_scores=key_scores, generator=generator,
        device=v.device, dtype=v.dtype)))


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
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
    data_check(~torch.isfinite(s), "key_scores must be finite (exclude keys with key_padding_mask)")
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
                   padding: Optional[Tensor], key_bias: Optional[Tensor], device, dtype,
                   query_index: Optional[Tensor] = None) -> dict:
    """The keyword arguments (``idx``/``log_w`` or ``row_ptr``/``col_idx``/``log_w``) of
    ``sparse_integral_transform`` for a user neighbourhood.

    ``neighbors`` (batch-major whatever ``batch_first``; unbatched: drop the B dim):
    ``idx`` (B, N, S) int64 or ``(idx, log_w)`` (padded form), or ``(row_ptr, col_idx)`` /
    ``(row_ptr, col_idx, log_w)`` with row_ptr (B, N + 1), col_idx (B, E), log_w (B, E) (CSR
    form, e.g. from :func:`~itnet_ext.nn.radius_graph`). log_w (default 0) is a per-pair
    log-weight (-inf = absent pair); it is cast to the layer's dtype. Pairs with a padded key
    or, when causal, with j > i get log_w = -inf; the op drops pairs outside the window.
    ``query_index`` (N,) int64: each query's index in the key numbering, for the causal
    test (default: the row number; a rank of a sharded layer passes its global rows)."""
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
        if query_index is not None and N > 0:
            rows = query_index.to(keys.device)[rows]
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
