"""Regression tests of the hostile-input findings (issue 28): each failed before its fix.

- padded keys never reach a result in the oracle either (NaN in v / k / t at a padded key);
- positions must be finite (an inf position made the offset inf - inf = NaN): one error in the
  Python checks and in the C++ op;
- ``decay_scan(stable=True)`` checks the decay sign under torch.compile too;
- a float ``key_padding_mask`` with NaN / +inf: one clear error in every layer method;
- the low-rank layer with N = 0 returns an empty output (and gradient);
- ``samplers.local`` with a tiny sigma: no NaN log-probabilities, no ZeroDivisionError;
- the recurrent layers and ``decay_scan_step`` name the argument that is wrong.
"""
import math

import pytest
import torch

from itnet_ext import functional, reference
from itnet_ext.nn import IntegralTransform
from itnet_ext.recurrence import S4D, MambaMixer, MinGRU, MinLSTM
from itnet_ext.scan import decay_scan, decay_scan_step
from itnet_ext.sparse import samplers

F64 = torch.float64


def _qkv(seed, B=2, H=2, N=6, M=7, D=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=F64) for n in (N, M, M)]


# ---- padded keys ---------------------------------------------------------------------------
@pytest.mark.parametrize("poison", ["v", "k", "t"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_padded_key_never_reaches_the_result(poison, normalize):
    """NaN in the k / v / t rows of a padded key: every output and every gradient of the other
    entries stays finite, in the oracle and the fused op alike, and both agree."""
    q, k, v = _qkv(1)
    g = torch.Generator().manual_seed(2)
    B, M, R = 2, k.shape[2], 5
    extra = dict(u=torch.randn(B, q.shape[2], R, generator=g, dtype=F64),
                 t=torch.randn(B, M, R, generator=g, dtype=F64),
                 W2=torch.randn(2, R, generator=g, dtype=F64))
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[0, 3] = kpm[1, 0] = True
    x = {"q": q, "k": k, "v": v, **extra}
    x[poison] = x[poison].clone()
    if poison == "t":
        x["t"][0, 3] = x["t"][1, 0] = math.nan
    else:
        x[poison][0, :, 3] = x[poison][1, :, 0] = math.nan
    outs = []
    for fn in (reference.integral_transform, functional.integral_transform):
        leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
        out = fn(leaves["q"], leaves["k"], leaves["v"], u=leaves["u"], t=leaves["t"],
                 W2=leaves["W2"], key_padding_mask=kpm, normalize=normalize)
        assert torch.isfinite(out).all(), fn.__module__
        out.sum().backward()
        for n, leaf in leaves.items():
            grad = leaf.grad
            if n in ("k", "v"):
                grad = grad.masked_fill(kpm[:, None, :, None], 0)
            elif n == "t":
                grad = grad.masked_fill(kpm[:, :, None], 0)
            assert torch.isfinite(grad).all(), (fn.__module__, n)
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-12)


# ---- positions -----------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [functional.integral_transform, reference.integral_transform],
                         ids=["fused", "reference"])
@pytest.mark.parametrize("which", ["q_pos", "k_pos"])
def test_inf_positions_are_rejected(fn, which):
    q, k, v = _qkv(3, B=1)
    pos = {"q_pos": torch.arange(6.0, dtype=F64).view(1, 6, 1),
           "k_pos": torch.arange(7.0, dtype=F64).view(1, 7, 1)}
    pos[which] = torch.full_like(pos[which], math.inf)
    with pytest.raises(ValueError, match=rf"^{which}: contains NaN or inf \(positions must be finite\)"):
        fn(q, k, v, window=[(-10, 10)], **pos)


def test_inf_positions_are_rejected_by_the_op():
    """The C++ op checks too (it is what runs under torch.compile, without the Python checks)."""
    q, k, v = _qkv(4, B=1)
    qp = torch.full((1, 6, 1), math.inf, dtype=F64)
    kp = torch.full((1, 7, 1), math.inf, dtype=F64)
    with pytest.raises(RuntimeError, match="q_pos: contains NaN or inf"):
        torch.ops.itnet.dense_fwd(q, k, v, None, None, None, None, None, qp, kp, None, None, None,
                                  [-10.0], [10.0], 0.5, 0, True, False)


# ---- decay_scan(stable=True) under compile --------------------------------------------------
def test_stable_decay_check_under_compile():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 3, generator=g)
    phi, psi = torch.randn(1, 8, 2, generator=g), torch.randn(1, 8, 2, generator=g)
    ld = torch.rand(1, 8, 3, 2, generator=g)  # positive: decay factors above 1
    f = torch.compile(lambda *a: decay_scan(*a, stable=True), fullgraph=True, backend="eager")
    with pytest.raises(RuntimeError, match="stable=True needs every log-decay <= 0"):
        f(x, ld, phi, psi)
    torch.testing.assert_close(f(x, -ld, phi, psi), decay_scan(x, -ld, phi, psi))
    with pytest.raises(ValueError, match="stable=True needs log_decay <= 0"):
        decay_scan(x, ld, phi, psi, stable=True)


# ---- float key_padding_mask ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("method,kw", [("dense", {}), ("lowrank", {"rank": 4}),
                                       ("sampled", {"samples": 3})], ids=["dense", "lowrank", "sampled"])
def test_float_key_padding_mask_rule(method, kw, bad):
    torch.manual_seed(6)
    layer = IntegralTransform(16, 2, method=method, batch_first=True, **kw)
    x = torch.randn(2, 5, 16)
    kpm = torch.zeros(2, 5)
    kpm[0, 1] = bad
    with pytest.raises(ValueError, match="key_padding_mask: a float mask must not hold NaN or \\+inf"):
        layer(x, x, x, key_padding_mask=kpm)
    kpm[0, 1] = -math.inf  # the allowed values: finite, or -inf (padding)
    assert torch.isfinite(layer(x, x, x, key_padding_mask=kpm)[0]).all()


# ---- N = 0 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(rank=4), dict(rank=4, lowrank_hidden=8),
                                dict(rank=4, causal=True)], ids=["plain", "feature-mlp", "causal"])
def test_lowrank_layer_without_tokens(kw):
    layer = IntegralTransform(16, 2, method="lowrank", batch_first=True, **kw)
    x = torch.randn(2, 0, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 0, 16)
    y.sum().backward()
    assert x.grad.shape == (2, 0, 16)


# ---- samplers.local with a tiny sigma --------------------------------------------------------
@pytest.mark.parametrize("sigma", [1e-155, 1e-170, 1e-300])
def test_local_sampler_tiny_sigma(sigma):
    """sigma -> 0: every draw is the nearest key (here the query's own index), log q = 0."""
    idx, log_q = samplers.local(2, 5, 7, 3, sigma=sigma, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, torch.arange(5).view(1, 5, 1).expand(2, 5, 3))
    assert torch.equal(log_q, torch.zeros(2, 5, 3, dtype=F64))


def test_local_sampler_tiny_sigma_between_keys():
    """A query half-way between two keys: both nearest keys, each with probability 1/2."""
    q_pos = torch.tensor([[[0.5]]], dtype=F64)
    k_pos = torch.arange(4.0, dtype=F64).view(1, 4, 1)
    idx, log_q = samplers.local(1, 1, 4, 64, sigma=1e-200, q_pos=q_pos, k_pos=k_pos,
                                generator=torch.Generator().manual_seed(1))
    assert set(idx.flatten().tolist()) == {0, 1}
    torch.testing.assert_close(log_q, torch.full_like(log_q, math.log(0.5)))


def test_local_sampler_unchanged_for_normal_sigma():
    """The shifted formula draws what q(j | i) = softmax(-d^2 / (2 sigma^2)) says (float64
    oracle of the probabilities)."""
    idx, log_q = samplers.local(1, 4, 9, 5, sigma=[1.7], generator=torch.Generator().manual_seed(2))
    i = torch.arange(4, dtype=F64)[:, None]
    j = torch.arange(9, dtype=F64)[None, :]
    want = torch.log_softmax(-(j - i) ** 2 / (2 * 1.7 ** 2), dim=-1)
    torch.testing.assert_close(log_q[0], want.gather(1, idx[0]), rtol=1e-12, atol=1e-12)


# ---- clear errors of the recurrent layers ----------------------------------------------------
@pytest.mark.parametrize("make,call,match", [
    (lambda: MambaMixer(8), lambda m: m(torch.randn(2, 5, 7)), r"^u: expected a \(B, T, 8\) tensor \(8 = d_model\)"),
    (lambda: MambaMixer(8), lambda m: m(torch.randn(5, 8)), r"^u: expected a \(B, T, 8\) tensor"),
    (lambda: MambaMixer(8), lambda m: m(torch.randn(2, 5, 8, dtype=F64)), r"^u: expected dtype torch.float32"),
    (lambda: MambaMixer(8), lambda m: m.step(torch.randn(2, 8), state=(torch.zeros(2, 16, 3), None)),
     r"^state\[0\] \(conv_state\): expected a tensor of shape \(2, 16, 4\)"),
    (lambda: MinGRU(8, 4), lambda m: m(torch.randn(2, 5, 7)), r"^x: expected a \(B, T, 8\) tensor \(8 = d_in\)"),
    (lambda: MinLSTM(8, 4), lambda m: m(torch.randn(2, 5, 8, dtype=F64)), r"^x: expected dtype torch.float32"),
    (lambda: MinGRU(8, 4), lambda m: m(torch.randn(2, 5, 8), h0=torch.randn(2, 5)), r"^h0: expected a tensor of shape \(2, 4\)"),
    (lambda: MinLSTM(8, 4), lambda m: m.step(torch.randn(2, 9)), r"^x_t: expected a \(B, 8\) tensor"),
    (lambda: S4D(8), lambda m: m(torch.randn(2, 5, 8, dtype=F64)), r"^x: expected dtype torch.float32"),
    (lambda: S4D(8, d_state=4), lambda m: m(torch.randn(2, 5, 8), initial_state=torch.randn(2, 8, 3)),
     r"^initial_state: expected a tensor of shape \(2, 8, 4\)"),
    (lambda: S4D(8, d_state=4), lambda m: m.step(torch.randn(2, 8), state=torch.randn(2, 8)),
     r"^state: expected a tensor of shape \(2, 8, 4\)"),
], ids=["mamba-channels", "mamba-2d", "mamba-dtype", "mamba-state", "mingru-channels",
        "minlstm-dtype", "mingru-h0", "minlstm-step", "s4d-dtype", "s4d-state", "s4d-step-state"])
def test_recurrent_layers_name_the_argument(make, call, match):
    torch.manual_seed(7)
    with pytest.raises(ValueError, match=match):
        call(make())


def test_decay_scan_step_names_the_state():
    x, ld, phi, psi = torch.randn(2, 3), -torch.rand(3, 4), torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"^state: expected the \(B, D, Rk\) state"):
        decay_scan_step(x, ld, phi, psi, None)
    with pytest.raises(ValueError, match=r"^state: expected shape \(2, 3, 4\), got \(2, 3, 5\)"):
        decay_scan_step(x, ld, phi, psi, torch.randn(2, 3, 5))


# ---- meta tensors, CPU autocast ----------------------------------------------------------------
def _meta_cases():
    m = "meta"
    q, k, v = (torch.empty(1, 2, n, 8, device=m) for n in (5, 6, 6))
    pos = dict(q_pos=torch.empty(1, 5, 1, device=m), k_pos=torch.empty(1, 6, 1, device=m))
    return {
        "dense": lambda: functional.integral_transform(q, k, v),
        "dense-key_weight": lambda: functional.integral_transform(
            q, k, v, key_weight=torch.empty(1, 6, device=m)),
        "dense-window": lambda: functional.integral_transform(q, k, v, window=[(-1, 1)], **pos),
        "sparse-idx": lambda: functional.sparse_integral_transform(
            q, k, v, idx=torch.empty(1, 5, 3, dtype=torch.long, device=m)),
        "sparse-csr": lambda: functional.sparse_integral_transform(
            q, k, v, row_ptr=torch.empty(1, 6, dtype=torch.long, device=m),
            col_idx=torch.empty(1, 9, dtype=torch.long, device=m)),
    }


@pytest.mark.parametrize("case", list(_meta_cases()))
def test_meta_tensors_give_shapes(case):
    """Meta tensors have no values: the data-dependent checks are skipped (as under compile),
    the fake kernels give the output's shape and dtype."""
    out = _meta_cases()[case]()
    assert out.is_meta and out.shape == (1, 2, 5, 8) and out.dtype == torch.float32


@pytest.mark.parametrize("kw", [dict(kernel_hidden=4), dict(method="sampled", samples=3)],
                         ids=["dense-mlp", "sampled"])
def test_cpu_autocast_names_the_cause(kw):
    layer = IntegralTransform(16, 2, batch_first=True, **kw)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", torch.bfloat16):
        with pytest.raises(ValueError, match=r"^v: expected dtype float32 or float64 on CPU, got "
                                             r"torch.bfloat16 .*autocast"):
            layer(x, x, x)


# ---- the sampled layer under torch.compile(fullgraph=True) -------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(proposal="local", sigma=1.5),
                                dict(proposal="stratified", near_window=[(-1, 1)]),
                                dict(proposal="saliency")],
                         ids=["uniform", "local", "stratified", "saliency"])
def test_sampled_layer_compiles_fullgraph(kw):
    """No graph break (the samplers' value checks are asynchronous asserts under compile); the
    same draws as eager for the same seed (the eager backend runs the same ops on the global
    RNG). A ``generator=`` argument is the documented exception (Dynamo does not trace
    torch.Generator arguments)."""
    torch.manual_seed(8)
    layer = IntegralTransform(16, 2, batch_first=True, method="sampled", samples=3, **kw)
    x = torch.randn(2, 5, 16)
    scores = torch.randn(2, 5) if kw.get("proposal") == "saliency" else None

    def run(m):
        torch.manual_seed(9)
        return m(x, x, x, key_scores=scores)[0] if scores is not None else m(x, x, x)[0]

    eager = run(layer)
    compiled = run(torch.compile(layer, fullgraph=True, backend="eager"))
    torch.testing.assert_close(compiled, eager)


# ---- a logit of -inf by itself in `none` mode (CPU kernels; CUDA in test_reliability_cuda) ----
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("normalize", ["none", "softmax"])
def test_logit_of_minus_inf_by_itself_cpu(normalize, dtype):
    from test_reliability_cuda import _minus_inf_case
    _minus_inf_case(normalize, dtype, "cpu")


def test_content_logit_overflow_none_mode():
    """The finding as reported: finite float32 inputs whose content logit overflows to -inf."""
    for dt, big in ((torch.float32, 1e30), (F64, 1e300)):
        q = torch.tensor([[[[big, 1.0]]]], dtype=dt)
        k = torch.tensor([[[[-big, 0.0], [1.0, 0.0]]]], dtype=dt)
        v = torch.tensor([[[[1.0, 1.0], [2.0, 2.0]]]], dtype=dt)
        got = functional.integral_transform(q, k, v, normalize="none")
        want = reference.integral_transform(q, k, v, normalize="none")
        assert torch.equal(want, torch.full_like(want, -math.inf))
        assert torch.equal(got, want)


# ---- NaN in one input: the same output rows are NaN in the fused op and the oracle ------------
# The forward half of the NaN contract (docs/design.md section 4): NaN in an input that takes
# part reaches the output rows of the pairs that use it, the same rows in the fused op as in
# the oracle, every other row finite and equal. The backward half: every gradient entry NaN in
# the oracle is NaN in the fused op (a NaN never turns into a finite gradient; the fused op
# may be NaN in more entries, 0 * NaN in a tile's matmul), the entries finite in both agree.
# Before the fixes the oracle replaced a NaN row max by 0 (finite 1e5 gradients in dv) and the
# fused ops gave a NaN row an empty row's lse of -inf (hiding the NaN from the backward).
_NAN_SPOTS = {"q": (0, 1, 2, 0), "k": (0, 0, 3, 1), "v": (0, 1, 4, 2), "u": (0, 2, 1),
              "t": (0, 3, 0), "W2": (1, 2), "b2": (0,), "offset_table": (2, 1),
              "attn_mask": (3, 2), "key_weight": (0, 3)}
_SPARSE_NAMES = ["q", "k", "v", "u", "t", "W2", "b2", "offset_table"]


def _dense_nan_problem(name):
    g = torch.Generator().manual_seed(13)
    B, H, N, M, D, R = 1, 2, 6, 7, 4, 3
    x = {n: torch.randn(*s, generator=g, dtype=F64) for n, s in (
        ("q", (B, H, N, D)), ("k", (B, H, M, D)), ("v", (B, H, M, D)), ("u", (B, N, R)),
        ("t", (B, M, R)), ("W2", (H, R)), ("b2", (H,)), ("offset_table", (5, R)),
        ("attn_mask", (N, M)), ("key_weight", (B, M)))}
    x["key_weight"] = x["key_weight"].abs() + 0.1
    x[name][_NAN_SPOTS[name]] = math.nan
    return x


def _sparse_nan_problem(name):
    """(tensors, the other keyword arguments); NaN at an entry some listed pair uses."""
    g = torch.Generator().manual_seed(14)
    B, H, N, M, D, R, S = 1, 2, 6, 7, 4, 3, 3
    x = {n: torch.randn(*s, generator=g, dtype=F64) for n, s in (
        ("q", (B, H, N, D)), ("k", (B, H, M, D)), ("v", (B, H, M, D)), ("u", (B, N, R)),
        ("t", (B, M, R)), ("W2", (H, R)), ("b2", (H,)), ("offset_table", (13, R)))}
    idx = torch.randint(0, M, (B, N, S), generator=g)
    spot = {"q": (0, 1, 2, 0), "k": (0, 0, int(idx[0, 2, 0]), 1), "v": (0, 1, int(idx[0, 3, 1]), 2),
            "u": (0, 2, 1), "t": (0, int(idx[0, 1, 0]), 0), "W2": (1, 2), "b2": (0,),
            "offset_table": (int(idx[0, 4, 2]) - 4 + 6, 1)}[name]
    x[name][spot] = math.nan
    return x, dict(idx=idx, window=[(-6, 6)], q_pos=torch.arange(N, dtype=F64).view(1, N, 1),
                   k_pos=torch.arange(M, dtype=F64).view(1, M, 1))


def _lowrank_nan_problem(name):
    g = torch.Generator().manual_seed(15)
    x = {n: torch.randn(1, 2, 6, 4, generator=g, dtype=F64) for n in ("q", "k", "v")}
    spot = {"q": (0, 1, 2, 0), "k": (0, 0, 3, 1), "v": (0, 1, 4, 2)}[name]
    x[name][spot] = math.nan
    return x, spot


def _same_nan_rows(got, want):
    assert torch.isnan(want).any(), "the NaN must reach some row"
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    fin = ~torch.isnan(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-9, atol=1e-12)


def _grads(fn, x, **kw):
    """Fresh leaves of x (attn_mask excluded) after fn(**leaves, **kw).sum().backward()."""
    leaves = {n: t.clone().requires_grad_(n != "attn_mask") for n, t in x.items()}
    fn(**leaves, **kw).sum().backward()
    return leaves


def _cover(got, want, skip=None):
    """got's NaN gradient entries include want's; the entries finite in both agree (skip: the
    (name, index) left out: the gradient at the NaN entry itself)."""
    for n in want:
        a, b = got[n].grad, want[n].grad
        if a is None or b is None:
            continue
        keep = torch.ones_like(a, dtype=torch.bool)
        if skip is not None and skip[0] == n:
            keep[skip[1]] = False
        assert not (torch.isnan(b) & ~torch.isnan(a) & keep).any(), f"grad {n}: NaN turned finite"
        both = ~torch.isnan(a) & ~torch.isnan(b) & keep
        torch.testing.assert_close(a[both], b[both], rtol=1e-9, atol=1e-12, msg=f"grad {n}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("name", list(_NAN_SPOTS))
def test_nan_reaches_the_same_rows(name, normalize, causal):
    kw = dict(_dense_nan_problem(name), window=[(-2, 2)], normalize=normalize, causal=causal)
    if name == "key_weight":
        with pytest.raises(ValueError, match="key_weight"):  # checked: positive weights
            functional.integral_transform(**kw)
        return
    _same_nan_rows(functional.integral_transform(**kw), reference.integral_transform(**kw))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("name", [n for n in _NAN_SPOTS if n != "key_weight"])
def test_nan_gradients_cover_the_oracles(name, normalize, causal):
    x = _dense_nan_problem(name)
    del x["key_weight"]
    kw = dict(window=[(-2, 2)], normalize=normalize, causal=causal)
    _cover(_grads(functional.integral_transform, x, **kw),
           _grads(reference.integral_transform, x, **kw))


@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("name", _SPARSE_NAMES)
def test_nan_reaches_the_same_rows_sparse(name, normalize):
    """(NaN in log_w is rejected by both: a checked input.)"""
    x, kw = _sparse_nan_problem(name)
    kw = dict(x, normalize=normalize, **kw)
    _same_nan_rows(functional.sparse_integral_transform(**kw),
                   reference.sparse_integral_transform(**kw))


@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("name", _SPARSE_NAMES)
def test_nan_gradients_cover_the_oracles_sparse(name, normalize):
    x, kw = _sparse_nan_problem(name)
    _cover(_grads(functional.sparse_integral_transform, x, normalize=normalize, **kw),
           _grads(reference.sparse_integral_transform, x, normalize=normalize, **kw))


LOWRANK_CASES = pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])


@LOWRANK_CASES
@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("feature_map", ["identity", "elu+1", "relu"])
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_nan_reaches_the_same_rows_lowrank(name, feature_map, normalize, causal):
    x, _ = _lowrank_nan_problem(name)
    kw = dict(feature_map=feature_map, normalize=normalize, causal=causal)
    _same_nan_rows(functional.lowrank_integral_transform(**x, **kw),
                   reference.lowrank_integral_transform(**x, **kw))


@LOWRANK_CASES
@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("feature_map", ["identity", "elu+1", "relu"])
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_nan_gradients_cover_the_oracles_lowrank(name, feature_map, normalize, causal):
    """(The gradient at the NaN entry itself is not compared: an activation's derivative at
    NaN is 0 in the kernels' step function and 1 in torch.relu's backward.)"""
    x, spot = _lowrank_nan_problem(name)
    kw = dict(feature_map=feature_map, normalize=normalize, causal=causal)
    _cover(_grads(functional.lowrank_integral_transform, x, **kw),
           _grads(reference.lowrank_integral_transform, x, **kw), skip=(name, spot))
