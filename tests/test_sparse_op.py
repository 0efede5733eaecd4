"""The fused sparse (pair-list) op on CPU: ``functional.sparse_integral_transform`` against the
float64 oracle ``reference.sparse_integral_transform`` (values, lse and every gradient) and the
dense op (every key of the support listed once, weight 1: equal to 1e-10); pair lists longer
than a kernel chunk with repeated keys; absent pairs, empty rows and window exclusion; NaN
poisoning of everything no pair may read; every CPU capability; threads and determinism;
gradcheck on fuzzed pair lists; opcheck and torch.compile; and bad input, through the Python
wrapper and through torch.ops directly.
"""
import math
import random

import pytest
import torch

import itnet_ext  # noqa: F401  (registers torch.ops.itnet)
from itnet_ext import functional, reference

from conftest import diff_inputs, make_problem, rel_err, run_with_grads, with_grad
from sparse_helpers import (KERNEL_DIFF, NEG_INF, SMALL, _seed, assert_listed_equals_dense,
                            check_cpu_capability, check_nan_poisoning,
                            check_threads_deterministic, dense_support, list_pairs, long_rows,
                            sparse_fn)

F64 = torch.float64
CAPS = ["DEFAULT", "AVX2", "AVX512"]


def _pairs(skw):
    return {n: skw[n] for n in ("idx", "log_w", "row_ptr", "col_idx") if n in skw}


def _compare(kw, skw, names, seed, tol=1e-10):
    """Fused op vs reference on the listed pairs: outputs (and lse) and gradients."""
    kwg = with_grad(kw, names)
    res_r, g_r = run_with_grads(sparse_fn(skw), kwg, names, seed=seed)
    res_f, g_f = run_with_grads(sparse_fn(skw, functional.sparse_integral_transform), kwg, names,
                                seed=seed)
    for a, b in zip(res_f, res_r):
        assert rel_err(a, b) <= tol
    for n in names:
        if g_r[n] is None:
            assert g_f[n] is None or not g_f[n].any(), n
        else:
            assert rel_err(g_f[n], g_r[n]) <= tol, n


# --------------------------------------------------------------------------------------------
# against the reference, and the dense op with every key listed
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("terms", ["content", "mlp", "both", "offset"])
def test_listed_support_equals_dense(terms, normalize, form, causal):
    assert_listed_equals_dense(functional.integral_transform, functional.sparse_integral_transform,
                               _seed("op", terms, normalize, form, causal), terms, normalize, form, causal)


def test_fuzz_against_reference():
    """Random problems (key padding, key weights as log_w, float positions, fractional
    windows, broadcast u / t / positions), both forms, every gradient incl. log_w."""
    rng = random.Random(0)
    for i in range(30):
        seed = 2000 + i
        kw = make_problem(seed, choices=SMALL, mask=None, empty=rng.random() < 0.3)
        skw = list_pairs(kw, dense_support(kw), rng.choice(["padded", "csr"]), rng,
                         extra=rng.choice([0, 0, 2]))
        names = list(diff_inputs(kw, KERNEL_DIFF))
        kernel = {n: x for n, x in skw.items() if n not in ("idx", "log_w", "row_ptr", "col_idx")}
        lw = skw.get("log_w")
        if lw is not None:
            lw = lw.clone().requires_grad_(True)
        pairs = dict(_pairs(skw), log_w=lw) if lw is not None else _pairs(skw)
        kwg = with_grad(kernel, names)
        softmax = kw["normalize"] == "softmax"
        outs = []
        for fn in (reference.sparse_integral_transform, functional.sparse_integral_transform):
            res = fn(**kwg, **pairs, return_lse=softmax)
            out = res[0] if softmax else res
            leaves = [kwg[n] for n in names] + ([lw] if lw is not None else [])
            cot = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
            g = torch.autograd.grad(out, leaves, cot, allow_unused=True) if leaves else []
            outs.append((res if softmax else (res,), g))
        (r_ref, g_ref), (r_fus, g_fus) = outs
        for a, b in zip(r_fus, r_ref):
            assert rel_err(a, b) <= 1e-10, seed
        for a, b in zip(g_fus, g_ref):
            if b is None:
                assert a is None or not a.any(), seed
            else:
                assert rel_err(a, b) <= 1e-10, seed


@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_long_rows_repeated_keys(normalize, activation):
    kw, idx, lw = long_rows()
    names = list(kw)
    kwg = with_grad(kw, names)
    lwg = lw.clone().requires_grad_(True)
    res = []
    for fn in (reference.sparse_integral_transform, functional.sparse_integral_transform):
        out = fn(**kwg, idx=idx, log_w=lwg, normalize=normalize, activation=activation)
        grads = torch.autograd.grad(out, [kwg[n] for n in names] + [lwg],
                                    torch.linspace(-1, 1, out.numel(), dtype=F64).reshape(
                                        out.shape))
        res.append((out, grads))
    assert rel_err(res[1][0], res[0][0]) <= 1e-10
    assert not res[1][0][0, :, 1].any()  # the empty row
    for a, b in zip(res[1][1], res[0][1]):
        assert rel_err(a, b) <= 1e-10
    assert not res[1][1][-1][lw == NEG_INF].any()  # absent pairs: zero log_w gradient


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_float32(normalize):
    kw, idx, lw = long_rows(dtype=torch.float32)
    out = functional.sparse_integral_transform(**kw, idx=idx, log_w=lw, normalize=normalize)
    kw64 = {n: x.double() for n, x in kw.items()}
    want = reference.sparse_integral_transform(**kw64, idx=idx, log_w=lw.double(),
                                               normalize=normalize)
    assert out.dtype == torch.float32
    assert rel_err(out.double(), want) <= 2e-5


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_cpu_capabilities(cap, normalize, monkeypatch):
    """Each vectorized code path (ragged chunk ends against every vector width)."""
    monkeypatch.setenv("ITNET_CPU_CAPABILITY", cap)
    check_cpu_capability(normalize, S=71, R=11, Dk=3, Dv=17)


def test_csr_variable_rows_and_padding_garbage():
    """CSR with rows of 0..90 pairs, entries past row_ptr[b, N] holding out-of-range keys and
    NaN log-weights (never read), per-batch pair counts."""
    g = torch.Generator().manual_seed(11)
    B, H, N, M, Dk, Dv = 2, 2, 9, 20, 4, 3
    lens = torch.randint(0, 90, (B, N), generator=g)
    lens[1, 4] = 0
    row_ptr = torch.zeros(B, N + 1, dtype=torch.long)
    row_ptr[:, 1:] = lens.cumsum(1)
    E = int(row_ptr[:, -1].max()) + 5
    col = torch.randint(0, M, (B, E), generator=g)
    lw = torch.randn(B, E, generator=g, dtype=F64)
    for b in range(B):
        col[b, row_ptr[b, -1]:] = M + 3
        lw[b, row_ptr[b, -1]:] = math.nan
    q, k = torch.randn(B, H, N, Dk, dtype=F64), torch.randn(B, H, M, Dk, dtype=F64)
    v = torch.randn(B, H, M, Dv, dtype=F64)
    for normalize in ("softmax", "none"):
        args = dict(row_ptr=row_ptr, col_idx=col, log_w=lw, normalize=normalize)
        got = functional.sparse_integral_transform(q, k, v, **args)
        want = reference.sparse_integral_transform(q, k, v, **args)
        assert rel_err(got, want) <= 1e-10
        assert not got[1, :, 4].any()


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_nan_poisoning(normalize):
    """Key rows that no present pair reads (unlisted keys, keys of absent pairs) and log_w of
    absent pairs hold NaN / inf: outputs and gradients stay finite and equal to the clean run."""
    check_nan_poisoning(normalize)


# --------------------------------------------------------------------------------------------
# threads, determinism, empty problems
# --------------------------------------------------------------------------------------------
def test_threads_and_determinism():
    check_threads_deterministic(B=3, N=40, S=90)


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_problems(normalize):
    H, Dk, Dv = 2, 3, 4
    for B, N, M, S in ((0, 3, 4, 2), (2, 0, 4, 2), (2, 3, 0, 2), (2, 3, 4, 0)):
        q = torch.randn(B, H, N, Dk, dtype=F64, requires_grad=True)
        k = torch.randn(B, H, M, Dk, dtype=F64, requires_grad=True)
        v = torch.randn(B, H, M, Dv, dtype=F64, requires_grad=True)
        idx = torch.randint(0, M, (B, N, S)) if M else torch.full((B, N, S), -1)
        lw = torch.full((B, N, S), NEG_INF if M == 0 else 0.0, dtype=F64)
        out, lse = functional.sparse_integral_transform(
            q, k, v, idx=idx, log_w=lw, normalize=normalize, return_lse=True) \
            if normalize == "softmax" else (functional.sparse_integral_transform(
                q, k, v, idx=idx, log_w=lw, normalize=normalize), None)
        want = reference.sparse_integral_transform(q, k, v, idx=idx, log_w=lw,
                                                   normalize=normalize)
        assert out.shape == (B, H, N, Dv)
        assert torch.equal(out, want)
        if lse is not None and (M == 0 or S == 0):
            assert (lse == NEG_INF).all()
        out.sum().backward()
        for x in (q, k, v):
            assert x.grad is None or not x.grad.any()


def test_mlp_only_without_u_and_q_pos():
    """N comes from the pair list when neither q nor u nor q_pos gives it."""
    B, H, N, M, R, S = 2, 3, 5, 7, 4, 6
    v = torch.randn(B, H, M, 2, dtype=F64)
    t = torch.randn(B, M, R, dtype=F64)
    W2 = torch.randn(H, R, dtype=F64)
    idx = torch.randint(0, M, (B, N, S))
    for normalize in ("softmax", "none"):
        got = functional.sparse_integral_transform(v=v, t=t, W2=W2, idx=idx, normalize=normalize)
        want = reference.sparse_integral_transform(v=v, t=t, W2=W2, idx=idx, normalize=normalize)
        assert got.shape == (B, H, N, 2)
        assert rel_err(got, want) <= 1e-10


# --------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile
# --------------------------------------------------------------------------------------------
def _small_problem(seed, normalize, form):
    g = torch.Generator().manual_seed(seed)
    B, H, N, M, Dk, Dv, R, S = 2, 2, 4, 6, 3, 2, 5, 7

    def rn(*s):
        return torch.randn(*s, generator=g, dtype=F64)
    kw = dict(q=rn(B, H, N, Dk), k=rn(B, H, M, Dk), v=rn(B, H, M, Dv), u=rn(1, N, R),
              t=rn(B, M, R), W2=rn(H, R), b2=rn(H))
    idx = torch.randint(0, M, (B, N, S), generator=g)
    idx[0, 0, :3] = 2                                    # repeated keys
    lw = rn(B, N, S)
    lw[1, 2] = NEG_INF                                   # an empty row
    lw[0, 3, ::2] = NEG_INF                              # absent pairs
    idx[lw == NEG_INF] = -1
    if form == "padded":
        pairs = dict(idx=idx, log_w=lw)
    else:
        row_ptr = (torch.arange(N + 1) * S).expand(B, N + 1).contiguous()
        pairs = dict(row_ptr=row_ptr, col_idx=idx.reshape(B, N * S), log_w=lw.reshape(B, N * S))
    return kw, pairs


@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_gradcheck(normalize, form):
    kw, pairs = _small_problem(_seed("gc", normalize, form), normalize, form)
    names = list(kw)
    lw = pairs.pop("log_w")

    def fn(*xs):
        args = dict(zip(names, xs))
        return functional.sparse_integral_transform(**args, **pairs, log_w=xs[-1],
                                                    normalize=normalize, activation="silu")
    inputs = [kw[n].clone().requires_grad_(True) for n in names] + [lw.clone()]
    # the log_w of absent pairs stays -inf (not a differentiable point): checked as a constant
    assert torch.autograd.gradcheck(lambda *xs: fn(*xs, lw), inputs[:-1], atol=1e-7, rtol=1e-5)
    present = lw != NEG_INF

    def fn_lw(vals):
        full = torch.full_like(lw, NEG_INF).masked_scatter(present, vals)
        return fn(*[kw[n] for n in names], full)
    assert torch.autograd.gradcheck(fn_lw, [lw[present].clone().requires_grad_(True)],
                                    atol=1e-7, rtol=1e-5)


def _op_args(kw, pairs, normalize, window=None):
    if "idx" in pairs:
        B, N, S = pairs["idx"].shape
        row_ptr = (torch.arange(N + 1) * S).expand(B, N + 1).contiguous()
        col, lw = pairs["idx"].reshape(B, N * S), pairs["log_w"].reshape(B, N * S)
    else:
        row_ptr, col, lw = pairs["row_ptr"], pairs["col_idx"], pairs["log_w"]
    lo, hi = ([], []) if window is None else ([float(window[0])], [float(window[1])])
    return (kw.get("q"), kw.get("k"), kw["v"], kw.get("u"), kw.get("t"), kw.get("W2"),
            kw.get("b2"), kw.get("offset_table"), kw.get("q_pos"), kw.get("k_pos"), row_ptr, col,
            lw, lo, hi, 0.5, 1, normalize == "softmax")


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_opcheck(normalize):
    kw, pairs = _small_problem(3, normalize, "csr")
    kw = with_grad(kw, list(kw))
    pairs["log_w"] = pairs["log_w"].clone().requires_grad_(True)
    args = _op_args(kw, pairs, normalize)
    torch.library.opcheck(torch.ops.itnet.sparse_fwd.default, args)
    # the backward op has no autograd of its own (double backward raises): plain tensors
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    out, lse = torch.ops.itnet.sparse_fwd(*args)
    gl = torch.randn_like(lse) if normalize == "softmax" else None
    torch.library.opcheck(torch.ops.itnet.sparse_bwd.default,
                          (torch.randn_like(out), out, lse, gl) + args)


def test_opcheck_window_offset_table():
    g = torch.Generator().manual_seed(4)
    B, H, N, M, R = 1, 2, 6, 8, 3
    v = torch.randn(B, H, M, 2, dtype=F64, generator=g).requires_grad_(True)
    t = torch.randn(B, M, R, dtype=F64, generator=g).requires_grad_(True)
    W2 = torch.randn(H, R, dtype=F64, generator=g).requires_grad_(True)
    E = torch.randn(5, R, dtype=F64, generator=g).requires_grad_(True)
    idx = torch.randint(0, M, (B, N, 4), generator=g)
    kw = dict(v=v, t=t, W2=W2, offset_table=E)
    pairs = dict(idx=idx, log_w=torch.zeros(B, N, 4, dtype=F64))
    args = list(_op_args(kw, pairs, "softmax", window=(-2, 2)))
    got = functional.sparse_integral_transform(**kw, idx=idx, window=[(-2, 2)])
    want = reference.sparse_integral_transform(**kw, idx=idx, window=[(-2, 2)])
    assert rel_err(got, want) <= 1e-10
    args[15] = 1.0
    torch.library.opcheck(torch.ops.itnet.sparse_fwd.default, tuple(args))


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_compile_fullgraph(backend):
    kw, pairs = _small_problem(9, "softmax", "padded")
    kw = with_grad(kw, list(kw))

    def f(kw, pairs):
        return functional.sparse_integral_transform(**kw, **pairs).square().sum()
    torch._dynamo.reset()
    cf = torch.compile(f, backend=backend, fullgraph=True)
    got = cf(kw, pairs)
    g_got = torch.autograd.grad(got, list(kw.values()))
    want = f(kw, pairs)
    g_want = torch.autograd.grad(want, list(kw.values()))
    assert rel_err(got, want) <= 1e-10
    for a, b in zip(g_got, g_want):
        assert rel_err(a, b) <= 1e-10


def test_double_backward_error():
    kw, pairs = _small_problem(1, "softmax", "padded")
    q = kw["q"].clone().requires_grad_(True)
    out = functional.sparse_integral_transform(**dict(kw, q=q), **pairs)
    (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def _bad_call(**over):
    kw, pairs = _small_problem(2, "softmax", "csr")
    args = dict(kw, **pairs)
    args.update(over)
    return functional.sparse_integral_transform(**args)


def _csr_default():
    _, pairs = _small_problem(2, "softmax", "csr")
    return pairs


BAD = {
    "key out of range": (lambda p: dict(col_idx=p["col_idx"].clone().fill_(6)), "col_idx"),
    "negative key": (lambda p: dict(col_idx=p["col_idx"].clone().fill_(-2)), "col_idx"),
    "log_w shape": (lambda p: dict(log_w=p["log_w"][:, :-1]), "log_w"),
    "log_w NaN": (lambda p: dict(log_w=p["log_w"].clone().fill_(math.nan)), "log_w"),
    "log_w +inf": (lambda p: dict(log_w=p["log_w"].clone().fill_(math.inf)), "log_w"),
    "log_w dtype": (lambda p: dict(log_w=p["log_w"].float()), "log_w"),
    "row_ptr decreasing": (lambda p: dict(row_ptr=p["row_ptr"].flip(1).contiguous()),
                           "row_ptr"),
    "row_ptr start": (lambda p: dict(row_ptr=p["row_ptr"] + 1), "row_ptr"),
    "row_ptr past E": (lambda p: dict(row_ptr=p["row_ptr"] * 2), "row_ptr"),
    "row_ptr N": (lambda p: dict(row_ptr=p["row_ptr"][:, :-1]), "row_ptr"),
    "col_idx dtype": (lambda p: dict(col_idx=p["col_idx"].int()), "col_idx"),
    "col_idx batch": (lambda p: dict(col_idx=p["col_idx"][:1]), "col_idx"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_functional(case):
    make, name = BAD[case]
    with pytest.raises(ValueError, match=name):
        _bad_call(**make(_csr_default()))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_op(case):
    """The op's own checks (direct torch.ops calls skip the Python wrapper)."""
    make, name = BAD[case]
    kw, pairs = _small_problem(2, "softmax", "csr")
    pairs = dict(pairs, **make(pairs))
    args = _op_args(kw, pairs, "softmax")
    with pytest.raises(RuntimeError, match=name):
        torch.ops.itnet.sparse_fwd(*args)


def test_bad_padded_idx():
    kw, pairs = _small_problem(2, "softmax", "padded")
    idx = pairs["idx"].clone()
    idx[0, 1, 1] = 6
    with pytest.raises(ValueError, match="idx"):
        functional.sparse_integral_transform(**kw, idx=idx, log_w=pairs["log_w"])
    with pytest.raises(ValueError, match="log_w"):
        functional.sparse_integral_transform(**kw, idx=pairs["idx"], log_w=pairs["log_w"][..., 1:])


@pytest.mark.parametrize("Dv", [0, 1])
def test_lse_gradients_and_empty_values(Dv):
    """Gradients through lse alone (Dv = 0: v has no elements, the key-major buffers are
    empty): the content and MLP gradients still match the reference, key by key."""
    kw, idx, lw = long_rows(H=3, Dv=Dv, S=30)
    names = [n for n in kw if n != "v"]
    outs = []
    for fn in (reference.sparse_integral_transform, functional.sparse_integral_transform):
        kwg = with_grad(kw, names)
        out, lse = fn(**kwg, idx=idx, log_w=lw, return_lse=True)
        fin = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        wts = torch.linspace(-1, 2, fin.numel(), dtype=F64).reshape(fin.shape)
        loss = (fin * wts).sum() + (out * 0.5).sum()
        outs.append(torch.autograd.grad(loss, [kwg[n] for n in names], allow_unused=True))
    for n, a, b in zip(names, outs[1], outs[0]):
        assert rel_err(a, b) <= 1e-10, n
