"""The fused low-rank op on CPU (issue 6): ``functional.lowrank_integral_transform`` and the raw
ops ``torch.ops.itnet.lowrank_fwd / lowrank_bwd / lowrank_features / lowrank_features_bwd``.

Against independent oracles on fresh random inputs: the dense op and the dense reference
(identity features, `none`, scale 1: exact), the float64 oracle
``reference.lowrank_integral_transform`` (every map x normalize x causal, float64 and float32,
odd sizes, values and gradients), exact softmax attention (FAVOR+ error falling with the
number of features), plain fp16 PyTorch (the overflow control of long half-precision sums);
gradcheck, opcheck and torch.compile; argument errors of the wrapper and of the raw ops;
determinism, thread counts and the vectorized builds. Numerical edge cases (half precision,
tiny / zero denominators, empty shapes, NaN and inf inputs, the FAVOR+ redraw):
tests/test_lowrank_numerics.py.
"""
import math

import pytest
import torch
import torch.nn.functional as TF

import itnet_ext  # noqa: F401  (registers torch.ops.itnet)
from itnet_ext import functional, reference
from itnet_ext.nn.feature_maps import PositiveRandomFeatures
from itnet_ext.lowrank.op import STABILIZE_ROW, STABILIZE_SLICE

from lowrank_helpers import (DEFAULT_THREADS, F32, F64, MAPS, POSITIVE, compare, make_maps,
                             one_thread, out_and_grads, prf, qkv, rel)  # noqa: F401 (fixture)

lowrank = functional.lowrank_integral_transform
oracle = reference.lowrank_integral_transform
F16, BF16 = torch.float16, torch.bfloat16



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
