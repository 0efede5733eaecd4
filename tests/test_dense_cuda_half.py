"""CUDA dense op in float16 / bfloat16 against the float64 oracle on CPU.

Half-precision inputs run on the tensor-core ("flash") kernels when Dk, Dv <= 256, R <= 64
and the offset table's O * R <= 8192, and on the exact float32 kernels (upcast copies)
otherwise; both paths are covered here.

Tolerance rule of FlashAttention's tests: for every output (out, lse) and every gradient
(q, k, v, u, t, W2, b2, offset_table, key_weight), the kernel's error against the float64
reference on CPU must be at most 2x (outputs) / 3x (gradients) the max-abs error of plain
PyTorch computing the same thing in the same low precision on the same GPU
(tests/lowp_reference.py; ``itnet_ext.reference`` would upcast to float32). Elementwise:

    |kernel - ref| <= mult * max|pytorch_lowp - ref| + ulp(ref) + 1e-5 * max|ref|

where ulp(ref) is the spacing of the kernel result's dtype at that entry (the kernel may
round an exactly computed value the other way: FlashAttention 3's tests add twice the
rounding error of the reference in the output dtype for the same reason), and the last term
keeps exact-zero cases from failing on noise. All three implementations see the same
rounded inputs and cotangents.
Under the emulator, plain PyTorch's low-precision yardstick runs on the CPU instead.

Cases: seeded random problems over every feature (conftest.make_problem with this file's
sizes: N, M in {1, 63, 65, 129, 200}, head dims 1..256 with non-multiples of 8, R up to 64,
H up to 9), pinned head dims, pinned features x activations, R in {1, 16, 32, 64}, the
fallback (Dk = 300, Dv = 300, R = 80, O * R > 8192), two larger problems (N = M = 512,
Dh = 128), rows with an empty support, N or M = 0, the dtype contract (out in v's dtype,
lse float32, gradients in the inputs' dtypes, positions of any float dtype) and the
deterministic mode (20 bitwise-equal backward runs; the float32 backward and an
offset table raise under it - also a frozen one, the op cannot tell -, warn with
``warn_only=True``), and that the flash kernels are the ones that run.

Without a GPU (or in a build without the CUDA kernels) the kernels run under the device
emulator of an ITNET_EMULATE=1 build (cuda_helpers: DEVICE = "cpu", fewer cases of the slow
parametrizations, the tests that need a real GPU skipped), or everything is skipped.
"""
import functools
import math

import pytest
import torch

import lowp_reference
from conftest import rel_err
from cuda_helpers import (CUDA_TESTS, DEVICE, DIFF_NAMES, EMULATED, assert_empty_rows, describe,
                          emu_cases, empty_rows_problem, requires_gpu, to_dev)
from itnet_ext import functional, reference

pytestmark = CUDA_TESTS

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
HALF = [pytest.param(F16, id="f16"), pytest.param(BF16, id="bf16")]
OUT_MULT, GRAD_MULT = 2.0, 3.0   # FlashAttention's factors
FLOOR = 1e-5                     # absolute floor, relative to max |reference|

MASK_SHAPES = ("NM", "B1NM", "1HNM", "BHNM", "111M", "B11M", "1H1M", "N1", "M")
HALF_CHOICES = dict(
    mlp=[True, True, False],
    B=[1, 2],
    H=[1, 2, 3, 4, 9],
    N=[1, 63, 65, 129, 200],
    M=[1, 63, 65, 129, 200],
    Dk=[1, 3, 8, 40, 64, 72, 128, 200, 256],
    Dv=[1, 3, 8, 40, 64, 72, 128, 200, 256],
    R=[1, 5, 16, 32, 48, 64],
    normalize=["softmax", "softmax", "none"],
    D=[1, 1, 2],
    mask_shape=list(MASK_SHAPES),
    empty=[False],
)


@pytest.fixture
def make_problem(dense):
    """``make_problem(seed, **opt)``: a random valid argument set (CPU float64 tensors)."""
    return functools.partial(dense.make_problem, choices=HALF_CHOICES, w2_gain=1.5,
                             table_gain=0.7)


@pytest.fixture
def deterministic(monkeypatch):
    """Lets a test switch torch.use_deterministic_algorithms; restores the setting after."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # in case the op uses cuBLAS
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


# --------------------------------------------------------------------------------------------
# running and comparing
# --------------------------------------------------------------------------------------------
def run(fn, kw, seed, dtype):
    """fn(**kw) (with lse in softmax mode) and the gradients of every differentiable input
    for fixed random cotangents, rounded to ``dtype`` so that all implementations get the
    same values. Returns (results tuple, {name: grad or None})."""
    softmax = kw.get("normalize", "softmax") == "softmax"
    res = fn(**kw, return_lse=True) if softmax else (fn(**kw),)
    gen = torch.Generator().manual_seed(seed + 777)
    cot = [torch.randn(r.shape, generator=gen, dtype=F64).to(dtype).to(r.device, r.dtype)
           for r in res]
    names = [n for n in DIFF_NAMES if kw.get(n) is not None]
    pairs = [(r, c) for r, c in zip(res, cot) if r.requires_grad]
    grads = torch.autograd.grad([r for r, _ in pairs], [kw[n] for n in names],
                                [c for _, c in pairs], allow_unused=True)
    return res, dict(zip(names, grads))


def max_err(a, b, what):
    """max |a - b| over the finite entries of b; a must have no NaN and b's inf pattern."""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert not torch.isnan(a).any(), f"{what}: NaN"
    fin = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), fin), f"{what}: inf pattern differs from the reference"
    assert torch.equal(a[~fin], b[~fin]), f"{what}: inf values differ from the reference"
    return (a[fin] - b[fin]).abs().max().item() if fin.any() else 0.0


def ulp(x, dtype):
    """Spacing of ``dtype``'s numbers at |x| (x float64)."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(x.abs())  # |x| = m 2^e, 0.5 <= m < 1
    u = torch.ldexp(torch.full_like(x, fi.eps), e - 1)
    return torch.where(x.abs() >= fi.tiny, u, torch.full_like(x, fi.eps * fi.tiny))


def compare(name, a, lo, r, mult, dtype):
    """FlashAttention's rule (module docstring) for the kernel result a, the low-precision
    PyTorch result lo and the float64 reference r; returns None or a failure message."""
    max_err(a, r, name)  # NaN / inf checks
    err_pt = max_err(lo, r, f"{name} (PyTorch in {dtype})")
    a_dtype = a.dtype
    a, r = a.detach().double().cpu(), r.detach().double().cpu()
    fin = torch.isfinite(r)
    if not fin.any():
        return None
    a, r = a[fin], r[fin]
    ref_max = r.abs().max().item()
    diff = (a - r).abs()
    allowed = mult * err_pt + ulp(r, a_dtype) + FLOOR * ref_max
    worst = int(torch.argmax(diff - allowed))
    if diff[worst] <= allowed[worst]:
        return None
    return (f"{name}: |err| {diff[worst].item():.3g} > {mult:g} x {err_pt:.3g} (PyTorch in "
            f"{str(dtype)[6:]}) + ulp {ulp(r[worst], a_dtype).item():.2g} + "
            f"{FLOOR * ref_max:.2g} at ref {r[worst].item():.4g} (max err {diff.max().item():.3g}, "
            f"max |ref| {ref_max:.3g})")


def check_half(kw, dtype, seed=0):
    """The fused op in dtype on CUDA vs the float64 reference on CPU, bounded by the error of
    plain PyTorch in dtype on CUDA (FlashAttention's rule). Returns (results, grads) of the
    fused op."""
    kwd = to_dev(kw, dtype, DEVICE)
    kwl = to_dev(kwd, dtype, DEVICE)  # same rounded values, fresh leaves
    kwr = to_dev(kwd, F64, "cpu")
    res_d, g_d = run(functional.integral_transform, kwd, seed, dtype)
    res_l, g_l = run(lowp_reference.integral_transform, kwl, seed, dtype)
    res_r, g_r = run(reference.integral_transform, kwr, seed, dtype)
    what = describe(kw)

    # dtype contract: out in v's dtype, lse in float32, gradients in the inputs' dtypes
    assert res_d[0].dtype == dtype and res_d[0].device.type == DEVICE, res_d[0].dtype
    if len(res_d) > 1:
        assert res_d[1].dtype == F32, f"lse dtype {res_d[1].dtype}, expected float32"
    items = [(name, a, lo, r, OUT_MULT)
             for name, a, lo, r in zip(("out", "lse"), res_d, res_l, res_r)]
    for n in g_r:
        # an input that takes part in no pair (N or M = 0) may get no gradient at all
        gd = torch.zeros_like(kwd[n]) if g_d[n] is None else g_d[n]
        gl = torch.zeros_like(kwl[n]) if g_l[n] is None else g_l[n]
        gr = torch.zeros_like(kwr[n]) if g_r[n] is None else g_r[n]
        assert gd.dtype == dtype and gd.shape == kwd[n].shape, (n, gd.dtype, gd.shape)
        items.append((f"grad {n}", gd, gl, gr, GRAD_MULT))

    failures = []
    for name, a, lo, r, mult in items:
        msg = compare(name, a, lo, r, mult, dtype)
        if msg:
            failures.append(msg)
    assert not failures, "; ".join(failures) + f" -- {what}"
    return res_d, g_d


# --------------------------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------------------------
# (under the emulator, where every case costs seconds: 8 of the 50 seeds)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("seed", emu_cases(range(50), 16))
def test_fuzz_half(seed, dtype, make_problem):
    check_half(make_problem(5000 + seed), dtype, seed=seed)


HEAD_DIMS = [(1, 1), (3, 5), (8, 8), (40, 40), (64, 64), (72, 40), (128, 128), (200, 72),
             (256, 256), (64, 256), (256, 64)]


# (under the emulator: 4 of them, one at least per head-dim class 64 / 128 / 256 of the kernels)
HEAD_DIM_CASES = emu_cases(HEAD_DIMS, 4)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("dims", HEAD_DIM_CASES, ids=[f"Dk{a}-Dv{b}" for a, b in HEAD_DIM_CASES])
def test_head_dims(dims, dtype, make_problem):
    i = HEAD_DIMS.index(dims)
    kw = make_problem(600 + i, content=True, mlp=bool(i % 2), Dk=dims[0], Dv=dims[1],
                      N=129, M=200 if i % 3 else 65, normalize="softmax", support="none",
                      mask=None, kpm=False, key_weight=None, causal=i % 4 == 3)
    check_half(kw, dtype, seed=i)


FEATURES = [  # (options, has MLP term)
    dict(content=True, mlp=False, support="none", mask=None, kpm=False, key_weight=None),
    dict(content=True, mlp=False, support="none", causal=True, kpm=True, mask=None),
    dict(content=True, mlp=False, support="window", D=1, mask="bool", mask_shape="B1NM",
         causal=True),
    dict(content=False, mlp=True, support="offset", D=1, causal=True),
    dict(content=True, mlp=True, support="offset", D=2, kpm=True, key_weight="B"),
    dict(content=True, mlp=True, support="frac", D=2, mask="float", mask_shape="BHNM"),
    dict(content=False, mlp=True, support="none", normalize="none", key_weight="1",
         mask="float", mask_shape="1H1M"),
    dict(content=True, mlp=True, support="frac", D=1, normalize="none", kpm=True,
         mask="bool", mask_shape="N1"),
]
FEATURE_CASES = [(i, act) for i, f in enumerate(FEATURES)
                 for act in (["relu", "gelu", "silu"] if f["mlp"] else ["-"])]
if EMULATED:  # (under the emulator: every feature set, with one activation each, in turn)
    FEATURE_CASES = [(i, a) for i, a in FEATURE_CASES
                     if a in ("-", ("relu", "gelu", "silu")[i % 3])]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("feat,activation", FEATURE_CASES,
                         ids=[f"f{i}-{a}" for i, a in FEATURE_CASES])
def test_features_half(feat, activation, dtype, make_problem):
    opts = dict(FEATURES[feat])
    if opts["mlp"]:
        opts["activation"] = activation
    kw = make_problem(700 + feat, N=65, M=129, **opts)
    check_half(kw, dtype, seed=feat)


# (under the emulator: the smallest and the largest)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("R", emu_cases([1, 16, 32, 64], 2))
def test_mlp_widths(R, dtype, make_problem):
    kw = make_problem(800 + R, content=True, mlp=True, R=R, N=129, M=65, Dk=64, Dv=64,
                      support="offset", D=1, normalize="softmax", use_u=True, use_t=True,
                      use_b2=True, activation="gelu")
    check_half(kw, dtype, seed=R)


FALLBACK = {"Dk300": dict(Dk=300, Dv=40, R=16), "Dv300": dict(Dk=40, Dv=300, R=16),
            "R80": dict(Dk=64, Dv=64, R=80), "table": dict(Dk=64, Dv=64, R=64)}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", list(FALLBACK))
def test_fallback_beyond_flash_limits(case, dtype, make_problem):
    """Sizes beyond the flash kernels' limits run on the float32 kernels: same contract."""
    kw = make_problem(900 + list(FALLBACK).index(case), content=True, mlp=True, N=65, M=63, H=3,
                      support="none", normalize="softmax", kpm=True, key_weight="B",
                      use_u=True, use_t=True, use_b2=True, activation="silu",
                      **FALLBACK[case])
    if case == "table":  # O * R = 141 * 64 > 8192
        gen = torch.Generator().manual_seed(3)
        kw["window"] = (-70, 70)
        kw["offset_table"] = torch.randn(141, 64, generator=gen, dtype=F64) * 0.7
    check_half(kw, dtype)


# (under the emulator: only the MLP + causal mode, in float16)
@pytest.mark.parametrize("dtype", HALF if not EMULATED else HALF[:1])
@pytest.mark.parametrize("mode", ["attn", "mlp-causal"] if not EMULATED else ["mlp-causal"])
def test_larger(mode, dtype, make_problem):
    mlp = mode != "attn"
    kw = make_problem(950, content=True, mlp=mlp, B=1, H=4, N=512, M=512, Dk=128, Dv=128,
                      R=32, causal=mlp, normalize="softmax", support="none", mask=None,
                      kpm=False, key_weight=None, use_u=True, use_t=True, use_b2=True,
                      activation="gelu")
    check_half(kw, dtype)


# --------------------------------------------------------------------------------------------
# empty supports, empty sizes, dtypes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_support_rows_half(normalize, dtype, make_problem):
    """Rows whose support is empty give exactly 0, lse = -inf, zero and finite gradients."""
    kw, empty = empty_rows_problem(make_problem, normalize, B=2, H=3, N=70, M=90, Dk=40, Dv=72,
                                   R=16)
    res, grads = check_half(kw, dtype)
    assert_empty_rows(res, grads, empty, normalize == "softmax")


@pytest.mark.parametrize("NM", [(0, 5), (6, 0)])
def test_no_queries_or_no_keys_half(NM, make_problem):
    kw = make_problem(3, content=True, mlp=True, N=NM[0], M=NM[1], normalize="softmax",
                      support="none", mask=None, kpm=False, key_weight="B", use_u=True,
                      use_t=True, use_b2=True)
    res, grads = check_half(kw, F16)
    assert (res[0] == 0).all() and (res[1] == -math.inf).all()
    for n, g in grads.items():
        assert g is None or torch.isfinite(g).all(), n


@pytest.mark.parametrize("dtype", HALF)
def test_positions_of_any_float_dtype(dtype, make_problem):
    """Integer-valued positions in float16 / float32 / float64 give identical results."""
    kw = make_problem(13, content=True, mlp=True, N=40, M=50, support="offset", D=2,
                      pos="batch", normalize="softmax")
    kwd = to_dev(kw, dtype, DEVICE)
    outs = []
    for pdt in (dtype, F32, F64):
        kwp = dict(kwd, q_pos=kwd["q_pos"].to(pdt), k_pos=kwd["k_pos"].to(pdt))
        outs.append(functional.integral_transform(**kwp, return_lse=True))
    for o, lse in outs[1:]:
        assert torch.equal(o, outs[0][0]) and torch.equal(lse, outs[0][1])


# --------------------------------------------------------------------------------------------
# deterministic mode
# --------------------------------------------------------------------------------------------
# (under the emulator, whose blocks run one after the other, float16 only)
@pytest.mark.parametrize("dtype", emu_cases(HALF, 1))
def test_deterministic_backward_bitwise(dtype, make_problem, deterministic):
    """Under torch.use_deterministic_algorithms(True), 20 forward + backward runs give
    bitwise-identical outputs and gradients of every input (MLP on, no offset table). Under
    the emulator (blocks run one after another: no scheduling to vary) 3 runs: each costs
    about ten seconds there."""
    kw = make_problem(91, content=True, mlp=True, B=2, H=4, N=257, M=300, Dk=64, Dv=64, R=32,
                      support="frac", D=1, kpm=True, key_weight="B", use_u=True, use_t=True,
                      use_b2=True, normalize="softmax", mask=None, causal=False,
                      activation="silu")
    kwd = to_dev(kw, dtype, DEVICE)
    torch.use_deterministic_algorithms(True)
    first = None
    for i in range(3 if EMULATED else 20):
        res, grads = run(functional.integral_transform, to_dev(kwd, dtype, DEVICE), 0, dtype)
        if first is None:
            first = (res, grads)
            assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
            continue
        for a, b in zip(res, first[0]):
            assert torch.equal(a, b), f"run {i}: forward differs"
        for n, g in grads.items():
            assert torch.equal(g, first[1][n]), f"run {i}: grad {n} differs"


def _small_problem(make_problem, **opt):
    base = dict(content=True, mlp=True, B=2, H=3, N=33, M=40, Dk=16, Dv=8, R=16,
                normalize="softmax", support="none", mask=None, kpm=False, key_weight=None,
                use_u=True, use_t=True, use_b2=True)
    base.update(opt)
    return make_problem(92, **base)


def test_deterministic_mode_float32_backward_raises(make_problem, deterministic):
    """The float32 backward uses float atomics: it raises under the deterministic mode (the
    forward does not)."""
    kwd = to_dev(_small_problem(make_problem), F32, DEVICE)
    torch.use_deterministic_algorithms(True)
    out = functional.integral_transform(**kwd)
    with pytest.raises(RuntimeError, match="deterministic"):
        out.backward(torch.ones_like(out))


@pytest.mark.parametrize("frozen", [False, True])
def test_deterministic_mode_offset_table_raises(make_problem, deterministic, frozen):
    """float16 with an offset table: its gradient is accumulated with atomics, so the backward
    reports itself as nondeterministic under the deterministic mode - also when the table is
    frozen (the op is not told which gradients are needed). The forward is unaffected."""
    kwd = to_dev(_small_problem(make_problem, support="offset", D=1), F16, DEVICE)
    if frozen:
        kwd["offset_table"].requires_grad_(False)
    torch.use_deterministic_algorithms(True)
    out = functional.integral_transform(**kwd)
    names = [n for n in DIFF_NAMES if kwd.get(n) is not None and kwd[n].requires_grad]
    with pytest.raises(RuntimeError, match="deterministic"):
        torch.autograd.grad(out, [kwd[n] for n in names], torch.ones_like(out))


def _cuda_kernel_names(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    if not names:
        pytest.skip("the profiler recorded no CUDA kernels (CUPTI unavailable)")
    return " ".join(names)


# (the CUDA profiler: the emulator launches no CUDA kernel)
@requires_gpu
@pytest.mark.parametrize("flash_env", ["1", "0"])
def test_flash_kernels_are_the_ones_that_run(monkeypatch, flash_env):
    """fp16 attention inside the flash limits runs the tensor-core kernels (forward, key and
    query passes), not the exact fallback - unless ITNET_CUDA_FLASH=0 asks for the fallback.
    Guards against a dispatch that silently sends everything to the (correct, slow) fallback,
    which every accuracy test would still pass."""
    monkeypatch.setenv("ITNET_CUDA_FLASH", flash_env)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 2, 96, 64, device="cuda", generator=g, dtype=F16).requires_grad_()
               for _ in range(3))

    def step():
        out = functional.integral_transform(q, k, v)
        out.backward(torch.ones_like(out))

    names = _cuda_kernel_names(step)
    flash = ("flash::fwd_kernel", "flash::bwd_kv_kernel", "flash::bwd_q_kernel")
    if flash_env == "1":
        assert all(n in names for n in flash), names
    else:
        assert not any(n in names for n in flash) and "dense_fwd_kernel" in names, names


def test_deterministic_warn_only_float32(make_problem, deterministic):
    """warn_only=True: the float32 backward warns and still returns correct gradients."""
    kw = _small_problem(make_problem, support="offset", D=1, kpm=True, key_weight="B")
    kwd = to_dev(kw, F32, DEVICE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    with pytest.warns(UserWarning, match="deterministic"):
        res_d, g_d = run(functional.integral_transform, kwd, 0, F32)
    torch.use_deterministic_algorithms(False)
    res_r, g_r = run(reference.integral_transform, to_dev(kwd, F64, "cpu"), 0, F32)
    for a, b in zip(res_d, res_r):
        assert rel_err(a, b, atol=0.0, floor=1.0) <= 1e-4
    for n in g_r:
        assert rel_err(g_d[n], g_r[n], atol=0.0, floor=1.0) <= 1e-4, n
