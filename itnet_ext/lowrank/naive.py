"""The low-rank integral transform's oracle (docs/design.md section 2, lowrank)."""
from __future__ import annotations

import torch

from .._common.checks import compute_dtype
from .feature_maps import PositiveRandomFeatures, make_feature_map
from .validate import check_lowrank_inputs


def _resolve_feature_map(arg_name, fm):
    """A feature map given by name (see ``itnet_ext.lowrank.feature_maps.FEATURE_MAPS``) or as a
    callable / module."""
    if isinstance(fm, str):
        if fm == "favor+":
            # A name cannot carry the random projection that queries and keys must share.
            raise ValueError(
                f"{arg_name}: 'favor+' holds a random projection; pass a module, e.g. "
                f"itnet_ext.nn.feature_maps.PositiveRandomFeatures(dim, num_features)")
        try:
            return make_feature_map(fm)
        except ValueError as err:
            raise ValueError(f"{arg_name}: {str(err).split(': ', 1)[1]}") from None
    if not callable(fm):
        raise ValueError(f"{arg_name}: expected a name or a callable, got {type(fm).__name__}")
    return fm


def apply_feature_map(arg_name, fm, x, *, is_query, normalize):
    """phi = fm(x), passing the FAVOR+ stabilizer role; the stabilizer cancels only under
    softmax normalization, so it is off in ``none`` mode."""
    if isinstance(fm, PositiveRandomFeatures):
        if x.shape[-1] != fm.dim:
            raise ValueError(
                f"{arg_name}: PositiveRandomFeatures has dim = {fm.dim}, but the "
                f"{'queries' if is_query else 'keys'} have Dk = {x.shape[-1]}")
        return fm(x, is_query=is_query, stabilize=(normalize == "softmax"))
    return fm(x)


def _causal_cumsum(phi, psi, v, softmax):
    """Causal numerator / denominator by plain prefix sums (float64 in the oracle):
    S_i = sum_{j<=i} psi_j v_j^T (B, H, N, F, Dv), z_i = sum_{j<=i} psi_j."""
    S = torch.cumsum(psi[..., :, None] * v[..., None, :], dim=2)
    num = torch.einsum("bhnf,bhnfd->bhnd", phi, S)
    den = torch.einsum("bhnf,bhnf->bhn", phi, torch.cumsum(psi, dim=2)) if softmax else None
    return num, den


def _causal_chunked(phi, psi, v, softmax, chunk):
    """Causal numerator / denominator by chunks (docs/design.md section 2, lowrank): inside a chunk
    the exact quadratic form (phi_c psi_c^T, lower-triangular incl. the diagonal) @ v_c;
    across chunks the state S = sum of psi_j v_j^T (F, Dv) and z = sum of psi_j over the
    previous chunks. Memory O(chunk^2 + F * Dv) per (b, h) instead of O(N * F * Dv)."""
    B, H, N, Fd = phi.shape
    S = phi.new_zeros(B, H, Fd, v.shape[-1])
    z = phi.new_zeros(B, H, Fd)
    nums, dens = [], []
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        pc, kc, vc = phi[:, :, s:e], psi[:, :, s:e], v[:, :, s:e]
        tri = torch.ones(e - s, e - s, dtype=torch.bool, device=phi.device).tril()
        a = torch.einsum("bhnf,bhmf->bhnm", pc, kc)
        a = torch.where(tri, a, torch.zeros((), dtype=a.dtype, device=a.device))
        nums.append(a @ vc + pc @ S)
        if softmax:
            dens.append(a.sum(-1) + torch.einsum("bhnf,bhf->bhn", pc, z))
            z = z + kc.sum(2)
        S = S + kc.transpose(-1, -2) @ vc
    if N == 0:
        return phi.new_zeros(B, H, 0, v.shape[-1]), (phi.new_zeros(B, H, 0) if softmax else None)
    return torch.cat(nums, 2), (torch.cat(dens, 2) if softmax else None)


def lowrank_integral_transform(
    q, k, v, *,
    feature_map="identity",
    normalize="none",
    causal=False,
    key_feature_map=None,
    eps=0.0,
    chunk_size=None,
):
    r"""Reference low-rank integral transform: the kernel l(i, j) ~= phi_i . psi_j with
    phi_i = feature_map(q_i), psi_j = (key_feature_map or feature_map)(k_j):

        none:    y_i = phi_i^T (sum_j psi_j v_j^T)
        softmax: y_i = phi_i^T (sum_j psi_j v_j^T) / (phi_i^T sum_j psi_j)

    over j <= i when ``causal`` (keys j >= N are never visible; for M < N the later rows see
    all keys, as in the dense reference). With the identity map this is exactly
    ``integral_transform(q, k, v, normalize="none", scale=1.0)`` (content term only); with
    :class:`~itnet_ext.nn.feature_maps.PositiveRandomFeatures` in softmax mode it estimates
    ``integral_transform(q, k, v)`` (softmax, scale 1/sqrt(Dk)).

    Args:
        q (B, H, N, Dk), k (B, H, M, Dk), v (B, H, M, Dv): same dtype and device.
        feature_map, key_feature_map: a name ("identity", "elu+1", "relu") or a callable /
            module mapping (B, H, n, Dk) -> (B, H, n, F); both must give the same F.
            "favor+" must be passed as a module (it holds the random projection); a
            ``PositiveRandomFeatures`` map gets the query / key stabilizer role, stabilized
            only in softmax mode (where it cancels), and :meth:`maybe_redraw` is called
            once per call before featurizing.
        normalize: "none" or "softmax".
        eps: softmax mode: a row whose denominator has |den| <= eps outputs 0, with zero
            gradient (never NaN or inf, as an empty row of the dense reference). Default 0:
            only an exactly zero denominator (e.g. a relu feature row of zeros) is cut; no
            eps is added to nonzero denominators, which would bias the output.
        chunk_size: causal only: None for plain prefix sums (cumsum over j, O(N F Dv)
            memory), or an int for the chunked form (exact quadratic inside a chunk, state
            across chunks). Both are exact; they agree to rounding.

    Returns y (B, H, N, Dv) in v's dtype; computed in float64 for float64 v, else float32.
    Differentiable by autograd w.r.t. q, k, v (and the maps' parameters).
    """
    # ---- arguments -------------------------------------------------------------------------
    B, H, N, M, Dk, Dv = check_lowrank_inputs(q, k, v, normalize, causal, eps)
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size: expected None or a positive int, got {chunk_size!r}")
    fq = _resolve_feature_map("feature_map", feature_map)
    fk = fq if key_feature_map is None else _resolve_feature_map("key_feature_map",
                                                                 key_feature_map)

    # ---- features ----------------------------------------------------------------------------
    cdt = compute_dtype(v.dtype)
    qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
    for fm in {id(fq): fq, id(fk): fk}.values():  # once per distinct module
        if hasattr(fm, "maybe_redraw"):
            fm.maybe_redraw()
    softmax = normalize == "softmax"
    phi = apply_feature_map("feature_map", fq, qc, is_query=True, normalize=normalize)
    psi = apply_feature_map("key_feature_map" if key_feature_map is not None else
                             "feature_map", fk, kc, is_query=False, normalize=normalize)
    for name, x, n, label in (("feature_map", phi, N, "N"),
                              ("key_feature_map" if key_feature_map is not None
                               else "feature_map", psi, M, "M")):
        if (not isinstance(x, torch.Tensor) or x.dim() != 4
                or tuple(x.shape[:3]) != (B, H, n)):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected features of shape (B, H, {label}, F) = "
                             f"({B}, {H}, {n}, F), got {got}")
    if phi.shape[3] != psi.shape[3]:
        raise ValueError(f"key_feature_map: query features have F = {phi.shape[3]} but key "
                         f"features have F = {psi.shape[3]}")
    phi, psi = phi.to(cdt), psi.to(cdt)

    # ---- numerator / denominator --------------------------------------------------------------
    if not causal:
        num = torch.einsum("bhnf,bhfd->bhnd", phi, torch.einsum("bhmf,bhmd->bhfd", psi, vc))
        den = torch.einsum("bhnf,bhf->bhn", phi, psi.sum(2)) if softmax else None
    else:
        # Align keys with queries: key j is visible to query i iff j <= i, so keys j >= N
        # are never visible, and for M < N zero features / values pad the missing keys
        # (they add nothing to either sum).
        if M >= N:
            psi_a, v_a = psi[:, :, :N], vc[:, :, :N]
        else:
            psi_a = torch.cat([psi, psi.new_zeros(B, H, N - M, psi.shape[3])], 2)
            v_a = torch.cat([vc, vc.new_zeros(B, H, N - M, Dv)], 2)
        if chunk_size is None:
            num, den = _causal_cumsum(phi, psi_a, v_a, softmax)
        else:
            num, den = _causal_chunked(phi, psi_a, v_a, softmax, chunk_size)

    if softmax:
        # Rows with |den| <= eps output 0; the second where keeps the division (and its
        # gradient) finite there.
        ok = ~(den.abs() <= eps)  # NaN is kept: it shows in the output
        den_safe = torch.where(ok, den, torch.ones((), dtype=cdt, device=den.device))
        out = torch.where(ok[..., None], num / den_safe[..., None],
                          torch.zeros((), dtype=cdt, device=num.device))
    else:
        out = num
    return out.to(v.dtype)
