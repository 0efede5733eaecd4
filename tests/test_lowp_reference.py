"""tests/lowp_reference.py (the yardstick of the half-precision CUDA tests), checked on CPU:
in float64 it equals the oracle ``itnet_ext.reference`` (outputs, lse, every gradient) over
the shared problem generator; in float16 / bfloat16 it really computes in that dtype (its
error is that of half precision, far above what float32 arithmetic would give).
"""
import pytest
import torch

import lowp_reference
from itnet_ext import reference


def _run(fn, kw, names, seed):
    kw = dict(kw)
    for n in names:
        kw[n] = kw[n].detach().clone().requires_grad_()
    softmax = kw.get("normalize", "softmax") == "softmax"
    res = fn(**kw, return_lse=True) if softmax else (fn(**kw),)
    gen = torch.Generator().manual_seed(seed)
    cot = [torch.randn(r.shape, generator=gen, dtype=torch.float64).to(r.dtype) for r in res]
    pairs = [(r, c) for r, c in zip(res, cot) if r.requires_grad]
    grads = torch.autograd.grad([r for r, _ in pairs], [kw[n] for n in names],
                                [c for _, c in pairs], allow_unused=True)
    return res, dict(zip(names, grads))


@pytest.mark.parametrize("seed", range(40))
def test_float64_equals_reference(seed, dense):
    kw = dense.make_problem(3000 + seed)
    names = dense.diff_inputs(kw)
    res_l, g_l = _run(lowp_reference.integral_transform, kw, names, seed)
    res_r, g_r = _run(reference.integral_transform, kw, names, seed)
    what = dense.describe(kw)
    for name, a, b in zip(("out", "lse"), res_l, res_r):
        assert a.dtype == b.dtype == torch.float64
        assert dense.rel_err(a, b) <= 1e-12, (name, what)
    for n in names:
        a = torch.zeros_like(kw[n]) if g_l[n] is None else g_l[n]
        b = torch.zeros_like(kw[n]) if g_r[n] is None else g_r[n]
        assert dense.rel_err(a, b) <= 1e-12, (n, what)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_runs_in_half(dtype, dense):
    kw = dense.make_problem(17, content=True, mlp=True, B=2, H=3, N=40, M=50, Dk=16, Dv=8,
                            R=16, normalize="softmax", support="offset", D=1, kpm=True,
                            key_weight="B", mask="float", mask_shape="NM", empty=False,
                            use_u=True, use_t=True, use_b2=True)
    kwh = {n: (x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
           for n, x in kw.items()}
    kw64 = {n: (x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
            for n, x in kwh.items()}
    names = dense.diff_inputs(kw)
    res_h, g_h = _run(lowp_reference.integral_transform, kwh, names, 1)
    res_r, g_r = _run(reference.integral_transform, kw64, names, 1)
    eps = torch.finfo(dtype).eps
    for name, a, b in [("out", res_h[0], res_r[0]), ("lse", res_h[1], res_r[1])] + \
            [(n, g_h[n], g_r[n]) for n in names]:
        assert a.dtype == dtype, name
        err = dense.rel_err(a, b, atol=0.0, floor=1.0)
        # half-precision rounding shows (float32 arithmetic would stay near 1e-6) ...
        assert err > eps / 64, (name, err)
        # ... and nothing worse than a few hundred ulps relative to the largest entry
        assert err < 300 * eps, (name, err)
