"""The sparse op's pair-major CPU rows (the MLP term with H >= 16 heads, such as a GNO kernel
MLP with one head per channel): values, lse and every gradient against the float64 reference
on rows longer than a kernel chunk, ragged head and hidden counts against every vector width,
with and without the content term, both normalizations and every activation; random problems
with windows and offset tables; every CPU capability in float32 and float64; NaN poisoning;
threads and determinism. Heads below 16 take the head-major rows (test_sparse_op.py)."""
import random

import pytest
import torch

import itnet_ext  # noqa: F401  (registers torch.ops.itnet)
from itnet_ext import functional, reference

from conftest import diff_inputs, make_problem, rel_err, with_grad
from sparse_helpers import (KERNEL_DIFF, NEG_INF, check_cpu_capability, check_nan_poisoning,
                            check_threads_deterministic, dense_support, list_pairs, long_rows)

F64 = torch.float64
CAPS = ["DEFAULT", "AVX2", "AVX512"]


def _grads_vs_reference(kw, idx, lw, normalize, activation="gelu", tol=1e-10):
    names = list(kw)
    kwg = with_grad(kw, names)
    lwg = lw.clone().requires_grad_(True)
    res = []
    for fn in (reference.sparse_integral_transform, functional.sparse_integral_transform):
        out = fn(**kwg, idx=idx, log_w=lwg, normalize=normalize, activation=activation,
                 return_lse=normalize == "softmax")
        o = out[0] if normalize == "softmax" else out
        cot = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)
        grads = torch.autograd.grad(o, [kwg[n] for n in names] + [lwg], cot)
        res.append((out if normalize == "softmax" else (out,), grads))
    (r_ref, g_ref), (r_fus, g_fus) = res
    for a, b in zip(r_fus, r_ref):
        assert rel_err(a, b) <= tol
    assert not r_fus[0][0, :, 1].any()  # the empty row
    for n, a, b in zip(names + ["log_w"], g_fus, g_ref):
        assert rel_err(a, b) <= tol, n
    assert not g_fus[-1][lw == NEG_INF].any()  # absent pairs: zero log_w gradient


@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("content", [False, True])
@pytest.mark.parametrize("H,R,Dv", [(16, 64, 1), (21, 9, 1), (17, 33, 4)])
def test_vs_reference(H, R, Dv, content, normalize):
    kw, idx, lw = long_rows(H=H, R=R, Dv=Dv, content=content)
    _grads_vs_reference(kw, idx, lw, normalize)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_activations(activation):
    kw, idx, lw = long_rows(H=18, R=12, Dv=2, content=False)
    for normalize in ("softmax", "none"):
        _grads_vs_reference(kw, idx, lw, normalize, activation)


def test_fuzz_against_reference():
    """Random problems with many heads: windows (fractional too), offset tables, broadcast
    u / t / positions, key weights as log_w, both pair-list forms, every gradient."""
    rng = random.Random(3)
    choices = dict(B=[1, 2], H=[16, 19, 32], N=[1, 5, 17, 33], M=[1, 6, 31, 40], Dk=[1, 3, 8],
                   Dv=[1, 2, 5], R=[1, 7, 16, 20])
    for i in range(16):
        seed = 7000 + i
        kw = make_problem(seed, choices=choices, mask=None, mlp=True,
                          empty=rng.random() < 0.3)
        skw = list_pairs(kw, dense_support(kw), rng.choice(["padded", "csr"]), rng,
                         extra=rng.choice([0, 2]))
        names = list(diff_inputs(kw, KERNEL_DIFF))
        pair_keys = ("idx", "log_w", "row_ptr", "col_idx")
        kernel = {n: x for n, x in skw.items() if n not in pair_keys}
        pairs = {n: skw[n] for n in pair_keys if n in skw}
        if pairs.get("log_w") is not None:
            pairs["log_w"] = pairs["log_w"].clone().requires_grad_(True)
        kwg = with_grad(kernel, names)
        softmax = kw["normalize"] == "softmax"
        outs = []
        for fn in (reference.sparse_integral_transform, functional.sparse_integral_transform):
            res = fn(**kwg, **pairs, return_lse=softmax)
            out = res[0] if softmax else res
            leaves = [kwg[n] for n in names] + ([pairs["log_w"]] if "log_w" in pairs else [])
            cot = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
            g = torch.autograd.grad(out, leaves, cot, allow_unused=True) if leaves else []
            outs.append((res if softmax else (res,), g))
        (r_ref, g_ref), (r_fus, g_fus) = outs
        assert r_fus[0].shape[1] >= 16  # the pair-major rows
        for a, b in zip(r_fus, r_ref):
            assert rel_err(a, b) <= 1e-10, seed
        for a, b in zip(g_fus, g_ref):
            if b is None:
                assert a is None or not a.any(), seed
            else:
                assert rel_err(a, b) <= 1e-10, seed


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_cpu_capabilities(cap, normalize, monkeypatch):
    """Each vectorized code path: 20 heads and 11 hidden units are ragged against every vector
    width (4, 8, 16 lanes), 71 pairs a row a ragged chunk end."""
    monkeypatch.setenv("ITNET_CPU_CAPABILITY", cap)
    for Dv in (1, 3):
        check_cpu_capability(normalize, H=20, S=71, R=11, Dk=3, Dv=Dv)


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_nan_poisoning(normalize):
    """Key rows that no present pair reads and the keys of absent pairs hold NaN / inf: the
    outputs equal the clean run's and every gradient is finite (no padding head or row leaks
    into a result)."""
    check_nan_poisoning(normalize, H=20, R=10, Dv=1)


def test_threads_and_determinism():
    check_threads_deterministic("none", B=3, H=16, N=40, S=90, R=16, Dv=1, content=False)
