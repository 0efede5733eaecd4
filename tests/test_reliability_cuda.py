"""The CUDA kernels' side of tests/test_reliability.py: NaN in the k / v rows of a padded key
never reaches an output or a gradient of the other entries, for every CUDA path of the dense op
(the exact float64 / float32 kernels and the float16 / bfloat16 flash kernels), and the results
match the float64 oracle's on the same problem. On a GPU, or under the device emulator."""
import math

import pytest
import torch

from cuda_helpers import CUDA_TESTS, DEVICE
from itnet_ext import functional, reference

pytestmark = CUDA_TESTS

TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


@pytest.mark.parametrize("dtype", list(TOL), ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("poison", ["k", "v"])
def test_padded_key_never_reaches_the_result(poison, dtype):
    g = torch.Generator().manual_seed(11)
    B, H, N, M, D = 2, 2, 70, 70, 64   # 70: a partial second tile of keys and queries
    x = {n: torch.randn(B, H, m, D, generator=g, dtype=torch.float64).to(dtype)
         for n, m in (("q", N), ("k", M), ("v", M))}
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[0, 3] = kpm[1, 69] = True
    x[poison][0, :, 3] = x[poison][1, :, 69] = math.nan
    got, want = {}, {}
    for res, fn, dev, dt in ((got, functional.integral_transform, DEVICE, dtype),
                             (want, reference.integral_transform, "cpu", torch.float64)):
        leaves = {n: t.to(dev, dt).detach().clone().requires_grad_() for n, t in x.items()}
        out = fn(leaves["q"], leaves["k"], leaves["v"], key_padding_mask=kpm.to(dev))
        out.float().sum().backward()
        res["out"] = out.detach().double().cpu()
        for n, t in leaves.items():
            grad = t.grad.double().cpu()
            res[n] = grad if n == "q" else grad.masked_fill(kpm[:, None, :, None], 0)
    for name, a in got.items():
        assert torch.isfinite(a).all(), (name, dtype)
        scale = want[name].abs().max().item()
        assert (a - want[name]).abs().max().item() <= TOL[dtype] * scale, (name, dtype)


@pytest.mark.parametrize("dtype", list(TOL), ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("normalize", ["none", "softmax"])
def test_logit_of_minus_inf_by_itself(normalize, dtype):
    """A pair whose logit is -inf by itself (here t_j = +inf through relu and a negative W2) is
    on the support: in `none` mode its weight is -inf w (the output row is +-inf where the
    oracle's is), not 0 as for a masked pair; in softmax mode it is weight 0. Masked pairs
    (causal, key padding) next to it stay weight 0."""
    _minus_inf_case(normalize, dtype, DEVICE)


def _minus_inf_case(normalize, dtype, device):
    g = torch.Generator().manual_seed(12)
    B, H, N, M, D, R = 1, 2, 70, 70, 16, 4
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for n in (N, M, M))
    u = torch.randn(B, N, R, generator=g, dtype=torch.float64)
    t = torch.randn(B, M, R, generator=g, dtype=torch.float64)
    W2 = -torch.rand(H, R, generator=g, dtype=torch.float64) - 0.1
    t[0, 5] = t[0, 66] = math.inf
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[0, 66] = True  # padded: its -inf logit must not count
    kw = dict(activation="relu", normalize=normalize, causal=True, key_padding_mask=kpm)
    args = [x.to(dtype) for x in (q, k, v, u, t, W2)]
    got = functional.integral_transform(*[x.to(device) for x in args[:3]], u=args[3].to(device),
                                        t=args[4].to(device), W2=args[5].to(device),
                                        **{**kw, "key_padding_mask": kpm.to(device)})
    want = reference.integral_transform(*[x.double() for x in args[:3]], u=args[3].double(),
                                        t=args[4].double(), W2=args[5].double(), **kw)
    got = got.double().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), "NaN pattern"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "inf pattern"
    if normalize == "none":
        assert torch.isinf(want[0, :, 5:]).any(), "the case must reach -inf weights"
    fin = torch.isfinite(want)
    assert torch.equal(got[~fin & ~torch.isnan(want)], want[~fin & ~torch.isnan(want)])
    scale = want[fin].abs().max().item()
    assert (got[fin] - want[fin]).abs().max().item() <= TOL[dtype] * scale
