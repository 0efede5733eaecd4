"""The decay scan's CUDA kernels (itnet_ext.functional.decay_scan on CUDA tensors) against the
float64 sequential loop (itnet_ext.reference.decay_scan) on CPU copies of the same (rounded)
inputs: y, the final state and every gradient, for float64 / float32 / float16 / bfloat16, over
every log-decay form ((B, T, D, Rk), (1, T, D, Rk), (B, 1, D, 1), (B, T, D, 1), (1, 1, D, Rk),
(D, Rk) static, (dt, A) factored), channel groups G in {1, 2, D} (float atomics, plain
stores), skip / initial state / final-state cotangent on and off, sequence lengths around the
kernels' chunk sizes (T = 1, 128 / 129, 512 / 513, 1024 / 1025, 2048 / 2049: one or several
chunks, backward checkpoints), T = 5000 with strong decays, Rk in {1, 16, 64, 256, 300};
empty B / T / D; gradcheck in float64 on the GPU; opcheck; determinism; a side stream.

The gradients of sequences longer than 600 steps come from the float64 CPU kernels (see
LOOP_GRAD_MAX_T). Errors are relative to the largest reference entry: float64 1e-10, float32
1e-4, float16 4e-3, bfloat16 2e-2 (16-bit results are rounded once from float32 sums).

Without a GPU (or in a build without the CUDA kernels) the kernels run under the device
emulator of an ITNET_EMULATE=1 build (cuda_helpers: DEVICE = "cpu", fewer cases of the slow
parametrizations, the tests that need a real GPU skipped), or everything is skipped.
"""
import zlib

import pytest
import torch

from itnet_ext import functional, reference
from cuda_helpers import CUDA_TESTS, DEVICE, cpu_kernels, emu_cases, requires_gpu
from scan_helpers import F64, FORMS, scan_problem

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F64: 1e-10, F32: 1e-4, F16: 4e-3, BF16: 2e-2}
DTYPES = (F64, F32, F16, BF16)

pytestmark = CUDA_TESTS


def _seed(*key):
    return zlib.crc32(repr(key).encode())


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert not torch.isnan(a).any(), "NaN in the result"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def _flat(args, kw):
    """(names, tensors) of a problem's differentiable inputs."""
    x, ld, phi, psi = args
    names, ts = ["x"], [x]
    if isinstance(ld, tuple):
        names += ["dt", "A"]
        ts += list(ld)
    else:
        names.append("log_decay")
        ts.append(ld)
    names += ["phi", "psi"]
    ts += [phi, psi]
    for n in ("skip", "initial_state"):
        if kw[n] is not None:
            names.append(n)
            ts.append(kw[n])
    return names, ts


def _rebuild(names, ts):
    d = dict(zip(names, ts))
    ld = (d["dt"], d["A"]) if "dt" in d else d["log_decay"]
    return (d["x"], ld, d["phi"], d["psi"]), dict(skip=d.get("skip"),
                                                  initial_state=d.get("initial_state"))


def _run(fn, names, ts, gy, gh):
    leaves = [t.detach().clone().requires_grad_() for t in ts]
    args, kw = _rebuild(names, leaves)
    y, hT = fn(*args, **kw, return_final_state=True)
    out = [y, hT]
    loss = (y.double() * gy.to(y.device)).sum()
    if gh is not None:
        loss = loss + (hT.double() * gh.to(hT.device)).sum()
    out += torch.autograd.grad(loss, leaves)
    return out


# Beyond this length the loop's autograd graph costs seconds per thousand steps: the forward
# still comes from the loop, the gradients from the CPU kernels in float64 (equal to the
# loop's to 1e-10, tests/test_scan_op.py), after their forward is checked against the loop.
LOOP_GRAD_MAX_T = 600


def _oracle(names, ts, gy, gh):
    """[y, final_state, grads...] of the float64 CPU tensors ts."""
    if ts[0].shape[1] <= LOOP_GRAD_MAX_T:
        return _run(reference.decay_scan, names, ts, gy, gh)
    with torch.no_grad():
        a, k = _rebuild(names, ts)
        y, hT = reference.decay_scan(*a, **k, return_final_state=True)
    with cpu_kernels():
        out = _run(functional.decay_scan, names, ts, gy, gh)
    assert _rel(out[0], y) <= 1e-10 and _rel(out[1], hT) <= 1e-10, "CPU kernels vs the loop"
    return [y, hT] + out[2:]


def compare(args, kw, dtype, *, with_gh=True, tol=None, seed=0):
    """functional.decay_scan on CUDA in `dtype` vs the float64 loop on CPU; returns the worst
    relative error."""
    names, ts = _flat(args, kw)
    dev = [t.to(dtype).to(DEVICE) for t in ts]
    ref = [t.to(dtype).double() for t in ts]       # the same rounded values, on CPU
    g = torch.Generator().manual_seed(seed + 1)
    x = args[0]
    Rk = args[2].shape[-1]
    gy = torch.randn(x.shape, generator=g, dtype=F64).to(dtype).double()
    gh = (torch.randn(x.shape[0], x.shape[2], Rk, generator=g, dtype=F64).to(dtype).double()
          if with_gh else None)
    got = _run(functional.decay_scan, names, dev, gy, gh)
    want = _oracle(names, ref, gy, gh)
    tol = TOL[dtype] if tol is None else tol
    worst = 0.0
    for name, a, b in zip(["y", "final_state"] + names, got, want):
        assert a.device.type == DEVICE and a.dtype == dtype, name
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert a.is_contiguous(), name
        e = _rel(a, b)
        assert e <= tol, f"{name}: relative error {e:.3g} > {tol:g}"
        worst = max(worst, e)
    return worst


# --------------------------------------------------------------------------------------------
# every form x dtype x groups
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("G", [1, 2, 6])
def test_forms_dtypes_groups(dtype, form, G):
    args, kw = scan_problem(_seed("fdg", form, G), form, B=2, T=37, D=6, Rk=5, G=G,
                            grouped=True)
    compare(args, kw, dtype, seed=_seed(form, G))


@pytest.mark.parametrize("form", ["full", "static", "factored", "channel_static"])
@pytest.mark.parametrize("extras", ["none", "skip", "h0", "both"])
@pytest.mark.parametrize("with_gh", [False, True])
def test_optional_inputs(form, extras, with_gh):
    args, kw = scan_problem(_seed("opt", form, extras), form, B=2, T=21, D=4, Rk=3, G=2,
                            grouped=True, skip=extras in ("skip", "both"),
                            h0=extras in ("h0", "both"))
    compare(args, kw, F64, with_gh=with_gh)
    compare(args, kw, F32, with_gh=with_gh)


def test_three_dim_phi_psi():
    """phi / psi given as (B, T, Rk): one group."""
    args, kw = scan_problem(_seed("3d"), "full", B=2, T=30, D=5, Rk=4, G=1, grouped=False)
    assert args[2].dim() == 3
    compare(args, kw, F64)
    compare(args, kw, BF16)


# --------------------------------------------------------------------------------------------
# sequence lengths around the chunk sizes; state sizes
# --------------------------------------------------------------------------------------------
# forward chunks: 128 (T <= 128), 512 (T <= 512), then 2048 steps; backward chunks 128, 512,
# then 1024 steps (checkpoints beyond)
LENGTHS = [1, 2, 127, 128, 129, 511, 512, 513, 1000, 1024, 1025, 2048, 2049, 3000]


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("form", ["full", "factored", "channel", "static"])
def test_lengths(T, form):
    args, kw = scan_problem(_seed("len", T, form), form, B=1, T=T, D=3, Rk=4, G=1,
                            grouped=True)
    compare(args, kw, F64)
    compare(args, kw, F32)


# (float16 with the factored form at T = 2100 is left out: the reference's dA, a sum over
# 4200 steps, is beyond float16's range)
@pytest.mark.parametrize("T", [300, 2100])
@pytest.mark.parametrize("dtype,form", [(F16, "bcast_batch"), (F16, "channel"),
                                        (BF16, "bcast_batch"), (BF16, "factored")], ids=str)
def test_lengths_half(T, dtype, form):
    args, kw = scan_problem(_seed("lenh", T, form), form, B=2, T=T, D=4, Rk=8, G=2,
                            grouped=True)
    compare(args, kw, dtype)


# (under the emulator: two of the four forms, every Rk)
@pytest.mark.parametrize("Rk", [1, 16, 64, 256, 300])
@pytest.mark.parametrize("form", emu_cases(["full", "factored", "channel_static",
                                            "bcast_batch_time"], 2))
def test_state_sizes(Rk, form):
    args, kw = scan_problem(_seed("rk", Rk, form), form, B=2, T=150, D=4, Rk=Rk, G=2,
                            grouped=True)
    compare(args, kw, F32)
    if Rk in (1, 300):
        compare(args, kw, F64)
        compare(args, kw, BF16)


def test_large_state_multi_chunk():
    args, kw = scan_problem(_seed("rkT"), "factored", B=1, T=1100, D=2, Rk=256, G=1,
                            grouped=True)
    compare(args, kw, F32)


def test_many_channels_per_group():
    """D = 96 channels in 3 groups (32 channels adding into each dphi / dpsi row)."""
    args, kw = scan_problem(_seed("wide"), "channel", B=2, T=70, D=96, Rk=3, G=3, grouped=True)
    compare(args, kw, F64)
    compare(args, kw, F32)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_long_sequence_strong_decay(dtype):
    """T = 5000, log-decays down to -30 (exp underflows): finite, and equal to the loop."""
    g = torch.Generator().manual_seed(1)
    B, T, D, Rk = 1, 5000, 3, 8
    x = torch.randn(B, T, D, generator=g, dtype=F64)
    ld = -30 * torch.rand(B, T, D, Rk, generator=g, dtype=F64)
    phi = torch.randn(B, T, Rk, generator=g, dtype=F64)
    psi = torch.randn(B, T, Rk, generator=g, dtype=F64)
    h0 = torch.randn(B, D, Rk, generator=g, dtype=F64)
    compare((x, ld, phi, psi), dict(skip=torch.randn(D, generator=g, dtype=F64),
                                    initial_state=h0), dtype)


def test_long_sequence_mild_decay_factored():
    """T = 5000 with decays near 1: the state carries across every chunk boundary."""
    g = torch.Generator().manual_seed(2)
    B, T, D, Rk = 2, 5000, 2, 4
    x = torch.randn(B, T, D, generator=g, dtype=F64)
    dt = 1e-3 * torch.rand(B, T, D, generator=g, dtype=F64)
    A = -torch.rand(D, Rk, generator=g, dtype=F64)
    phi = torch.randn(B, T, 2, Rk, generator=g, dtype=F64) / 30
    psi = torch.randn(B, T, 2, Rk, generator=g, dtype=F64) / 30
    compare((x, (dt, A), phi, psi), dict(skip=None, initial_state=None), F64)
    compare((x, (dt, A), phi, psi), dict(skip=None, initial_state=None), F32)


# --------------------------------------------------------------------------------------------
# empty sizes, gradcheck, opcheck
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,D", [(0, 5, 3), (2, 0, 3), (2, 5, 0)])
@pytest.mark.parametrize("form", ["full", "static", "factored"])
@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
def test_empty_sizes(B, T, D, form, dtype):
    g = torch.Generator().manual_seed(0)
    Rk = 4
    dev = dict(device=DEVICE, dtype=dtype)
    x = torch.randn(B, T, D, generator=g).to(**dev).requires_grad_()
    if form == "full":
        ld = (-torch.rand(B, T, D, Rk, generator=g)).to(**dev).requires_grad_()
    elif form == "static":
        ld = (-torch.rand(D, Rk, generator=g)).to(**dev).requires_grad_()
    else:
        ld = (torch.rand(B, T, D, generator=g).to(**dev).requires_grad_(),
              (-torch.rand(D, Rk, generator=g)).to(**dev).requires_grad_())
    phi = torch.randn(B, T, Rk, generator=g).to(**dev).requires_grad_()
    psi = torch.randn(B, T, Rk, generator=g).to(**dev).requires_grad_()
    h0 = torch.randn(B, D, Rk, generator=g).to(**dev).requires_grad_()
    skip = torch.randn(D, generator=g).to(**dev).requires_grad_()
    y, hT = functional.decay_scan(x, ld, phi, psi, skip=skip, initial_state=h0,
                                  return_final_state=True)
    assert y.shape == (B, T, D) and hT.shape == (B, D, Rk) and y.device.type == DEVICE
    if T == 0:
        assert torch.equal(hT, h0)
    gh = torch.randn(B, D, Rk, generator=g).to(**dev)
    leaves = [x, *(ld if isinstance(ld, tuple) else (ld,)), phi, psi, skip, h0]
    grads = torch.autograd.grad(y.float().sum() + (hT.float() * gh.float()).sum(), leaves)
    for t, gr in zip(leaves, grads):
        assert gr.shape == t.shape and gr.dtype == t.dtype and gr.device.type == DEVICE
        assert torch.isfinite(gr).all()
    if T == 0:
        assert torch.equal(grads[-1], gh)           # the state passes through unchanged
        assert not grads[0].numel() and not grads[-2].abs().sum()


# (under the emulator: three of the seven forms)
@pytest.mark.parametrize("form", emu_cases(FORMS, 3))
def test_gradcheck_cuda(form):
    args, kw = scan_problem(_seed("gc", form), form, B=2, T=9, D=4, Rk=3, G=2, grouped=True)
    names, ts = _flat(args, kw)
    leaves = [t.to(DEVICE).requires_grad_() for t in ts]

    def fn(*ls):
        a, k = _rebuild(names, ls)
        return functional.decay_scan(*a, **k, return_final_state=True)

    assert torch.autograd.gradcheck(fn, tuple(leaves), atol=1e-8, rtol=1e-6)


def test_gradcheck_cuda_two_block_sizes():
    """T = 140: the (64 x 8) kernels, partially filled."""
    args, kw = scan_problem(_seed("gc140"), "factored", B=1, T=140, D=2, Rk=2, G=1,
                            grouped=True)
    names, ts = _flat(args, kw)
    leaves = [t.to(DEVICE).requires_grad_() for t in ts]

    def fn(*ls):
        a, k = _rebuild(names, ls)
        return functional.decay_scan(*a, **k, return_final_state=True)

    assert torch.autograd.gradcheck(fn, tuple(leaves), atol=1e-8, rtol=1e-6)


def _op_args(form, dtype=F64, B=2, T=7, D=4, Rk=3, G=2):
    args, kw = scan_problem(_seed("op", form), form, B=B, T=T, D=D, Rk=Rk, G=G, grouped=True)
    x, ld, phi, psi = args
    dt = A = None
    if isinstance(ld, tuple):
        (dt, A), ld = ld, None
    elif ld.dim() == 2:
        ld = ld.reshape(1, 1, D, Rk)
    return tuple(None if t is None else t.to(dtype).to(DEVICE)
                 for t in (x, ld, dt, A, phi, psi, kw["skip"], kw["initial_state"]))


# opcheck's test_faketensor cannot run under the emulator: its dispatch mode redirects the
# FakeTensor call to torch.ops.itnet_emu, which has no fake (Meta) kernel; and on CPU tensors
# the fake decay_scan_fwd(checkpoint=True) describes the CPU kernels' checkpoints, not the
# empty third output of the (emulated) CUDA entry point
@requires_gpu
@pytest.mark.parametrize("form", ["full", "channel", "static", "factored", "bcast_batch"])
@pytest.mark.parametrize("dtype", [F64, F16], ids=str)
def test_opcheck_cuda(form, dtype):
    args = _op_args(form, dtype)
    torch.library.opcheck(torch.ops.itnet.decay_scan_fwd.default, args)
    x = args[0]
    gy = torch.randn_like(x)
    gh = torch.randn(x.shape[0], x.shape[2], args[4].shape[-1], dtype=dtype, device=DEVICE)
    torch.library.opcheck(torch.ops.itnet.decay_scan_bwd.default, (gy, gh) + args)
    torch.library.opcheck(torch.ops.itnet.decay_scan_bwd.default, (gy, None) + args)
    # checkpoint=True is a CPU option: on CUDA the third output stays empty
    y, hT, ck = torch.ops.itnet.decay_scan_fwd(*args, True)
    assert ck.numel() == 0 and torch.equal(y, torch.ops.itnet.decay_scan_fwd(*args)[0])
    torch.library.opcheck(torch.ops.itnet.decay_scan_fwd.default, args + (True,))


def test_noncontiguous_inputs():
    args, kw = scan_problem(_seed("nc"), "full", B=2, T=33, D=6, Rk=4, G=2, grouped=True)
    x, ld, phi, psi = (t.to(DEVICE) for t in args)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    ldt = ld.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert not xt.is_contiguous() and not ldt.is_contiguous()
    skip, h0 = kw["skip"].to(DEVICE), kw["initial_state"].to(DEVICE)
    y1 = functional.decay_scan(xt, ldt, phi, psi, skip=skip, initial_state=h0)
    y2 = functional.decay_scan(x, ld, phi, psi, skip=skip, initial_state=h0)
    assert torch.equal(y1, y2)


# --------------------------------------------------------------------------------------------
# determinism, streams, the CPU kernels
# --------------------------------------------------------------------------------------------
def _grads_of(args, kw, seed):
    names, ts = _flat(args, kw)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(args[0].shape, generator=g, dtype=F64)
    gh = torch.randn(args[0].shape[0], args[0].shape[2], args[2].shape[-1], generator=g,
                     dtype=F64)
    return _run(functional.decay_scan, names, [t.float().to(DEVICE) for t in ts], gy, gh)


def test_deterministic_mode_groups():
    """G < D: float atomics normally; per-channel parts under use_deterministic_algorithms
    (bitwise repeatable, and equal to the atomic results up to rounding)."""
    args, kw = scan_problem(_seed("det"), "factored", B=2, T=1300, D=12, Rk=16, G=2,
                            grouped=True)
    loose = _grads_of(args, kw, 5)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a = _grads_of(args, kw, 5)
        b = _grads_of(args, kw, 5)
    finally:
        torch.use_deterministic_algorithms(prev)
    for u, v, w in zip(a, b, loose):
        assert torch.equal(u, v)
        assert _rel(u, w) <= 1e-5


def test_one_channel_per_group_is_deterministic():
    """G = D: no atomics at all, bitwise repeatable without the deterministic mode."""
    args, kw = scan_problem(_seed("det1"), "full", B=2, T=700, D=4, Rk=8, G=4, grouped=True)
    a = _grads_of(args, kw, 6)
    b = _grads_of(args, kw, 6)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@requires_gpu
def test_side_stream():
    args, kw = scan_problem(_seed("stream"), "factored", B=2, T=600, D=4, Rk=6, G=2,
                            grouped=True)
    base = _grads_of(args, kw, 7)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        other = _grads_of(args, kw, 7)
    torch.cuda.current_stream().wait_stream(s)
    for u, v in zip(base, other):
        assert _rel(u, v) <= 1e-5


def test_cpu_and_cuda_agree():
    """The CPU kernels and the CUDA kernels on the same float32 problem."""
    args, kw = scan_problem(_seed("cpu"), "channel_static", B=2, T=200, D=6, Rk=7, G=3,
                            grouped=True)
    names, ts = _flat(args, kw)
    g = torch.Generator().manual_seed(9)
    gy = torch.randn(args[0].shape, generator=g, dtype=F64)
    gh = torch.randn(2, 6, 7, generator=g, dtype=F64)
    with cpu_kernels():
        cpu = _run(functional.decay_scan, names, [t.float() for t in ts], gy, gh)
    gpu = _run(functional.decay_scan, names, [t.float().to(DEVICE) for t in ts], gy, gh)
    for u, v in zip(gpu, cpu):
        assert _rel(u, v) <= 1e-4


def test_dtype_mismatch_on_cuda():
    x, ld, dt, A, phi, psi, skip, h0 = _op_args("full", F32)
    with pytest.raises(RuntimeError, match="phi: expected dtype"):
        torch.ops.itnet.decay_scan_fwd(x, ld, dt, A, phi.double(), psi, skip, h0)
