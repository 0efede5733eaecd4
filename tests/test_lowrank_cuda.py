"""The low-rank op's CUDA kernels (itnet_ext.functional.lowrank_integral_transform on CUDA
tensors: the fused op itnet::lowrank_fwd / lowrank_bwd, and in the causal path the features op
itnet::lowrank_features / lowrank_features_bwd before the decay scan) against the float64 oracle
itnet_ext.reference.lowrank_integral_transform on CPU copies of the same (rounded) inputs: out
and the gradients of q, k, v, for every feature map (identity, elu+1, relu, FAVOR+ via
PositiveRandomFeatures), none / softmax, causal or not, float64 / float32 / float16 /
bfloat16; sizes that are not multiples of the kernels' tiles (64 queries, 32 keys, 64 / 32
features, 64 Dv columns) and F, Dk, Dv of 1, 3, 65, 130; many keys (several key ranges, large
half-precision sums); empty N / M / B; bad input; bitwise determinism; the features op against
its CPU kernels; opcheck.

Errors are relative to the largest reference entry: float64 1e-10, float32 1e-4, float16 4e-3,
bfloat16 2e-2 (16-bit results are rounded once from float32 sums).

Without a GPU (or in a build without the CUDA kernels) the kernels run under the device
emulator of an ITNET_EMULATE=1 build (cuda_helpers: DEVICE = "cpu", fewer cases of the slow
parametrizations, the tests that need a real GPU skipped), or everything is skipped.
"""
import zlib

import pytest
import torch

from itnet_ext import functional, reference
from itnet_ext.nn.feature_maps import PositiveRandomFeatures
from cuda_helpers import CUDA_TESTS, DEVICE, cpu_kernels, emu_cases, requires_gpu

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
TOL = {F64: 1e-10, F32: 1e-4, F16: 4e-3, BF16: 2e-2}
MAPS = ("identity", "elu+1", "relu", "favor+")
FAVOR = 3

pytestmark = CUDA_TESTS


def _seed(*key):
    return zlib.crc32(repr(key).encode())


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all(), "non-finite entries in the result"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def _feature_map(name, Dk, F, seed):
    if name != "favor+":
        return name
    g = torch.Generator().manual_seed(seed)
    return PositiveRandomFeatures(Dk, F, generator=g)


def _problem(seed, B, H, N, M, Dk, Dv, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, Dk, generator=g, dtype=F64) * scale
    k = torch.randn(B, H, M, Dk, generator=g, dtype=F64) * scale
    v = torch.randn(B, H, M, Dv, generator=g, dtype=F64)
    w = torch.randn(B, H, N, Dv, generator=g, dtype=F64)  # the cotangent
    return q, k, v, w


def _run(fn, q, k, v, w, dtype, device):
    """out and (dq, dk, dv) of sum(out * w) for inputs cast to dtype on device."""
    leaves = [x.to(dtype).to(device).requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    cdt = F64 if dtype == F64 else F32
    (out.to(cdt) * w.to(device=device, dtype=cdt)).sum().backward()
    return out.detach(), [x.grad for x in leaves]


def _check(name, normalize, causal, dtype, B, H, N, M, Dk, Dv, F=None, eps=0.0, scale=1.0,
           grads=True):
    seed = _seed(name, normalize, causal, str(dtype), B, H, N, M, Dk, Dv, F)
    q, k, v, w = _problem(seed, B, H, N, M, Dk, Dv, scale)
    fm = _feature_map(name, Dk, F if F is not None else Dk, seed)
    # the oracle sees the rounded inputs, in float64 on CPU
    q64, k64, v64 = (x.to(dtype).double() for x in (q, k, v))
    kw = dict(feature_map=fm, normalize=normalize, causal=causal, eps=eps)
    ref_out, ref_grads = _run(lambda a, b, c: reference.lowrank_integral_transform(a, b, c, **kw),
                              q64, k64, v64, w, F64, "cpu")
    out, got = _run(lambda a, b, c: functional.lowrank_integral_transform(a, b, c, **kw),
                    q, k, v, w, dtype, DEVICE)
    assert out.dtype == dtype and out.device.type == DEVICE
    tol = TOL[dtype]
    what = f"{name} {normalize} causal={causal} {dtype} N={N} M={M} Dk={Dk} Dv={Dv} F={F}"
    assert _rel(out, ref_out) <= tol, f"out: {what}: {_rel(out, ref_out)}"
    if grads:
        for n, a, b in zip(("dq", "dk", "dv"), got, ref_grads):
            assert a.dtype == dtype
            assert _rel(a, b) <= tol * 4, f"{n}: {what}: {_rel(a, b)}"


# ---- every map / mode / dtype at one odd size ------------------------------------------------

@pytest.mark.parametrize("dtype", (F64, F32))
@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("normalize", ("none", "softmax"))
@pytest.mark.parametrize("name", MAPS)
def test_matches_oracle(name, normalize, causal, dtype):
    if name == "identity" and normalize == "softmax":
        pytest.skip("signed features: the denominator may vanish (ill-conditioned)")
    _check(name, normalize, causal, dtype, B=2, H=3, N=67, M=45, Dk=5, Dv=7, F=37)


@pytest.mark.parametrize("dtype", (F16, BF16))
@pytest.mark.parametrize("normalize", ("none", "softmax"))
@pytest.mark.parametrize("name", ("elu+1", "favor+"))
def test_half_inputs(name, normalize, dtype):
    _check(name, normalize, False, dtype, B=1, H=2, N=70, M=90, Dk=8, Dv=9, F=40, scale=0.5)


# ---- sizes around the tiles ----------------------------------------------------------------------

@pytest.mark.parametrize("N, M, Dk, Dv, F", [
    (1, 1, 1, 1, 1),
    (3, 2, 3, 3, 3),
    (65, 33, 65, 1, 65),
    (130, 129, 3, 130, 130),
    (64, 64, 32, 64, 64),
    (129, 300, 17, 65, 1),
])
@pytest.mark.parametrize("name", MAPS)
def test_odd_sizes(name, N, M, Dk, Dv, F):
    normalize = "none" if name == "identity" else "softmax"
    _check(name, normalize, False, F64, B=1, H=2, N=N, M=M, Dk=Dk, Dv=Dv, F=F)


@pytest.mark.parametrize("Dk", (40, 70))
@pytest.mark.parametrize("causal", (False, True))
def test_float32_favor_wide_keys(Dk, causal):
    """float32 FAVOR+ with Dk beyond one 32-column staging chunk of the projection (and a
    partial last chunk): the float64 cases stage 16 columns at a time, so only float32 at
    Dk > 32 reaches this path."""
    _check("favor+", "softmax", causal, F32, B=1, H=2, N=77, M=150, Dk=Dk, Dv=9, F=70,
           scale=0.5)


@pytest.mark.parametrize("name", ("elu+1", "favor+"))
@pytest.mark.parametrize("dtype", (F64, F32))
def test_many_keys(name, dtype):
    """Several key ranges per slice (partial sums merged by at::sum) and several F / Dv
    tiles."""
    _check(name, "softmax", False, dtype, B=1, H=1, N=130, M=2000, Dk=20, Dv=70, F=100,
           scale=0.5)


def test_favor_none_mode_unstabilized():
    """`none` mode: FAVOR+ features are unstabilized (c = 0) on both sides."""
    _check("favor+", "none", False, F64, B=1, H=2, N=50, M=70, Dk=6, Dv=5, F=33, scale=0.7)


def test_favor_large_exponents_softmax():
    """Exponents far beyond float32's exp range: only the stabilizers keep it finite."""
    _check("favor+", "softmax", False, F32, B=1, H=2, N=80, M=90, Dk=16, Dv=8, F=70,
           scale=6.0)


@pytest.mark.parametrize("dtype", (F16, BF16))
def test_half_large_sums(dtype):
    """fp16 / bf16 inputs whose key sums (z ~ 1e4, den ~ 1e5) overflow half precision: the
    kernels accumulate in float32 and only the (normalized) output is rounded."""
    _check("elu+1", "softmax", False, dtype, B=1, H=1, N=64, M=6000, Dk=16, Dv=4,
           scale=0.5)


def test_relu_empty_rows_and_eps():
    """Rows whose relu features are all zero (den = 0) output 0 with zero gradient; an eps cuts
    more rows: both exactly 0 on both sides."""
    _check("relu", "softmax", False, F64, B=1, H=2, N=40, M=30, Dk=1, Dv=3)
    _check("relu", "softmax", False, F64, B=1, H=2, N=40, M=30, Dk=2, Dv=3, eps=5.0)


# ---- empty sizes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("B, N, M", [(0, 5, 5), (2, 0, 5), (2, 5, 0), (2, 0, 0)])
@pytest.mark.parametrize("name", ("elu+1", "favor+"))
@pytest.mark.parametrize("normalize", ("none", "softmax"))
def test_empty(name, normalize, B, N, M):
    Dk, Dv = 4, 3
    fm = _feature_map(name, Dk, 6, 0)
    q = torch.randn(B, 2, N, Dk, device=DEVICE, requires_grad=True)
    k = torch.randn(B, 2, M, Dk, device=DEVICE, requires_grad=True)
    v = torch.randn(B, 2, M, Dv, device=DEVICE, requires_grad=True)
    out = functional.lowrank_integral_transform(q, k, v, feature_map=fm, normalize=normalize)
    assert out.shape == (B, 2, N, Dv)
    assert (out == 0).all()
    out.sum().backward()
    for x in (q, k, v):
        assert x.grad.shape == x.shape and (x.grad == 0).all()


# ---- bad input, determinism --------------------------------------------------------------------

# (the emulator's tensors are all on the CPU: no wrong device to pass)
@requires_gpu
def test_projection_on_wrong_device():
    q = torch.randn(1, 1, 4, 3, device="cuda")
    W = torch.randn(5, 3)  # on CPU
    with pytest.raises(RuntimeError, match="projection"):
        torch.ops.itnet.lowrank_fwd(q, q, q, W, FAVOR, True, 0.0)
    with pytest.raises(RuntimeError, match="projection"):
        torch.ops.itnet.lowrank_bwd(q, q, q, q, W, FAVOR, True, 0.0)
    with pytest.raises(RuntimeError, match="projection"):
        torch.ops.itnet.lowrank_features(q, W, FAVOR, 1)


@requires_gpu
def test_mixed_devices():
    q = torch.randn(1, 1, 4, 3, device="cuda")
    with pytest.raises(RuntimeError, match="k: expected a tensor on"):
        torch.ops.itnet.lowrank_fwd(q, q.cpu(), q, None, 1, False, 0.0)


# (under the emulator, whose blocks run one after the other, one map: favor+ costs ~25 s there)
@pytest.mark.parametrize("name", emu_cases(("elu+1", "favor+"), 1))
def test_deterministic(name):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, n, d, generator=g).to(DEVICE) for n, d in
               ((300, 24), (4000, 24), (4000, 40)))
    fm = _feature_map(name, 24, 96, 3)
    results = []
    for _ in range(2):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = functional.lowrank_integral_transform(*leaves, feature_map=fm, normalize="softmax")
        out.pow(2).sum().backward()
        results.append([out.detach()] + [x.grad for x in leaves])
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---- the features op against its CPU kernels ---------------------------------------------------

@pytest.mark.parametrize("stabilize", (0, 1, 2))
@pytest.mark.parametrize("shape, F", [((2, 3, 70, 5), 37), ((1, 130, 1), 65), ((4, 0, 6), 3)])
def test_features_op_favor(shape, F, stabilize):
    g = torch.Generator().manual_seed(_seed(shape, F, stabilize))
    x = torch.randn(*shape, generator=g, dtype=F64) * 2
    W = torch.randn(F, shape[-1], generator=g, dtype=F64)
    gphi = torch.randn(*shape[:-1], F, generator=g, dtype=F64)
    with cpu_kernels():
        ref = torch.ops.itnet.lowrank_features(x, W, FAVOR, stabilize)
    got = torch.ops.itnet.lowrank_features(x.to(DEVICE), W.to(DEVICE), FAVOR, stabilize)
    assert got.dtype == F64 and _rel(got, ref) <= 1e-12
    with cpu_kernels():
        ref_dx = torch.ops.itnet.lowrank_features_bwd(gphi, x, W, FAVOR, stabilize)
    dx = torch.ops.itnet.lowrank_features_bwd(gphi.to(DEVICE), x.to(DEVICE), W.to(DEVICE), FAVOR,
                                              stabilize)
    assert _rel(dx, ref_dx) <= 1e-10
    # float16 input: float32 features
    got16 = torch.ops.itnet.lowrank_features(x.half().to(DEVICE), W.to(DEVICE), FAVOR, stabilize)
    assert got16.dtype == F32


@pytest.mark.parametrize("code", (0, 1, 2))
def test_features_op_elementwise(code):
    x = torch.randn(3, 33, 7, dtype=F64)
    gphi = torch.randn(3, 33, 7, dtype=F64)
    with cpu_kernels():
        ref = torch.ops.itnet.lowrank_features(x, None, code, 0)
    got = torch.ops.itnet.lowrank_features(x.to(DEVICE), None, code, 0)
    assert torch.allclose(got.cpu(), ref, rtol=1e-14, atol=0)
    dx = torch.ops.itnet.lowrank_features_bwd(gphi.to(DEVICE), x.to(DEVICE), None, code, 0)
    with cpu_kernels():
        ref_dx = torch.ops.itnet.lowrank_features_bwd(gphi, x, None, code, 0)
    assert torch.allclose(dx.cpu(), ref_dx, rtol=1e-14, atol=0)


# opcheck's test_faketensor cannot run under the emulator: its dispatch mode redirects the
# FakeTensor call to torch.ops.itnet_emu, which has no fake (Meta) kernel
@requires_gpu
def test_opcheck():
    q = torch.randn(1, 2, 9, 4, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 2, 11, 4, device=DEVICE, requires_grad=True)
    v = torch.randn(1, 2, 11, 3, device=DEVICE, requires_grad=True)
    W = torch.randn(6, 4, device=DEVICE)
    # schema and fake kernels (the autograd checks are the slow ones; gradients are compared
    # with the oracle above)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.itnet.lowrank_fwd.default, (q, k, v, W, FAVOR, True, 0.0),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.itnet.lowrank_features.default, (q, W, FAVOR, 1),
                          test_utils=utils)
