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
