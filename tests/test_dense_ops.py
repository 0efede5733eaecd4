"""Registration of the dense op: torch.library.opcheck (schema, fake kernels, autograd
registration, AOT dispatch), torch.compile(fullgraph=True) of the layer and of the functional
(forward + backward, no graph break, matches eager), and the CPU capability paths
(ITNET_CPU_CAPABILITY = DEFAULT / AVX2 / AVX512) against the reference.
"""
import math

import pytest
import torch

from itnet_ext import IntegralTransform, functional, reference

F64 = torch.float64
F32 = torch.float32
ACTIVATIONS = ("relu", "gelu", "silu")


def rnd(*shape, dtype=F64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def op_args(q=None, k=None, v=None, u=None, t=None, W2=None, b2=None, offset_table=None,
            q_pos=None, k_pos=None, key_weight=None, key_padding_mask=None, attn_mask=None,
            window=(), scale=None, activation="gelu", normalize="softmax", causal=False):
    """The positional argument list of torch.ops.itnet.dense_fwd (see ops/dense.py)."""
    lo = [float(w[0]) for w in window]
    hi = [float(w[1]) for w in window]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q is not None else 1.0
    return (q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight, key_padding_mask,
            attn_mask, lo, hi, float(scale), ACTIVATIONS.index(activation),
            normalize == "softmax", bool(causal))


def _int_pos(B, L, D, hi):
    return torch.randint(0, hi, (B, L, D)).to(F64)


OPCHECK_CASES = {
    "content": lambda: op_args(q=rnd(2, 3, 5, 4), k=rnd(2, 3, 7, 4), v=rnd(2, 3, 7, 3)),
    "content_causal_f32": lambda: op_args(q=rnd(1, 2, 6, 4, dtype=F32), k=rnd(1, 2, 6, 4, dtype=F32),
                                          v=rnd(1, 2, 6, 3, dtype=F32), causal=True),
    "mlp_offset_window": lambda: op_args(
        q=rnd(2, 2, 6, 3), k=rnd(2, 2, 8, 3), v=rnd(2, 2, 8, 2), u=rnd(1, 6, 3), t=rnd(2, 8, 3),
        W2=rnd(2, 3), b2=rnd(2), offset_table=rnd(9, 3), q_pos=_int_pos(2, 6, 2, 3),
        k_pos=_int_pos(1, 8, 2, 3), window=[(-1, 1), (-1, 1)], activation="silu"),
    "mlp_only_offset1": lambda: op_args(
        v=rnd(1, 3, 9, 2), u=rnd(1, 6, 5), t=rnd(1, 9, 5), W2=rnd(3, 5), offset_table=rnd(7, 5),
        q_pos=torch.arange(6, dtype=F64).view(1, 6, 1), k_pos=torch.arange(9, dtype=F64).view(1, 9, 1),
        window=[(-3, 3)], activation="relu"),
    "none_key_weight": lambda: op_args(
        q=rnd(2, 2, 5, 3), k=rnd(2, 2, 6, 3), v=rnd(2, 2, 6, 2),
        key_weight=(torch.rand(2, 6, dtype=F64) + 0.5).requires_grad_(), normalize="none"),
    "masks": lambda: op_args(
        q=rnd(2, 2, 5, 3), k=rnd(2, 2, 7, 3), v=rnd(2, 2, 7, 4), W2=rnd(2, 3), t=rnd(2, 7, 3),
        key_padding_mask=torch.rand(2, 7) < 0.2, attn_mask=torch.rand(5, 7) < 0.8,
        key_weight=(torch.rand(1, 7, dtype=F64) + 0.5).requires_grad_(), causal=True),
    "float_mask_frac_window_none": lambda: op_args(
        q=rnd(1, 2, 5, 3), k=rnd(1, 2, 7, 3), v=rnd(1, 2, 7, 4),
        attn_mask=torch.randn(1, 2, 5, 7, dtype=F64), q_pos=torch.rand(1, 5, 1, dtype=F64) * 4,
        k_pos=torch.rand(1, 7, 1, dtype=F64) * 4, window=[(-1.5, 2.25)], normalize="none"),
}


@pytest.mark.parametrize("name", list(OPCHECK_CASES))
def test_opcheck_dense_fwd(name):
    args = OPCHECK_CASES[name]()
    torch.library.opcheck(torch.ops.itnet.dense_fwd.default, args)


def _noncontiguous(args):
    """Same values, non-contiguous layouts: q, k, v as (B, L, H, D) storage transposed to
    (B, H, L, D) (what the IntegralTransform layer passes), u / t / W2 transposed storage."""
    def nc(x):
        if x.dim() == 4:
            return x.transpose(1, 2).contiguous().transpose(1, 2)
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return tuple(nc(a.detach()) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 and a.dim() >= 2 and i not in (8, 9) else a for i, a in enumerate(args))


def test_opcheck_dense_fwd_noncontiguous():
    args = _noncontiguous(OPCHECK_CASES["mlp_offset_window"]())
    assert not args[0].is_contiguous()
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and i in (0, 1, 2, 3, 4, 5)
                 else a for i, a in enumerate(args))
    torch.library.opcheck(torch.ops.itnet.dense_fwd.default, args)


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_opcheck_dense_bwd(layout):
    """The fake kernel of dense_bwd must give the real gradients' shapes *and strides* (the
    CPU kernel returns contiguous gradients, whatever the inputs' layout); a stride mismatch
    breaks torch.compile's backward graphs."""
    args = OPCHECK_CASES["mlp_offset_window"]()
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    if layout == "noncontiguous":
        args = _noncontiguous(args)
    out, lse = torch.ops.itnet.dense_fwd(*args)
    g = torch.randn_like(out)
    for grad_lse in (None, torch.randn_like(lse)):
        torch.library.opcheck(torch.ops.itnet.dense_bwd.default, (g, out, lse, grad_lse, *args),
                              test_utils=("test_schema", "test_faketensor"))


def test_fake_kernel_shapes_match_real():
    """Fake (meta) outputs have the real outputs' shapes and dtypes, also for empty N / M and
    `none` mode (empty lse)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cases = [OPCHECK_CASES[n]() for n in ("content", "mlp_only_offset1", "none_key_weight")]
    cases.append(op_args(q=rnd(1, 2, 0, 3), k=rnd(1, 2, 4, 3), v=rnd(1, 2, 4, 5)))
    cases.append(op_args(q=rnd(1, 2, 3, 3), k=rnd(1, 2, 0, 3), v=rnd(1, 2, 0, 5)))
    for args in cases:
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        real = torch.ops.itnet.dense_fwd(*args)
        with FakeTensorMode() as mode:
            fargs = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
            fake = torch.ops.itnet.dense_fwd(*fargs)
        for r, f in zip(real, fake):
            assert r.shape == f.shape and r.dtype == f.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("softmax", [True, False])
def test_fake_kernel_half_precision_dtypes(dtype, softmax):
    """The fake kernels follow the CUDA contract for 16-bit inputs (runnable without a GPU, on
    meta tensors): out in v's dtype, lse in float32 (the kernels' statistics; v's dtype
    otherwise), every gradient in its input's dtype and shape."""
    def meta(*shape):
        return torch.empty(*shape, device="meta", dtype=dtype)

    q, k, v = meta(2, 3, 5, 8), meta(2, 3, 7, 8), meta(2, 3, 7, 4)
    u, t, W2 = meta(1, 5, 6), meta(2, 7, 6), meta(3, 6)
    args = op_args(q=q, k=k, v=v, u=u, t=t, W2=W2, normalize="softmax" if softmax else "none")
    out, lse = torch.ops.itnet.dense_fwd(*args)
    lse_dtype = dtype if dtype == torch.float32 else torch.float32
    assert out.dtype == dtype and out.shape == (2, 3, 5, 4)
    assert lse.dtype == lse_dtype and lse.shape == ((2, 3, 5) if softmax else (0,))
    grads = torch.ops.itnet.dense_bwd(torch.empty_like(out), out, lse, None, *args)
    for g, x in zip(grads, (q, k, v, u, t, W2)):
        assert g.dtype == dtype and g.shape == x.shape


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------
class _Model(torch.nn.Module):
    def __init__(self, E=16, H=2, **kw):
        super().__init__()
        self.inp = torch.nn.Linear(E, E, dtype=F64)
        self.it = IntegralTransform(E, H, batch_first=True, dtype=F64, **kw)

    def forward(self, x, key_padding_mask=None):
        h = torch.tanh(self.inp(x))
        return self.it(h, key_padding_mask=key_padding_mask) + x


def _compare_compiled(fn_eager, fn_compiled, inputs, params, no_grad=()):
    """Forward and gradients (inputs + params) of eager vs compiled."""
    results = []
    for fn in (fn_eager, fn_compiled):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point() and i not in no_grad)
              for i, x in enumerate(inputs)]
        out = fn(*xs)
        leaves = [x for x in xs if x.requires_grad] + list(params)
        grads = torch.autograd.grad(out.pow(2).sum(), leaves)
        results.append((out.detach(), grads))
    (oa, ga), (ob, gb) = results
    torch.testing.assert_close(ob, oa, rtol=1e-10, atol=1e-12)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


LAYER_CONFIGS = {
    "mha_like": dict(),
    "mlp_offset_causal": dict(kernel_hidden=6, window=(-3, 2), offset_embedding=True, causal=True,
                              activation="silu"),
    "mlp_only_none": dict(kernel_hidden=5, content=False, normalize="none", window=4,
                          activation="relu", relative_positions=True),
}


@pytest.mark.parametrize("name", list(LAYER_CONFIGS))
def test_compile_layer_fullgraph_aot_eager(name):
    torch._dynamo.reset()
    model = _Model(**LAYER_CONFIGS[name])
    x = torch.randn(2, 13, 16, dtype=F64)
    kpm = torch.zeros(2, 13, dtype=torch.bool)
    kpm[1, -3:] = True
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _compare_compiled(lambda x, m: model(x, m), lambda x, m: compiled(x, m), [x, kpm],
                      list(model.parameters()))
    torch._dynamo.reset()


def _functional_fn(q, k, v, u, t, W2, b2, E, w, q_pos, kpm):
    out, lse = functional.integral_transform(
        q, k, v, u=u, t=t, W2=W2, b2=b2, offset_table=E, key_weight=w, q_pos=q_pos,
        k_pos=q_pos, window=[(-2, 2)], key_padding_mask=kpm, causal=True, activation="gelu",
        return_lse=True)
    return out.sum(-1) + lse.masked_fill(torch.isinf(lse), 0.0)


def _functional_inputs(B=2, H=3, N=20, Dk=4, Dv=5, R=6):
    q_pos = torch.randint(0, 30, (B, N, 1)).to(F64)
    kpm = torch.rand(B, N) < 0.1
    return [torch.randn(B, H, N, Dk, dtype=F64), torch.randn(B, H, N, Dk, dtype=F64),
            torch.randn(B, H, N, Dv, dtype=F64), torch.randn(B, N, R, dtype=F64),
            torch.randn(1, N, R, dtype=F64), torch.randn(H, R, dtype=F64),
            torch.randn(H, dtype=F64), torch.randn(5, R, dtype=F64),
            torch.rand(B, N, dtype=F64) + 0.5, q_pos, kpm]


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_functional_fullgraph(backend):
    torch._dynamo.reset()
    compiled = torch.compile(_functional_fn, backend=backend, fullgraph=True)
    _compare_compiled(_functional_fn, compiled, _functional_inputs(), [], no_grad=(9,))
    # a second call with new values (and a different batch size) reuses / recompiles cleanly
    _compare_compiled(_functional_fn, compiled, _functional_inputs(B=3), [], no_grad=(9,))
    torch._dynamo.reset()


def test_compile_no_graph_break_explain():
    torch._dynamo.reset()
    model = _Model(**LAYER_CONFIGS["mlp_offset_causal"])
    x = torch.randn(2, 9, 16, dtype=F64)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


def _inductor_fn(x, k, v, u, t, W2):
    B, N, _ = x.shape
    q = x.view(B, N, 3, 4).transpose(1, 2)   # non-contiguous (B, H, N, Dk), as in the layer
    y = functional.integral_transform(q, k, v, u=u, t=t, W2=W2, causal=True, activation="silu")
    return torch.tanh(y.transpose(1, 2).reshape(B, N, -1)).square().sum()


def test_compile_inductor_functional():
    """One inductor case (kept small: CPU C++ codegen is the slow part)."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    B, N, M = 2, 9, 11
    inputs = [torch.randn(B, N, 12, dtype=F64), torch.randn(B, 3, M, 4, dtype=F64),
              torch.randn(B, 3, M, 4, dtype=F64), torch.randn(B, N, 5, dtype=F64),
              torch.randn(1, M, 5, dtype=F64), torch.randn(3, 5, dtype=F64)]
    with inductor_config.patch(compile_threads=1):
        compiled = torch.compile(_inductor_fn, backend="inductor", fullgraph=True)
        results = []
        for fn in (_inductor_fn, compiled):
            xs = [x.clone().requires_grad_() for x in inputs]
            loss = fn(*xs)
            results.append((loss.detach(), torch.autograd.grad(loss, xs)))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(lb, la, rtol=1e-10, atol=1e-12)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# CPU capability paths
# --------------------------------------------------------------------------------------------
CAPS = ("DEFAULT", "AVX2", "AVX512")


def _native_caps():
    native = torch.backends.cpu.get_cpu_capability()
    order = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
    return [c for c in CAPS if order.get(c, 0) <= order.get(native, 0)]


def test_capability_env_is_read_at_every_call(monkeypatch):
    native = torch.ops.itnet.cpu_capability()
    assert native in CAPS
    monkeypatch.setenv("ITNET_CPU_CAPABILITY", "DEFAULT")
    assert torch.ops.itnet.cpu_capability() == "DEFAULT"
    monkeypatch.setenv("ITNET_CPU_CAPABILITY", "AVX2")
    assert torch.ops.itnet.cpu_capability() == ("AVX2" if "AVX2" in _native_caps() else "DEFAULT")
    monkeypatch.delenv("ITNET_CPU_CAPABILITY")
    assert torch.ops.itnet.cpu_capability() == native


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("cap", CAPS)
def test_capability_paths_match_reference(dense, monkeypatch, cap, dtype):
    if cap not in _native_caps():
        pytest.skip(f"{cap} not supported by this CPU")
    monkeypatch.setenv("ITNET_CPU_CAPABILITY", cap)
    assert torch.ops.itnet.cpu_capability() == cap
    configs = [
        dict(content=True, mlp=True, support="offset", D=2, pos="batch", N=70, M=67, H=9, R=33,
             B=2, kpm=True, key_weight="B", mask="float", mask_shape="B1NM", causal=True,
             normalize="softmax", activation="gelu", empty=True),
        dict(content=True, mlp=True, support="frac", D=1, pos="bcast", N=65, M=130, H=3, R=7,
             B=1, kpm=False, key_weight="1", mask="bool", mask_shape="NM", causal=False,
             normalize="none", activation="silu", empty=False, Dk=17, Dv=3),
        dict(content=False, mlp=True, support="window", D=1, pos="default", N=33, M=63, H=2, R=1,
             B=2, kpm=True, key_weight=None, mask=None, causal=False, normalize="softmax",
             activation="relu", empty=False),
    ]
    tol_out, tol_grad = (1e-10, 1e-10) if dtype == F64 else (1e-4, 1e-3)
    for i, opts in enumerate(configs):
        kw = dense.make_problem(500 + i, dtype=dtype, **opts)
        names = dense.diff_inputs(kw)
        res_r, g_r = dense.run_with_grads(reference.integral_transform,
                                          dense.with_grad(kw, names, dtype=F64), names)
        res_f, g_f = dense.run_with_grads(functional.integral_transform,
                                          dense.with_grad(kw, names), names)
        for a, b in zip(res_f, res_r):
            assert dense.rel_err(a, b) <= tol_out, (cap, i)
        for n in names:
            assert dense.rel_err(g_f[n], g_r[n]) <= tol_grad, (cap, i, n)


def test_capability_paths_agree_with_each_other(dense, monkeypatch):
    """All capability paths give the same float64 results up to rounding (and the same
    support pattern)."""
    kw = dense.make_problem(77, content=True, mlp=True, support="offset", D=1, pos="default",
                            N=129, M=127, H=5, R=32, B=2, kpm=True, key_weight="B", mask=None,
                            causal=True, normalize="softmax", activation="silu", empty=True)
    names = dense.diff_inputs(kw)
    results = {}
    for cap in _native_caps():
        monkeypatch.setenv("ITNET_CPU_CAPABILITY", cap)
        results[cap] = dense.run_with_grads(functional.integral_transform,
                                            dense.with_grad(kw, names), names)
    base_res, base_g = results["DEFAULT"]
    for cap, (res, g) in results.items():
        for a, b in zip(res, base_res):
            assert dense.rel_err(a, b) <= 1e-13, cap
        for n in names:
            assert dense.rel_err(g[n], base_g[n]) <= 1e-12, (cap, n)
