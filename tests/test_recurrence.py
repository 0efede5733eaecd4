"""The recurrent layers of itnet_ext.recurrence (docs/design.md section 3, linear recurrences) against
independent sequential oracles written here from the published equations (plain loops over
t in float64, no decay scan): S4D (real and complex, zero-order hold), Mamba-1's mixer (a
line-by-line pure-PyTorch Mamba loaded with the same mamba_ssm-named weights), minGRU and
minLSTM. Forward equality (float64 <= 1e-10, float32 <= 1e-4), gradients of every parameter
(<= 1e-8), initial / final states, saturated gates, long fast-rotating complex modes, and
token-by-token ``step`` (through ``decay_scan_step``) against ``forward``.
"""
import math

import pytest
import torch
from torch.nn import functional as TF

import itnet_ext.functional
from itnet_ext.recurrence import S4D, MambaMixer, MinGRU, MinLSTM

F64 = torch.float64

needs_step = pytest.mark.skipif(not hasattr(itnet_ext.functional, "decay_scan_step"),
                                reason="itnet_ext.functional.decay_scan_step not there yet")


def rel(a, b):
    """max |a - b| / max |b| (complex tensors compared as real pairs)."""
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def grads(loss, tensors):
    gs = torch.autograd.grad(loss, tensors, allow_unused=True)
    for t, g in zip(tensors, gs):
        assert g is not None, f"no gradient for a tensor of shape {tuple(t.shape)}"
        assert torch.isfinite(g).all(), f"non-finite gradient for shape {tuple(t.shape)}"
    return gs


def assert_grads_match(layer_out, oracle_out, tensors, names, tol=1e-8):
    """Backprop the same random cotangent through both outputs; compare every gradient."""
    cot = torch.randn_like(oracle_out)
    g_layer = grads((layer_out * cot).sum(), tensors)
    g_oracle = grads((oracle_out * cot).sum(), tensors)
    for name, gl, go in zip(names, g_layer, g_oracle):
        assert rel(gl, go) <= tol, (name, rel(gl, go))


# ============================================================================================
# S4D
# ============================================================================================
def s4d_layer(mode, D=5, N=6, dtype=F64, dt_range=(1e-2, 0.3), skip=True):
    """An S4D layer with its init perturbed: dt varied per channel over ``dt_range``, random
    A (nonzero imaginary parts), B, C and D."""
    m = S4D(D, N, mode=mode, skip=skip)
    with torch.no_grad():
        m.log_dt.uniform_(math.log(dt_range[0]), math.log(dt_range[1]))
        m.log_A_real.add_(0.5 * torch.randn_like(m.log_A_real))
        m.B.normal_()
        m.C.normal_()
        if mode == "complex":
            m.A_imag.add_(torch.randn_like(m.A_imag))
        if skip:
            m.D.normal_()
    return m.to(dtype)


def s4d_oracle(m, x, h0=None):
    """The ZOH recurrence as written: h_t = Abar h_{t-1} + Bbar x_t, y_t = C.h_t (2 Re in
    complex mode) + D x_t; complex arithmetic. Returns y and the last state h_{T-1}."""
    dt = torch.exp(m.log_dt)[:, None]
    if m.mode == "real":
        A, B, C = -torch.exp(m.log_A_real), m.B, m.C
    else:
        A = torch.complex(-torch.exp(m.log_A_real), m.A_imag)
        B = torch.complex(m.B[..., 0], m.B[..., 1])
        C = torch.complex(m.C[..., 0], m.C[..., 1])
    Abar = torch.exp(dt * A)
    Bbar = (Abar - 1) / A * B
    h = torch.zeros(x.shape[0], m.d_model, m.d_state, dtype=Abar.dtype) if h0 is None else h0
    ys = []
    for t in range(x.shape[1]):
        h = Abar * h + Bbar * x[:, t, :, None]
        y = (C * h).sum(-1)
        y = y if m.mode == "real" else 2 * y.real
        ys.append(y + (m.D * x[:, t] if m.D is not None else 0))
    return torch.stack(ys, 1), h


def random_state(m, B, dtype=F64):
    h = torch.randn(B, m.d_model, m.d_state, dtype=dtype)
    return h if m.mode == "real" else torch.complex(h, torch.randn_like(h))


@pytest.mark.parametrize("mode", ["real", "complex"])
@pytest.mark.parametrize("skip", [True, False])
def test_s4d_matches_oracle(mode, skip):
    m = s4d_layer(mode, skip=skip)
    x = torch.randn(2, 37, 5, dtype=F64)
    assert rel(m(x), s4d_oracle(m, x)[0]) <= 1e-10


@pytest.mark.parametrize("mode", ["real", "complex"])
def test_s4d_states_and_chunking(mode):
    """initial_state / return_state are the ZOH state h: equal to the oracle's, and a
    sequence run in two calls (the state carried over) equals one call."""
    m = s4d_layer(mode)
    x = torch.randn(2, 29, 5, dtype=F64)
    h0 = random_state(m, 2)
    y, hT = m(x, initial_state=h0, return_state=True)
    y_ref, h_ref = s4d_oracle(m, x, h0)
    assert rel(y, y_ref) <= 1e-10
    assert rel(hT, h_ref) <= 1e-10
    y1, h1 = m(x[:, :11], initial_state=h0, return_state=True)
    y2, h2 = m(x[:, 11:], initial_state=h1, return_state=True)
    assert rel(torch.cat([y1, y2], 1), y_ref) <= 1e-10
    assert rel(h2, h_ref) <= 1e-10


@pytest.mark.parametrize("mode", ["real", "complex"])
def test_s4d_grads(mode):
    m = s4d_layer(mode, D=4, N=5)
    x = torch.randn(2, 23, 4, dtype=F64, requires_grad=True)
    h0 = random_state(m, 2).requires_grad_()
    names, params = zip(*m.named_parameters())
    assert_grads_match(m(x, initial_state=h0), s4d_oracle(m, x, h0)[0],
                       [*params, x, h0], [*names, "x", "h0"])


@pytest.mark.parametrize("mode", ["real", "complex"])
def test_s4d_float32(mode):
    m = s4d_layer(mode)
    x = torch.randn(2, 41, 5, dtype=F64)
    y32 = m.float()(x.float())
    assert y32.dtype == torch.float32
    assert rel(y32, s4d_oracle(m.double(), x)[0]) <= 1e-4


def test_s4d_complex_fast_rotation_long():
    """T = 300 with modes turning by up to ~20 rad per step (S4D-Lin's Im A = pi n, n < 64,
    dt up to 0.1): the rotating factorization holds where the phases theta t reach ~6000."""
    m = S4D(4, 64, mode="complex").double()                 # default init: theta in [0, 20)
    with torch.no_grad():
        m.log_dt.copy_(torch.log(torch.tensor([1e-3, 1e-2, 5e-2, 1e-1], dtype=F64)))
        m.C.normal_()
        m.D.normal_()
    x = torch.randn(2, 300, 4, dtype=F64)
    h0 = random_state(m, 2)
    y, hT = m(x, initial_state=h0, return_state=True)
    y_ref, h_ref = s4d_oracle(m, x, h0)
    assert rel(y, y_ref) <= 1e-10
    assert rel(hT, h_ref) <= 1e-10


def test_s4d_complex_float32_phases_at_long_times():
    """float32 at t ~ 6000 with theta ~ 19 rad per step: the phases theta t (~1e5 rad) are
    formed in float64 and reduced mod 2 pi before the cast (error ~1e-7 here); phases formed
    in float32 are off by up to ~4e-3 rad and the output by ~2.5e-4, hence the 1e-5 bound."""
    m = S4D(2, 4, mode="complex")
    with torch.no_grad():
        m.log_dt.fill_(math.log(0.1))
        m.A_imag.copy_(math.pi * torch.tensor([60.0, 61.0, 62.0, 63.0]).repeat(2, 1))
        m.C.normal_()
    T = 6000
    x = torch.randn(1, T, 2, dtype=F64)
    y32 = m(x.float())
    y_ref = s4d_oracle(m.double(), x)[0]
    assert rel(y32[:, -500:], y_ref[:, -500:]) <= 1e-5


@needs_step
@pytest.mark.parametrize("mode", ["real", "complex"])
def test_s4d_step_matches_forward(mode):
    """Prefill with forward, then one token at a time with step: the outputs and the final
    state equal one forward over the whole sequence."""
    m = s4d_layer(mode)
    x = torch.randn(2, 17, 5, dtype=F64)
    y_ref, h_ref = m(x, return_state=True)
    y, h = m(x[:, :6], return_state=True)
    ys = [y]
    for t in range(6, 17):
        y_t, h = m.step(x[:, t], h)
        ys.append(y_t[:, None])
    assert rel(torch.cat(ys, 1), y_ref) <= 1e-10
    assert rel(h, h_ref) <= 1e-10
    y0, _ = m.step(x[:, 0])                                  # state None = zeros
    assert rel(y0, y_ref[:, 0]) <= 1e-10


def test_s4d_init_and_arguments():
    real, cplx = S4D(3, 4), S4D(3, 4, mode="complex", dt_min=1e-2, dt_max=2e-2)
    assert torch.allclose(-torch.exp(real.log_A_real[0]), -torch.arange(1.0, 5.0))
    assert torch.allclose(torch.exp(cplx.log_A_real), torch.full((3, 4), 0.5))
    assert torch.allclose(cplx.A_imag[1], math.pi * torch.arange(4.0))
    dt = torch.exp(cplx.log_dt)
    assert ((dt >= 1e-2 * (1 - 1e-6)) & (dt <= 2e-2 * (1 + 1e-6))).all()
    assert "mode='complex'" in repr(cplx)
    with pytest.raises(ValueError, match="mode"):
        S4D(3, 4, mode="diagonal")
    with pytest.raises(ValueError, match="d_model"):
        real(torch.randn(1, 5, 4))


# ============================================================================================
# Mamba
# ============================================================================================
MAMBA_CONFIGS = {
    # d_model, d_state, d_conv, expand, dt_rank, bias, conv_bias
    "default": dict(d_model=6, d_state=4, d_conv=4, expand=2, dt_rank="auto", bias=False,
                    conv_bias=True),
    "biases_rank3": dict(d_model=5, d_state=3, d_conv=3, expand=1, dt_rank=3, bias=True,
                         conv_bias=False),
}


def mamba_weights(cfg, dtype=F64):
    """Random weights under mamba_ssm's Mamba parameter names (an independent state dict)."""
    dm, N, K = cfg["d_model"], cfg["d_state"], cfg["d_conv"]
    di = cfg["expand"] * dm
    R = math.ceil(dm / 16) if cfg["dt_rank"] == "auto" else cfg["dt_rank"]

    def rnd(*s, scale=1.0):
        return torch.randn(*s, dtype=dtype) * scale

    w = {
        "in_proj.weight": rnd(2 * di, dm, scale=dm ** -0.5),
        "conv1d.weight": rnd(di, 1, K, scale=K ** -0.5),
        "x_proj.weight": rnd(R + 2 * N, di, scale=di ** -0.5),
        "dt_proj.weight": rnd(di, R, scale=R ** -0.5),
        "dt_proj.bias": rnd(di, scale=0.5) - 2.0,                # dt ~ softplus(-2) ~ 0.13
        "A_log": torch.log(torch.arange(1.0, N + 1, dtype=dtype)).repeat(di, 1)
        + rnd(di, N, scale=0.3),
        "D": rnd(di),
        "out_proj.weight": rnd(dm, di, scale=di ** -0.5),
    }
    if cfg["conv_bias"]:
        w["conv1d.bias"] = rnd(di, scale=0.3)
    if cfg["bias"]:
        w["in_proj.bias"] = rnd(2 * di, scale=0.3)
        w["out_proj.bias"] = rnd(dm, scale=0.3)
    return w


def mamba_layer(cfg, w):
    m = MambaMixer(**cfg).to(w["D"].dtype)
    m.load_state_dict({k: v.detach() for k, v in w.items()}, strict=True)
    return m


def mamba_reference(w, u, cfg):
    """Mamba-1's forward, one line per equation, with a sequential selective scan.
    Returns out and the last SSM state."""
    N, K = cfg["d_state"], cfg["d_conv"]
    di, R = w["dt_proj.weight"].shape
    T = u.shape[1]
    xz = TF.linear(u, w["in_proj.weight"], w.get("in_proj.bias"))
    x, z = xz[..., :di], xz[..., di:]
    x = TF.conv1d(x.transpose(1, 2), w["conv1d.weight"], w.get("conv1d.bias"),
                  padding=K - 1, groups=di)[..., :T]
    x = TF.silu(x).transpose(1, 2)                                     # (B, T, d_inner)
    x_dbl = TF.linear(x, w["x_proj.weight"])
    dt, Bm, Cm = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
    dt = TF.softplus(TF.linear(dt, w["dt_proj.weight"]) + w["dt_proj.bias"])
    A = -torch.exp(w["A_log"])
    h = torch.zeros(u.shape[0], di, N, dtype=u.dtype)
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, t, :, None] * A) * h \
            + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + w["D"] * x[:, t])
    y = torch.stack(ys, 1) * TF.silu(z)
    return TF.linear(y, w["out_proj.weight"], w.get("out_proj.bias")), h


@pytest.mark.parametrize("cfg", list(MAMBA_CONFIGS))
def test_mamba_matches_reference(cfg):
    cfg = MAMBA_CONFIGS[cfg]
    w = mamba_weights(cfg)
    m = mamba_layer(cfg, w)
    u = torch.randn(2, 33, cfg["d_model"], dtype=F64)
    out, (conv_state, ssm_state) = m(u, return_state=True)
    out_ref, h_ref = mamba_reference(w, u, cfg)
    assert rel(out, out_ref) <= 1e-10
    assert rel(m(u), out_ref) <= 1e-10
    assert rel(ssm_state, h_ref) <= 1e-10
    di = m.d_inner
    x_in = TF.linear(u, w["in_proj.weight"], w.get("in_proj.bias"))[..., :di]
    assert rel(conv_state, x_in[:, -cfg["d_conv"]:].transpose(1, 2)) <= 1e-10


@pytest.mark.parametrize("cfg", list(MAMBA_CONFIGS))
def test_mamba_grads(cfg):
    cfg = MAMBA_CONFIGS[cfg]
    w = {k: v.requires_grad_() for k, v in mamba_weights(cfg).items()}
    m = mamba_layer(cfg, w)
    u = torch.randn(2, 19, cfg["d_model"], dtype=F64, requires_grad=True)
    out, out_ref = m(u), mamba_reference(w, u, cfg)[0]
    cot = torch.randn_like(out_ref)
    names = sorted(w)
    layer_params = dict(m.named_parameters())
    assert sorted(layer_params) == names
    g_layer = grads((out * cot).sum(), [layer_params[n] for n in names] + [u])
    g_ref = grads((out_ref * cot).sum(), [w[n] for n in names] + [u])
    for name, gl, gr in zip(names + ["u"], g_layer, g_ref):
        assert rel(gl, gr) <= 1e-8, (name, rel(gl, gr))


def test_mamba_float32():
    cfg = MAMBA_CONFIGS["default"]
    w = mamba_weights(cfg)
    m = mamba_layer(cfg, w).float()
    u = torch.randn(2, 40, cfg["d_model"], dtype=F64)
    out32 = m(u.float())
    assert out32.dtype == torch.float32
    assert rel(out32, mamba_reference(w, u, cfg)[0]) <= 1e-4


@pytest.mark.parametrize("split", [2, 9])   # 2 < d_conv - 1: the conv state is zero-padded
def test_mamba_chunked_forward(split):
    cfg = MAMBA_CONFIGS["default"]
    m = mamba_layer(cfg, mamba_weights(cfg))
    u = torch.randn(2, 21, cfg["d_model"], dtype=F64)
    out_ref, state_ref = m(u, return_state=True)
    out1, state = m(u[:, :split], return_state=True)
    out2, state = m(u[:, split:], initial_state=state, return_state=True)
    assert rel(torch.cat([out1, out2], 1), out_ref) <= 1e-10
    for s, s_ref in zip(state, state_ref):
        assert rel(s, s_ref) <= 1e-10


@needs_step
@pytest.mark.parametrize("cfg", list(MAMBA_CONFIGS))
def test_mamba_step_matches_forward(cfg):
    cfg = MAMBA_CONFIGS[cfg]
    m = mamba_layer(cfg, mamba_weights(cfg))
    u = torch.randn(2, 15, cfg["d_model"], dtype=F64)
    out_ref, state_ref = m(u, return_state=True)
    out, state = m(u[:, :5], return_state=True)                 # prefill, then decode
    outs = [out]
    for t in range(5, 15):
        o, state = m.step(u[:, t], state)
        outs.append(o[:, None])
    assert rel(torch.cat(outs, 1), out_ref) <= 1e-10
    for s, s_ref in zip(state, state_ref):
        assert rel(s, s_ref) <= 1e-10
    o0, _ = m.step(u[:, 0])                                     # state None = zeros
    assert rel(o0, out_ref[:, 0]) <= 1e-10


def test_mamba_init():
    m = MambaMixer(40, d_state=8, dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4)
    assert m.dt_rank == 3 and m.d_inner == 80
    assert tuple(m.x_proj.weight.shape) == (3 + 16, 80)
    assert torch.allclose(torch.exp(m.A_log), torch.arange(1.0, 9.0).repeat(80, 1))
    assert torch.equal(m.D, torch.ones(80))
    dt = TF.softplus(m.dt_proj.bias)                  # the bias is inverse-softplus(dt)
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5))).all()
    assert m.dt_proj.weight.abs().max() <= 3 ** -0.5
    assert "d_inner=80" in repr(m)


# ============================================================================================
# minGRU / minLSTM
# ============================================================================================
MIN_RNNS = {"minGRU": MinGRU, "minLSTM": MinLSTM}


def min_rnn_layer(name, d_in=4, d_hidden=6, dtype=F64):
    """Gate weights scaled up so that the gates spread over (0, 1)."""
    m = MIN_RNNS[name](d_in, d_hidden)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m.to(dtype)


def min_rnn_oracle(m, x, h0=None):
    """The published recurrences, one step at a time (gates as sigmoids, no log space)."""
    h = torch.zeros(x.shape[0], m.d_hidden, dtype=x.dtype) if h0 is None else h0
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        if isinstance(m, MinGRU):
            z = torch.sigmoid(m.linear_z(xt))
            h = (1 - z) * h + z * m.linear_h(xt)
        else:
            f, i = torch.sigmoid(m.linear_f(xt)), torch.sigmoid(m.linear_i(xt))
            h = f / (f + i) * h + i / (f + i) * m.linear_h(xt)
        hs.append(h)
    return torch.stack(hs, 1)


@pytest.mark.parametrize("name", list(MIN_RNNS))
@pytest.mark.parametrize("with_h0", [False, True])
def test_min_rnn_matches_oracle(name, with_h0):
    m = min_rnn_layer(name)
    x = torch.randn(2, 45, 4, dtype=F64)
    h0 = torch.randn(2, 6, dtype=F64) if with_h0 else None
    hs, hT = m(x, h0=h0, return_state=True)
    ref = min_rnn_oracle(m, x, h0)
    assert rel(hs, ref) <= 1e-10
    assert rel(m(x, h0=h0), ref) <= 1e-10
    assert rel(hT, ref[:, -1]) <= 1e-10


@pytest.mark.parametrize("name", list(MIN_RNNS))
def test_min_rnn_grads(name):
    m = min_rnn_layer(name)
    x = torch.randn(2, 21, 4, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 6, dtype=F64, requires_grad=True)
    names, params = zip(*m.named_parameters())
    assert_grads_match(m(x, h0=h0), min_rnn_oracle(m, x, h0), [*params, x, h0],
                       [*names, "x", "h0"])


@pytest.mark.parametrize("name", list(MIN_RNNS))
def test_min_rnn_float32(name):
    m = min_rnn_layer(name)
    x = torch.randn(2, 50, 4, dtype=F64)
    h0 = torch.randn(2, 6, dtype=F64)
    hs32 = m.float()(x.float(), h0=h0.float())
    assert hs32.dtype == torch.float32
    assert rel(hs32, min_rnn_oracle(m.double(), x, h0)) <= 1e-4


@pytest.mark.parametrize("name", list(MIN_RNNS))
def test_min_rnn_saturated_gates(name):
    """Gate logits of +-40 on two channels of three (1 - sigmoid(40) rounds to 0 in float64,
    where log(1 - z) would be -inf and its gradient NaN): values and gradients finite and
    equal to the oracle's (the unsaturated channels give the gradients their scale)."""
    m = min_rnn_layer(name)
    with torch.no_grad():
        for lin in [getattr(m, n) for n in ("linear_z", "linear_f", "linear_i") if hasattr(m, n)]:
            lin.weight.mul_(0.1)
            lin.bias.copy_(torch.tensor([40.0, -40.0, 0.0]).repeat(2))
    x = torch.randn(2, 16, 4, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 6, dtype=F64, requires_grad=True)
    hs, ref = m(x, h0=h0), min_rnn_oracle(m, x, h0)
    assert rel(hs, ref) <= 1e-10
    names, params = zip(*m.named_parameters())
    assert_grads_match(hs, ref, [*params, x, h0], [*names, "x", "h0"])


def test_min_lstm_underflowing_gates():
    """f and i both ~ e^-800 (each sigmoid underflows to 0: the oracle's f / (f + i) is 0/0):
    the normalized gates come from the logits, f' = sigmoid(k_f - k_i)."""
    m = min_rnn_layer("minLSTM")
    with torch.no_grad():
        m.linear_f.bias.sub_(800.0)
        m.linear_i.bias.sub_(800.0)
    x = torch.randn(2, 12, 4, dtype=F64, requires_grad=True)
    hs = m(x)
    h, ref = torch.zeros(2, 6, dtype=F64), []
    for t in range(12):
        f = torch.sigmoid(m.linear_f(x[:, t]) - m.linear_i(x[:, t]))
        h = f * h + (1 - f) * m.linear_h(x[:, t])
        ref.append(h)
    assert rel(hs, torch.stack(ref, 1)) <= 1e-10
    grads(hs.sum(), [*m.parameters(), x])                     # finite


@needs_step
@pytest.mark.parametrize("name", list(MIN_RNNS))
def test_min_rnn_step_matches_forward(name):
    m = min_rnn_layer(name)
    x = torch.randn(2, 13, 4, dtype=F64)
    h0 = torch.randn(2, 6, dtype=F64)
    ref = m(x, h0=h0)
    h, ys = h0, []
    for t in range(13):
        y, h = m.step(x[:, t], h)
        ys.append(y)
    assert rel(torch.stack(ys, 1), ref) <= 1e-10
    assert rel(h, ref[:, -1]) <= 1e-10
    assert rel(m.step(x[:, 0])[0], m(x[:, :1])[:, 0]) <= 1e-10    # h None = zeros


# ============================================================================================
# every layer
# ============================================================================================
LAYERS = {
    "S4D-real": lambda: S4D(4, 3),
    "S4D-complex": lambda: S4D(4, 3, mode="complex"),
    "Mamba": lambda: MambaMixer(4, d_state=3),
    "minGRU": lambda: MinGRU(4, 5),
    "minLSTM": lambda: MinLSTM(4, 5),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_init_is_seeded_and_dtypes_follow_the_module(name):
    torch.manual_seed(7)
    a = LAYERS[name]()
    torch.manual_seed(7)
    b = LAYERS[name]()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 9, 4)
    assert a(x).dtype == torch.float32
    y64 = a.double()(x.double())
    assert y64.dtype == F64
    assert rel(y64, b(x)) <= 1e-4


def test_mamba_empty_sequence():
    from itnet_ext.recurrence import MambaMixer
    m = MambaMixer(8, d_state=4).double()
    u = torch.randn(2, 0, 8, dtype=torch.float64)
    out, (conv_state, ssm_state) = m(u, return_state=True)
    assert out.shape == (2, 0, 8)
    assert conv_state.shape == (2, m.d_inner, m.d_conv) and not conv_state.any()
    assert ssm_state.shape == (2, m.d_inner, 4) and not ssm_state.any()
