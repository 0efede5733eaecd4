"""The low-rank integral transform reference and its feature maps (issue 6 groundwork): the
identity map against the dense reference's content term (`none`, scale 1, float64, causal and
not); the chunked causal form against plain prefix sums; FAVOR+ positive random features
(kernel unbiasedness, the softmax output error falling with the number of features,
orthogonal and i.i.d., fixed / redrawn projections, the query and key stabilizers); zero
denominators; gradcheck; and the argument errors.
"""
import math

import pytest
import torch

from itnet_ext import reference
from itnet_ext.nn import feature_maps as fmaps
from itnet_ext.nn.feature_maps import PositiveRandomFeatures

F64 = torch.float64


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def qkv(B, H, N, M, Dk, Dv, *, scale=1.0, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, Dk, dtype=F64, generator=g) * scale
    k = torch.randn(B, H, M, Dk, dtype=F64, generator=g) * scale
    v = torch.randn(B, H, M, Dv, dtype=F64, generator=g)
    return tuple(x.requires_grad_(requires_grad) for x in (q, k, v))


def prf(dim, m, *, seed, **kw):
    return PositiveRandomFeatures(dim, m, generator=torch.Generator().manual_seed(seed),
                                  **kw).double()


# ---- (i) identity features: exactly the dense content term in `none` mode -------------------
@pytest.mark.parametrize("B,H,N,M,Dk,Dv", [(1, 1, 1, 1, 1, 1), (2, 3, 9, 9, 4, 5),
                                           (1, 2, 7, 12, 3, 2), (3, 1, 12, 5, 6, 4),
                                           (2, 2, 0, 4, 3, 2), (1, 2, 5, 0, 3, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_identity_equals_dense_none(B, H, N, M, Dk, Dv, causal):
    q, k, v = qkv(B, H, N, M, Dk, Dv, seed=N * 31 + M)
    want = reference.integral_transform(q, k, v, normalize="none", scale=1.0, causal=causal)
    for chunk in (None, 4):
        got = reference.lowrank_integral_transform(q, k, v, causal=causal, chunk_size=chunk)
        assert got.shape == (B, H, N, Dv) and got.dtype == F64
        assert got.numel() == 0 or rel(got, want) <= 1e-10


# ---- (ii) chunked causal == plain prefix sums --------------------------------------------------
@pytest.mark.parametrize("fm", ["identity", "elu+1", "relu"])
@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("M", [10, 6, 14])
def test_chunked_equals_cumsum(fm, normalize, M):
    N = 10
    q, k, v = qkv(2, 2, N, M, 3, 4, seed=M)
    plain = reference.lowrank_integral_transform(q, k, v, feature_map=fm, normalize=normalize,
                                                 causal=True)
    for chunk in (1, 3, N, N + 7):
        got = reference.lowrank_integral_transform(q, k, v, feature_map=fm,
                                                   normalize=normalize, causal=True,
                                                   chunk_size=chunk)
        assert rel(got, plain) <= 1e-12, chunk


def test_chunked_favor_softmax_matches_cumsum():
    q, k, v = qkv(1, 2, 11, 11, 4, 3, scale=0.5)
    f = prf(4, 32, seed=3)
    plain = reference.lowrank_integral_transform(q, k, v, feature_map=f, normalize="softmax",
                                                 causal=True)
    chunked = reference.lowrank_integral_transform(q, k, v, feature_map=f,
                                                   normalize="softmax", causal=True,
                                                   chunk_size=4)
    assert rel(chunked, plain) <= 1e-12


def test_softmax_identity_matches_explicit_normalization():
    """softmax mode divides by phi_i . sum_j psi_j: check against the explicit formula."""
    q, k, v = qkv(2, 1, 6, 8, 3, 2, seed=5)
    phi, psi = fmaps.elu_plus_one(q), fmaps.elu_plus_one(k)
    a = phi @ psi.transpose(-1, -2)
    want = (a @ v) / a.sum(-1, keepdim=True)
    got = reference.lowrank_integral_transform(q, k, v, feature_map="elu+1",
                                               normalize="softmax")
    assert rel(got, want) <= 1e-12
    # causal: the same with the lower-triangular part of a (keys j <= i)
    q, k, v = qkv(2, 1, 6, 6, 3, 2, seed=6)
    phi, psi = fmaps.elu_plus_one(q), fmaps.elu_plus_one(k)
    a = (phi @ psi.transpose(-1, -2)).tril()
    want = (a @ v) / a.sum(-1, keepdim=True)
    got = reference.lowrank_integral_transform(q, k, v, feature_map="elu+1",
                                               normalize="softmax", causal=True)
    assert rel(got, want) <= 1e-12


def test_key_feature_map_and_callable():
    q, k, v = qkv(1, 2, 5, 7, 3, 2, seed=7)
    got = reference.lowrank_integral_transform(q, k, v, feature_map=lambda x: 2 * x,
                                               key_feature_map="relu")
    a = (2 * q) @ torch.relu(k).transpose(-1, -2)
    assert rel(got, a @ v) <= 1e-12


# ---- (iii) FAVOR+ ---------------------------------------------------------------------------
@pytest.mark.parametrize("orthogonal", [True, False])
def test_favor_kernel_unbiased(orthogonal):
    """Unstabilized features: phi(q) . phi(k) estimates exp(q . k / sqrt(d)) (m = 2^17)."""
    d = 8
    q, k, _ = qkv(1, 1, 5, 6, d, 1, scale=0.5, seed=11)
    f = prf(d, 1 << 17, seed=12, orthogonal=orthogonal)
    est = f(q, stabilize=False) @ f(k, is_query=False, stabilize=False).transpose(-1, -2)
    exact = torch.exp(q @ k.transpose(-1, -2) / math.sqrt(d))
    assert ((est - exact) / exact).abs().max().item() < 0.05


@pytest.mark.parametrize("orthogonal", [True, False])
def test_favor_error_falls_with_num_features(orthogonal):
    """Low-rank softmax with m positive random features vs exact softmax attention
    (scale 1/sqrt(Dk)): the mean relative error over 5 projections falls monotonically in
    m = 16, 64, 256, 1024 (about as 1/sqrt(m): roughly halves per factor 4)."""
    d = 16
    q, k, v = qkv(1, 2, 32, 32, d, 8, scale=0.25, seed=21)
    exact = reference.integral_transform(q, k, v)
    means = []
    for m in (16, 64, 256, 1024):
        errs = []
        for s in range(5):
            f = prf(d, m, seed=100 + s, orthogonal=orthogonal)
            y = reference.lowrank_integral_transform(q, k, v, feature_map=f,
                                                     normalize="softmax")
            errs.append(rel(y, exact))
        means.append(sum(errs) / len(errs))
    assert all(a > 1.2 * b for a, b in zip(means, means[1:])), means
    assert means[-1] < 0.03, means


def test_favor_features_positive_and_shape():
    f = prf(6, 40, seed=1)
    x = torch.randn(2, 3, 9, 6, dtype=F64)
    for is_query in (True, False):
        for stabilize in (True, False):
            y = f(x, is_query=is_query, stabilize=stabilize)
            assert y.shape == (2, 3, 9, 40)
            assert bool((y > 0).all())
    # query stabilizer: the largest feature of every row is exactly 1 / sqrt(m)
    yq = f(x, is_query=True)
    assert torch.allclose(yq.amax(-1), torch.full((2, 3, 9), 40 ** -0.5, dtype=F64))
    # key stabilizer: one max per (b, h) slice
    yk = f(x, is_query=False)
    assert torch.allclose(yk.amax((-2, -1)), torch.full((2, 3), 40 ** -0.5, dtype=F64))


def test_favor_orthogonal_blocks():
    d, m = 5, 12
    f = prf(d, m, seed=2, orthogonal=True)
    w = f.projection
    assert w.shape == (m, d)
    for s in range(0, m, d):  # rows of one block are mutually orthogonal
        blk = w[s:s + d]
        gram = blk @ blk.T
        off = gram - torch.diag(torch.diagonal(gram))
        assert off.abs().max().item() < 1e-5 * gram.diagonal().max().item()
    # i.i.d. rows are not orthogonal
    wi = prf(d, m, seed=2, orthogonal=False).projection[:d]
    gi = wi @ wi.T
    assert (gi - torch.diag(torch.diagonal(gi))).abs().max().item() > 1e-2


def test_favor_fixed_and_redraw():
    q, k, v = qkv(1, 1, 6, 6, 4, 2, scale=0.5, seed=31)
    fixed = prf(4, 16, seed=4)
    w0 = fixed.projection.clone()
    y0 = reference.lowrank_integral_transform(q, k, v, feature_map=fixed, normalize="softmax")
    y1 = reference.lowrank_integral_transform(q, k, v, feature_map=fixed, normalize="softmax")
    assert torch.equal(fixed.projection, w0) and torch.equal(y0, y1)
    fixed.redraw()  # explicit redraw: a new projection, in place (same dtype)
    assert fixed.projection.dtype == F64 and not torch.equal(fixed.projection, w0)

    auto = prf(4, 16, seed=4, redraw=True)
    w0 = auto.projection.clone()
    reference.lowrank_integral_transform(q, k, v, feature_map=auto, normalize="softmax")
    w1 = auto.projection.clone()
    assert not torch.equal(w1, w0)  # training: one redraw per call
    auto.eval()
    reference.lowrank_integral_transform(q, k, v, feature_map=auto, normalize="softmax")
    assert torch.equal(auto.projection, w1)  # eval: fixed
    # the same generator seed reproduces the draws
    assert torch.equal(prf(4, 16, seed=4).projection, w0)


def test_favor_redraw_shared_by_queries_and_keys():
    """With redraw=True the queries and keys of one call use the same projection: the
    output equals the fixed-projection output computed with the projection left after the
    call."""
    q, k, v = qkv(1, 2, 8, 8, 4, 3, scale=0.5, seed=41)
    auto = prf(4, 32, seed=5, redraw=True)
    y = reference.lowrank_integral_transform(q, k, v, feature_map=auto, normalize="softmax")
    auto.eval()
    y_fixed = reference.lowrank_integral_transform(q, k, v, feature_map=auto,
                                                   normalize="softmax")
    assert rel(y, y_fixed) <= 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_favor_stabilizers_cancel(causal):
    """The stabilized softmax output equals the unstabilized one (float64, small inputs so
    nothing overflows) to 1e-10, and a per-row key stabilizer would not: it reweights keys."""
    d, m = 4, 64
    q, k, v = qkv(2, 2, 9, 9, d, 3, scale=1.5, seed=51)
    f = prf(d, m, seed=6)
    got = reference.lowrank_integral_transform(q, k, v, feature_map=f, normalize="softmax",
                                               causal=causal)

    def plain(x):
        return f(x, stabilize=False)
    unstab = reference.lowrank_integral_transform(q, k, v, feature_map=plain,
                                                  normalize="softmax", causal=causal)
    assert rel(got, unstab) <= 1e-10

    def per_row_keys(x):  # the wrong stabilizer for keys: a max per key row
        return f(x, is_query=True)
    wrong = reference.lowrank_integral_transform(q, k, v, feature_map=plain,
                                                 key_feature_map=per_row_keys,
                                                 normalize="softmax", causal=causal)
    assert rel(wrong, unstab) > 1e-2


def test_favor_large_inputs_stay_finite():
    """Large inputs (exponents w.x' - |x'|^2/2 of order -1e4): the unstabilized features
    underflow to 0 in float64 (the output would degenerate to the zero-denominator 0), the
    stabilized ones give a proper softmax output: finite, each row a convex combination of
    the values."""
    q, k, v = qkv(1, 1, 6, 6, 4, 2, scale=1.0, seed=61)
    q, k = q * 100, k * 100 + 50
    f = prf(4, 64, seed=7)
    assert bool((f(k, is_query=False, stabilize=False) == 0).all())
    y = reference.lowrank_integral_transform(q, k, v, feature_map=f, normalize="softmax")
    assert bool(torch.isfinite(y).all())
    lo, hi = v.amin(2, keepdim=True), v.amax(2, keepdim=True)
    assert bool(((y >= lo - 1e-12) & (y <= hi + 1e-12)).all())
    assert bool((y.abs().sum(-1) > 0).all())


def test_favor_none_mode_is_unstabilized():
    """`none` mode: y_i = sum_j phi_i . psi_j v_j with the unbiased (unstabilized) features."""
    q, k, v = qkv(1, 2, 5, 7, 4, 3, scale=0.5, seed=71)
    f = prf(4, 32, seed=8)
    a = f(q, stabilize=False) @ f(k, is_query=False, stabilize=False).transpose(-1, -2)
    got = reference.lowrank_integral_transform(q, k, v, feature_map=f, normalize="none")
    assert rel(got, a @ v) <= 1e-12


def test_favor_float32_projection_buffer_follows_module():
    f = PositiveRandomFeatures(4, 8, generator=torch.Generator().manual_seed(0))
    assert f.projection.dtype == torch.get_default_dtype()
    assert "projection" in f.state_dict()
    x = torch.randn(1, 1, 3, 4)
    assert f(x).dtype == torch.float32


# ---- (iv) zero denominators -------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [None, 2])
def test_zero_denominator_gives_zero(causal, chunk):
    q, k, v = qkv(1, 1, 5, 5, 3, 2, seed=81, requires_grad=False)
    q = q.clone()
    q[0, 0, 1] = -q[0, 0, 1].abs() - 0.1   # relu(q_1) = 0: phi_1 = 0, denominator 0
    k = k.clone()
    k[0, 0, 0] = -k[0, 0, 0].abs() - 0.1   # psi_0 = 0: causal row 0 sees only a zero key
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    y = reference.lowrank_integral_transform(q, k, v, feature_map="relu",
                                             normalize="softmax", causal=causal,
                                             chunk_size=chunk)
    assert bool(torch.isfinite(y).all())
    assert torch.equal(y[0, 0, 1], torch.zeros(2, dtype=F64))
    if causal:
        assert torch.equal(y[0, 0, 0], torch.zeros(2, dtype=F64))
    y.sum().backward()
    for x in (q, k, v):
        assert bool(torch.isfinite(x.grad).all())
    assert torch.equal(q.grad[0, 0, 1], torch.zeros(3, dtype=F64))


def test_eps_threshold():
    q, k, v = qkv(1, 1, 4, 4, 2, 2, seed=91)
    y = reference.lowrank_integral_transform(q, k, v, feature_map="elu+1",
                                             normalize="softmax", eps=1e300)
    assert torch.equal(y, torch.zeros_like(y))  # every |den| <= eps: all rows cut
    y0 = reference.lowrank_integral_transform(q, k, v, feature_map="elu+1",
                                              normalize="softmax", eps=0.0)
    assert bool((y0 != 0).any())


# ---- (v) gradcheck --------------------------------------------------------------------------
@pytest.mark.parametrize("fm", ["identity", "elu+1"])
@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("causal,chunk", [(False, None), (True, None), (True, 2)])
def test_gradcheck(fm, normalize, causal, chunk):
    # elu+1 keeps softmax denominators positive; identity features in softmax mode are
    # shifted so that theirs stay away from 0 as well.
    q, k, v = qkv(1, 2, 5, 5, 3, 2, seed=3, requires_grad=True)
    if fm == "identity" and normalize == "softmax":
        fmap = lambda x: torch.cat([x, torch.full_like(x[..., :1], 4.0)], -1)  # noqa: E731
    else:
        fmap = fm
    fn = lambda q, k, v: reference.lowrank_integral_transform(  # noqa: E731
        q, k, v, feature_map=fmap, normalize=normalize, causal=causal, chunk_size=chunk)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_gradcheck_favor_softmax():
    """The detached stabilizers are exact: the normalized output does not depend on them."""
    q, k, v = qkv(1, 1, 4, 4, 3, 2, scale=0.7, seed=4, requires_grad=True)
    f = prf(3, 8, seed=9)
    for causal in (False, True):
        fn = lambda q, k, v: reference.lowrank_integral_transform(  # noqa: E731
            q, k, v, feature_map=f, normalize="softmax", causal=causal)
        assert torch.autograd.gradcheck(fn, (q, k, v))


# ---- (vii) errors ---------------------------------------------------------------------------
def _call(**over):
    q, k, v = qkv(2, 2, 5, 6, 3, 4)
    args = dict(q=q, k=k, v=v)
    args.update(over)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    return reference.lowrank_integral_transform(q, k, v, **args)


@pytest.mark.parametrize("over,name", [
    (dict(q=torch.zeros(3, 2, 5, 3, dtype=F64)), "q"),
    (dict(q=torch.zeros(2, 2, 5, 4, dtype=F64)), "k"),      # Dk mismatch, named on k
    (dict(k=torch.zeros(2, 2, 7, 3, dtype=F64)), "k"),
    (dict(v=torch.zeros(2, 1, 6, 4, dtype=F64)), "q"),      # H from v
    (dict(v=torch.zeros(2, 2, 6, dtype=F64)), "v"),
    (dict(q=torch.zeros(2, 2, 5, 3)), "q"),                 # dtype
    (dict(feature_map="softplus"), "feature_map"),
    (dict(feature_map="favor+"), "feature_map"),
    (dict(feature_map=3), "feature_map"),
    (dict(key_feature_map="nope"), "key_feature_map"),
    (dict(key_feature_map=lambda x: torch.cat([x, x], -1)), "key_feature_map"),
    (dict(feature_map=lambda x: x[0]), "feature_map"),
    (dict(feature_map=PositiveRandomFeatures(5, 8)), "feature_map"),
    (dict(normalize="sum"), "normalize"),
    (dict(causal="yes"), "causal"),
    (dict(eps=-1.0), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(chunk_size=0, causal=True), "chunk_size"),
])
def test_errors(over, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        _call(**over)


@pytest.mark.parametrize("kw,name", [
    (dict(dim=4, num_features=0), "num_features"),
    (dict(dim=4, num_features=2.5), "num_features"),
    (dict(dim=0, num_features=4), "dim"),
])
def test_prf_errors(kw, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        PositiveRandomFeatures(**kw)


def test_registry():
    assert fmaps.FEATURE_MAPS == ("identity", "elu+1", "relu", "favor+")
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert fmaps.make_feature_map("identity") is fmaps.identity
    assert torch.equal(fmaps.make_feature_map("relu")(x), torch.tensor([0.0, 0.0, 3.0]))
    assert torch.allclose(fmaps.make_feature_map("elu+1")(x),
                          torch.tensor([math.exp(-2.0), 1.0, 4.0]))
    f = fmaps.make_feature_map("favor+", dim=3, num_features=7, orthogonal=False)
    assert isinstance(f, PositiveRandomFeatures) and f.projection.shape == (7, 3)
    with pytest.raises(ValueError, match="^feature_map:"):
        fmaps.make_feature_map("favor+")
    with pytest.raises(ValueError, match="^feature_map:"):
        fmaps.make_feature_map("gelu")
    with pytest.raises(ValueError, match="^x:"):
        f(torch.zeros(2, 4))
