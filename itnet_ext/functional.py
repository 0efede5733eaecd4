"""Fused integral transform and decay scan: the public functional API.

Same signature and semantics as :func:`itnet_ext.reference.integral_transform`
(the float64 oracle), evaluated by the fused C++ kernels: tiled over query and
key blocks, online softmax, never materializing N x M x R or N x M x H
tensors; the backward recomputes the logits tile by tile from the saved
per-row log-sum-exp.
"""
import torch

from . import ops  # noqa: F401  (registers torch.ops.itnet.*)
from ._validate import ACTIVATIONS, check_inputs
from ._validate_lowrank import check_lowrank_inputs
from ._validate_scan import check_scan_inputs
from ._validate_sparse import check_sparse_inputs

__all__ = ["integral_transform", "sparse_integral_transform", "lowrank_integral_transform",
           "decay_scan", "decay_scan_step"]


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
    r"""y_i^h = sum_{j in S(i)} a_h(i, j) v_j^h with the learnable kernel of DESIGN section 1.

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
    prob = check_inputs(
        q, k, v, u=u, t=t, W2=W2, b2=b2, activation=activation, offset_table=offset_table,
        q_pos=q_pos, k_pos=k_pos, normalize=normalize, key_weight=key_weight, causal=causal,
        window=window, key_padding_mask=key_padding_mask, attn_mask=attn_mask, scale=scale,
        return_lse=return_lse,
        # data-dependent checks need a host sync; under torch.compile the op
        # itself performs them
        check_values=not torch.compiler.is_compiling())
    if attn_mask is not None and attn_mask.requires_grad:
        raise ValueError("attn_mask: gradients w.r.t. the attention mask are not supported by "
                         "the fused op; pass attn_mask.detach() or use itnet_ext.reference")
    lo = [float(w[0]) for w in prob.window] if prob.window else []
    hi = [float(w[1]) for w in prob.window] if prob.window else []
    out, lse = torch.ops.itnet.dense_fwd(
        q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight, key_padding_mask,
        attn_mask, lo, hi, float(prob.scale), ACTIVATIONS.index(prob.activation),
        prob.normalize == "softmax", bool(prob.causal))
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
):
    r"""The integral transform evaluated on listed (query, key) pairs only (DESIGN section 2).

    Monte Carlo (keys drawn by a sampler of :mod:`itnet_ext.nn.samplers`, with the
    importance log-weights of :func:`~itnet_ext.nn.samplers.importance_log_weights`) and
    neighbourhoods (CSR graphs from :func:`~itnet_ext.nn.radius_graph` /
    :func:`~itnet_ext.nn.knn_graph`) both reduce to this op. Same signature and semantics as
    :func:`itnet_ext.reference.sparse_integral_transform` (the float64 oracle): the kernel
    arguments are those of :func:`integral_transform`, and for the pairs s of query i::

        softmax: y_i = sum_s exp(l(i, j_s) + log_w_s) v_{j_s} / sum_s exp(l(i, j_s) + log_w_s)
        none:    y_i = sum_s l(i, j_s) exp(log_w_s) v_{j_s}

    Args:
        q, k, v, u, t, W2, b2, activation, offset_table, q_pos, k_pos, window, scale:
            as in :func:`integral_transform`.
        idx, log_w: the padded form: idx (B, N, S) int64 keys, log_w (B, N, S) per-pair
            log-weights (default 0); log_w = -inf marks an absent pair (its idx may be -1).
        row_ptr, col_idx, log_w: the CSR form: row_ptr (B, N + 1) int64, col_idx (B, E)
            int64, log_w (B, E); the pairs of query i are entries row_ptr[b, i] to
            row_ptr[b, i + 1] - 1.
        normalize: "softmax" (self-normalized) or "none" (plain weighted sum).
        return_lse: also return the per-row log-sum-exp of l + log_w (softmax only).

    A key listed twice is two pairs; a pair whose offset lies outside ``window`` is left
    out; a row without pairs outputs 0 (lse -inf). Gradients flow to q, k, v, u, t, W2, b2,
    offset_table and log_w (pathwise, DESIGN section 2), not to indices or positions.

    Kernels (CPU float32 / float64; CUDA float32 / float64): one query row per work item,
    its pairs gathered in chunks and the pair MLP evaluated in registers; nothing of size
    pairs x R or pairs x H is stored. The CPU backward scatters key-side gradients into
    per-thread buffers (no races, deterministic for a given thread count); the CUDA backward
    uses atomics (see the CUDA entry for its deterministic mode).
    """
    sp = check_sparse_inputs(
        q, k, v, idx=idx, log_w=log_w, row_ptr=row_ptr, col_idx=col_idx, u=u, t=t, W2=W2, b2=b2,
        activation=activation, offset_table=offset_table, q_pos=q_pos, k_pos=k_pos,
        window=window, normalize=normalize, scale=scale, return_lse=return_lse,
        check_values=not torch.compiler.is_compiling())
    prob = sp.kernel
    if sp.form == "padded":
        B, N, S = idx.shape
        row_ptr = (torch.arange(N + 1, device=idx.device, dtype=torch.int64) * S).expand(B, N + 1)
        col_idx = idx.reshape(B, N * S)
        if log_w is not None:
            log_w = log_w.reshape(B, N * S)
    lo = [float(w[0]) for w in prob.window] if prob.window else []
    hi = [float(w[1]) for w in prob.window] if prob.window else []
    out, lse = torch.ops.itnet.sparse_fwd(
        q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr, col_idx, log_w, lo, hi,
        float(prob.scale), ACTIVATIONS.index(prob.activation), prob.normalize == "softmax")
    return (out, lse) if return_lse else out


def _check_stable(p):
    """stable=True: every decay factor exp(a) must be <= 1 (a <= 0)."""
    if p.form == "factored":
        # a = dt * A <= 0 for every (t, d, r) iff, per channel d, dt > 0 somewhere implies
        # A[d] <= 0 and dt < 0 somewhere implies A[d] >= 0
        flat = p.dt.reshape(-1, p.D)
        bad = ((flat.amax(0) > 0) & (p.A.amax(1) > 0)) | ((flat.amin(0) < 0) & (p.A.amin(1) < 0))
        if p.dt.numel() and bool(bad.any()):
            d = int(bad.nonzero()[0, 0])
            raise ValueError(f"log_decay (dt, A): stable=True needs dt * A <= 0, but channel {d} "
                             "has a positive log-decay (a decay factor above 1)")
    elif p.log_decay.numel() and bool((p.log_decay > 0).any()):
        raise ValueError(f"log_decay: stable=True needs log_decay <= 0, got a maximum of "
                         f"{float(p.log_decay.max()):.4g} (a decay factor above 1)")


def decay_scan(x, log_decay, phi, psi, *, skip=None, initial_state=None,
               return_final_state=False, stable=False):
    r"""Causal low-rank kernel with a decay, evaluated in O(T) by a fused scan (DESIGN section 2).

    Per channel d and state r (channel d reads group g(d) = d // (D / G) of phi / psi)::

        h_{t,d,r} = exp(a_{t,d,r}) h_{t-1,d,r} + psi_{t,g(d),r} x_{t,d}
        y_{t,d}   = sum_r phi_{t,g(d),r} h_{t,d,r} + skip_d x_{t,d}

    i.e. y_t = sum_{s <= t} kappa(t, s) x_s with kappa(t, s) = sum_r phi_{t,r} psi_{s,r}
    exp(L_{t,r} - L_{s,r}), L the running sum of the log-decays a.

    Args:
        x: (B, T, D).
        log_decay: the log-decay a, one of
            - a tensor broadcastable to (B, T, D, Rk) with D given, e.g. (B, T, D, Rk),
              (B, T, D, 1) (one decay per channel) or (1, 1, D, Rk);
            - a (D, Rk) tensor (time-invariant);
            - the pair (dt, A), dt (B, T, D) and A (D, Rk): a = dt * A (Mamba's form), never
              materialized.
        phi, psi: (B, T, Rk) or (B, T, G, Rk) (G channel groups, G divides D).
        skip: (D,) direct term.
        initial_state: (B, D, Rk) state before the first step (default 0).
        return_final_state: also return the state after the last step (B, D, Rk).
        stable: check that every decay factor is <= 1 (log_decay <= 0) and raise if not.

    Returns:
        y (B, T, D) in x's dtype, or (y, final_state).

    Kernels: CPU float32 / float64, parallel over (batch, group, channel block) and
    vectorized over the state; CUDA float32 / float64 / float16 / bfloat16 (float32 state):
    a chunked block scan (cub::BlockScan) per (batch, channel). Both backwards recompute the
    states chunk by chunk from checkpoints (on CPU the forward saves the state every 64 steps
    when a backward will run, 1/64 of the states): no (B, T, D, Rk) tensor is stored. The
    CPU backward is
    deterministic; the CUDA one adds dphi / dpsi over the channels of a group with atomics
    (in deterministic mode: per-channel partial sums up to 1 GiB, else PyTorch's
    nondeterminism error).
    """
    p = check_scan_inputs(x, log_decay, phi, psi, skip, initial_state)
    if stable and not torch.compiler.is_compiling():
        _check_stable(p)
    ld = p.log_decay
    if p.form == "static":
        ld = ld.reshape(1, 1, p.D, p.Rk)
    # the CPU forward saves the state every 64 steps for the backward when one will run
    tensors = (x, ld, p.dt, p.A, p.phi, p.psi, skip, initial_state)
    checkpoint = (x.device.type == "cpu" and torch.is_grad_enabled()
                  and any(t is not None and t.requires_grad for t in tensors))
    y, h_last, _ = torch.ops.itnet.decay_scan_fwd(*tensors, checkpoint)
    return (y, h_last) if return_final_state else y


def decay_scan_step(x_t, log_decay_t, phi_t, psi_t, state, *, skip=None):
    r"""One step of :func:`decay_scan`, for token-by-token generation.

    Args:
        x_t: (B, D), the input at this step.
        log_decay_t: broadcastable to (B, D, Rk) (3-D, D given), a (D, Rk) tensor, or the
            pair (dt_t (B, D), A (D, Rk)).
        phi_t, psi_t: (B, Rk) or (B, G, Rk).
        state: (B, D, Rk), the state after the previous step.
        skip: (D,).

    Returns:
        (y_t (B, D), new_state (B, D, Rk)); decay_scan over T steps equals T calls of this
        function threading the state (float32 arithmetic for 16-bit inputs).
    """
    if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2:
        raise ValueError("x_t: expected a (B, D) tensor, got "
                         f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t)}")
    if isinstance(log_decay_t, (tuple, list)):
        if len(log_decay_t) != 2 or not isinstance(log_decay_t[0], torch.Tensor):
            raise ValueError("log_decay_t: expected a tensor or the pair (dt_t, A)")
        ld = (log_decay_t[0].unsqueeze(1), log_decay_t[1])
    elif isinstance(log_decay_t, torch.Tensor) and log_decay_t.dim() == 3:
        ld = log_decay_t.unsqueeze(1)
    elif isinstance(log_decay_t, torch.Tensor) and log_decay_t.dim() == 2:
        ld = log_decay_t
    else:
        raise ValueError("log_decay_t: expected a tensor broadcastable to (B, D, Rk), a (D, Rk) "
                         "tensor or the pair (dt_t (B, D), A (D, Rk))")
    for name, t in (("phi_t", phi_t), ("psi_t", psi_t)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            raise ValueError(f"{name}: expected a (B, Rk) or (B, G, Rk) tensor")
    p = check_scan_inputs(x_t.unsqueeze(1), ld, phi_t.unsqueeze(1), psi_t.unsqueeze(1), skip,
                          state)
    cd = torch.promote_types(x_t.dtype, torch.float32)
    grp = p.D // p.G
    phi = p.phi[:, 0].to(cd).repeat_interleave(grp, dim=1)    # (B, D, Rk)
    psi = p.psi[:, 0].to(cd).repeat_interleave(grp, dim=1)
    xc = x_t.to(cd)
    new = torch.exp(p.decay_at(0).to(cd)) * state.to(cd) + psi * xc[..., None]
    y = (phi * new).sum(-1)
    if skip is not None:
        y = y + skip.to(cd) * xc
    return y.to(x_t.dtype), new.to(state.dtype)


# ---- low-rank ------------------------------------------------------------------------------------

def _kernel_feature_map(arg_name, fm, Dk):
    """(code, projection) of a feature map the kernels apply, or None for another callable
    (applied in PyTorch). Raises for anything else."""
    from .nn import feature_maps as fmaps
    from .ops.lowrank import FEATURE_MAP_CODES

    if isinstance(fm, str):
        if fm == "favor+":
            raise ValueError(
                f"{arg_name}: 'favor+' holds a random projection; pass a module, e.g. "
                f"itnet_ext.nn.feature_maps.PositiveRandomFeatures(dim, num_features)")
        if fm not in FEATURE_MAP_CODES:
            raise ValueError(f"{arg_name}: expected one of ('identity', 'elu+1', 'relu'), a "
                             f"PositiveRandomFeatures module or a callable, got {fm!r}")
        return FEATURE_MAP_CODES[fm], None
    if type(fm) is fmaps.PositiveRandomFeatures:  # a subclass may change forward: call it
        if fm.dim != Dk:
            raise ValueError(f"{arg_name}: PositiveRandomFeatures has dim = {fm.dim}, but the "
                             f"queries and keys have Dk = {Dk}")
        if fm.projection.requires_grad:
            raise ValueError(f"{arg_name}: the fused op does not differentiate the FAVOR+ "
                             f"projection (a random buffer); detach it, or use "
                             f"itnet_ext.reference.lowrank_integral_transform")
        # redraw=True rewrites the buffer in place at the next call: autograd keeps a
        # snapshot, so a second call before backward does not invalidate this one
        return FEATURE_MAP_CODES["favor+"], (fm.projection.detach().clone() if fm.auto_redraw
                                              else fm.projection)
    if not callable(fm):
        raise ValueError(f"{arg_name}: expected a name or a callable, got {type(fm).__name__}")
    for f, name in ((fmaps.identity, "identity"), (fmaps.elu_plus_one, "elu+1"),
                    (fmaps.relu, "relu")):
        if fm is f:
            return FEATURE_MAP_CODES[name], None
    return None


def _lowrank_features(arg_name, fm, kernel_map, x, *, is_query, softmax, cdt):
    """phi = fm(x) (B, H, n, F) in the compute dtype: by the features op for the kernels'
    maps (FAVOR+ stabilized per query row / per key slice in softmax mode, where it
    cancels), else by calling fm."""
    from .ops import lowrank as lr

    if kernel_map is not None:
        code, projection = kernel_map
        if code == lr.FEATURE_MAP_CODES["identity"]:
            return x.to(cdt)  # nothing to compute (the learned-feature layer's case)
        stab = lr.STABILIZE_NONE
        if code == lr.FEATURE_MAP_CODES["favor+"] and softmax:
            stab = lr.STABILIZE_ROW if is_query else lr.STABILIZE_SLICE
        if projection is not None:
            projection = projection.to(device=x.device)
        return torch.ops.itnet.lowrank_features(x, projection, code, stab)
    from .reference.lowrank import _apply_feature_map

    # as the oracle does: the map sees the compute dtype, and a PositiveRandomFeatures
    # subclass gets its query / key stabilizer role (only in softmax mode)
    phi = _apply_feature_map(arg_name, fm, x.to(cdt), is_query=is_query,
                             normalize="softmax" if softmax else "none")
    B, H, n = x.shape[:3]
    if not isinstance(phi, torch.Tensor) or phi.dim() != 4 or tuple(phi.shape[:3]) != (B, H, n):
        got = tuple(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
        raise ValueError(f"{arg_name}: expected features of shape (B, H, n, F) = "
                         f"({B}, {H}, {n}, F), got {got}")
    return phi.to(cdt)


def lowrank_integral_transform(q, k, v, *, feature_map="identity", normalize="none",
                               causal=False, key_feature_map=None, eps=0.0):
    r"""Fused low-rank integral transform (DESIGN section 2, lowrank): the kernel
    l(i, j) ~= phi_i . psi_j with phi_i = feature_map(q_i), psi_j = (key_feature_map or
    feature_map)(k_j),

        none:    y_i = phi_i^T (sum_j psi_j v_j^T)
        softmax: y_i = phi_i^T (sum_j psi_j v_j^T) / (phi_i^T sum_j psi_j)

    over j <= i when ``causal``. Same semantics as
    :func:`itnet_ext.reference.lowrank_integral_transform` (its float64 oracle; its
    ``chunk_size`` is the oracle's own evaluation choice), O(N F Dv).

    Args:
        q (B, H, N, Dk), k (B, H, M, Dk), v (B, H, M, Dv): one dtype (float16, bfloat16,
            float32, float64), one device.
        feature_map: "identity", "elu+1", "relu", a
            :class:`~itnet_ext.nn.feature_maps.PositiveRandomFeatures` module (FAVOR+,
            orthogonal or not; redrawn once per call when it asks to be), or any callable
            (B, H, n, Dk) -> (B, H, n, F), applied in PyTorch.
        key_feature_map: a different map for the keys (same forms), default the same.
        normalize: "none" or "softmax".
        causal: key j is visible to query i iff j <= i.
        eps: softmax mode: rows with |den| <= eps output 0 with zero gradient (never NaN).
            Kept rows are divided by den, so a tiny denominator (features far below 1, e.g.
            behind a global stabilizer) still gives a finite num / den; in float32 the
            gradient g / den overflows only once |den| drops below ~1e-38.

    Evaluation. Non-causal: one fused op (``itnet::lowrank_fwd``), the feature map applied
    inside the kernel to rows as they are read, the (F x Dv) key sum S and the normalization
    in the same passes; the backward recomputes features and sums, so nothing but the
    inputs is saved. Causal: the features op (``itnet::lowrank_features``, the same map
    code) then the prefix sums by :func:`decay_scan` with zero decay (its channels are v's
    plus a ones channel for the denominator): one scan, not a second implementation of it.
    Both accumulate in float32 for float16 / bfloat16 inputs (float64 for float64), so
    long sequences do not overflow half precision: the output is cast back to v's dtype.
    The FAVOR+ projection gets no gradient.

    Returns y (B, H, N, Dv) in v's dtype.
    """
    from .ops.lowrank import compute_dtype

    B, H, N, M, Dk, Dv = check_lowrank_inputs(q, k, v, normalize, causal, eps)
    softmax = normalize == "softmax"
    eps = float(eps)
    same = key_feature_map is None or key_feature_map is feature_map or (
        isinstance(key_feature_map, str) and key_feature_map == feature_map)
    fk = feature_map if same else key_feature_map
    # redraw first (once per distinct module): the kernels then read the new projection
    for fm in {id(feature_map): feature_map, id(fk): fk}.values():
        if hasattr(fm, "maybe_redraw"):
            fm.maybe_redraw()
    kq = _kernel_feature_map("feature_map", feature_map, Dk)
    kk = kq if same else _kernel_feature_map("key_feature_map", key_feature_map, Dk)
    if same and kq is not None and not causal:
        code, projection = kq
        if projection is not None:
            projection = projection.to(device=v.device)
        return torch.ops.itnet.lowrank_fwd(q, k, v, projection, code, softmax, eps)

    cdt = compute_dtype(v.dtype)
    phi = _lowrank_features("feature_map", feature_map, kq, q, is_query=True, softmax=softmax,
                            cdt=cdt)
    psi = _lowrank_features("key_feature_map" if not same else "feature_map", fk, kk, k,
                            is_query=False, softmax=softmax, cdt=cdt)
    if phi.shape[3] != psi.shape[3]:
        raise ValueError(f"key_feature_map: query features have F = {phi.shape[3]} but key "
                         f"features have F = {psi.shape[3]}")
    vc = v.to(cdt)
    if not causal:
        return torch.ops.itnet.lowrank_fwd(phi, psi, vc, None, 0, softmax, eps).to(v.dtype)

    # Causal: key j visible to query i iff j <= i, so keys j >= N are never seen and for
    # M < N zero features / values pad the missing keys (they add nothing).
    Fd = phi.shape[3]
    if M >= N:
        psi, vc = psi[:, :, :N], vc[:, :, :N]
    else:
        psi = torch.cat([psi, psi.new_zeros(B, H, N - M, Fd)], 2)
        vc = torch.cat([vc, vc.new_zeros(B, H, N - M, Dv)], 2)
    if softmax:  # a ones channel carries the denominator phi_i . sum_{j<=i} psi_j
        vc = torch.cat([vc, vc.new_ones(B, H, N, 1)], 3)
    if Fd == 0:  # no feature: the scan needs a state, a zero one keeps the graph connected
        phi = torch.cat([phi, phi.new_zeros(B, H, N, 1)], 3)
        psi = torch.cat([psi, psi.new_zeros(B, H, N, 1)], 3)
        Fd = 1
    D = vc.shape[3]
    y = decay_scan(vc.reshape(B * H, N, D), vc.new_zeros(1, 1, D, 1),
                   phi.reshape(B * H, N, Fd), psi.reshape(B * H, N, Fd)).reshape(B, H, N, D)
    if not softmax:
        return y.to(v.dtype)
    num, den = y[..., :Dv], y[..., Dv]
    ok = ~(den.abs() <= eps)  # cut |den| <= eps; NaN is kept and shows (feature.h)
    den_safe = torch.where(ok, den, torch.ones((), dtype=cdt, device=den.device))
    out = torch.where(ok[..., None], num / den_safe[..., None],
                      torch.zeros((), dtype=cdt, device=num.device))
    return out.to(v.dtype)
