"""CUDA dense op (itnet_ext.functional on CUDA tensors) against the float64 oracle on CPU.

Outputs, lse and the gradients of every differentiable input (q, k, v, u, t, W2, b2,
offset_table, key_weight) are compared over seeded random problems that draw every feature
(content / MLP / both, softmax / none, activations, u / t / b2 present or not and batch-
broadcast, offset tables on 1-D and 2-D integer grids, fractional windows on float
positions, causal, key padding, bool / float attention masks of many broadcast shapes, key
weights), sizes that are not multiples of any tile (N or M = 0 included), Dk != Dv, H > 8,
R up to 130, Dv > 256; float32 (bound 1e-4 relative to the largest reference entry) and
float64 (1e-10). Plus rows with an empty support (exact zeros, lse = -inf, zero and finite
gradients). float16 / bfloat16: tests/test_dense_cuda_half.py.

Without a GPU (or in a build without the CUDA kernels) the kernels run under the device
emulator of an ITNET_EMULATE=1 build (cuda_helpers: DEVICE = "cpu", fewer cases of the slow
parametrizations, the tests that need a real GPU skipped), or everything is skipped.
"""
import functools
import math

import pytest
import torch

from itnet_ext import functional, reference
from conftest import rel_err as _rel_err
from cuda_helpers import (CUDA_TESTS, DEVICE, DIFF_NAMES, assert_empty_rows, cpu_kernels,
                          describe, empty_rows_problem, requires_gpu, to_dev)

F64 = torch.float64
F32 = torch.float32
TOL = {F64: 1e-10, F32: 1e-4}

pytestmark = CUDA_TESTS


# --------------------------------------------------------------------------------------------
# problem generator: conftest's make_problem with this file's distribution of cases
# --------------------------------------------------------------------------------------------
MASK_SHAPES = ("NM", "B1NM", "1HNM", "BHNM", "111M", "B11M", "1H1M", "N1", "M")

# Choice lists replacing conftest's defaults: N or M = 0, sizes that are not multiples of
# any tile, Dk != Dv, H > 8, R up to 130; no forced empty rows (test_empty_support_rows).
CUDA_CHOICES = dict(
    mlp=[True, True, False],
    H=[1, 2, 3, 9, 12],
    N=[0, 1, 5, 31, 33, 47, 70],
    M=[0, 1, 7, 32, 33, 65, 100],
    Dk=[1, 3, 16, 33, 40],
    Dv=[1, 5, 32, 37, 70],
    R=[1, 3, 17, 32, 64, 128, 130],
    normalize=["softmax", "softmax", "none"],
    D=[1, 1, 2],
    mask_shape=list(MASK_SHAPES),
    empty=[False],
)


@pytest.fixture
def make_problem(dense):
    """``make_problem(seed, **opt)``: a random valid argument set of integral_transform (plain
    CPU float64 tensors); ``opt`` pins any choice."""
    return functools.partial(dense.make_problem, choices=CUDA_CHOICES, w2_gain=1.5, table_gain=0.7)


def rel_err(a, b):
    """conftest.rel_err with errors relative to max(1, max |b|), no absolute cut-off."""
    return _rel_err(a, b, atol=0.0, floor=1.0)


def run(fn, kw, seed):
    """fn(**kw) with lse in softmax mode, backprop of fixed random cotangents (the lse
    cotangent included); returns (results, {name: grad})."""
    softmax = kw.get("normalize", "softmax") == "softmax"
    res = fn(**kw, return_lse=True) if softmax else (fn(**kw),)
    gen = torch.Generator().manual_seed(seed + 777)
    cot = [torch.randn(r.shape, generator=gen, dtype=F64).to(r.device, r.dtype) for r in res]
    names = [n for n in DIFF_NAMES if kw.get(n) is not None]
    # (the reference's empty lse for N = 0 is a constant)
    pairs = [(r, c) for r, c in zip(res, cot) if r.requires_grad]
    grads = torch.autograd.grad([r for r, _ in pairs], [kw[n] for n in names],
                                [c for _, c in pairs], allow_unused=True)
    return res, dict(zip(names, grads))


def check_vs_reference(kw, dtype, device=DEVICE, fused=functional.integral_transform, seed=0,
                       tol=None):
    """Fused op in dtype on device vs the float64 reference on CPU (same rounded inputs)."""
    tol = TOL[dtype] if tol is None else tol
    kwd = to_dev(kw, dtype, device)
    kwr = to_dev({n: (x.detach().cpu() if isinstance(x, torch.Tensor) else x)
                  for n, x in kwd.items()}, F64, "cpu")
    res_d, g_d = run(fused, kwd, seed)
    res_r, g_r = run(reference.integral_transform, kwr, seed)
    what = describe(kw)
    for name, a, b in zip(("out", "lse"), res_d, res_r):
        assert a.device.type == torch.device(device).type and a.dtype == dtype, (name, a.dtype)
        err = rel_err(a, b)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol}; {what}"
    for n in g_r:
        # an input that takes part in no pair (N or M = 0) may get no gradient at all
        gd = torch.zeros_like(kwd[n]) if g_d[n] is None else g_d[n]
        gr = torch.zeros_like(kwr[n]) if g_r[n] is None else g_r[n]
        assert gd.shape == kwd[n].shape, (n, gd.shape)
        err = rel_err(gd, gr)
        assert err <= tol, f"grad {n}: rel err {err:.3g} > {tol}; {what}"
    return res_d, g_d


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("seed", range(24))
def test_fuzz_vs_reference(seed, dtype, make_problem):
    check_vs_reference(make_problem(1000 + seed), dtype, seed=seed)


FEATURES = [
    dict(content=True, mlp=False, support="none", mask=None, kpm=False, key_weight=None),
    dict(content=False, mlp=True, support="offset", D=1, causal=True),
    dict(content=True, mlp=True, support="offset", D=2, kpm=True, key_weight="B"),
    dict(content=True, mlp=True, support="frac", D=2, mask="float", mask_shape="BHNM"),
    dict(content=True, mlp=False, support="window", D=1, mask="bool", mask_shape="B1NM",
         causal=True),
    dict(content=False, mlp=True, support="none", normalize="none", key_weight="1",
         mask="float", mask_shape="1H1M"),
    dict(content=True, mlp=True, support="frac", D=1, normalize="none", kpm=True,
         mask="bool", mask_shape="N1"),
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("feat", range(len(FEATURES)))
def test_features_vs_reference(feat, activation, dtype, make_problem):
    opts = dict(FEATURES[feat])
    if opts.get("mlp"):
        opts["activation"] = activation
    opts.setdefault("N", 33)
    opts.setdefault("M", 65)
    check_vs_reference(make_problem(50 + feat, **opts), dtype, seed=feat)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_large_dims(dtype, make_problem):
    """H > 8, R > 128, Dv > 256 (several column passes per lane), Dk != Dv, odd N, M."""
    kw = make_problem(7, content=True, mlp=True, B=2, H=12, N=45, M=97, Dk=129, Dv=300, R=130,
                      support="offset", D=1, normalize="softmax", kpm=True, key_weight="B",
                      use_u=True, use_t=True, use_b2=True, activation="gelu")
    check_vs_reference(kw, dtype)


@pytest.mark.parametrize("NM", [(0, 5), (6, 0), (0, 0)])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_no_queries_or_no_keys(NM, normalize, make_problem):
    N, M = NM
    kw = make_problem(3, content=True, mlp=True, N=N, M=M, normalize=normalize, support="none",
                      mask=None, kpm=False, key_weight="B", use_u=True, use_t=True, use_b2=True)
    res, grads = check_vs_reference(kw, F64)
    assert (res[0] == 0).all()
    if normalize == "softmax":
        assert (res[1] == -math.inf).all()
    for n, g in grads.items():
        assert torch.isfinite(g).all(), n


@pytest.mark.parametrize("sizes", [dict(R=0), dict(Dk=0), dict(Dv=0), dict(H=0), dict(B=0)],
                         ids=["R0", "Dk0", "Dv0", "H0", "B0"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_degenerate_sizes(sizes, normalize, make_problem):
    """Zero-size dims: R = 0 leaves b2 as the whole MLP term, Dk = 0 a zero content term."""
    kw = make_problem(9, content=True, mlp=True, normalize=normalize, support="offset", D=1,
                      kpm=True, key_weight="B", use_u=True, use_t=True, use_b2=True, N=9, M=12,
                      **sizes)
    check_vs_reference(kw, F64)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_support_rows(normalize, dtype, make_problem):
    """Rows whose support is empty (padding, causal + window, bool mask) give exactly 0,
    lse = -inf, zero gradients, never NaN; the other rows match the reference."""
    kw, empty = empty_rows_problem(make_problem, normalize, B=2, H=3, N=40, M=45, Dk=8, Dv=5,
                                   R=16)
    res, grads = check_vs_reference(kw, dtype)
    assert_empty_rows(res, grads, empty, normalize == "softmax")


def test_matches_cpu_kernels_and_repeats(make_problem):
    """Same float64 problem on CUDA and with the CPU kernels: equal to 1e-12; repeated CUDA
    calls give the same forward result (the forward has no atomics)."""
    kw = make_problem(21, content=True, mlp=True, support="offset", D=2, N=47, M=65, H=3,
                      normalize="softmax", kpm=True)
    cuda_kw = to_dev(kw, F64, DEVICE)
    cpu_kw = to_dev(kw, F64, "cpu")
    o1, l1 = functional.integral_transform(**cuda_kw, return_lse=True)
    o2, l2 = functional.integral_transform(**cuda_kw, return_lse=True)
    with cpu_kernels():
        o3, l3 = functional.integral_transform(**cpu_kw, return_lse=True)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
    assert rel_err(o1, o3) <= 1e-12 and rel_err(l1, l3) <= 1e-12


@requires_gpu
def test_other_device_index_and_stream(make_problem):
    """Runs on a non-default stream (and on the device of the inputs, not the current one)."""
    kw = make_problem(5, content=True, mlp=True, support="window", D=1, N=20, M=30)
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    s = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(s):
        kwd = to_dev(kw, F64, dev)
        res, _ = run(functional.integral_transform, kwd, 0)
    s.synchronize()
    kwr = to_dev(kw, F64, "cpu")
    res_r, _ = run(reference.integral_transform, kwr, 0)
    assert res[0].device == dev
    assert rel_err(res[0], res_r[0]) <= 1e-10
