"""IntegralTransform.from_multihead_attention reproduces nn.MultiheadAttention exactly (float64).

Outputs, attention weights and gradients (inputs and parameters) against torch, over
batch_first, kdim/vdim, bias, key_padding_mask, bool / float attn_mask, is_causal and
need_weights / average_attn_weights.
"""
import warnings
import zlib

import pytest
import torch
from torch import nn

import itnet_ext
from itnet_ext.nn import IntegralMultiheadAttention

DT = torch.float64
E, H = 16, 4
B, N, M = 3, 7, 9
TOL = 1e-10


def _convert(mha):
    return itnet_ext.IntegralTransform.from_multihead_attention(mha)


def rel_err(a, b):
    scale = b.abs().max()
    return ((a - b).abs().max() / (scale if scale > 0 else 1.0)).item()


MASKS = [
    "none",
    "kpm_bool",
    "kpm_float",
    "attn_bool_2d",
    "attn_float_2d",
    "attn_bool_3d",
    "attn_float_3d",
    "kpm_bool_attn_bool",
    "kpm_float_attn_float",
    "kpm_float_attn_bool",
    "causal_bool",
    "causal_float",
    "causal_kpm",
]
NEED = [(False, True), (True, True), (True, False)]  # (need_weights, average_attn_weights)


def _masks(kind, gen, n=N, m=M, b=B):
    """(key_padding_mask, attn_mask, is_causal); key 0 is never masked, so no row is empty."""
    kpm = attn = None
    is_causal = False

    def kpm_bool():
        x = torch.rand(b, m, generator=gen) < 0.3
        x[:, 0] = False
        return x

    def kpm_float():
        x = torch.randn(b, m, generator=gen, dtype=DT)
        x[kpm_bool()] = float("-inf")
        return x

    def attn_bool(shape):
        x = torch.rand(*shape, generator=gen) < 0.3
        x[..., 0] = False
        return x

    def attn_float(shape):
        x = torch.randn(*shape, generator=gen, dtype=DT)
        x[attn_bool(shape)] = float("-inf")
        return x

    causal_bool = torch.ones(n, m, dtype=torch.bool).triu(1)  # True = not allowed
    if kind == "kpm_bool":
        kpm = kpm_bool()
    elif kind == "kpm_float":
        kpm = kpm_float()
    elif kind == "attn_bool_2d":
        attn = attn_bool((n, m))
    elif kind == "attn_float_2d":
        attn = attn_float((n, m))
    elif kind == "attn_bool_3d":
        attn = attn_bool((b * H, n, m))
    elif kind == "attn_float_3d":
        attn = attn_float((b * H, n, m))
    elif kind == "kpm_bool_attn_bool":
        kpm, attn = kpm_bool(), attn_bool((n, m))
    elif kind == "kpm_float_attn_float":
        kpm, attn = kpm_float(), attn_float((b * H, n, m))
    elif kind == "kpm_float_attn_bool":
        kpm, attn = kpm_float(), attn_bool((n, m))
    elif kind == "causal_bool":
        attn, is_causal = causal_bool, True
    elif kind == "causal_float":
        attn = torch.zeros(n, m, dtype=DT).masked_fill(causal_bool, float("-inf"))
        is_causal = True
    elif kind == "causal_kpm":
        attn, kpm, is_causal = causal_bool, kpm_bool(), True
    else:
        assert kind == "none"
    return kpm, attn, is_causal


def _run(module, q, k, v, kpm, attn, is_causal, need, avg, gen):
    """Forward + backward with a fixed random cotangent; returns out, weights, input grads, param grads."""
    for x in (q, k, v):
        x.grad = None
    module.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about mismatched kpm / attn_mask types
        out, w = module(
            q, k, v,
            key_padding_mask=kpm,
            need_weights=need,
            attn_mask=attn,
            average_attn_weights=avg,
            is_causal=is_causal,
        )
    g = torch.randn(out.shape, generator=gen, dtype=DT)
    loss = (out * g).sum()
    if w is not None:
        loss = loss + (w * torch.randn(w.shape, generator=gen, dtype=DT)).sum()
    loss.backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    pgrads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return out.detach(), (None if w is None else w.detach()), grads, pgrads


def _compare(mha, it, q, k, v, kpm, attn, is_causal, need, avg, seed):
    ref = _run(mha, q, k, v, kpm, attn, is_causal, need, avg, torch.Generator().manual_seed(seed))
    got = _run(it, q, k, v, kpm, attn, is_causal, need, avg, torch.Generator().manual_seed(seed))
    assert got[0].shape == ref[0].shape
    assert rel_err(got[0], ref[0]) <= TOL, "output"
    if need:
        assert got[1] is not None and got[1].shape == ref[1].shape
        assert rel_err(got[1], ref[1]) <= TOL, "attention weights"
    else:
        assert got[1] is None and ref[1] is None
    for name, a, b in zip("qkv", got[2], ref[2]):
        assert rel_err(a, b) <= TOL, f"grad wrt {name}"
    assert got[3].keys() == ref[3].keys()
    for name in ref[3]:
        assert rel_err(got[3][name], ref[3][name]) <= TOL, f"grad wrt parameter {name}"


STRUCTS = [(bf, dims, bias) for bf in (False, True) for dims in (None, (12, 10)) for bias in (True, False)]


def _sid(st):
    bf, dims, bias = st
    return f"{'batchfirst' if bf else 'seqfirst'}-{'kvdim' if dims else 'samedim'}-{'bias' if bias else 'nobias'}"


# Every mask kind x every need_weights mode (structure cycling through all 8 combinations),
# plus every structure x every need_weights mode with combined masks: all pairs covered.
CASES = [(STRUCTS[(3 * i + j) % len(STRUCTS)], mask, need)
         for i, mask in enumerate(MASKS) for j, need in enumerate(NEED)]
CASES += [(st, mask, need) for st in STRUCTS for need in NEED
          for mask in ("kpm_bool_attn_bool", "causal_kpm")]


@pytest.mark.parametrize(
    "struct,mask,need", CASES,
    ids=[f"{_sid(st)}-{mask}-{['noweights', 'avgweights', 'headweights'][NEED.index(nd)]}"
         for st, mask, nd in CASES])
def test_matches_mha(struct, mask, need):
    batch_first, dims, bias = struct
    need, avg = need
    seed = zlib.crc32(repr((struct, mask, need, avg)).encode())
    torch.manual_seed(seed)
    kdim, vdim = dims if dims else (None, None)
    mha = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first, dtype=DT)
    if bias:  # torch zero-initializes the biases: make them nonzero
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    it = itnet_ext.IntegralTransform.from_multihead_attention(mha)
    assert isinstance(it, IntegralMultiheadAttention)
    gen = torch.Generator().manual_seed(seed)
    kd, vd = kdim or E, vdim or E

    def inp(L, C):
        shape = (B, L, C) if batch_first else (L, B, C)
        return torch.randn(shape, generator=gen, dtype=DT).requires_grad_()

    q, k, v = inp(N, E), inp(M, kd), inp(M, vd)
    kpm, attn, is_causal = _masks(mask, gen)
    _compare(mha, it, q, k, v, kpm, attn, is_causal, need, avg, seed)


@pytest.mark.parametrize("need", [False, True])
@pytest.mark.parametrize("mask", ["none", "kpm_bool", "attn_float_3d", "causal_bool"])
def test_self_attention_same_tensor(mask, need):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=DT)
    it = _convert(mha)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, N, E, generator=gen, dtype=DT).requires_grad_()
    kpm, attn, is_causal = _masks(mask, gen, n=N, m=N)
    _compare(mha, it, x, x, x, kpm, attn, is_causal, need, True, 3)


@pytest.mark.parametrize("need,avg", NEED, ids=["noweights", "avgweights", "headweights"])
@pytest.mark.parametrize("mask", ["none", "kpm_bool", "attn_bool_3d", "causal_bool"])
def test_unbatched(mask, need, avg):
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(E, H, kdim=12, vdim=10, dtype=DT)
    it = _convert(mha)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(N, E, generator=gen, dtype=DT).requires_grad_()
    k = torch.randn(M, 12, generator=gen, dtype=DT).requires_grad_()
    v = torch.randn(M, 10, generator=gen, dtype=DT).requires_grad_()
    kpm, attn, is_causal = _masks(mask, gen, b=1)
    if kpm is not None:
        kpm = kpm[0]
    _compare(mha, it, q, k, v, kpm, attn, is_causal, need, avg, 6)


def test_is_causal_mirrors_torch_hint():
    """torch: with no key_padding_mask and need_weights=False the causal mask REPLACES attn_mask."""
    torch.manual_seed(7)
    mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=DT)
    it = _convert(mha)
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(B, N, E, generator=gen, dtype=DT).requires_grad_()
    k = torch.randn(B, M, E, generator=gen, dtype=DT).requires_grad_()
    v = torch.randn(B, M, E, generator=gen, dtype=DT).requires_grad_()
    wrong_hint = torch.rand(N, M, generator=gen) < 0.3
    wrong_hint[:, 0] = False
    for need in (False, True):  # need_weights=True: attn_mask is used, the hint is ignored
        _compare(mha, it, q, k, v, None, wrong_hint, True, need, True, 9)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        it(q, k, v, is_causal=True)


def test_eval_fast_path():
    """In eval / no-grad torch takes its fused fast path; the results still agree."""
    torch.manual_seed(10)
    mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=DT, dropout=0.1).eval()
    it = _convert(mha)
    assert not it.training
    x = torch.randn(B, N, E, dtype=DT)
    kpm = torch.zeros(B, N, dtype=torch.bool)
    kpm[:, -2:] = True
    with torch.no_grad():
        for need in (False, True):
            a, wa = mha(x, x, x, key_padding_mask=kpm, need_weights=need)
            b, wb = it(x, x, x, key_padding_mask=kpm, need_weights=need)
            assert rel_err(b, a) <= TOL
            if need:
                assert rel_err(wb, wa) <= TOL


def test_state_dict_roundtrip():
    torch.manual_seed(11)
    for kw in ({}, {"kdim": 12, "vdim": 10}, {"bias": False}):
        mha = nn.MultiheadAttention(E, H, dtype=DT, **kw)
        it = _convert(mha)
        sd_m, sd_i = mha.state_dict(), it.state_dict()
        assert sd_m.keys() == sd_i.keys()
        for name in sd_m:
            assert torch.equal(sd_m[name], sd_i[name])
        # the other way round
        it2 = IntegralMultiheadAttention(E, H, dtype=DT, **kw)
        mha.load_state_dict(it2.state_dict())
        # a copy, not shared storage
        with torch.no_grad():
            it.out_proj.weight.add_(1.0)
        assert not torch.equal(it.out_proj.weight, mha.out_proj.weight)


def test_rejections():
    with pytest.raises(ValueError, match="add_bias_kv"):
        _convert(nn.MultiheadAttention(E, H, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_zero_attn"):
        _convert(nn.MultiheadAttention(E, H, add_zero_attn=True))
    with pytest.raises(TypeError, match="MultiheadAttention"):
        _convert(nn.Linear(4, 4))
    it = _convert(nn.MultiheadAttention(E, H, dropout=0.2))
    x = torch.randn(N, B, E)
    with pytest.raises(ValueError, match="dropout"):
        it(x, x, x)
    it.eval()
    it(x, x, x)  # fine in eval mode
    with pytest.raises(ValueError, match="divisible"):
        IntegralMultiheadAttention(10, 3)
    it = _convert(nn.MultiheadAttention(E, H))
    with pytest.raises(ValueError, match="attn_mask"):
        it(x, x, x, attn_mask=torch.zeros(N, N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask"):
        it(x, x, x, key_padding_mask=torch.zeros(B + 1, N, dtype=torch.bool))
