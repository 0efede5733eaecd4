"""The fused low-rank op on CPU (issue 6): ``functional.lowrank_integral_transform`` and the raw
ops ``torch.ops.itnet.lowrank_fwd / lowrank_bwd / lowrank_features / lowrank_features_bwd``.

Against independent oracles on fresh random inputs: the dense op and the dense reference
(identity features, `none`, scale 1: exact), the float64 oracle
``reference.lowrank_integral_transform`` (every map x normalize x causal, float64 and float32,
odd sizes, values and gradients), exact softmax attention (FAVOR+ error falling with the
number of features), plain fp16 PyTorch (the overflow control of long half-precision sums);
gradcheck, opcheck and torch.compile; zero denominators, eps, empty shapes; argument errors of
the wrapper and of the raw ops; determinism and thread counts; NaN-poisoned strided inputs;
the FAVOR+ redraw.
"""
import math
import zlib

import pytest
import torch
import torch.nn.functional as TF

import itnet_ext  # noqa: F401  (registers torch.ops.itnet)
from itnet_ext import functional, reference
from itnet_ext.nn.feature_maps import PositiveRandomFeatures
from itnet_ext.ops.lowrank import STABILIZE_ROW, STABILIZE_SLICE

from lowrank_helpers import F32, F64, MAPS, POSITIVE, make_maps, out_and_grads, prf, qkv, rel

lowrank = functional.lowrank_integral_transform
oracle = reference.lowrank_integral_transform
F16, BF16 = torch.float16, torch.bfloat16


DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread by default: the op's parallel_for wakes the thread pool on every
    call, which dominates the run time of the many tiny problems here on a busy machine.
    Multi-threaded runs: test_row_splits_and_threads (1, 2, 4 threads) and
    test_determinism_and_threads (1 vs the default count)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


def close(got, want, tol, floor=0.0):
    """||got - want|| <= tol * max(||want||, floor), same shape, no NaN in got."""
    g, w = got.detach().double(), want.detach().double()
    assert g.shape == w.shape, (g.shape, w.shape)
    assert not torch.isnan(g).any(), "NaN in the result"
    err = (g - w).norm().item()
    bound = tol * max(w.norm().item(), floor)
    return err <= bound or err == 0.0, (err, bound)


def compare(got, want, tol, what=("y", "dq", "dk", "dv")):
    """Output and gradients (tuples from out_and_grads, gy skipped), each relative to its own
    norm. A gradient that is 0 up to rounding in float64 (norm <= 1e-8 of the largest compared
    norm: e.g. dq in softmax mode with one key, or with F = 1 features, where the output does
    not depend on q) is compared absolutely, relative to that largest norm."""
    got, want = (got[0],) + tuple(got[2:]), (want[0],) + tuple(want[2:])
    scale = max([w.detach().double().norm().item() for w in want] + [0.0])
    for name, a, b in zip(what, got, want):
        zero = b.detach().double().norm().item() <= 1e-8 * scale
        ok, info = close(a, b, tol, floor=scale if zero else 0.0)
        assert ok, (name, info)


# --------------------------------------------------------------------------------------------
# 1. exactness: identity features, `none`, content term only == the dense op
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N,M", [(37, 37), (13, 41), (41, 13), (1, 9), (9, 1)])
def test_identity_none_equals_dense(N, M, causal):
    """The dense op and the dense reference use key j visible to query i iff j <= i for any
    N, M (keys j >= N never seen, rows i >= M see every key): the low-rank op matches both,
    values and gradients, in float64."""
    q, k, v = qkv(2, 3, N, M, 5, 4, seed=N * 100 + M)
    kw = dict(normalize="none", scale=1.0, causal=causal)
    got = out_and_grads(lowrank, q, k, v, causal=causal)
    dense = out_and_grads(functional.integral_transform, q, k, v, gy=got[1], **kw)
    ref = out_and_grads(reference.integral_transform, q, k, v, gy=got[1], **kw)
    assert got[0].shape == (2, 3, N, 4) and got[0].dtype == F64
    for want in (dense, ref):
        compare(got, want, 1e-10)
    # not a vacuous comparison: the causal mask matters for these sizes
    if causal and min(N, M) > 1:
        full = lowrank(q, k, v)
        assert rel(got[0], full) > 1e-3


# --------------------------------------------------------------------------------------------
# 2. every map x normalize x causal against the float64 oracle
# --------------------------------------------------------------------------------------------
# (B, H, N, M, Dk, Dv, F); F is the size of the FAVOR+ / softplus-projection features
SIZES = [(1, 1, 1, 1, 1, 1, 1), (2, 1, 63, 257, 3, 17, 17), (1, 2, 257, 63, 17, 1, 3),
         (1, 1, 257, 257, 1, 3, 17), (1, 2, 1, 257, 17, 3, 1), (2, 1, 63, 1, 3, 1, 17)]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("fmap", MAPS)
def test_maps_against_oracle(fmap, normalize, causal, dtype):
    """Values and gradients (q, k, v) against the float64 oracle on the float64 copies of the
    same inputs. Sign-indefinite maps (identity, tanh, relu-vs-elu) in softmax mode have
    denominators near 0 for some rows: in float64 that only scales both sides alike; in float32
    it would measure the conditioning, not the op, so there q, k are shifted by +1 (positive
    features, denominators away from 0)."""
    tol = 1e-10 if dtype == F64 else 2e-5
    shift = 1.0 if (dtype == F32 and normalize == "softmax" and fmap not in POSITIVE) else 0.0
    for i, (B, H, N, M, Dk, Dv, F) in enumerate(SIZES):
        fm, kfm = make_maps(fmap, Dk, F, seed=i)
        q, k, v = qkv(B, H, N, M, Dk, Dv, dtype=dtype, seed=1000 * i + 17, shift=shift)
        kw = dict(feature_map=fm, key_feature_map=kfm, normalize=normalize, causal=causal)
        got = out_and_grads(lowrank, q, k, v, seed=i, **kw)
        want = out_and_grads(oracle, q.double(), k.double(), v.double(),
                             gy=got[1].double(), **kw)
        assert got[0].dtype == dtype and got[0].shape == (B, H, N, Dv)
        for a, x in zip(got[2:], (q, k, v)):
            assert a.dtype == dtype and a.shape == x.shape
        compare(got, want, tol)


def test_oracle_comparison_is_not_vacuous():
    """The oracle comparison distinguishes maps, normalizations and causality."""
    q, k, v = qkv(1, 2, 20, 20, 3, 2, seed=5)
    outs = [lowrank(q, k, v, feature_map=fm, normalize=n, causal=c)
            for fm in ("identity", "elu+1", "relu") for n in ("none", "softmax")
            for c in (False, True)]
    for i in range(len(outs)):
        for j in range(i):
            assert rel(outs[i], outs[j]) > 1e-3, (i, j)


# --------------------------------------------------------------------------------------------
# 3. gradcheck, opcheck, torch.compile
# --------------------------------------------------------------------------------------------
GC_MAPS = ("identity", "elu+1", "relu", "favor_orth", "favor_iid", "tanh", "lambda_softplus",
           "key_map_named", "key_map_callable", "key_map_favor")


GC_CASES = ([(fm, False, 6) for fm in GC_MAPS] + [(fm, True, 7) for fm in GC_MAPS]
            + [(fm, True, 3) for fm in ("elu+1", "favor_orth", "lambda_softplus")])


@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("fmap,causal,M", GC_CASES)
def test_gradcheck(fmap, normalize, causal, M):
    """float64 gradcheck of the functional (non-causal: the fused lowrank_fwd / lowrank_bwd
    for the kernel maps; causal: lowrank_features + decay_scan). Softmax mode: q, k around +1
    so that every map's denominators stay away from 0 (and relu away from its kink)."""
    shift, scale = (1.0, 0.3) if normalize == "softmax" else (0.0, 0.7)
    q, k, v = qkv(1, 2, 5, M, 3, 2, seed=M, scale=scale, shift=shift, requires_grad=True)
    fm, kfm = make_maps(fmap, 3, 4, seed=M)
    if isinstance(fm, PositiveRandomFeatures):
        fm = fm.double()

    def fn(q, k, v):
        return lowrank(q, k, v, feature_map=fm, key_feature_map=kfm, normalize=normalize,
                       causal=causal)
    assert torch.autograd.gradcheck(fn, (q, k, v), atol=1e-8, rtol=1e-6)


def _fwd_args(code, softmax, dtype, *, B=2, H=2, N=5, M=7, Dk=3, Dv=4, F=6, eps=0.0, seed=0):
    q, k, v = qkv(B, H, N, M, Dk, Dv, dtype=dtype, seed=seed, scale=0.6)
    proj = prf(Dk, F, seed=seed).projection.to(dtype) if code == 3 else None
    return q, k, v, proj, code, softmax, eps


@pytest.mark.parametrize("code,softmax,dtype", [
    (0, False, F64), (1, True, F32), (2, True, F64), (3, True, F64), (3, False, F32),
    (0, True, F32)])
def test_opcheck_fwd_bwd(code, softmax, dtype):
    """torch.library.opcheck (default test_utils: schema, autograd registration, fake tensor,
    aot dispatch static / dynamic) of lowrank_fwd (eps > 0 in softmax mode) and lowrank_bwd,
    every map code, float32 and float64."""
    args = _fwd_args(code, softmax, dtype, eps=1e-3 if softmax else 0.0, seed=code)
    torch.library.opcheck(torch.ops.itnet.lowrank_fwd.default, args)
    gy = torch.randn(2, 2, 5, 4, dtype=dtype)
    torch.library.opcheck(torch.ops.itnet.lowrank_bwd.default, (gy,) + args)


@pytest.mark.parametrize("code,stab,dtype", [
    (0, 0, F32), (1, 0, F64), (2, 0, F32), (3, 0, F64), (3, STABILIZE_ROW, F32),
    (3, STABILIZE_SLICE, F64)])
def test_opcheck_features(code, stab, dtype):
    x = torch.randn(2, 3, 7, 4, dtype=dtype) * 0.7
    proj = prf(4, 9, seed=stab).projection.to(dtype) if code == 3 else None
    torch.library.opcheck(torch.ops.itnet.lowrank_features.default, (x, proj, code, stab))
    F = 9 if code == 3 else 4
    gphi = torch.randn(2, 3, 7, F, dtype=dtype)
    torch.library.opcheck(torch.ops.itnet.lowrank_features_bwd.default,
                          (gphi, x, proj, code, stab))


@pytest.mark.parametrize("code,stab", [(1, 0), (3, 0), (3, STABILIZE_ROW), (3, STABILIZE_SLICE)])
def test_features_op_against_module(code, stab):
    """The raw features op against the PyTorch maps (values and gradient, float64)."""
    x = torch.randn(2, 3, 7, 4, dtype=F64, requires_grad=True)
    f = prf(4, 9, seed=3).double()
    proj = f.projection if code == 3 else None
    got = torch.ops.itnet.lowrank_features(x, proj, code, stab)
    if code == 1:
        want = TF.elu(x) + 1
    else:
        want = f(x, is_query=stab != STABILIZE_SLICE, stabilize=stab != 0)
    g = torch.randn_like(want)
    (dg,), (dw,) = (torch.autograd.grad(y, x, g) for y in (got, want))
    assert rel(got, want) <= 1e-12 and rel(dg, dw) <= 1e-10


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compile_fullgraph(backend, causal):
    """torch.compile(fullgraph=True) of the functional (FAVOR+ softmax, elu+1 none): no graph
    break, the same values and gradients as eager."""
    q, k, v = qkv(2, 2, 33, 33, 4, 3, seed=9, scale=0.5, requires_grad=True)
    f = prf(4, 16, seed=2).double()

    def fn(q, k, v):
        a = lowrank(q, k, v, feature_map=f, normalize="softmax", causal=causal)
        b = lowrank(q, k, v, feature_map="elu+1", normalize="none", causal=causal)
        return torch.tanh(a).sum() + (b * b).sum() * 1e-3

    torch._dynamo.reset()
    try:
        compiled = torch.compile(fn, backend=backend, fullgraph=True)
        want = fn(q, k, v)
        g_want = torch.autograd.grad(want, (q, k, v))
        got = compiled(q, k, v)
        g_got = torch.autograd.grad(got, (q, k, v))
    finally:
        torch._dynamo.reset()
    assert rel(got, want) <= 1e-12
    for a, b in zip(g_got, g_want):
        assert rel(a, b) <= 1e-12


def test_double_backward_error():
    q, k, v = qkv(1, 1, 4, 4, 3, 2, seed=1, requires_grad=True)
    y = lowrank(q, k, v, feature_map="elu+1", normalize="softmax")
    (g,) = torch.autograd.grad(y.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# --------------------------------------------------------------------------------------------
# 4. FAVOR+: the error against exact softmax attention falls with the number of features
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("orthogonal", [True, False])
def test_favor_error_falls_with_num_features(orthogonal, causal):
    """Mean (over 8 projections) relative error of the fused FAVOR+ softmax output against
    exact softmax attention (scale 1/sqrt(Dk)) for m = 8, 32, 128, 512: every step smaller by
    a margin (theory: halves per factor 4), m = 512 well below m = 8."""
    d = 16
    q, k, v = qkv(2, 2, 64, 64, d, 8, scale=0.5, seed=3)
    exact = reference.integral_transform(q, k, v, causal=causal)
    means = []
    for m in (8, 32, 128, 512):
        errs = [rel(lowrank(q, k, v, feature_map=prf(d, m, seed=100 + s, orthogonal=orthogonal),
                            normalize="softmax", causal=causal), exact) for s in range(8)]
        means.append(sum(errs) / len(errs))
    assert all(a > 1.3 * b for a, b in zip(means, means[1:])), means
    assert means[-1] < means[0] / 3, means


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
# 7. bad input
# --------------------------------------------------------------------------------------------
def _bad_call(**over):
    q, k, v = qkv(2, 2, 5, 6, 3, 4)
    args = dict(q=q, k=k, v=v)
    args.update(over)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return lowrank(q, k, v, **args)


def _grad_projection_prf():
    f = prf(3, 4, seed=0).double()
    f.projection.requires_grad_(True)
    return f


BAD = {
    "q ndim": (lambda: dict(q=torch.zeros(2, 5, 3, dtype=F64)), "q"),
    "k ndim": (lambda: dict(k=torch.zeros(2, 2, 1, 6, 3, dtype=F64)), "k"),
    "v ndim": (lambda: dict(v=torch.zeros(2, 2, 6, dtype=F64)), "v"),
    "q not tensor": (lambda: dict(q=[[1.0]]), "q"),
    "q batch": (lambda: dict(q=torch.zeros(3, 2, 5, 3, dtype=F64)), "q"),
    "k batch": (lambda: dict(k=torch.zeros(1, 2, 6, 3, dtype=F64)), "k"),
    "q heads": (lambda: dict(q=torch.zeros(2, 3, 5, 3, dtype=F64)), "q"),
    "k heads": (lambda: dict(k=torch.zeros(2, 1, 6, 3, dtype=F64)), "k"),
    "k M": (lambda: dict(k=torch.zeros(2, 2, 7, 3, dtype=F64)), "k"),
    "k Dk": (lambda: dict(k=torch.zeros(2, 2, 6, 4, dtype=F64)), "k"),
    "q dtype": (lambda: dict(q=torch.zeros(2, 2, 5, 3)), "q"),
    "k dtype": (lambda: dict(k=torch.zeros(2, 2, 6, 3, dtype=F16)), "k"),
    "v int": (lambda: dict(v=torch.zeros(2, 2, 6, 4, dtype=torch.long)), "v"),
    "q int": (lambda: dict(q=torch.zeros(2, 2, 5, 3, dtype=torch.int32)), "q"),
    "unknown map": (lambda: dict(feature_map="softplus"), "feature_map"),
    "unknown key map": (lambda: dict(key_feature_map="nope"), "key_feature_map"),
    "favor+ by name": (lambda: dict(feature_map="favor+"), "feature_map"),
    "favor+ key by name": (lambda: dict(key_feature_map="favor+"), "key_feature_map"),
    "map not callable": (lambda: dict(feature_map=3), "feature_map"),
    "prf dim": (lambda: dict(feature_map=PositiveRandomFeatures(5, 8)), "feature_map"),
    "prf dim causal": (lambda: dict(feature_map=PositiveRandomFeatures(2, 8), causal=True),
                       "feature_map"),
    "key prf dim": (lambda: dict(key_feature_map=PositiveRandomFeatures(4, 3)),
                    "key_feature_map"),
    "prf projection grad": (lambda: dict(feature_map=_grad_projection_prf()), "feature_map"),
    "callable bad shape": (lambda: dict(feature_map=lambda x: x[0]), "feature_map"),
    "key F mismatch": (lambda: dict(key_feature_map=lambda x: torch.cat([x, x], -1)),
                       "key_feature_map"),
    "eps negative": (lambda: dict(normalize="softmax", eps=-1e-3), "eps"),
    "eps inf": (lambda: dict(normalize="softmax", eps=math.inf), "eps"),
    "eps nan": (lambda: dict(normalize="softmax", eps=math.nan), "eps"),
    "eps str": (lambda: dict(eps="0"), "eps"),
    "causal str": (lambda: dict(causal="yes"), "causal"),
    "causal int": (lambda: dict(causal=1), "causal"),
    "causal tensor": (lambda: dict(causal=torch.tensor(True)), "causal"),
    "normalize": (lambda: dict(normalize="sum"), "normalize"),
    "normalize None": (lambda: dict(normalize=None), "normalize"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case):
    make, name = BAD[case]
    with pytest.raises(ValueError, match=rf"^{name}:"):
        _bad_call(**make())


RAW_BAD = {
    "fwd feature_map 7": (lambda a: ("fwd", a[:4] + (7,) + a[5:]), "feature_map"),
    "fwd feature_map -1": (lambda a: ("fwd", a[:4] + (-1,) + a[5:]), "feature_map"),
    "fwd favor without projection": (lambda a: ("fwd", a[:3] + (None, 3) + a[5:]), "projection"),
    "fwd projection for identity": (lambda a: ("fwd", a[:3] + (torch.randn(4, 3, dtype=F64), 0)
                                               + a[5:]), "projection"),
    "fwd projection shape": (lambda a: ("fwd", a[:3] + (torch.randn(4, 5, dtype=F64), 3)
                                        + a[5:]), "projection"),
    "fwd eps": (lambda a: ("fwd", a[:6] + (-1.0,)), "eps"),
    "fwd eps nan": (lambda a: ("fwd", a[:6] + (math.nan,)), "eps"),
    "fwd q ndim": (lambda a: ("fwd", (a[0][0],) + a[1:]), "q"),
    "fwd k dtype": (lambda a: ("fwd", (a[0], a[1].float()) + a[2:]), "k"),
    "fwd v int": (lambda a: ("fwd", a[:2] + (a[2].long(),) + a[3:]), "v"),
    "fwd k shape": (lambda a: ("fwd", (a[0], a[1][:, :, 1:]) + a[2:]), "k"),
    "bwd grad_out shape": (lambda a: ("bwd", (torch.zeros(2, 2, 5, 3, dtype=F64),) + a),
                           "grad_out"),
    "bwd feature_map": (lambda a: ("bwd", (torch.zeros(2, 2, 5, 4, dtype=F64),) + a[:4] + (4,)
                                   + a[5:]), "feature_map"),
}


@pytest.mark.parametrize("case", sorted(RAW_BAD))
def test_bad_input_raw_ops(case):
    """The ops' own checks (a direct torch.ops call skips the Python wrapper)."""
    make, name = RAW_BAD[case]
    args = _fwd_args(1, True, F64)
    which, bad = make(args)
    op = torch.ops.itnet.lowrank_fwd if which == "fwd" else torch.ops.itnet.lowrank_bwd
    with pytest.raises(RuntimeError, match=rf"{name}:"):
        op(*bad)


@pytest.mark.parametrize("args,name", [
    (lambda x, W: (x, None, 9, 0), "feature_map"),
    (lambda x, W: (x, W, 3, 5), "stabilize"),
    (lambda x, W: (x, None, 3, 1), "projection"),
    (lambda x, W: (x, W, 2, 0), "projection"),
    (lambda x, W: (x[0, 0, 0], None, 1, 0), "x"),
    (lambda x, W: (x.long(), None, 1, 0), "x"),
])
def test_bad_input_features_op(args, name):
    x, W = torch.randn(2, 2, 5, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    with pytest.raises(RuntimeError, match=rf"{name}:"):
        torch.ops.itnet.lowrank_features(*args(x, W))
    with pytest.raises(RuntimeError, match=r"grad_phi:"):
        torch.ops.itnet.lowrank_features_bwd(torch.zeros(2, 2, 5, 5, dtype=F64), x, W, 3, 0)


# --------------------------------------------------------------------------------------------
# 8. determinism and thread counts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fmap", ["favor_orth", "elu+1"])
def test_determinism_and_threads(fmap, causal):
    """Two calls: bitwise-identical values and gradients (float32 and float64, a fixed thread
    count); 1 thread vs the default count (at least 2; with 2 slices and M = 1200 keys the
    key pass splits the keys in 2 ranges instead of 1, another summation order): float64
    results within 1e-12 of each other, and both within 1e-10 of the oracle."""
    fm, _ = make_maps(fmap, 16, 64, seed=1)
    kw = dict(feature_map=fm, normalize="softmax", causal=causal)
    mt = max(DEFAULT_THREADS, 2)
    for dtype in (F32, F64):
        torch.set_num_threads(mt)
        q, k, v = qkv(1, 2, 300, 1200, 16, 8, dtype=dtype, seed=4, scale=0.5)
        a, b = (out_and_grads(lowrank, q, k, v, **kw) for _ in range(2))
        for x, y in zip(a, b):
            assert torch.equal(x, y)
        if dtype == F64:
            torch.set_num_threads(1)
            one = out_and_grads(lowrank, q, k, v, gy=a[1], **kw)
            compare(one, a, 1e-12)
            compare(a, out_and_grads(oracle, q, k, v, gy=a[1], **kw), 1e-10)


@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("fmap,causal", [("identity", False), ("elu+1", False), ("relu", False),
                                         ("favor_orth", False), ("elu+1", True),
                                         ("favor_orth", True)])
def test_row_splits_and_threads(fmap, normalize, causal):
    """Long key sequences are split into row ranges per thread (partial sums S, z and, for
    FAVOR+ softmax, per-split key maxima, merged by rescaling): 1, 2 and 4 threads, one slice
    with M = 2100 keys (2, 4, 8 splits) and three slices with M = 700; the keys' scale grows
    along the sequence so that the splits' FAVOR+ maxima differ. Values and gradients against
    the float64 oracle."""
    for nt in (1, 2, 4):
        torch.set_num_threads(nt)
        for B, M in ((1, 2100), (3, 700)):
            q, k, v = qkv(B, 1, 40, M, 5, 3, seed=nt * 10 + B, scale=0.5)
            k = k * torch.linspace(0.2, 1.5, M, dtype=F64)[:, None]
            fm, _ = make_maps(fmap, 5, 16, seed=nt)
            kw = dict(feature_map=fm, normalize=normalize, causal=causal)
            got = out_and_grads(lowrank, q, k, v, **kw)
            compare(got, out_and_grads(oracle, q, k, v, gy=got[1], **kw), 1e-10)


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


@pytest.mark.parametrize("cap", ["DEFAULT", "AVX2", "AVX512"])
def test_capability_paths(monkeypatch, cap):
    """Each vectorized build of the kernels (ITNET_CPU_CAPABILITY, read at every call) matches
    the oracle, values and gradients, for every kernel map."""
    monkeypatch.setenv("ITNET_CPU_CAPABILITY", cap)
    if torch.ops.itnet.cpu_capability() != cap:
        pytest.skip(f"{cap} not supported by this CPU")
    q, k, v = qkv(2, 2, 37, 45, 5, 7, seed=11)
    for name in ("identity", "elu+1", "relu", "favor_orth"):
        fm, _ = make_maps(name, 5, 19, seed=3)
        for normalize in ("none", "softmax"):
            if name == "identity" and normalize == "softmax":
                continue
            kw = dict(feature_map=fm, normalize=normalize)
            got = out_and_grads(lowrank, q, k, v, **kw)
            compare(got, out_and_grads(oracle, q, k, v, gy=got[1], **kw), 1e-10)
