"""Tests of the pure-PyTorch oracle ``itnet_ext.reference.integral_transform``
against independent oracles: torch SDPA and a naive per-pair Python loop."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from itnet_ext._common.checks import normalize_window, offset_layout
from itnet_ext._common.kernel_args import check_inputs
from itnet_ext.reference import integral_transform

f64 = torch.float64


def rnd(*shape, requires_grad=False):
    return torch.randn(*shape, dtype=f64, requires_grad=requires_grad)


# --------------------------------------------------------------------------------------------
# Naive oracle: one Python loop over (b, h, i, j), plain floats, offset index from an
# explicit enumeration of the window box in row-major order (itertools.product).
# --------------------------------------------------------------------------------------------
def _act(name, x):
    if name == "relu":
        return max(x, 0.0)
    if name == "gelu":
        return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "silu":
        return x / (1.0 + math.exp(-x))
    raise AssertionError(name)


def naive(q=None, k=None, v=None, *, u=None, t=None, W2=None, b2=None, activation="gelu",
          offset_table=None, q_pos=None, k_pos=None, normalize="softmax", key_weight=None,
          causal=False, window=None, key_padding_mask=None, attn_mask=None, scale=None):
    B, H, M, Dv = v.shape
    N = q.shape[2] if q is not None else (u.shape[1] if u is not None else q_pos.shape[1])
    L = lambda x: None if x is None else x.detach().tolist()  # noqa: E731
    qL, kL, vL, uL, tL, W2L, b2L, EL = map(L, (q, k, v, u, t, W2, b2, offset_table))
    wL = L(key_weight)
    qp = L(q_pos) if q_pos is not None else [[[float(i)] for i in range(N)]]
    kp = L(k_pos) if k_pos is not None else [[[float(j)] for j in range(M)]]
    if window is not None and not isinstance(window[0], (tuple, list)):
        window = [window]
    box = None
    if offset_table is not None:
        ranges = [range(int(lo), int(hi) + 1) for lo, hi in window]
        box = {o: r for r, o in enumerate(itertools.product(*ranges))}
    am = None
    if attn_mask is not None:
        am = attn_mask.expand(B, H, N, M).tolist()
    if scale is None and q is not None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out = [[[[0.0] * Dv for _ in range(N)] for _ in range(H)] for _ in range(B)]
    lse = [[[float("-inf")] * N for _ in range(H)] for _ in range(B)]
    pick = lambda arr, b: arr[b if len(arr) > 1 else 0]  # noqa: E731  (batch dim B or 1)
    for b, h, i in itertools.product(range(B), range(H), range(N)):
        terms = []  # (logit, weight, j)
        for j in range(M):
            if key_padding_mask is not None and bool(key_padding_mask[b, j]):
                continue
            if causal and j > i:
                continue
            off = [kj - qi for kj, qi in zip(pick(kp, b)[j], pick(qp, b)[i])]
            if window is not None and not all(lo <= o <= hi for o, (lo, hi) in zip(off, window)):
                continue
            extra = 0.0
            if am is not None:
                m = am[b][h][i][j]
                if isinstance(m, bool):
                    if not m:
                        continue
                elif m == float("-inf"):
                    continue
                else:
                    extra = m
            logit = extra
            if qL is not None:
                logit += scale * sum(a * c for a, c in zip(qL[b][h][i], kL[b][h][j]))
            if W2L is not None:
                R = len(W2L[0])
                e_row = EL[box[tuple(int(round(o)) for o in off)]] if box is not None else [0.0] * R
                for r in range(R):
                    pre = (pick(uL, b)[i][r] if uL is not None else 0.0) \
                        + (pick(tL, b)[j][r] if tL is not None else 0.0) + e_row[r]
                    logit += W2L[h][r] * _act(activation, pre)
                if b2L is not None:
                    logit += b2L[h]
            w = pick(wL, b)[j] if wL is not None else 1.0
            terms.append((logit, w, j))
        if not terms:
            continue
        if normalize == "softmax":
            mx = max(l for l, _, _ in terms)
            den = sum(math.exp(l - mx) * w for l, w, _ in terms)
            lse[b][h][i] = mx + math.log(den)
            coef = [(math.exp(l - mx) * w / den, j) for l, w, j in terms]
        else:
            coef = [(l * w, j) for l, w, j in terms]
        for c, j in coef:
            for d in range(Dv):
                out[b][h][i][d] += c * vL[b][h][j][d]
    return torch.tensor(out, dtype=f64), torch.tensor(lse, dtype=f64)


def check_vs_naive(normalize="softmax", **kw):
    if normalize == "softmax":
        out, lse = integral_transform(normalize=normalize, return_lse=True, **kw)
    else:
        out, lse = integral_transform(normalize=normalize, **kw), None
    ref_out, ref_lse = naive(normalize=normalize, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    if lse is not None:
        torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)
    return out


# --------------------------------------------------------------------------------------------
# (a) content-only softmax == SDPA
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("scale", [None, 0.37])
@pytest.mark.parametrize("NM", [(6, 6), (5, 9), (9, 4)])
def test_content_matches_sdpa(causal, mask, scale, NM):
    N, M = NM
    B, H, Dk, Dv = 2, 3, 4, 5
    q, k, v = rnd(B, H, N, Dk), rnd(B, H, M, Dk), rnd(B, H, M, Dv)
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.rand(B, 1, N, M) > 0.3
        attn_mask[..., 0] = True  # keep every row non-empty (SDPA gives NaN on empty rows)
    elif mask == "float":
        attn_mask = rnd(1, H, N, M)
    if causal and attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask[..., 0] = True
    out, lse = integral_transform(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale,
                                  return_lse=True)
    sdpa_mask, sdpa_causal = attn_mask, causal
    if causal and attn_mask is not None:  # SDPA takes one or the other: fold causal into the mask
        tril = torch.ones(N, M, dtype=torch.bool).tril()
        sdpa_mask = (attn_mask & tril if mask == "bool"
                     else attn_mask.masked_fill(~tril, float("-inf")))
        sdpa_causal = False
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, is_causal=sdpa_causal,
                                         scale=scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # lse against an explicit logsumexp of the masked scores
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(Dk))
    if mask == "float":
        s = s + attn_mask
    elif mask == "bool":
        s = s.masked_fill(~attn_mask, float("-inf"))
    if causal:
        s = s.masked_fill(torch.ones(N, M, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(s, -1), rtol=1e-12, atol=1e-12)


def test_content_sdpa_grads_and_padding():
    B, H, N, M, Dk, Dv = 2, 2, 5, 7, 3, 4
    q, k, v = rnd(B, H, N, Dk, requires_grad=True), rnd(B, H, M, Dk, requires_grad=True), \
        rnd(B, H, M, Dv, requires_grad=True)
    kpm = torch.rand(B, M) > 0.6
    kpm[:, 0] = False
    go = rnd(B, H, N, Dv)
    out = integral_transform(q, k, v, key_padding_mask=kpm)
    g1 = torch.autograd.grad(out, (q, k, v), go)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=~kpm[:, None, None, :])
    g2 = torch.autograd.grad(ref, (q, k, v), go)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# (b) naive loop
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("content", [False, True])
def test_mlp_term_vs_naive(activation, normalize, content):
    B, H, N, M, R, Dk, Dv = 2, 2, 4, 5, 3, 3, 2
    kw = dict(v=rnd(B, H, M, Dv), u=rnd(B, N, R), t=rnd(1, M, R), W2=rnd(H, R), b2=rnd(H),
              activation=activation,
              key_weight=torch.rand(B, M, dtype=f64) + 0.1)
    if content:
        kw.update(q=rnd(B, H, N, Dk), k=rnd(B, H, M, Dk), scale=0.7)
    check_vs_naive(normalize=normalize, **kw)


def test_mlp_partial_inputs_vs_naive():
    B, H, N, M, R, Dv = 1, 3, 5, 4, 2, 3
    # only t (N from q_pos), no b2
    check_vs_naive(v=rnd(B, H, M, Dv), t=rnd(B, M, R), W2=rnd(H, R),
                   q_pos=rnd(1, N, 1), k_pos=rnd(1, M, 1), activation="silu")
    # only u
    check_vs_naive(v=rnd(B, H, M, Dv), u=rnd(1, N, R), W2=rnd(H, R), b2=rnd(H),
                   normalize="none", activation="relu")


@pytest.mark.parametrize("D", [1, 2, 3])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_offset_table_integer_grid_vs_naive(D, normalize):
    B, H, N, M, R, Dv = 2, 2, 5, 5, 3, 2
    window = [(-1, 1), (0, 2), (-2, 0)][:D]
    vol = math.prod(hi - lo + 1 for lo, hi in window)
    q_pos = torch.randint(-1, 3, (B, N, D)).to(f64)
    k_pos = torch.randint(-1, 3, (1, M, D)).to(f64)
    check_vs_naive(
        normalize=normalize, q=rnd(B, H, N, 2), k=rnd(B, H, M, 2), v=rnd(B, H, M, Dv),
        u=rnd(B, N, R), t=rnd(B, M, R), W2=rnd(H, R), b2=rnd(H),
        offset_table=rnd(vol + 2, R), window=window, q_pos=q_pos, k_pos=k_pos,
        key_weight=torch.rand(1, M, dtype=f64) + 0.2, activation="gelu")


def test_offset_table_default_positions_and_single_pair_window():
    B, H, N, M, R, Dv = 1, 2, 5, 5, 2, 3
    for window in [(-2, 1), [(-1, 3)], (0, 0)]:
        lo, hi = normalize_window(window)[0]
        check_vs_naive(v=rnd(B, H, M, Dv), u=rnd(B, N, R), W2=rnd(H, R),
                       offset_table=rnd(int(hi - lo + 1), R), window=window, causal=True)


def test_fractional_window_and_masks_vs_naive():
    B, H, N, M, Dv = 2, 2, 5, 4, 3
    q_pos, k_pos = torch.rand(B, N, 2, dtype=f64) * 3, torch.rand(B, M, 2, dtype=f64) * 3
    kpm = torch.rand(B, M) > 0.7
    fmask = rnd(B, 1, N, M)
    fmask[torch.rand(B, 1, N, M) > 0.7] = float("-inf")
    for normalize in ["softmax", "none"]:
        for attn_mask in [torch.rand(1, H, N, M) > 0.3, fmask]:
            check_vs_naive(normalize=normalize, q=rnd(B, H, N, 3), k=rnd(B, H, M, 3),
                           v=rnd(B, H, M, Dv), W2=rnd(H, 2), t=rnd(B, M, 2), q_pos=q_pos,
                           k_pos=k_pos, window=[(-1.5, 1.0), (-math.inf, 0.75)],
                           key_padding_mask=kpm, attn_mask=attn_mask, causal=True,
                           key_weight=torch.rand(B, M, dtype=f64) + 0.5)


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_support_rows(normalize):
    B, H, N, M, R, Dv = 2, 2, 5, 4, 3, 2
    q, k, v = (rnd(B, H, N, 2, requires_grad=True), rnd(B, H, M, 2, requires_grad=True),
               rnd(B, H, M, Dv, requires_grad=True))
    u, t, W2 = rnd(B, N, R, requires_grad=True), rnd(B, M, R, requires_grad=True), \
        rnd(H, R, requires_grad=True)
    E = rnd(3, R, requires_grad=True)
    w = (torch.rand(B, M, dtype=f64) + 0.5).requires_grad_()
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[0] = True          # batch 0: every key padded -> all rows empty
    kpm[1, :2] = True      # batch 1: keys 0, 1 padded; causal -> rows 0, 1 empty
    fmask = rnd(1, 1, N, M)
    fmask[..., 3, :] = float("-inf")  # row 3 empty everywhere
    args = (q, k, v, u, t, W2, E, w)
    kw = dict(key_padding_mask=kpm, causal=True, attn_mask=fmask, window=(-1, 1),
              normalize=normalize)

    def f(q, k, v, u, t, W2, E, w):
        return integral_transform(q, k, v, u=u, t=t, W2=W2, offset_table=E, key_weight=w, **kw)

    out = f(*args)
    empty = torch.zeros(B, N, dtype=torch.bool)
    empty[0] = True
    empty[1, :2] = True
    empty[:, 3] = True
    assert (out[empty[:, None, :, None].expand_as(out)] == 0).all()
    assert (out[~empty[:, None, :, None].expand_as(out)] != 0).all()
    ref_out, ref_lse = naive(*args[:3], u=u, t=t, W2=W2, offset_table=E, key_weight=w, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    if normalize == "softmax":
        _, lse = integral_transform(*args[:3], u=u, t=t, W2=W2, offset_table=E, key_weight=w,
                                    return_lse=True, **kw)
        assert torch.isneginf(lse[empty[:, None, :].expand_as(lse)]).all()
        torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)
    # gradients: finite everywhere; rows with empty support contribute nothing
    go = rnd(*out.shape)
    grads = torch.autograd.grad(out, args, go)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][empty[:, None, :, None].expand_as(q)] == 0).all()
    assert (grads[3][empty[:, :, None].expand_as(u)] == 0).all()
    assert (grads[1][0] == 0).all() and (grads[2][0] == 0).all()  # batch 0 entirely empty
    if normalize == "softmax":  # lse path too (d lse = 0 on empty rows)
        _, lse = integral_transform(*args[:3], u=u, t=t, W2=W2, offset_table=E, key_weight=w,
                                    return_lse=True, **kw)
        gl = torch.autograd.grad(lse.masked_fill(torch.isinf(lse), 0).sum(), args, allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in gl)
        assert (gl[0][empty[:, None, :, None].expand_as(q)] == 0).all()
    # gradcheck in the presence of empty rows
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


def test_no_keys():
    v = rnd(1, 2, 0, 3, requires_grad=True)
    q, k = rnd(1, 2, 4, 5, requires_grad=True), rnd(1, 2, 0, 5)
    out, lse = integral_transform(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 4, 3) and (out == 0).all() and torch.isneginf(lse).all()
    (g,) = torch.autograd.grad(out.sum(), (q,))
    assert (g == 0).all()


def test_gradcheck_full():
    B, H, N, M, R = 1, 2, 3, 4, 2
    args = (rnd(B, H, N, 2, requires_grad=True), rnd(B, H, M, 2, requires_grad=True),
            rnd(B, H, M, 2, requires_grad=True), rnd(B, N, R, requires_grad=True),
            rnd(1, M, R, requires_grad=True), rnd(H, R, requires_grad=True),
            rnd(H, requires_grad=True), rnd(5, R, requires_grad=True),
            (torch.rand(1, M, dtype=f64) + 0.5).requires_grad_())

    def f(q, k, v, u, t, W2, b2, E, w):
        return integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2, offset_table=E, key_weight=w,
                                  window=(-2, 2), activation="silu", return_lse=True)

    assert torch.autograd.gradcheck(f, args)


# --------------------------------------------------------------------------------------------
# (c) chunking invariance (also covers the checkpointed multi-chunk backward)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_chunking_invariance(normalize):
    B, H, N, M, R = 2, 2, 11, 9, 3
    args = [rnd(B, H, N, 3), rnd(B, H, M, 3), rnd(B, H, M, 4), rnd(1, N, R), rnd(B, M, R),
            rnd(H, R), rnd(H), rnd(7, R), torch.rand(B, M, dtype=f64) + 0.5]
    args = [a.requires_grad_() for a in args]
    q_pos = torch.randint(0, 6, (B, N, 1)).to(f64)
    kpm = torch.rand(B, M) > 0.8
    attn_mask = rnd(B, 1, N, M)

    def f(chunk_size):
        q, k, v, u, t, W2, b2, E, w = args
        res = integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2, offset_table=E, key_weight=w,
                                 q_pos=q_pos, window=(-3, 3), key_padding_mask=kpm,
                                 attn_mask=attn_mask, causal=True, normalize=normalize,
                                 return_lse=normalize == "softmax", chunk_size=chunk_size)
        res = res if isinstance(res, tuple) else (res,)
        loss = sum((r.masked_fill(torch.isinf(r), 0) * torch.linspace(-1, 1, r.numel(), dtype=f64)
                    .reshape(r.shape)).sum() for r in res)
        return res, torch.autograd.grad(loss, args)

    (r1, g1), (r2, g2) = f(3), f(1024)
    for a, b in zip(r1 + g1, r2 + g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_dtypes():
    B, H, N, M = 1, 2, 3, 4
    for dt in [torch.float32, torch.bfloat16]:
        q, k, v = (torch.randn(B, H, N, 8, dtype=dt), torch.randn(B, H, M, 8, dtype=dt),
                   torch.randn(B, H, M, 8, dtype=dt))
        out, lse = integral_transform(q, k, v, return_lse=True)
        assert out.dtype == dt and lse.dtype == torch.float32
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_check_inputs_namespace():
    B, H, N, M, R = 2, 3, 4, 5, 6
    p = check_inputs(rnd(B, H, N, 7), rnd(B, H, M, 7), rnd(B, H, M, 2), W2=rnd(H, R),
                     offset_table=rnd(12, R), q_pos=rnd(1, N, 2).round(), k_pos=rnd(B, M, 2).round(),
                     window=[(-1, 1), (0, 3)])
    assert (p.B, p.H, p.N, p.M, p.Dk, p.Dv, p.R, p.D) == (B, H, N, M, 7, 2, R, 2)
    assert p.content and p.mlp and p.scale == pytest.approx(1 / math.sqrt(7))
    assert p.window == ((-1.0, 1.0), (0.0, 3.0))
    assert p.offset_sizes == (3, 4) and p.offset_strides == (4, 1) and p.offset_volume == 12
    assert offset_layout(((0, 1), (0, 2), (-1, 1))) == ((2, 3, 3), (9, 3, 1), 18)


# --------------------------------------------------------------------------------------------
# (d) bad inputs
# --------------------------------------------------------------------------------------------
def _good():
    B, H, N, M, R = 2, 2, 3, 4, 3
    return dict(q=rnd(B, H, N, 5), k=rnd(B, H, M, 5), v=rnd(B, H, M, 6), u=rnd(B, N, R),
                t=rnd(1, M, R), W2=rnd(H, R), b2=rnd(H))


BAD = [
    (dict(v=None), r"v: .*required"),
    (dict(v=rnd(2, 2, 4)), r"v: expected a 4-D tensor \(B, H, M, Dv\), got shape \(2, 2, 4\)"),
    (dict(q=rnd(2, 2, 3)), r"q: expected a 4-D tensor \(B, H, N, Dk\), got shape \(2, 2, 3\)"),
    (dict(q=rnd(2, 3, 3, 5)), r"q: .*H \(from v\) = 2, got shape \(2, 3, 3, 5\)"),
    (dict(q=rnd(1, 2, 3, 5)), r"q: .*B \(from v\) = 2"),
    (dict(k=rnd(2, 2, 4, 6)), r"k: .*Dk \(from q\) = 5"),
    (dict(k=rnd(2, 2, 5, 5)), r"k: .*M \(from v\) = 4"),
    (dict(k=None), r"k: the content term needs both q and k"),
    (dict(q=None), r"q: the content term needs both q and k"),
    (dict(q=None, k=None, W2=None, u=None, t=None, b2=None), r"no term enabled"),
    (dict(W2=None), r"u: .*W2"),
    (dict(W2=rnd(3, 3)), r"W2: .*H \(from v\) = 2"),
    (dict(W2=rnd(2, 3, 1)), r"W2: expected a 2-D tensor \(H, R\)"),
    (dict(u=rnd(2, 3, 4)), r"u: .*R \(from W2\) = 3"),
    (dict(u=rnd(3, 3, 3)), r"u: .*B \(from v\) = 2 or 1"),
    (dict(u=rnd(2, 4, 3)), r"u: .*N \(from q\) = 3"),
    (dict(t=rnd(1, 5, 3)), r"t: .*M \(from v\) = 4"),
    (dict(b2=rnd(3)), r"b2: .*H \(from v\) = 2"),
    (dict(W2=rnd(2, 3).float()), r"W2: expected dtype torch.float64 \(same as v\), got torch.float32"),
    (dict(q=torch.ones(2, 2, 3, 5, dtype=torch.long)), r"q: expected dtype torch.float64"),
    (dict(activation="tanh"), r"activation: expected one of"),
    (dict(normalize="sparsemax"), r"normalize: expected one of"),
    (dict(normalize="none", return_lse=True), r"return_lse: .*softmax"),
    (dict(window=(2, 1)), r"window: expected lo <= hi"),
    (dict(window=[(0, 1), (0, 1)]), r"window: expected 1 \(lo, hi\) pair"),
    (dict(window="ab"), r"window: expected a pair"),
    (dict(window=(float("nan"), 1)), r"window: .*NaN"),
    (dict(offset_table=rnd(5, 3)), r"offset_table: requires a window"),
    (dict(offset_table=rnd(5, 3), window=(-0.5, 1)), r"offset_table: requires window bounds .*integer"),
    (dict(offset_table=rnd(5, 3), window=(-math.inf, 1)), r"offset_table: requires window bounds"),
    (dict(offset_table=rnd(2, 3), window=(-1, 1)), r"offset_table: expected at least 3 rows"),
    (dict(offset_table=rnd(3, 2), window=(-1, 1)), r"offset_table: .*R \(from W2\) = 3"),
    (dict(offset_table=rnd(3, 3), window=(-1, 1), q_pos=torch.full((1, 3, 1), 0.5, dtype=f64)),
     r"q_pos: offset_table requires integer-valued positions"),
    (dict(window=(-1, 1), k_pos=torch.full((1, 4, 1), float("nan"), dtype=f64)), r"k_pos: contains NaN"),
    (dict(q_pos=torch.zeros(1, 3, 1, dtype=torch.long)), r"q_pos: expected a floating-point tensor"),
    (dict(q_pos=rnd(1, 4, 1)), r"q_pos: .*N \(from q or u\) = 3"),
    (dict(q_pos=rnd(1, 3, 2), k_pos=rnd(1, 4, 1)), r"k_pos: .*D = 2 \(from q_pos\)"),
    (dict(q_pos=rnd(1, 3, 2)), r"k_pos: defaults to arange with D = 1"),
    (dict(key_weight=rnd(2, 5)), r"key_weight: .*M \(from v\) = 4"),
    (dict(key_weight=-torch.ones(1, 4, dtype=f64)), r"key_weight: expected strictly positive"),
    (dict(key_padding_mask=torch.zeros(2, 4)), r"key_padding_mask: expected dtype torch.bool"),
    (dict(key_padding_mask=torch.zeros(1, 4, dtype=torch.bool)), r"key_padding_mask: .*B \(from v\) = 2"),
    (dict(key_padding_mask=torch.zeros(2, 4, 1, dtype=torch.bool)), r"key_padding_mask: expected a 2-D"),
    (dict(attn_mask=torch.ones(3, 5, dtype=torch.bool)), r"attn_mask: expected a tensor broadcastable to \(B, H, N, M\)"),
    (dict(attn_mask=torch.ones(1, 2, 2, 3, 4, dtype=torch.bool)), r"attn_mask: expected a tensor broadcastable"),
    (dict(attn_mask=torch.ones(3, 4, dtype=torch.int32)), r"attn_mask: expected dtype torch.bool or torch.float64"),
    (dict(attn_mask=torch.ones(3, 4, dtype=torch.float32)), r"attn_mask: expected dtype torch.bool or torch.float64"),
    (dict(v=rnd(2, 2, 4, 6).to("meta")), r"expected all tensors on the same device as v"),
    (dict(scale="x"), r"scale: expected a real number"),
]


@pytest.mark.parametrize("bad,match", BAD, ids=[m.split(":")[0][:20] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_inputs(bad, match):
    kw = _good()
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        integral_transform(**kw)


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        integral_transform(**_good(), chunk_size=0)


def test_n_undeterminable():
    with pytest.raises(ValueError, match="cannot determine N"):
        integral_transform(v=rnd(1, 2, 4, 3), W2=rnd(2, 3), t=rnd(1, 4, 3))
