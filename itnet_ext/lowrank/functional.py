"""The low-rank integral transform, fused (docs/design.md section 2, lowrank): the public entry
of ``itnet::lowrank_fwd`` / ``lowrank_bwd`` (non-causal) and of the features op plus the decay
scan (causal)."""
import torch

from .._common.checks import compute_dtype
from ..scan.functional import decay_scan
from . import feature_maps as fmaps
from . import op as lr
from .naive import apply_feature_map
from .validate import check_lowrank_inputs

__all__ = ["lowrank_integral_transform", "features"]


def _kernel_feature_map(arg_name, fm, Dk):
    """(code, projection) of a feature map the kernels apply, or None for another callable
    (applied in PyTorch). Raises for anything else."""
    if isinstance(fm, str):
        if fm == "favor+":
            raise ValueError(
                f"{arg_name}: 'favor+' holds a random projection; pass a module, e.g. "
                f"itnet_ext.nn.feature_maps.PositiveRandomFeatures(dim, num_features)")
        if fm not in lr.FEATURE_MAP_CODES:
            raise ValueError(f"{arg_name}: expected one of {fmaps.DETERMINISTIC_NAMES}, a "
                             f"PositiveRandomFeatures module or a callable, got {fm!r}")
        return lr.FEATURE_MAP_CODES[fm], None
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
        return lr.FEATURE_MAP_CODES["favor+"], (fm.projection.detach().clone() if fm.auto_redraw
                                              else fm.projection)
    if not callable(fm):
        raise ValueError(f"{arg_name}: expected a name or a callable, got {type(fm).__name__}")
    for name, f in fmaps.DETERMINISTIC.items():
        if fm is f:
            return lr.FEATURE_MAP_CODES[name], None
    return None


def _lowrank_features(arg_name, fm, kernel_map, x, *, is_query, softmax, cdt):
    """phi = fm(x) (B, H, n, F) in the compute dtype: by the features op for the kernels'
    maps (FAVOR+ stabilized per query row / per key slice in softmax mode, where it
    cancels), else by calling fm."""
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
    # as the oracle does: the map sees the compute dtype, and a PositiveRandomFeatures
    # subclass gets its query / key stabilizer role (only in softmax mode)
    phi = apply_feature_map(arg_name, fm, x.to(cdt), is_query=is_query,
                             normalize="softmax" if softmax else "none")
    B, H, n = x.shape[:3]
    if not isinstance(phi, torch.Tensor) or phi.dim() != 4 or tuple(phi.shape[:3]) != (B, H, n):
        got = tuple(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
        raise ValueError(f"{arg_name}: expected features of shape (B, H, n, F) = "
                         f"({B}, {H}, {n}, F), got {got}")
    return phi.to(cdt)


def _feature_pair(q, k, v, feature_map, fk, kq, kk, same, softmax):
    """(phi, psi, compute dtype): query and key features as the unfused paths use them."""
    cdt = compute_dtype(v.dtype)
    phi = _lowrank_features("feature_map", feature_map, kq, q, is_query=True, softmax=softmax,
                            cdt=cdt)
    psi = _lowrank_features("key_feature_map" if not same else "feature_map", fk, kk, k,
                            is_query=False, softmax=softmax, cdt=cdt)
    if phi.shape[3] != psi.shape[3]:
        raise ValueError(f"key_feature_map: query features have F = {phi.shape[3]} but key "
                         f"features have F = {psi.shape[3]}")
    return phi, psi, cdt


def features(q, k, v, *, feature_map="identity", key_feature_map=None, normalize="none"):
    """(phi (B, H, N, F), psi (B, H, M, F), compute dtype): the features the low-rank op
    evaluates, by the same code (kernel maps by the features op, FAVOR+ stabilized per
    query row / key slice in softmax mode). For callers that combine the key sums
    themselves (the sharded op of itnet_ext.distributed). No redraw happens here."""
    Dk = q.shape[-1]
    softmax = normalize == "softmax"
    same = key_feature_map is None or key_feature_map is feature_map or (
        isinstance(key_feature_map, str) and key_feature_map == feature_map)
    fk = feature_map if same else key_feature_map
    kq = _kernel_feature_map("feature_map", feature_map, Dk)
    kk = kq if same else _kernel_feature_map("key_feature_map", key_feature_map, Dk)
    return _feature_pair(q, k, v, feature_map, fk, kq, kk, same, softmax)


def lowrank_integral_transform(q, k, v, *, feature_map="identity", normalize="none",
                               causal=False, key_feature_map=None, eps=0.0):
    r"""Fused low-rank integral transform (docs/design.md section 2, lowrank): the kernel
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

    phi, psi, cdt = _feature_pair(q, k, v, feature_map, fk, kq, kk, same, softmax)
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
