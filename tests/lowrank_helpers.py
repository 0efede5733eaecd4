"""Random problems and feature maps shared by the low-rank op tests (tests/test_lowrank_op.py)."""
import pytest
import torch
import torch.nn.functional as TF

from itnet_ext.nn import feature_maps as fmaps
from itnet_ext.nn.feature_maps import PositiveRandomFeatures

F64 = torch.float64
F32 = torch.float32

# Feature-map specs: (feature_map, key_feature_map) builders, given (Dk, F, seed).
#   kernel maps (by name, by function, FAVOR+ module): applied inside the fused op;
#   callables: applied in PyTorch; a different key map: the features op / callable path.
MAPS = ("identity", "elu+1", "relu", "elu+1_fn", "favor_orth", "favor_iid", "tanh",
        "lambda_softplus", "key_map_named", "key_map_callable", "key_map_favor")
# maps whose features are positive (softmax denominators bounded away from 0)
POSITIVE = {"elu+1", "elu+1_fn", "favor_orth", "favor_iid", "lambda_softplus",
            "key_map_callable", "key_map_favor"}


def rel(a, b):
    """||a - b|| / ||b|| (Frobenius, in float64); 0 for two empty tensors."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert not torch.isnan(a).any(), "NaN in the result"
    if b.numel() == 0:
        return 0.0
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def prf(dim, m, *, seed, orthogonal=True, redraw=False):
    return PositiveRandomFeatures(dim, m, orthogonal=orthogonal, redraw=redraw,
                                  generator=torch.Generator().manual_seed(seed))


def make_maps(name, Dk, F, seed=0):
    """(feature_map, key_feature_map) of the spec ``name``; F is the number of features of
    the maps that choose it (FAVOR+, the softplus projection)."""
    g = torch.Generator().manual_seed(seed + 7)
    if name in ("identity", "elu+1", "relu"):
        return name, None
    if name == "elu+1_fn":
        return fmaps.elu_plus_one, None
    if name == "favor_orth":
        return prf(Dk, F, seed=seed, orthogonal=True), None
    if name == "favor_iid":
        return prf(Dk, F, seed=seed, orthogonal=False), None
    if name == "tanh":
        return torch.tanh, None
    if name == "lambda_softplus":
        P = torch.randn(Dk, F, generator=g, dtype=F64)
        return (lambda x: TF.softplus(x @ P.to(x.dtype))), None
    if name == "key_map_named":
        return "relu", "elu+1"
    if name == "key_map_callable":
        P = torch.randn(Dk, Dk, generator=g, dtype=F64) / Dk ** 0.5
        return fmaps.elu_plus_one, (lambda x: torch.exp(x @ P.to(x.dtype)))
    if name == "key_map_favor":  # two FAVOR+ modules with the same F (different projections)
        return prf(Dk, F, seed=seed), prf(Dk, F, seed=seed + 1, orthogonal=False)
    raise KeyError(name)


def qkv(B, H, N, M, Dk, Dv, *, dtype=F64, seed=0, scale=1.0, shift=0.0, requires_grad=False):
    """Random q, k (scale * randn + shift) and v (randn), generated in float64 then cast."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, sc=1.0, sh=0.0):
        return (torch.randn(*s, generator=g, dtype=F64) * sc + sh).to(dtype)

    q = rnd(B, H, N, Dk, sc=scale, sh=shift)
    k = rnd(B, H, M, Dk, sc=scale, sh=shift)
    v = rnd(B, H, M, Dv)
    return tuple(x.requires_grad_(requires_grad) for x in (q, k, v))


def leaves(*xs, dtype=None):
    """Fresh leaves requiring grad (optionally cast)."""
    return [x.detach().to(dtype or x.dtype).clone().requires_grad_(True) for x in xs]


def out_and_grads(fn, q, k, v, gy=None, seed=0, **kw):
    """fn(q, k, v, **kw) on fresh leaves and the gradients of <y, gy> (gy random, fixed by
    seed, in y's dtype when not given). Returns (y, gy, dq, dk, dv)."""
    ql, kl, vl = leaves(q, k, v)
    y = fn(ql, kl, vl, **kw)
    if gy is None:
        gen = torch.Generator().manual_seed(seed + 991)
        gy = torch.randn(y.shape, generator=gen, dtype=F64).to(y.dtype)
    if y.numel() and y.requires_grad:
        dq, dk, dv = torch.autograd.grad(y, (ql, kl, vl), gy.to(y.dtype), allow_unused=True)
    else:
        dq = dk = dv = None
    z = [torch.zeros_like(x) for x in (ql, kl, vl)]
    dq, dk, dv = (d if d is not None else zz for d, zz in zip((dq, dk, dv), z))
    return y.detach(), gy, dq, dk, dv


DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread by default (autouse in the modules that import it): many tiny
    problems run faster and steadier on a busy machine without the pool. Multi-threaded runs
    are tested explicitly (test_row_splits_and_threads: 1, 2, 4 threads;
    test_determinism_and_threads: 1 vs the default count)."""
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
