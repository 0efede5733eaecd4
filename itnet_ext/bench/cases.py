"""Inputs and the functions measured by ``python -m itnet_ext.bench``."""
from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import functional as _fused
from .. import reference as _reference
from ..nn import IntegralTransform

B, H, DH, R = 1, 8, 64, 32
CONV_CH, CONV_K = 64, 5


# ======================================================================================
# cases
# ======================================================================================
def _attn_inputs(N, device, dtype, gen):
    def rnd(*shape, scale=1.0):
        x = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale
        return x.to(device=device, dtype=dtype).requires_grad_(True)

    q, k, v = rnd(B, H, N, DH), rnd(B, H, N, DH), rnd(B, H, N, DH)
    u, t = rnd(B, N, R), rnd(B, N, R)
    W2 = rnd(H, R, scale=R ** -0.5)
    b2 = rnd(H, scale=0.1)
    g = torch.randn(B, H, N, DH, generator=gen).to(device=device, dtype=dtype)
    return dict(q=q, k=k, v=v, u=u, t=t, W2=W2, b2=b2, g=g)


def _forward_fns(x):
    q, k, v, u, t, W2, b2 = (x[n] for n in ("q", "k", "v", "u", "t", "W2", "b2"))
    return {
        "sdpa": (lambda: TF.scaled_dot_product_attention(q, k, v), (q, k, v)),
        "fused_attn": (lambda: _fused.integral_transform(q, k, v), (q, k, v)),
        "fused_mlp": (
            lambda: _fused.integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2, activation="gelu"),
            (q, k, v, u, t, W2, b2),
        ),
        "reference_mlp": (
            lambda: _reference.integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2, activation="gelu"),
            (q, k, v, u, t, W2, b2),
        ),
    }


def _conv_fns(N, device, dtype, gen):
    conv = torch.nn.Conv1d(CONV_CH, CONV_CH, CONV_K, padding="same").to(device=device, dtype=dtype)
    iconv = IntegralTransform.from_conv1d(conv)
    x = torch.randn(B, CONV_CH, N, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(B, CONV_CH, N, generator=gen).to(device=device, dtype=dtype)
    fns = {
        "conv1d": (lambda: TF.conv1d(x, conv.weight, conv.bias, padding="same"), (x, *conv.parameters())),
        "fused_conv": (lambda: iconv(x), (x, *iconv.parameters())),
    }
    return fns, g


def _passes(fn, params, g):
    """(forward under no_grad, forward + backward of <out, g>) callables and the grad reset."""

    def fwd():
        with torch.no_grad():
            fn()

    def fwd_bwd():
        fn().backward(g)

    def reset():
        for p in params:
            p.grad = None

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}, reset
