"""The fused low-rank op's numerical edge cases (issue 6), against the float64 oracle
``reference.lowrank_integral_transform`` and plain fp16 PyTorch: long half-precision sums
(fp16, bf16, autocast), zero / tiny denominators and the eps cut, empty and degenerate shapes,
NaN-poisoned strided inputs, NaN and +-inf inputs, user maps and the FAVOR+ redraw.
The op's exactness, gradients, registration and argument errors: tests/test_lowrank_op.py.
"""
import math
import zlib

import pytest
import torch
import torch.nn.functional as TF

import itnet_ext  # noqa: F401  (registers torch.ops.itnet)
from itnet_ext import functional, reference
from itnet_ext.nn.feature_maps import PositiveRandomFeatures

from lowrank_helpers import (F64, compare, make_maps, one_thread, out_and_grads, prf,  # noqa: F401
                             qkv, rel)

lowrank = functional.lowrank_integral_transform
oracle = reference.lowrank_integral_transform
F16, BF16 = torch.float16, torch.bfloat16


# --------------------------------------------------------------------------------------------
# 5. half precision: sums over long sequences overflow fp16 in plain PyTorch, not in the op
# --------------------------------------------------------------------------------------------
def _overflow_problem(case, dtype):
    """Inputs whose key sums S = sum_j psi_j v_j^T (and z) exceed 65504 while the output stays
    in fp16 range. elu+1 softmax: k ~ 20 (psi ~ 21), v ~ 30, M = 4096. elu+1 none: q ~ -12
    (phi ~ 6e-6) so that phi^T S is small. FAVOR+ softmax: v ~ 2e4 (features <= 1/sqrt(m)).
    FAVOR+ none: queries and keys anti-aligned along a direction u per head, so phi_f is
    small wherever psi_f (hence S_f) is large."""
    g = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    B, H, N, Dk, Dv = 1, 2, 4096, 8, 4
    M = N

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    if case == "elu_softmax":
        q, k, v, fm, norm = rnd(B, H, N, Dk), rnd(B, H, M, Dk) + 20, rnd(B, H, M, Dv) * 5 + 30, \
            "elu+1", "softmax"
    elif case == "elu_none":
        q, k, v, fm, norm = rnd(B, H, N, Dk) * 0.5 - 12, rnd(B, H, M, Dk) + 20, \
            rnd(B, H, M, Dv) * 5 + 30, "elu+1", "none"
    elif case == "favor_softmax":
        q, k, v, fm, norm = rnd(B, H, N, Dk), rnd(B, H, M, Dk), rnd(B, H, M, Dv) * 1e3 + 2e4, \
            prf(Dk, 32, seed=1), "softmax"
    else:
        u = rnd(B, H, 1, Dk)
        u = u / u.norm(dim=-1, keepdim=True)
        q, k = rnd(B, H, N, Dk) * 0.3 + 5 * u, rnd(B, H, M, Dk) * 0.3 - 5 * u
        v, fm, norm = rnd(B, H, M, Dv) * 5 + 300, prf(Dk, 32, seed=1), "none"
    return q.to(dtype), k.to(dtype), v.to(dtype), fm, norm


def _plain_fp16(q, k, v, fm, norm, causal):
    """The textbook evaluation, all in the inputs' dtype."""
    if isinstance(fm, str):
        phi, psi = TF.elu(q) + 1, TF.elu(k) + 1
    else:
        phi = fm(q, is_query=True, stabilize=norm == "softmax")
        psi = fm(k, is_query=False, stabilize=norm == "softmax")
    if causal:
        S = torch.cumsum(psi[..., :, None] * v[..., None, :], dim=2)
        num = torch.einsum("bhnf,bhnfd->bhnd", phi, S)
        z = torch.cumsum(psi, dim=2)
        den = (phi * z).sum(-1)
    else:
        S = torch.einsum("bhmf,bhmd->bhfd", psi, v)
        num = torch.einsum("bhnf,bhfd->bhnd", phi, S)
        den = phi @ psi.sum(2)[..., None]
        den = den[..., 0]
    return S, (num / den[..., None] if norm == "softmax" else num)


HALF_CASES = ["elu_softmax", "elu_none", "favor_softmax", "favor_none"]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", HALF_CASES)
def test_fp16_long_sums_do_not_overflow(case, causal):
    q, k, v, fm, norm = _overflow_problem(case, F16)
    # control: plain fp16 PyTorch overflows (S beyond 65504 -> inf, output inf / NaN)
    S, y16 = _plain_fp16(q, k, v, fm, norm, causal)
    assert not torch.isfinite(S).all()
    assert not torch.isfinite(y16).all()
    kw = dict(feature_map=fm, normalize=norm, causal=causal)
    got = out_and_grads(lowrank, q, k, v, **kw)
    want = out_and_grads(oracle, q.double(), k.double(), v.double(), gy=got[1].double(), **kw)
    assert want[0].abs().max() < 6e4  # the exact output fits fp16
    for name, a in zip(("y", "gy", "dq", "dk", "dv"), got):
        assert a.dtype == F16 and torch.isfinite(a).all(), name
    compare(got, want, 1e-2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", HALF_CASES)
def test_bf16_long_sums(case, causal):
    """The same long sums in bfloat16 (no overflow, 8-bit mantissa): the op accumulates in
    float32, so the output and gradients are within bf16 rounding of the float64 oracle."""
    q, k, v, fm, norm = _overflow_problem(case, BF16)
    kw = dict(feature_map=fm, normalize=norm, causal=causal)
    got = out_and_grads(lowrank, q, k, v, **kw)
    want = out_and_grads(oracle, q.double(), k.double(), v.double(), gy=got[1].double(), **kw)
    for name, a in zip(("y", "gy", "dq", "dk", "dv"), got):
        assert a.dtype == BF16 and torch.isfinite(a).all(), name
    compare(got, want, 1e-2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fmap", ["elu+1", "favor"])
def test_autocast_bf16_linear(fmap, causal):
    """Under torch.autocast("cpu", bfloat16), nn.Linear layers produce bf16 q, k, v; the op
    runs on them: finite, within bf16 rounding of the oracle on the same q, k, v (values and
    their gradients), and the layers' weight gradients close to a float64 run of the model."""
    B, N, C, H, Dh = 2, 1500, 16, 2, 8
    x = torch.randn(B, N, C) * 2 + 1
    lin = torch.nn.Linear(C, 3 * H * Dh)
    fm = prf(Dh, 32, seed=5) if fmap == "favor" else "elu+1"
    norm = "softmax"

    def heads(t):
        return t.reshape(B, N, H, Dh).transpose(1, 2)

    with torch.autocast("cpu", dtype=BF16):
        qkv_ = lin(x)
        assert qkv_.dtype == BF16
        q, k, v = (heads(t) for t in qkv_.split(H * Dh, -1))
        q.retain_grad(), k.retain_grad(), v.retain_grad()
        y = lowrank(q, k, v, feature_map=fm, normalize=norm, causal=causal)
    assert y.dtype == BF16 and torch.isfinite(y).all()
    gy = torch.randn(y.shape, dtype=F64).to(BF16)
    y.backward(gy)
    want = out_and_grads(oracle, q.detach().double(), k.detach().double(),
                         v.detach().double(), gy=gy.double(), feature_map=fm, normalize=norm,
                         causal=causal)
    compare((y, gy, q.grad, k.grad, v.grad), want, 1e-2)
    for p in lin.parameters():
        assert torch.isfinite(p.grad).all()
    # the whole model in float64 (the difference is bf16 rounding of the Linear outputs)
    lin64 = torch.nn.Linear(C, 3 * H * Dh).double()
    lin64.load_state_dict(lin.state_dict())
    q6, k6, v6 = (heads(t) for t in lin64(x.double()).split(H * Dh, -1))
    y6 = oracle(q6, k6, v6, feature_map=fm, normalize=norm, causal=causal)
    y6.backward(gy.double())
    assert rel(y, y6) < 5e-2
    for p, p6 in zip(lin.parameters(), lin64.parameters()):
        assert rel(p.grad, p6.grad) < 5e-2


# --------------------------------------------------------------------------------------------
# 6. zero denominators, eps, empty and degenerate shapes
# --------------------------------------------------------------------------------------------
def _poison_heap(*shapes):
    """Allocate NaN-filled tensors of these shapes and free them, so that a kernel that leaves
    part of a fresh (torch.empty) output unwritten likely returns NaN there."""
    bufs = [torch.full(s, math.nan, dtype=F64) for s in shapes]
    del bufs  # freed at once (reference counting)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_zero_and_small_denominators(eps, causal):
    """relu features: query row 1 all zero (den exactly 0), query row 3 with one tiny feature
    (0 < den ~ 1e-3 <= eps = 1e-2); in causal mode key 0's features are zero too (row 0 sees
    only it).
    Such rows output exactly 0 with zero gradient, never NaN; the rest matches the oracle."""
    B, H, N, M, Dk, Dv = 1, 2, 9, 9, 3, 2
    q, k, v = qkv(B, H, N, M, Dk, Dv, seed=81)
    q[:, :, 1] = -q[:, :, 1].abs() - 0.1
    q[:, :, 3] = -q[:, :, 3].abs() - 0.1
    q[:, :, 3, 0] = 1e-4
    k[:, :, :, 0] = k[:, :, :, 0].abs() + 0.5     # key feature 0 positive: row 3's den > 0
    q[:, :, [0, 2, 4, 5, 6, 7, 8]] = q[:, :, [0, 2, 4, 5, 6, 7, 8]].abs() + 0.5  # rows: den >> eps
    if causal:
        k[:, :, 0] = -k[:, :, 0].abs() - 0.1
        k[:, :, 1:] = k[:, :, 1:].abs() + 0.5
    kw = dict(feature_map="relu", normalize="softmax", causal=causal, eps=eps)
    _poison_heap((B, H, N, Dv), (B, H, N, Dk), (B, H, M, Dk))
    got = out_and_grads(lowrank, q, k, v, **kw)
    want = out_and_grads(oracle, q, k, v, gy=got[1], **kw)
    y, _, dq, dk, dv = got
    for t in got:
        assert torch.isfinite(t).all()
    cut = [1] + ([3] if eps > 0 else []) + ([0] if causal else [])
    for i in cut:
        assert torch.equal(y[:, :, i], torch.zeros_like(y[:, :, i])), i
        assert torch.equal(dq[:, :, i], torch.zeros_like(dq[:, :, i])), i
    if eps == 0:
        assert (y[:, :, 3].abs() > 0).all()      # kept: den tiny but > 0
    compare(got, want, 1e-10)


@pytest.mark.parametrize("scale", [1e-21, 1e-15])
@pytest.mark.parametrize("causal", [False, True])
def test_tiny_denominators_float32(causal, scale):
    """Positive features far below 1 (what a global stabilizer gives a query whose large
    features miss every key): float32 denominators down to ~1e-40 (subnormal: their inverse
    overflows) with scale 1e-21, ~1e-30 with scale 1e-15. The rows are kept (den > eps = 0):
    outputs stay finite and match the oracle. Regression: multiplying by 1 / den gave inf and
    NaN where num / den is finite. Gradients are finite where den is a normal float32
    (scale 1e-15); below that, g / den itself overflows (see the functional's docstring)."""
    B, H, N, M, Dk, Dv = 1, 2, 40, 50, 4, 3
    g = torch.Generator().manual_seed(7)
    q = torch.rand(B, H, N, Dk, generator=g, dtype=F64) + 0.5
    k = (torch.rand(B, H, M, Dk, generator=g, dtype=F64) + 1) * scale
    v = torch.randn(B, H, M, Dv, generator=g, dtype=F64)
    q[:, :, ::2] *= scale
    kw = dict(feature_map="identity", normalize="softmax", causal=causal)
    q32, k32, v32 = (x.float().requires_grad_() for x in (q, k, v))
    y = lowrank(q32, k32, v32, **kw)
    want = oracle(*(x.detach().double() for x in (q32, k32, v32)), **kw)
    assert torch.isfinite(y).all()
    assert rel(y.double(), want) <= 1e-3
    if scale >= 1e-15:
        gr = torch.autograd.grad(y, (q32, k32, v32), torch.randn(y.shape, generator=g))
        assert all(torch.isfinite(t).all() for t in gr)


@pytest.mark.parametrize("causal", [False, True])
def test_eps_cuts_every_row(causal):
    q, k, v = qkv(1, 2, 6, 6, 3, 2, seed=91)
    kw = dict(feature_map="elu+1", normalize="softmax", causal=causal)
    y, _, dq, dk, dv = out_and_grads(lowrank, q, k, v, eps=1e300, **kw)
    for t in (y, dq, dk, dv):
        assert torch.equal(t, torch.zeros_like(t))
    y0 = lowrank(q, k, v, eps=0.0, **kw)
    assert rel(y0, oracle(q, k, v, **kw)) <= 1e-12 and (y0 != 0).all()


EMPTY = {"B0": (0, 2, 3, 4, 3, 2), "H0": (2, 0, 3, 4, 3, 2), "N0": (2, 2, 0, 4, 3, 2),
         "M0": (2, 2, 3, 0, 3, 2), "Dv0": (2, 2, 3, 4, 3, 0), "Dk0": (2, 2, 3, 4, 0, 2)}
EMPTY_CASES = [(name, fm) for name in EMPTY
               for fm in ("relu", "favor_orth", "tanh", "key_map_named", "identity")
               if not (name == "Dk0" and fm == "favor_orth")]  # FAVOR+ needs dim >= 1


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape,fmap", EMPTY_CASES)
def test_empty_shapes(shape, fmap, causal):
    """B, H, N, M, Dv or Dk = 0: the right shape and dtype, equal to the oracle (M = 0: no
    key; Dk = 0: no feature; output 0), and a differentiable output whose gradients are zeros
    of the inputs' shapes (as the oracle's: a training step on an empty batch must not
    fail)."""
    B, H, N, M, Dk, Dv = EMPTY[shape]
    fm, kfm = make_maps(fmap, Dk, 5, seed=1)
    for normalize in ("none", "softmax"):
        q, k, v = qkv(B, H, N, M, Dk, Dv, seed=2, requires_grad=True)
        kw = dict(feature_map=fm, key_feature_map=kfm, normalize=normalize, causal=causal)
        y = lowrank(q, k, v, **kw)
        want = oracle(q, k, v, **kw)
        assert y.shape == (B, H, N, Dv) and y.dtype == F64
        assert torch.equal(y, want)
        assert y.requires_grad == want.requires_grad, "output detached from q, k, v"
        grads = torch.autograd.grad(y.sum(), (q, k, v), allow_unused=True)
        for g, x in zip(grads, (q, k, v)):
            assert g is None or (g.shape == x.shape and not g.any())


@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("fmap", ["elu+1", "favor_orth", "lambda_softplus"])
def test_causal_more_queries_than_keys(fmap, normalize):
    """Causal with M < N: row i < M sees keys 0..i, rows i >= M see all keys (the non-causal
    output), against the oracle and the non-causal op (not the causal one)."""
    N, M = 40, 13
    q, k, v = qkv(2, 2, N, M, 4, 3, seed=7, scale=0.6)
    fm, _ = make_maps(fmap, 4, 8, seed=3)
    y = lowrank(q, k, v, feature_map=fm, normalize=normalize, causal=True)
    full = lowrank(q, k, v, feature_map=fm, normalize=normalize)
    assert rel(y[:, :, M - 1:], full[:, :, M - 1:].expand_as(y[:, :, M - 1:])) <= 1e-12
    for i in (0, 5, M - 2):    # rows before M: the transform of the prefix 0..i
        yi = oracle(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], feature_map=fm,
                    normalize=normalize)
        assert rel(y[:, :, i:i + 1], yi) <= 1e-12
    assert rel(y, oracle(q, k, v, feature_map=fm, normalize=normalize, causal=True)) <= 1e-12


# --------------------------------------------------------------------------------------------
# 9. NaN poisoning: strided views into NaN-filled buffers
# --------------------------------------------------------------------------------------------
def _view(buf, shape, layout):
    """The (B, H, n, D) view of a padded buffer (see _nan_buffer)."""
    B, H, n, D = shape
    if layout == "slice":
        return buf[1:, 1:H + 1, 2:n + 2, 3:D + 3]
    return buf[:, 1:, 1:D + 1, :n].transpose(-1, -2)


def _nan_buffer(x, layout):
    """A NaN-filled buffer whose view (see _view) holds x's values: "slice" pads every dim
    (the view is a non-contiguous interior slice), "transposed" stores (B, H + 1, D + 2, n + 1)
    and transposes back."""
    B, H, n, D = x.shape
    shape = (B + 1, H + 2, n + 3, D + 5) if layout == "slice" else (B, H + 1, D + 2, n + 1)
    buf = torch.full(shape, math.nan, dtype=x.dtype)
    view = _view(buf, x.shape, layout)
    view.copy_(x)
    assert not view.is_contiguous() and torch.isnan(buf).any()
    return buf


@pytest.mark.parametrize("layout", ["slice", "transposed"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fmap,normalize", [("favor_orth", "softmax"), ("favor_iid", "none"),
                                            ("relu", "softmax"), ("elu+1", "none"),
                                            ("tanh", "none")])
def test_nan_poisoned_strided_inputs(fmap, normalize, causal, layout):
    """q, k, v (and the FAVOR+ projection) are non-contiguous views whose buffers are NaN
    outside: outputs and gradients are finite, equal to the run on contiguous copies, match
    the oracle, and the gradient of the buffers is 0 outside the views."""
    B, H, N, M, Dk, Dv = 2, 2, 37, 29, 5, 3
    q, k, v = qkv(B, H, N, M, Dk, Dv, seed=12, scale=0.6)
    fm, _ = make_maps(fmap, Dk, 11, seed=2)
    if isinstance(fm, PositiveRandomFeatures):
        fm = fm.double()
        pbuf = torch.full((Dk + 3, 11 + 2), math.nan, dtype=F64)
        pview = pbuf[1:Dk + 1, 2:13].t()
        pview.copy_(fm.projection)
        fm.projection = pview
        assert not fm.projection.is_contiguous()
    kw = dict(feature_map=fm, normalize=normalize, causal=causal)
    clean = out_and_grads(lowrank, q, k, v, **kw)
    xs = (q, k, v)
    bufs = [_nan_buffer(x, layout).requires_grad_(True) for x in xs]
    views = [_view(b, x.shape, layout) for b, x in zip(bufs, xs)]
    _poison_heap((B, H, N, Dv), (B, H, N, Dk), (B, H, M, Dk), (B, H, M, Dv))
    y = lowrank(*views, **kw)
    assert torch.isfinite(y).all()
    gbufs = torch.autograd.grad(y, bufs, clean[1])
    for gb, x in zip(gbufs, xs):
        assert torch.isfinite(gb).all()
        outside = torch.ones_like(gb, dtype=torch.bool)
        _view(outside, x.shape, layout).fill_(False)
        assert not gb[outside].any()
    got = (y.detach(), clean[1], *(_view(gb, x.shape, layout) for gb, x in zip(gbufs, xs)))
    compare(got, clean, 1e-13)
    compare(got, out_and_grads(oracle, q, k, v, gy=clean[1], **kw), 1e-10)


# --------------------------------------------------------------------------------------------
# 10. FAVOR+ redraw
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_favor_redraw(normalize, causal):
    """PositiveRandomFeatures(redraw=True) in training mode: a new projection per call (shared
    by queries and keys): the fused output equals the oracle evaluated with the projection
    left after the call, which is the next draw of a twin module (same generator seed): one
    draw per call; in eval mode the projection stays and the output repeats."""
    q, k, v = qkv(2, 2, 23, 23, 4, 3, seed=41, scale=0.5)
    f = prf(4, 24, seed=5, redraw=True).double()
    twin = prf(4, 24, seed=5).double()
    seen = [f.projection.clone()]
    outs = []
    for _ in range(3):
        y = lowrank(q, k, v, feature_map=f, normalize=normalize, causal=causal)
        twin.redraw()
        assert torch.equal(f.projection, twin.projection)
        w = f.projection.clone()
        assert not any(torch.equal(w, s) for s in seen)
        seen.append(w)
        fixed = prf(4, 24, seed=0).double()
        fixed.projection.copy_(w)
        assert rel(y, oracle(q, k, v, feature_map=fixed, normalize=normalize,
                             causal=causal)) <= 1e-10
        outs.append(y)
    assert rel(outs[0], outs[1]) > 1e-4
    # key_feature_map the same module: still one draw per call, shared
    y = lowrank(q, k, v, feature_map=f, key_feature_map=f, normalize=normalize, causal=causal)
    twin.redraw()
    assert torch.equal(f.projection, twin.projection)
    fixed.projection.copy_(f.projection)
    assert rel(y, oracle(q, k, v, feature_map=fixed, normalize=normalize, causal=causal)) <= 1e-10
    f.eval()
    w = f.projection.clone()
    y1 = lowrank(q, k, v, feature_map=f, normalize=normalize, causal=causal)
    y2 = lowrank(q, k, v, feature_map=f, normalize=normalize, causal=causal)
    assert torch.equal(f.projection, w) and torch.equal(y1, y2)


# ---- review regressions -----------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("where", ["key", "query"])
def test_nan_input_shows_in_output(where, causal):
    """A NaN input is not taken for an empty row: it reaches the output (as in the dense op)
    instead of zeroing the row or the whole (b, h) slice."""
    q, k, v = qkv(1, 1, 6, 6, 3, 2, seed=5)
    if where == "key":
        k[0, 0, 0, 0] = math.nan
    else:
        q[0, 0, 2, 0] = math.nan
    for fmap in ("relu", "elu+1"):
        y = lowrank(q, k, v, feature_map=fmap, normalize="softmax", causal=causal)
        want = oracle(q, k, v, feature_map=fmap, normalize="softmax", causal=causal)
        assert torch.equal(torch.isnan(y), torch.isnan(want))
        assert torch.isnan(y).any()


@pytest.mark.parametrize("causal", [False, True])
def test_elu_at_infinities(causal):
    """elu+1 at -inf is 0 and at +inf is inf in the kernel, as in torch: a key padded with
    -inf drops out instead of turning the slice to NaN (and then to 0)."""
    q, k, v = qkv(1, 2, 7, 7, 3, 2, seed=6)
    k[:, :, -1] = -math.inf
    kw = dict(feature_map="elu+1", normalize="softmax", causal=causal)
    y, want = lowrank(q, k, v, **kw), oracle(q, k, v, **kw)
    assert torch.isfinite(y).all() and rel(y, want) <= 1e-12
    x = torch.tensor([[-math.inf, -1.0, 0.0, 2.0, math.inf]], dtype=F64)
    phi = torch.ops.itnet.lowrank_features(x, None, 1, 0)
    assert torch.equal(phi, TF.elu(x) + 1)


def test_callable_map_gets_compute_dtype():
    """A user's callable sees the compute dtype (float32 for half inputs), as in the oracle:
    exp of fp16 inputs near 12 would overflow fp16; a float32 module accepts bf16 inputs."""
    q, k, v = qkv(1, 2, 9, 8, 4, 3, seed=8)
    q16, k16, v16 = (q + 12).half(), (k + 12).half(), v.half()
    y = lowrank(q16, k16, v16, feature_map=torch.exp, normalize="softmax")
    want = oracle(q16, k16, v16, feature_map=torch.exp, normalize="softmax")
    assert torch.isfinite(y).all() and rel(y.double(), want.double()) <= 1e-2
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Softplus())
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    y = lowrank(qb, kb, vb, feature_map=net, normalize="softmax")
    want = oracle(qb, kb, vb, feature_map=net, normalize="softmax")
    assert rel(y.double(), want.double()) <= 1e-2


def test_redraw_twice_then_backward():
    """redraw=True rewrites the projection in place on every call; two calls before one
    backward must not trip autograd's in-place check, and each call's gradient uses its own
    projection."""
    q, k, v = qkv(1, 2, 9, 8, 4, 3, seed=9)
    fm = PositiveRandomFeatures(4, 16, redraw=True, generator=torch.Generator().manual_seed(1))
    fm = fm.double().train()
    q1 = q.clone().requires_grad_()
    y1 = lowrank(q1, k, v, feature_map=fm, normalize="softmax")
    w1 = fm.projection.clone()
    y2 = lowrank(q1, k, v, feature_map=fm, normalize="softmax")
    (y1.sum() + y2.sum()).backward()
    fixed = PositiveRandomFeatures(4, 16).double()
    fixed.projection.copy_(w1)
    q2 = q.clone().requires_grad_()
    oracle(q2, k, v, feature_map=fixed, normalize="softmax").sum().backward()
    fixed.projection.copy_(fm.projection)
    oracle(q2, k, v, feature_map=fixed, normalize="softmax").sum().backward()
    assert rel(q1.grad, q2.grad) <= 1e-10


def test_map_argument_forms():
    """An unhashable non-callable is a ValueError naming the argument; a subclass of
    PositiveRandomFeatures that changes forward is called, not replaced by the kernel's map."""
    q, k, v = qkv(1, 1, 5, 5, 4, 2, seed=10)
    with pytest.raises(ValueError, match="^feature_map"):
        lowrank(q, k, v, feature_map=["relu"])

    class Doubled(PositiveRandomFeatures):
        def forward(self, x, **kw):
            return 2 * super().forward(x, **kw)

    fm = Doubled(4, 8).double()
    y = lowrank(q, k, v, feature_map=fm, normalize="none")
    assert rel(y, oracle(q, k, v, feature_map=fm, normalize="none")) <= 1e-12
