"""The fused decay-scan op on CPU (issue 4): forward, final state and every gradient against
the float64 sequential loop (itnet_ext.reference.decay_scan) over all log-decay forms, groups,
skip and initial state; gradcheck; opcheck (schema, fake kernels, autograd registration); the
step function against the scan; the narrower CPU capabilities; empty sizes; long sequences
with strong decays; determinism; and argument errors.
"""
import zlib

import pytest
import torch

from itnet_ext import functional, reference
from scan_helpers import F64, FORMS, rel, scan_problem

F32 = torch.float32
CAPS = ("DEFAULT", "AVX2", "AVX512")


def _seed(*key):
    return zlib.crc32(repr(key).encode())


def _leaves(args, kw):
    """The differentiable tensors of a problem, flat, requiring grad."""
    x, ld, phi, psi = args
    lds = list(ld) if isinstance(ld, tuple) else [ld]
    out = [x] + lds + [phi, psi] + [t for t in (kw["skip"], kw["initial_state"]) if t is not None]
    for t in out:
        t.requires_grad_(True)
    return out


def _outputs_and_grads(fn, args, kw, leaves, gy, gh):
    y, hT = fn(*args, **kw, return_final_state=True)
    loss = (y * gy).sum() + (hT * gh).sum()
    return (y, hT) + torch.autograd.grad(loss, leaves)


def _compare(args, kw, tol):
    leaves = _leaves(args, kw)
    y, hT = reference.decay_scan(*args, **kw, return_final_state=True)
    gy, gh = torch.randn_like(y), torch.randn_like(hT)
    want = _outputs_and_grads(reference.decay_scan, args, kw, leaves, gy, gh)
    got = _outputs_and_grads(functional.decay_scan, args, kw, leaves, gy, gh)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        assert rel(a.double(), b.double()) <= tol, (i, rel(a.double(), b.double()))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("G,grouped", [(1, False), (2, True), (6, True)])
@pytest.mark.parametrize("extras", ["none", "skip", "h0", "both"])
def test_matches_loop_float64(form, G, grouped, extras):
    args, kw = scan_problem(_seed(form, G, extras), form, G=G, grouped=grouped,
                            skip=extras in ("skip", "both"), h0=extras in ("h0", "both"))
    _compare(args, kw, 1e-10)


# sizes that cross the kernels' blocking: Rk not a multiple of the vector width (and above
# it), several channel blocks per group (partial sums), sub-blocks of 32 channels, T beyond
# a backward chunk (4 to 64 steps) and not a multiple of it
SIZES = [dict(B=1, T=1, D=1, Rk=1), dict(B=3, T=5, D=2, Rk=17, G=2),
         dict(B=1, T=131, D=70, Rk=16), dict(B=2, T=67, D=96, Rk=3, G=3),
         dict(B=1, T=40, D=8, Rk=70), dict(B=2, T=300, D=5, Rk=9, G=5)]


@pytest.mark.parametrize("size", range(len(SIZES)))
@pytest.mark.parametrize("form", ["full", "channel", "static", "factored", "channel_static"])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_matches_loop_sizes(size, form, dtype):
    s = dict(SIZES[size])
    G = s.pop("G", 1)
    args, kw = scan_problem(_seed(size, form), form, G=G, grouped=G > 1, dtype=dtype, **s)
    _compare(args, kw, 1e-10 if dtype == F64 else 2e-5)


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("form", ["full", "channel", "static", "factored"])
def test_capability_paths(monkeypatch, cap, form):
    order = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
    native = torch.backends.cpu.get_cpu_capability()
    if order[cap] > order.get(native, 0):
        pytest.skip(f"{cap} not supported by this CPU")
    monkeypatch.setenv("ITNET_CPU_CAPABILITY", cap)
    assert torch.ops.itnet.cpu_capability() == cap
    for dtype, tol in ((F64, 1e-10), (F32, 2e-5)):
        args, kw = scan_problem(_seed(cap, form), form, B=2, T=45, D=40, Rk=19, G=2,
                                grouped=True, dtype=dtype)
        _compare(args, kw, tol)


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck(form):
    args, kw = scan_problem(_seed("gc", form), form, B=2, T=9, D=4, Rk=3, G=2, grouped=True)
    leaves = _leaves(args, kw)
    n_ld = 2 if form == "factored" else 1

    def fn(*ts):
        x, ld, (phi, psi) = ts[0], ts[1:1 + n_ld], ts[1 + n_ld:3 + n_ld]
        y, hT = functional.decay_scan(x, tuple(ld) if n_ld == 2 else ld[0], phi, psi,
                                      skip=ts[3 + n_ld], initial_state=ts[4 + n_ld],
                                      return_final_state=True)
        return y, hT

    assert torch.autograd.gradcheck(fn, tuple(leaves), atol=1e-8, rtol=1e-6)


def _op_args(form, dtype=F64, B=2, T=7, D=4, Rk=3, G=2):
    args, kw = scan_problem(_seed("op", form), form, B=B, T=T, D=D, Rk=Rk, G=G, grouped=True,
                            dtype=dtype)
    x, ld, phi, psi = args
    dt = A = None
    if isinstance(ld, tuple):
        (dt, A), ld = ld, None
    elif ld.dim() == 2:
        ld = ld.reshape(1, 1, D, Rk)
    return (x, ld, dt, A, phi, psi, kw["skip"], kw["initial_state"])


@pytest.mark.parametrize("form", ["full", "channel", "static", "factored", "channel_static"])
def test_opcheck(form):
    args = _op_args(form)
    torch.library.opcheck(torch.ops.itnet.decay_scan_fwd.default, args)
    x, *_ = args
    y = torch.randn_like(x)
    gh = torch.randn(x.shape[0], x.shape[2], args[4].shape[-1], dtype=x.dtype)
    torch.library.opcheck(torch.ops.itnet.decay_scan_bwd.default, (y, gh) + args)
    torch.library.opcheck(torch.ops.itnet.decay_scan_bwd.default, (y, None) + args)


@pytest.mark.parametrize("form", ["full", "channel", "static", "factored"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_checkpoints_from_forward(form, T):
    """The backward gives the same gradients, bitwise, from the forward's checkpoints (the
    state every 64 steps) as from its own pass over the recurrence."""
    args = _op_args(form, T=T, D=40, Rk=19, G=2)
    x = args[0]
    y, hT, ck = torch.ops.itnet.decay_scan_fwd(*args, True)
    y0, hT0, ck0 = torch.ops.itnet.decay_scan_fwd(*args)
    assert torch.equal(y, y0) and torch.equal(hT, hT0) and ck0.numel() == 0
    assert ck.shape == (x.shape[0], x.shape[2], (T + 63) // 64, 19)
    # checkpoint c is the state before step 64 c: the final state of a scan of 64 c steps
    for c in range(ck.shape[2]):
        if c == 0:
            assert torch.equal(ck[:, :, 0], args[7])
            continue
        cut = [a[:, :64 * c] if a is not None and a.dim() >= 3 and a.shape[1] == T else a
               for a in args]
        assert rel(ck[:, :, c], torch.ops.itnet.decay_scan_fwd(*cut)[1]) <= 1e-12
    gy = torch.randn_like(y)
    gh = torch.randn_like(hT)
    with_ck = torch.ops.itnet.decay_scan_bwd(gy, gh, *args, ck)
    without = torch.ops.itnet.decay_scan_bwd(gy, gh, *args)
    for a, b in zip(with_ck, without):
        assert torch.equal(a, b)
    torch.library.opcheck(torch.ops.itnet.decay_scan_fwd.default, args + (True,))
    torch.library.opcheck(torch.ops.itnet.decay_scan_bwd.default, (gy, gh) + args + (ck,))


def test_checkpoints_wrong_shape():
    args = _op_args("full", T=70, D=4, Rk=3)
    y, hT, ck = torch.ops.itnet.decay_scan_fwd(*args, True)
    with pytest.raises(RuntimeError, match=r"checkpoints: expected the forward's \(2, 4, 2, 3\)"):
        torch.ops.itnet.decay_scan_bwd(torch.ones_like(y), None, *args, ck[:, :, :1])


def test_opcheck_without_optionals_and_noncontiguous():
    x, ld, dt, A, phi, psi, _, _ = _op_args("full", T=6, D=6)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)        # (B, T, D), not contiguous
    assert not xt.is_contiguous()
    torch.library.opcheck(torch.ops.itnet.decay_scan_fwd.default,
                          (xt, ld, dt, A, phi, psi, None, None))


def test_meta_tensors_give_shapes():
    B, T, D, Rk, G = 2, 5, 6, 4, 3
    m = dict(device="meta", dtype=F32)
    y, hT = functional.decay_scan(torch.empty(B, T, D, **m),
                                  (torch.empty(B, T, D, **m), torch.empty(D, Rk, **m)),
                                  torch.empty(B, T, G, Rk, **m), torch.empty(B, T, G, Rk, **m),
                                  return_final_state=True)
    assert y.shape == (B, T, D) and hT.shape == (B, D, Rk) and y.device.type == "meta"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("grouped", [False, True])
def test_step_function_equals_scan(form, grouped):
    args, kw = scan_problem(_seed("step", form, grouped), form, B=2, T=11, D=6, Rk=5,
                            G=3 if grouped else 1, grouped=grouped)
    x, ld, phi, psi = args
    y, hT = functional.decay_scan(*args, **kw, return_final_state=True)
    h = kw["initial_state"]
    for t in range(x.shape[1]):
        if isinstance(ld, tuple):
            ld_t = (ld[0][:, t], ld[1])
        elif ld.dim() == 2:
            ld_t = ld
        else:
            ld_t = ld[:, t if ld.shape[1] > 1 else 0]
        y_t, h = functional.decay_scan_step(x[:, t], ld_t, phi[:, t], psi[:, t], h,
                                            skip=kw["skip"])
        assert rel(y_t, y[:, t]) <= 1e-12
    assert rel(h, hT) <= 1e-12


@pytest.mark.parametrize("B,T,D", [(0, 5, 3), (2, 0, 3), (2, 5, 0)])
@pytest.mark.parametrize("form", ["full", "static", "factored"])
def test_empty_sizes(B, T, D, form):
    g = torch.Generator().manual_seed(0)
    Rk = 4
    x = torch.randn(B, T, D, generator=g, dtype=F64, requires_grad=True)
    if form == "full":
        ld = -torch.rand(B, T, D, Rk, generator=g, dtype=F64)
    elif form == "static":
        ld = -torch.rand(D, Rk, generator=g, dtype=F64)
    else:
        ld = (torch.rand(B, T, D, generator=g, dtype=F64), -torch.rand(D, Rk, generator=g,
                                                                       dtype=F64))
    phi = torch.randn(B, T, Rk, generator=g, dtype=F64, requires_grad=True)
    psi = torch.randn(B, T, Rk, generator=g, dtype=F64, requires_grad=True)
    h0 = torch.randn(B, D, Rk, generator=g, dtype=F64, requires_grad=True)
    y, hT = functional.decay_scan(x, ld, phi, psi, initial_state=h0, return_final_state=True)
    assert y.shape == (B, T, D) and hT.shape == (B, D, Rk)
    assert torch.equal(hT, reference.decay_scan(x, ld, phi, psi, initial_state=h0,
                                                return_final_state=True)[1])
    gh = torch.randn(B, D, Rk, generator=g, dtype=F64)
    gx, gphi, gh0 = torch.autograd.grad((y.sum() + (hT * gh).sum()), (x, phi, h0))
    assert gx.shape == x.shape and gphi.shape == phi.shape
    if T == 0:
        assert torch.equal(gh0, gh)       # the state passes through unchanged
    assert torch.isfinite(gh0).all()


def test_long_sequence_strong_decay_float32():
    """T = 5000, log-decays down to -30 (exp underflows): finite, and equal to the loop."""
    g = torch.Generator().manual_seed(1)
    B, T, D, Rk = 1, 5000, 3, 8
    x = torch.randn(B, T, D, generator=g)
    ld = -30 * torch.rand(B, T, D, Rk, generator=g)
    phi, psi = torch.randn(B, T, Rk, generator=g), torch.randn(B, T, Rk, generator=g)
    args, kw = (x, ld, phi, psi), dict(skip=None, initial_state=None)
    _compare(args, kw, 2e-5)


def test_deterministic_across_calls_and_threads():
    args, kw = scan_problem(3, "factored", B=2, T=150, D=80, Rk=16, dtype=F32)
    leaves = _leaves(args, kw)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            y = functional.decay_scan(*args, **kw)
            results.append((y,) + torch.autograd.grad(y.square().sum(), leaves))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[0], results[2]):
        assert torch.equal(a, b)
    for a, b in zip(results[0], results[1]):   # other blocking: same values up to rounding
        assert rel(a.double(), b.double()) <= 1e-5


def test_stable_flag():
    args, kw = scan_problem(4, "full")
    x, ld, phi, psi = args
    functional.decay_scan(x, ld, phi, psi, stable=True)          # ld <= 0: accepted
    ld_bad = ld.clone()
    ld_bad[1, 3, 2, 1] = 0.25
    with pytest.raises(ValueError, match="log_decay: stable=True needs log_decay <= 0"):
        functional.decay_scan(x, ld_bad, phi, psi, stable=True)
    y = functional.decay_scan(x, ld_bad, phi, psi)                 # growth is allowed otherwise
    assert rel(y, reference.decay_scan(x, ld_bad, phi, psi)) <= 1e-10
    (dt, A), = scan_problem(5, "factored")[0][1:2]
    functional.decay_scan(x, (dt, A), phi, psi, stable=True)
    A_bad = A.clone()
    A_bad[4, 0] = 0.5
    with pytest.raises(ValueError, match="channel 4 has a positive log-decay"):
        functional.decay_scan(x, (dt, A_bad), phi, psi, stable=True)


def _good():
    args, kw = scan_problem(6, "full", B=2, T=5, D=4, Rk=3)
    return list(args), kw


@pytest.mark.parametrize("case,match", [
    ("x_2d", r"x: expected shape \(B, T, D\)"),
    ("phi_T", r"phi: expected shape \(2, 5, Rk\)"),
    ("psi_shape", r"phi, psi: expected the same shape"),
    ("groups", r"group count G = 3 must divide D = 4"),
    ("ld_shape", r"log_decay: expected a shape broadcastable to \(2, 5, 4, 3\)"),
    ("ld_static", r"log_decay: a 2-D log-decay is time-invariant, expected shape \(4, 3\)"),
    ("dt_shape", r"log_decay dt: expected shape \(2, 5, 4\)"),
    ("A_shape", r"log_decay A: expected shape \(4, 3\)"),
    ("skip", r"skip: expected shape \(4,\)"),
    ("h0", r"initial_state: expected shape \(2, 4, 3\)"),
    ("dtype", r"phi: expected dtype torch.float64 \(the dtype of x\)"),
    ("device", r"psi: expected a tensor on cpu \(the device of x\)"),
    ("int_x", r"x: expected a floating-point tensor"),
])
def test_bad_arguments(case, match):
    (x, ld, phi, psi), kw = _good()
    if case == "x_2d":
        x = x[0]
    elif case == "phi_T":
        phi = phi[:, :3]
    elif case == "psi_shape":
        psi = psi[..., :2]
    elif case == "groups":
        phi, psi = (t[:, :, None].expand(2, 5, 3, 3) for t in (phi, psi))
    elif case == "ld_shape":
        ld = ld[:, :, :, :2]
    elif case == "ld_static":
        ld = ld[0, 0, :3]
    elif case == "dt_shape":
        ld = (ld[:, :4, :, 0], ld[0, 0])
    elif case == "A_shape":
        ld = (ld[..., 0], ld[0, 0, :, :2])
    elif case == "skip":
        kw["skip"] = kw["skip"][:3]
    elif case == "h0":
        kw["initial_state"] = kw["initial_state"][:, :, :2]
    elif case == "dtype":
        phi = phi.float()
    elif case == "device":
        psi = psi.to("meta")
    elif case == "int_x":
        x = x.long()
    with pytest.raises(ValueError, match=match):
        functional.decay_scan(x, ld, phi, psi, **kw)


def test_unsupported_dtype_on_cpu():
    (x, ld, phi, psi), kw = _good()
    h = [t.half() for t in (x, ld, phi, psi)]
    with pytest.raises(RuntimeError, match=r"decay_scan_fwd: x: dtype Half is not supported on "
                                           r"cpu"):
        functional.decay_scan(*h)


@pytest.mark.parametrize("case,match", [
    ("both", "give either log_decay or the pair"),
    ("ld3", r"log_decay: expected shape \(2 or 1, 5 or 1, 4, 3 or 1\)"),
    ("g_shape", r"grad_y: expected shape \(2, 5, 4\)"),
    ("gh_shape", r"grad_final_state: expected shape \(2, 4, 3\)"),
])
def test_op_level_errors(case, match):
    """The ops check their arguments too (they can be called without the Python wrapper)."""
    x, ld, dt, A, phi, psi, skip, h0 = _op_args("full", T=5, D=4, Rk=3, G=1)
    gy, gh = torch.randn_like(x), torch.randn(2, 4, 3, dtype=F64)
    if case == "both":
        with pytest.raises(RuntimeError, match=match):
            torch.ops.itnet.decay_scan_fwd(x, ld, ld[..., 0], ld[0, 0], phi, psi, None, None)
        return
    if case == "ld3":
        with pytest.raises(RuntimeError, match=match):
            torch.ops.itnet.decay_scan_fwd(x, ld[0], None, None, phi, psi, None, None)
        return
    if case == "g_shape":
        gy = gy[:, :4]
    else:
        gh = gh[..., :2]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.itnet.decay_scan_bwd(gy, gh, x, ld, dt, A, phi, psi, skip, h0)


def test_double_backward_raises():
    args, kw = scan_problem(7, "full")
    leaves = _leaves(args, kw)
    y = functional.decay_scan(*args, **kw)
    g, = torch.autograd.grad(y.sum(), leaves[:1], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
@pytest.mark.parametrize("form", ["factored", "full"])
def test_compile_fullgraph(backend, form):
    """decay_scan under torch.compile(fullgraph=True): no graph break, and the same outputs
    and gradients as eager (the fake kernels give the shapes, autograd the backward)."""
    args, kw = scan_problem(_seed("compile", form), form, B=2, T=70, D=6, Rk=5, G=3,
                            grouped=True)
    leaves = _leaves(args, kw)

    def fn():   # the leaves (args, kw) require grad: gradients flow to them
        y, hT = functional.decay_scan(*args, **kw, return_final_state=True)
        return torch.tanh(y).sum() + hT.square().sum()

    torch._dynamo.reset()
    try:
        compiled = torch.compile(fn, backend=backend, fullgraph=True)
        want = fn()
        g_want = torch.autograd.grad(want, leaves)
        got = compiled()
        g_got = torch.autograd.grad(got, leaves)
    finally:
        torch._dynamo.reset()
    assert rel(got, want) <= 1e-12
    for a, b in zip(g_got, g_want):
        assert rel(a, b) <= 1e-12
