"""IntegralTransform.from_conv1d / from_conv2d reproduce nn.Conv1d / nn.Conv2d exactly (float64).

Outputs and gradients (input, weight, bias) over a seeded random sample of configurations:
kernel sizes 1-7 (odd and even), stride 1-3, dilation 1-3, padding int / tuple / 'same' /
'valid', bias on/off, odd and even input sizes; plus hand-picked edge cases.
"""
import random

import pytest
import torch
from torch import nn

import itnet_ext
from itnet_ext.nn import IntegralConv1d, IntegralConv2d

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")

DT = torch.float64
TOL = 1e-10


def rel_err(a, b):
    scale = b.abs().max()
    return ((a - b).abs().max() / (scale if scale > 0 else 1.0)).item()


def _out_size(L, k, s, d, pad):
    if pad == "valid":
        p = 0
    elif pad == "same":
        return L
    else:
        p = 2 * pad
    return (L + p - d * (k - 1) - 1) // s + 1


def _random_dim(rng, k):
    """(stride, dilation, padding, length) for one spatial dim with kernel size k; output size >= 1."""
    while True:
        s = rng.randint(1, 3)
        d = rng.randint(1, 3)
        pad = rng.choice([0, 1, 2, 3, "same", "valid"])
        if pad == "same" and s != 1:
            continue
        L = rng.randint(1, 13)
        if _out_size(L, k, s, d, pad) >= 1:
            return s, d, pad, L


def _configs_1d(seed=0, per_kernel=6):
    rng = random.Random(seed)
    out = []
    for k in range(1, 8):
        for _ in range(per_kernel):
            s, d, pad, L = _random_dim(rng, k)
            out.append(dict(k=k, s=s, d=d, pad=pad, L=L, bias=rng.random() < 0.5,
                            cin=rng.randint(1, 4), cout=rng.randint(1, 4)))
    return out


def _configs_2d(seed=1, per_kernel=4):
    rng = random.Random(seed)
    out = []
    for k in range(1, 8):
        for _ in range(per_kernel):
            kw = rng.randint(1, 7)
            s0, d0, p0, h = _random_dim(rng, k)
            s1, d1, p1, w = _random_dim(rng, kw)
            if isinstance(p0, str) or isinstance(p1, str):
                # a string padding applies to both dims
                pad = p0 if isinstance(p0, str) else p1
                if pad == "same":
                    s0 = s1 = 1
                p0 = p1 = pad
                if _out_size(h, k, s0, d0, pad) < 1 or _out_size(w, kw, s1, d1, pad) < 1:
                    h, w = d0 * (k - 1) + 1, d1 * (kw - 1) + 1
                padding = pad
            else:
                padding = (p0, p1)
            out.append(dict(k=(k, kw), s=(s0, s1), d=(d0, d1), pad=padding, L=(h, w),
                            bias=rng.random() < 0.5, cin=rng.randint(1, 3), cout=rng.randint(1, 3)))
    return out


def _check(conv, x, seed=0):
    it = (itnet_ext.IntegralTransform.from_conv1d(conv) if isinstance(conv, nn.Conv1d)
          else itnet_ext.IntegralTransform.from_conv2d(conv))
    results = []
    for mod in (conv, it):
        x.grad = None
        mod.zero_grad(set_to_none=True)
        y = mod(x)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
        (y * g).sum().backward()
        results.append((y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in mod.named_parameters()}))
    (y_ref, gx_ref, gp_ref), (y, gx, gp) = results
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= TOL, "output"
    assert rel_err(gx, gx_ref) <= TOL, "grad wrt input"
    assert gp.keys() == gp_ref.keys()
    for n in gp_ref:
        assert rel_err(gp[n], gp_ref[n]) <= TOL, f"grad wrt {n}"


def _cid(c):
    return "-".join(f"{k}{v}" for k, v in c.items()).replace(" ", "")


CONF1 = _configs_1d()
CONF2 = _configs_2d()


@pytest.mark.parametrize("cfg", CONF1, ids=[_cid(c) for c in CONF1])
def test_conv1d(cfg):
    torch.manual_seed(len(_cid(cfg)))
    conv = nn.Conv1d(cfg["cin"], cfg["cout"], cfg["k"], stride=cfg["s"], padding=cfg["pad"],
                     dilation=cfg["d"], bias=cfg["bias"], dtype=DT)
    x = torch.randn(2, cfg["cin"], cfg["L"], dtype=DT, requires_grad=True)
    _check(conv, x)


@pytest.mark.parametrize("cfg", CONF2, ids=[_cid(c) for c in CONF2])
def test_conv2d(cfg):
    torch.manual_seed(len(_cid(cfg)))
    conv = nn.Conv2d(cfg["cin"], cfg["cout"], cfg["k"], stride=cfg["s"], padding=cfg["pad"],
                     dilation=cfg["d"], bias=cfg["bias"], dtype=DT)
    x = torch.randn(2, cfg["cin"], *cfg["L"], dtype=DT, requires_grad=True)
    _check(conv, x)


@pytest.mark.parametrize("k", [2, 4, 6])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_conv1d_same_even_kernel(k, d):
    """torch pads 'same' asymmetrically for an odd total padding: the extra zero goes on the right."""
    torch.manual_seed(k * 10 + d)
    conv = nn.Conv1d(2, 3, k, padding="same", dilation=d, dtype=DT)
    x = torch.randn(2, 2, 9, dtype=DT, requires_grad=True)
    _check(conv, x)


def test_conv2d_same_even_and_asymmetric_padding():
    torch.manual_seed(0)
    _check(nn.Conv2d(2, 3, (4, 3), padding="same", dilation=(1, 2), dtype=DT),
           torch.randn(1, 2, 7, 8, dtype=DT, requires_grad=True))
    _check(nn.Conv2d(2, 3, (3, 2), stride=(3, 2), padding=(0, 3), dtype=DT),
           torch.randn(2, 2, 11, 6, dtype=DT, requires_grad=True))


def test_unbatched_and_stride_larger_than_kernel():
    torch.manual_seed(1)
    _check(nn.Conv1d(3, 2, 2, stride=3, padding=1, dtype=DT), torch.randn(3, 10, dtype=DT, requires_grad=True))
    _check(nn.Conv2d(3, 2, 1, stride=(3, 2), dtype=DT), torch.randn(3, 7, 5, dtype=DT, requires_grad=True))


def test_module_api():
    conv = nn.Conv2d(3, 4, (3, 2), stride=2, padding=1, bias=False, dtype=DT)
    it = itnet_ext.IntegralTransform.from_conv2d(conv)
    assert isinstance(it, IntegralConv2d)
    assert it.state_dict().keys() == conv.state_dict().keys()
    assert it.kernel_size == (3, 2) and it.stride == (2, 2) and it.padding == (1, 1)
    with torch.no_grad():  # a copy, not shared storage
        it.weight.add_(1.0)
    assert not torch.equal(it.weight, conv.weight)
    it1 = IntegralConv1d(3, 4, 3, padding="same")
    nn.Conv1d(3, 4, 3, padding="same").load_state_dict(it1.state_dict())


def test_rejections():
    with pytest.raises(ValueError, match="groups"):
        itnet_ext.IntegralTransform.from_conv1d(nn.Conv1d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode"):
        itnet_ext.IntegralTransform.from_conv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="Conv1d"):
        itnet_ext.IntegralTransform.from_conv1d(nn.Conv2d(2, 2, 3))
    with pytest.raises(TypeError, match="Conv2d"):
        itnet_ext.IntegralTransform.from_conv2d(nn.Linear(2, 2))
    it = itnet_ext.IntegralTransform.from_conv1d(nn.Conv1d(2, 2, 5, dilation=2))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        it(torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="channels"):
        it(torch.randn(1, 3, 20))
    with pytest.raises(ValueError, match="3-D"):
        it(torch.randn(1, 1, 2, 20))
    with pytest.raises(ValueError, match="same"):
        IntegralConv1d(2, 2, 3, stride=2, padding="same")
