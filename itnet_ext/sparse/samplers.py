"""Proposals (samplers) and Monte Carlo estimators for the sampled evaluation (docs/design.md section 2).

A sampler draws, for every query i, S keys j_1..j_S i.i.d. (with replacement) from a proposal
q(. | i) over the support of row i and returns

    idx    (B, N, S) int64    the drawn keys; -1 in a slot that holds no draw;
    log_q  (B, N, S) float    log q(j_s | i) of each draw; +inf in a slot that holds no draw.

The support of a row is the dense op's: keys not padded (``key_padding_mask`` True = padding),
j <= i when ``causal`` (by index, as in the dense op), and lo_d <= p_j,d - p_i,d <= hi_d in every
position dim when ``window`` is given (positions ``q_pos`` (B or 1, N, D), ``k_pos`` (B or 1, M, D),
default the integer index, D = 1). A row whose support is empty holds no draw: every slot has
idx -1 and log_q +inf, which :func:`importance_log_weights` turns into log_w = -inf (absent
pair), so such a row outputs 0, as in the dense op.

:func:`importance_log_weights` turns (idx, log_q) into the per-pair ``log_w`` of
``sparse_integral_transform`` (padded form):

    none     log_w = log w_j - log q(j | i) - log S     unbiased estimate of the dense sum;
    softmax  log_w = log w_j - log q(j | i)             self-normalized (the constant 1/S
                                                        cancels between the two sums).

:func:`stratified` instead returns log-weights that are ready to use as they are (see there).

Reproducibility: every random number is a float64 uniform drawn with ``torch.rand`` on the CPU
``generator`` (a CPU ``torch.Generator``; None uses the global CPU generator), all of them at
once in (B, N, S) order, then moved to the target device. The sample is a deterministic
function of these uniforms: :func:`uniform` and the far field of :func:`stratified` pick the
k-th key of the support with integer arithmetic, so the same seed gives the same keys on CPU
and CUDA exactly; :func:`local` and :func:`saliency` invert a float64 cumulative sum, which
may round differently on another device, so a draw can differ only where a uniform falls
within ~1e-16 (relative) of a CDF step: in practice never.

Gradients: the samplers and log_q are not differentiable (indices are discrete; the saliency
scores are detached). Gradients of the estimate flow pathwise through the kernel values and
values (docs/design.md section 2), and through ``key_weight`` in :func:`importance_log_weights`.

Cost: the samplers are plain PyTorch. :func:`uniform` without padding and with the default
index positions costs O(B N S) (the support of a row is an interval). Otherwise a sampler
builds the support (and for local / saliency a float64 CDF) of a block of queries at a time:
O(B N M) time, O(block * M) extra memory, plus O(B N S log M) for the binary searches.
:func:`saliency` without causal and without window builds one CDF per batch element,
O(B M + B N S log M), since the support then does not depend on the query.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Optional, Tuple

import torch

from .._common.checks import data_check, normalize_window

__all__ = ["uniform", "local", "saliency", "stratified", "importance_log_weights",
           "key_log_weight"]

_F64 = torch.float64
_INF = float("inf")
# Upper bound on B * block * M elements of the per-block support / CDF tensors.
_BLOCK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_count(name: str, x, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, Integral) or x < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {x!r}")
    return int(x)


def _check_generator(generator) -> Optional[torch.Generator]:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a CPU torch.Generator or None, "
                         f"got {type(generator).__name__}")
    if generator.device.type != "cpu":
        # Uniforms are always drawn on the CPU so that a seed means the same sample on
        # every device; a CUDA generator would draw a different stream.
        raise ValueError(f"generator: expected a CPU torch.Generator (uniforms are drawn on "
                         f"the CPU and moved to the target device), got one on "
                         f"{generator.device}")
    return generator


def _pick_device(device, *tensors) -> torch.device:
    if device is not None:
        return torch.device(device)
    for x in tensors:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


class _Support:
    """The dense op's support restricted to a block of queries, as a bool (B or 1, n, M) mask."""

    def __init__(self, B, N, M, *, causal, window, key_padding_mask, q_pos, k_pos, device):
        if not isinstance(causal, bool):
            raise ValueError(f"causal: expected a bool, got {causal!r}")
        self.B, self.N, self.M, self.causal, self.device = B, N, M, causal, device
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dim() != 2:
                raise ValueError("key_padding_mask: expected a bool tensor of shape (B, M)")
            if key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask: expected dtype torch.bool (True = padding), "
                                 f"got {key_padding_mask.dtype}")
            if tuple(key_padding_mask.shape) != (B, M):
                raise ValueError(f"key_padding_mask: expected shape (B, M) = {(B, M)}, "
                                 f"got {tuple(key_padding_mask.shape)}")
            key_padding_mask = key_padding_mask.to(device)
        self.kpm = key_padding_mask
        self.default_positions = q_pos is None and k_pos is None
        qp = self._positions("q_pos", q_pos, N, "(B or 1, N, D)")
        kp = self._positions("k_pos", k_pos, M, "(B or 1, M, D)")
        if qp.shape[2] != kp.shape[2]:
            which = "q_pos" if q_pos is not None else "k_pos"
            raise ValueError(f"{which}: q_pos and k_pos must have the same number of position "
                             f"dims D, got {qp.shape[2]} and {kp.shape[2]} (a missing one "
                             f"defaults to the index, D = 1)")
        self.qp, self.kp, self.D = qp, kp, qp.shape[2]
        self.window = normalize_window(window, self.D, broadcast=True)
        if self.window is not None:
            self.lo = torch.tensor([w[0] for w in self.window], dtype=_F64, device=device)
            self.hi = torch.tensor([w[1] for w in self.window], dtype=_F64, device=device)

    def _positions(self, name, pos, L, layout):
        if pos is None:  # the integer index, as in the dense op
            return torch.arange(L, dtype=_F64, device=self.device).reshape(1, L, 1)
        if not isinstance(pos, torch.Tensor) or pos.dim() != 3:
            raise ValueError(f"{name}: expected a tensor of shape {layout}")
        if pos.shape[0] not in (1, self.B) or pos.shape[1] != L or pos.shape[2] < 1:
            raise ValueError(f"{name}: expected shape {layout} with B = {self.B}, "
                             f"{'N' if name == 'q_pos' else 'M'} = {L}, D >= 1, "
                             f"got {tuple(pos.shape)}")
        return pos.detach().to(device=self.device, dtype=_F64)

    @property
    def query_dependent(self) -> bool:
        return self.causal or self.window is not None

    def offsets(self, s, e) -> torch.Tensor:
        """p_j - p_i for the queries s..e-1: (B or 1, n, M, D) float64."""
        return self.kp[:, None, :, :] - self.qp[:, s:e, None, :]

    def block(self, s, e, window=None) -> torch.Tensor:
        """Support of queries s..e-1 (B or 1, n, M); ``window`` overrides the stored one."""
        n, M = e - s, self.M
        sup = torch.ones(1, n, M, dtype=torch.bool, device=self.device)
        if self.kpm is not None:
            sup = sup & ~self.kpm[:, None, :]
        if self.causal:
            i = torch.arange(s, e, device=self.device)
            sup = sup & (torch.arange(M, device=self.device)[None, :] <= i[:, None])
        lohi = (self.lo, self.hi) if window is None and self.window is not None else window
        if lohi is not None:
            off = self.offsets(s, e)
            sup = sup & ((off >= lohi[0]) & (off <= lohi[1])).all(-1)
        return sup

    def blocks(self, per_row: int):
        """(s, e) query blocks with about _BLOCK_ELEMENTS elements of (B, n, per_row) each."""
        n = max(1, _BLOCK_ELEMENTS // max(1, self.B * per_row))
        return [(s, min(self.N, s + n)) for s in range(0, self.N, n)]


def _uniforms(B, N, S, generator, device) -> torch.Tensor:
    """float64 uniforms in [0, 1), drawn on the CPU generator (reproducible across devices)."""
    return torch.rand((B, N, S), generator=generator, dtype=_F64).to(device)


# --------------------------------------------------------------------------------------------
# drawing from a row distribution
# --------------------------------------------------------------------------------------------
def _kth_in_support(sup: torch.Tensor, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Uniform draws over the True entries of ``sup`` (B or 1, n, M), with integer arithmetic.

    Draw s of row i is the k-th support key (0-based), k = floor(u * count_i): exact on every
    device. Returns (idx (B, n, S), count (B or 1, n)); idx is -1 on rows with count 0."""
    B, n, S = u.shape
    csum = torch.cumsum(sup.to(torch.int64), dim=-1)            # number of support keys <= j
    count = csum[..., -1]
    k = torch.floor(u * count[..., None].to(_F64)).to(torch.int64)
    k = torch.minimum(k, (count[..., None] - 1).clamp_min(0))   # u * count may round up to count
    idx = torch.searchsorted(csum.expand(B, n, -1).contiguous(), k, right=True)
    idx = torch.where(count[..., None] > 0, idx, torch.full_like(idx, -1))
    return idx, count


def _draw_from_logits(z: torch.Tensor, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draws from softmax(z) over the last dim; z (B or 1, n or 1, M) float64 with
    -inf off the support; u (B, n, S). Returns (idx (B, n, S), log_q (B, n, S) float64); rows
    with an empty support give idx -1, log_q +inf."""
    B, n, S = u.shape
    M = z.shape[-1]
    lse = torch.logsumexp(z, dim=-1, keepdim=True)              # -inf on an empty row
    empty = lse == -_INF
    logp = z - torch.where(empty, torch.zeros_like(lse), lse)   # log q(j | i), -inf off support
    cdf = torch.cumsum(torch.exp(logp), dim=-1)
    zb = z.expand(B, -1, -1)
    cdf = cdf.expand(B, -1, -1)
    # u * total < total, and searchsorted(right=True) returns the first j with cdf_j > target,
    # which never is a zero-probability key (its cdf equals its predecessor's).
    target = u * cdf[..., -1:]
    if cdf.shape[1] == 1:  # one distribution for every query of the row block
        idx = torch.searchsorted(cdf[:, 0].contiguous(), target.reshape(B, n * S), right=True)
        idx = idx.reshape(B, n, S)
    else:
        idx = torch.searchsorted(cdf.contiguous(), target, right=True)
    # Rounding can leave the last cdf entry below a target close to the total: take the last
    # support key then.
    last = (M - 1) - torch.argmax(torch.flip(zb > -_INF, dims=[-1]).to(torch.int8), dim=-1)
    idx = torch.where(idx >= M, last[..., None].expand(B, -1, S), idx)
    empty = empty.expand(B, -1, -1)                              # (B, n or 1, 1)
    idx = torch.where(empty, torch.full_like(idx, -1), idx)
    log_q = torch.gather(logp.expand(B, -1, -1), -1, idx.clamp_min(0)) if logp.shape[1] == n \
        else torch.gather(logp.expand(B, -1, -1)[:, 0], -1, idx.clamp_min(0).reshape(B, n * S)
                          ).reshape(B, n, S)
    log_q = torch.where(empty, torch.full_like(log_q, _INF), log_q)
    return idx, log_q


def _no_keys(B, N, S, device, dtype, fill) -> Tuple[torch.Tensor, torch.Tensor]:
    """M = 0: every row has an empty support (idx -1, ``fill`` = +inf for log_q, -inf for
    stratified's log_w). Handled up front: the CDF code needs at least one column."""
    return (torch.full((B, N, S), -1, dtype=torch.int64, device=device),
            torch.full((B, N, S), fill, dtype=dtype, device=device))


# --------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------
def uniform(B, N, M, S, *, causal=False, window=None, key_padding_mask=None, q_pos=None,
            k_pos=None, generator=None, device=None, dtype=torch.float64):
    """S keys per query, uniform over the support: q(j | i) = 1 / |support_i|.

    Returns (idx (B, N, S) int64, log_q (B, N, S) ``dtype``); empty rows: idx -1, log_q +inf.
    Without ``key_padding_mask`` and with the default index positions the support is an
    interval and the draw costs O(B N S); otherwise O(B N M) (support mask per query block).
    Both give the same sample for the same uniforms."""
    B, N, M = (_check_count(n, x, 0) for n, x in (("B", B), ("N", N), ("M", M)))
    S = _check_count("S", S, 1)
    generator = _check_generator(generator)
    device = _pick_device(device, key_padding_mask, q_pos, k_pos)
    sup = _Support(B, N, M, causal=causal, window=window, key_padding_mask=key_padding_mask,
                   q_pos=q_pos, k_pos=k_pos, device=device)
    u = _uniforms(B, N, S, generator, device)
    if M == 0:
        return _no_keys(B, N, S, device, dtype, _INF)
    if sup.kpm is None and sup.default_positions:
        # support of row i: a <= j <= b with a = max(0, ceil(i + lo)), b = min(M - 1,
        # floor(i + hi), i if causal); the k-th support key is a + k.
        i = torch.arange(N, device=device, dtype=_F64)
        a = torch.zeros(N, device=device, dtype=_F64)
        b = torch.full((N,), M - 1, device=device, dtype=_F64)
        if sup.window is not None:
            lo, hi = sup.window[0]
            a = torch.maximum(a, torch.ceil(i + lo))
            b = torch.minimum(b, torch.floor(i + hi))
        if causal:
            b = torch.minimum(b, i)
        count = (b - a + 1).clamp_min(0).to(torch.int64)        # (N,)
        k = torch.floor(u * count[:, None].to(_F64)).to(torch.int64)
        k = torch.minimum(k, (count[:, None] - 1).clamp_min(0))
        idx = a.to(torch.int64)[:, None] + k
        nonempty = (count > 0)[None, :, None]
        idx = torch.where(nonempty, idx, torch.full_like(idx, -1))
        log_q = torch.where(nonempty, -torch.log(count.to(_F64))[None, :, None].expand_as(u),
                            torch.full_like(u, _INF))
        return idx, log_q.to(dtype)
    idx = torch.empty(B, N, S, dtype=torch.int64, device=device)
    log_q = torch.empty(B, N, S, dtype=_F64, device=device)
    for s, e in sup.blocks(M):
        ib, count = _kth_in_support(sup.block(s, e), u[:, s:e])
        count = count.expand(B, -1)[..., None].expand(-1, -1, S)
        idx[:, s:e] = ib
        log_q[:, s:e] = torch.where(count > 0, -torch.log(count.to(_F64).clamp_min(1)),
                                    torch.full_like(u[:, s:e], _INF))
    return idx, log_q.to(dtype)


def local(B, N, M, S, *, sigma, q_pos=None, k_pos=None, causal=False, window=None,
          key_padding_mask=None, generator=None, device=None, dtype=torch.float64):
    """S keys per query from a discretized Gaussian around the query position.

    q(j | i) = exp(-sum_d (p_j,d - p_i,d)^2 / (2 sigma_d^2)) / Z_i over the support of row i
    (truncated to it and renormalized). Positions: ``q_pos`` (B or 1, N, D), ``k_pos``
    (B or 1, M, D), e.g. integer grid coordinates (D = 2 for an image), default the index.
    ``sigma``: a number > 0 or D numbers > 0. Keys with q below float64's smallest number
    (beyond ~38 sigma) are never drawn. Cost O(B N M) (one CDF per query).

    Returns (idx (B, N, S) int64, log_q (B, N, S) ``dtype``); empty rows: idx -1, log_q +inf."""
    B, N, M = (_check_count(n, x, 0) for n, x in (("B", B), ("N", N), ("M", M)))
    S = _check_count("S", S, 1)
    generator = _check_generator(generator)
    device = _pick_device(device, key_padding_mask, q_pos, k_pos)
    sup = _Support(B, N, M, causal=causal, window=window, key_padding_mask=key_padding_mask,
                   q_pos=q_pos, k_pos=k_pos, device=device)
    sig = [sigma] * sup.D if isinstance(sigma, Real) and not isinstance(sigma, bool) else sigma
    if (isinstance(sig, (str, bytes)) or not isinstance(sig, Sequence) or len(sig) != sup.D
            or not all(isinstance(x, Real) and not isinstance(x, bool) and x > 0
                       and math.isfinite(x) for x in sig)):
        raise ValueError(f"sigma: expected a finite number > 0 or D = {sup.D} of them, "
                         f"got {sigma!r}")
    # z = -d2 / (2 sigma_min^2) with d2 = sum_d (off_d sigma_min / sigma_d)^2, shifted per row
    # by the nearest key's d2 (softmax is shift-invariant): no 1 / sigma^2 to overflow or
    # divide by zero for a tiny sigma, where the draw tends to the nearest keys
    sig_t = torch.tensor(sig, dtype=_F64, device=device)
    smin = sig_t.min()
    rel = smin / sig_t
    u = _uniforms(B, N, S, generator, device)
    if M == 0:
        return _no_keys(B, N, S, device, dtype, _INF)
    idx = torch.empty(B, N, S, dtype=torch.int64, device=device)
    log_q = torch.empty(B, N, S, dtype=_F64, device=device)
    for s, e in sup.blocks(M * (sup.D + 1)):
        d2 = ((sup.offsets(s, e) * rel) ** 2).sum(-1)            # (B or 1, n, M)
        inside = sup.block(s, e)
        ninf = torch.full((), -_INF, dtype=_F64, device=device)
        d2min = torch.where(inside, d2, -ninf).amin(-1, keepdim=True)
        z = torch.where(d2 == d2min, torch.zeros((), dtype=_F64, device=device),
                        -0.5 * (d2 - d2min) / (smin * smin))
        z = torch.where(inside, z, ninf)
        idx[:, s:e], log_q[:, s:e] = _draw_from_logits(z, u[:, s:e])
    return idx, log_q.to(dtype)


def saliency(scores, N, S, *, causal=False, window=None, key_padding_mask=None, q_pos=None,
             k_pos=None, generator=None, device=None, dtype=torch.float64):
    """S keys per query from q(j | i) = softmax(scores_b)_j over the support of row i.

    ``scores`` (B, M): a per-key score (e.g. learned); detached, computed in float64. Sampled by
    inverse CDF (binary search in the cumulative sum). Without causal and window the support
    does not depend on the query: one CDF per batch element, O(B M + B N S log M). With
    causal or window the support (hence the normalization) depends on the query: one CDF per
    query, O(B N M) time and O(block * M) memory.

    Returns (idx (B, N, S) int64, log_q (B, N, S) ``dtype``); empty rows: idx -1, log_q +inf."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores: expected a tensor of shape (B, M), got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores: expected a floating dtype, got {scores.dtype}")
    B, M = scores.shape
    N = _check_count("N", N, 0)
    S = _check_count("S", S, 1)
    generator = _check_generator(generator)
    device = _pick_device(device, scores)
    sc = scores.detach().to(device=device, dtype=_F64)
    data_check(~torch.isfinite(sc), "scores: expected finite values (mask keys with "
               "key_padding_mask)")
    sup = _Support(B, N, M, causal=causal, window=window, key_padding_mask=key_padding_mask,
                   q_pos=q_pos, k_pos=k_pos, device=device)
    u = _uniforms(B, N, S, generator, device)
    if M == 0:
        return _no_keys(B, N, S, device, dtype, _INF)
    neg_inf = torch.full((), -_INF, dtype=_F64, device=device)
    if not sup.query_dependent:
        z = torch.where(sup.block(0, 1), sc[:, None, :], neg_inf)   # (B, 1, M)
        idx, log_q = _draw_from_logits(z, u)
        return idx, log_q.to(dtype)
    idx = torch.empty(B, N, S, dtype=torch.int64, device=device)
    log_q = torch.empty(B, N, S, dtype=_F64, device=device)
    for s, e in sup.blocks(M):
        z = torch.where(sup.block(s, e), sc[:, None, :], neg_inf)   # (B, n, M)
        idx[:, s:e], log_q[:, s:e] = _draw_from_logits(z, u[:, s:e])
    return idx, log_q.to(dtype)


def stratified(B, N, M, S, *, window, causal=False, key_padding_mask=None, q_pos=None,
               k_pos=None, key_weight=None, support_window=None, generator=None, device=None,
               dtype=torch.float64):
    """The window exactly plus Monte Carlo for the far field; nothing is counted twice.

    The support of row i (padding, causal) splits into the near field (keys with
    lo_d <= p_j,d - p_i,d <= hi_d, ``window``) and the far field (the rest). Every near key is
    listed once with weight 1; S keys are drawn uniformly (with replacement) from the far
    field, each with weight 1 / (S q) = n_far_i / S. Returns

        idx    (B, N, K + S) int64: slots 0..K-1 the near keys of row i in ascending order,
               K the largest near count over all rows (slots past row i's count: -1); slots
               K..K+S-1 the far draws (-1 if the far field of row i is empty);
        log_w  (B, N, K + S) ``dtype``: log w_j + {0 for near keys, log(n_far_i / S) for far
               draws}, -inf for unused slots; w_j = ``key_weight`` (B or 1, M) if given, else 1.

    ``log_w`` is ready for ``sparse_integral_transform(idx=idx, log_w=log_w, ...)`` in both
    normalizations: sum_s exp(log_w_s) f(j_s) is an unbiased estimate of sum_j w_j f(j) over
    the support, and the softmax mode divides two such estimates (self-normalized); the 1/S
    does not cancel here, because the near field carries no 1/S. With a window that covers
    the whole support the far field is empty and the result is the dense op exactly.
    Do not pass this ``window`` to the op: it is a split of the support, not a restriction.
    ``support_window`` (same forms) is the op's own window, when it has one: it restricts the
    support (near and far field alike), so that no far draw lands outside it and is wasted.
    Cost O(B N M) (near and far masks per query block)."""
    B, N, M = (_check_count(n, x, 0) for n, x in (("B", B), ("N", N), ("M", M)))
    S = _check_count("S", S, 1)
    generator = _check_generator(generator)
    if window is None:
        raise ValueError("window: stratified needs the near-field window (lo, hi) (per position "
                         "dim); without one use uniform")
    device = _pick_device(device, key_padding_mask, q_pos, k_pos, key_weight)
    # The support's window is the op's (support_window); `window` only splits the support.
    sup = _Support(B, N, M, causal=causal, window=support_window,
                   key_padding_mask=key_padding_mask, q_pos=q_pos, k_pos=k_pos, device=device)
    win = normalize_window(window, sup.D, broadcast=True)
    lohi = tuple(torch.tensor(b, dtype=_F64, device=device) for b in zip(*win))  # (lo, hi)
    u = _uniforms(B, N, S, generator, device)
    if M == 0:
        return _no_keys(B, N, S, device, dtype, -_INF)
    near_blocks, far_idx, far_lc = [], [], []
    ar = torch.arange(M, device=device)
    for s, e in sup.blocks(M):
        full = sup.block(s, e).expand(B, -1, -1)
        inside = full & sup.block(s, e, window=lohi)                # support & window
        far = full & ~inside
        # near keys in ascending order: key j goes to slot (number of near keys < j); keys
        # outside go to a dump slot M that is cut off.
        slot = torch.where(inside, torch.cumsum(inside.to(torch.int64), -1) - 1, M)
        near = torch.full((B, e - s, M + 1), -1, dtype=torch.int64, device=device)
        near.scatter_(-1, slot, ar.expand(B, e - s, M).contiguous())
        near_blocks.append(near[..., :M])
        ib, count = _kth_in_support(far, u[:, s:e])
        far_idx.append(ib)
        cnt = count[..., None].expand(-1, -1, S).to(_F64)
        far_lc.append(torch.where(cnt > 0, torch.log(cnt.clamp_min(1)) - math.log(S),
                                  torch.full_like(cnt, -_INF)))
    if N > 0:
        near = torch.cat(near_blocks, 1)
        K = int((near >= 0).sum(-1).max()) if near.numel() > 0 else 0
        near = near[..., :K]
        idx = torch.cat([near, torch.cat(far_idx, 1)], -1)
        near_lc = torch.where(near >= 0, torch.zeros((), dtype=_F64, device=device),
                              torch.full((), -_INF, dtype=_F64, device=device))
        log_w = torch.cat([near_lc, torch.cat(far_lc, 1)], -1)
    else:
        idx = torch.empty(B, 0, S, dtype=torch.int64, device=device)
        log_w = torch.empty(B, 0, S, dtype=_F64, device=device)
    if key_weight is not None:
        log_w = log_w + key_log_weight(idx, key_weight).to(_F64)
    return idx, log_w.to(dtype)


# --------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------
def key_log_weight(idx: torch.Tensor, key_weight: torch.Tensor) -> torch.Tensor:
    """log w_j gathered at ``idx`` (B, N, S): ``key_weight`` (B or 1, M), w_j >= 0 (the dense
    op's key_weight). -inf where idx < 0 (no draw) or w_j = 0. Differentiable w.r.t.
    key_weight where w_j > 0."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 3 or idx.dtype != torch.int64:
        raise ValueError("idx: expected an int64 tensor of shape (B, N, S)")
    if (not isinstance(key_weight, torch.Tensor) or key_weight.dim() != 2
            or key_weight.shape[0] not in (1, idx.shape[0])):
        shape = tuple(key_weight.shape) if isinstance(key_weight, torch.Tensor) else \
            type(key_weight).__name__
        raise ValueError(f"key_weight: expected a tensor of shape (B or 1, M) with "
                         f"B = {idx.shape[0]}, got {shape}")
    if not key_weight.is_floating_point() or bool((key_weight.detach() < 0).any()) or \
            bool(torch.isnan(key_weight.detach()).any()):
        raise ValueError("key_weight: expected non-negative floating-point weights")
    B, N, S = idx.shape
    M = key_weight.shape[1]
    if idx.numel() > 0 and int(idx.max()) >= M:
        raise ValueError(f"idx: key index {int(idx.max())} out of range for key_weight with "
                         f"M = {M}")
    safe = idx.clamp_min(0).reshape(B, N * S)
    w = key_weight.expand(B, -1).gather(1, safe).reshape(B, N, S)
    lw = torch.log(torch.where(idx >= 0, w, torch.ones((), dtype=w.dtype, device=w.device)))
    return torch.where(idx >= 0, lw, torch.full((), -_INF, dtype=lw.dtype, device=lw.device))


def importance_log_weights(log_q: torch.Tensor, normalize: str, *, key_weight=None, idx=None,
                           dtype=None) -> torch.Tensor:
    """The per-pair ``log_w`` of ``sparse_integral_transform`` for i.i.d. draws (B, N, S).

        none     log_w = log w_j - log q(j | i) - log S   (unbiased: E[sum_s exp(log_w_s)
                                                            f(j_s)] = sum_j w_j f(j))
        softmax  log_w = log w_j - log q(j | i)           (self-normalized; the 1/S cancels)

    S is ``log_q.shape[-1]``. ``log_q``: from a sampler; +inf (a slot without a draw) gives
    -inf (absent pair). ``key_weight`` (B or 1, M), optional, needs ``idx``: w_j as the dense
    op's key_weight (w_j = 0 makes the pair absent). Returns ``dtype`` (default log_q's);
    pass v's dtype for the op."""
    if normalize not in ("none", "softmax"):
        raise ValueError(f"normalize: expected 'none' or 'softmax', got {normalize!r}")
    if not isinstance(log_q, torch.Tensor) or log_q.dim() != 3 or not log_q.is_floating_point():
        raise ValueError("log_q: expected a floating-point tensor of shape (B, N, S)")
    data_check(torch.isnan(log_q) | (log_q == -_INF),
               "log_q: expected finite log-probabilities, or +inf for a slot without a draw; "
               "got NaN or -inf")
    S = log_q.shape[-1]
    lq = log_q.to(_F64)
    absent = lq == _INF
    lw = -torch.where(absent, torch.zeros((), dtype=_F64, device=lq.device), lq)
    if normalize == "none":
        lw = lw - math.log(S) if S > 0 else lw
    if key_weight is not None:
        if idx is None or not isinstance(idx, torch.Tensor) or idx.shape != log_q.shape:
            raise ValueError(f"idx: key_weight needs the drawn keys idx of the shape of log_q "
                             f"{tuple(log_q.shape)}")
        lw = lw + key_log_weight(idx, key_weight).to(_F64)
    lw = torch.where(absent, torch.full((), -_INF, dtype=_F64, device=lq.device), lw)
    return lw.to(log_q.dtype if dtype is None else dtype)
