"""The general IntegralTransform layer: every option runs, matches an independent naive
implementation of docs/design.md section 1 (built here from the layer's parameters), equals
nn.MultiheadAttention when it is attention, sends gradients to every parameter, and
rejects bad arguments clearly.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as TF

import itnet_ext
from itnet_ext import IntegralTransform

DT = torch.float64
TOL = 1e-10


def rel_err(a, b):
    scale = b.abs().max()
    return ((a - b).abs().max() / (scale if scale > 0 else 1.0)).item()


_ACT = {
    "relu": TF.relu,
    "gelu": lambda x: TF.gelu(x, approximate="tanh"),
    "silu": TF.silu,
}


def naive(layer, query, key, value, query_pos, key_pos, key_padding_mask=None, causal=False):
    """Batch-first (B, L, C) inputs, positions (B or 1, L, D). Independent of the library."""
    E, H, Dh, R = layer.embed_dim, layer.num_heads, layer.head_dim, layer.kernel_hidden
    B, N, _ = query.shape
    M = key.shape[1]
    if layer.content:
        if layer.in_proj_weight is not None:
            wq, wk, wv = layer.in_proj_weight.split(E)
        else:
            wq, wk, wv = layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight
        bq, bk, bv = layer.in_proj_bias.split(E) if layer.in_proj_bias is not None else (0, 0, 0)
        q = (query @ wq.T + bq).view(B, N, H, Dh)
        k = (key @ wk.T + bk).view(B, M, H, Dh)
    else:
        wv = layer.v_proj_weight
        bv = layer.v_proj_bias if layer.v_proj_bias is not None else 0
    v = (value @ wv.T + bv).view(B, M, H, Dh)
    logits = torch.zeros(B, H, N, M, dtype=DT)
    if layer.content:
        logits = logits + torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(Dh)
    pq = query_pos.expand(B, N, -1)
    pk = key_pos.expand(B, M, -1)
    off = pk[:, None, :, :] - pq[:, :, None, :]  # (B, N, M, D), p_j - p_i
    if R > 0:
        A = layer.kernel_A
        # the pair MLP on [f_i; p_i] and [f_j; p_j]
        fi = torch.cat([query, pq], -1)[:, :, None, :].expand(B, N, M, -1)
        if layer.relative_positions:
            Bmat = torch.cat([layer.kernel_B, -A[:, E:]], 1)
        else:
            Bmat = layer.kernel_B
        fj = torch.cat([key, pk], -1)[:, None, :, :].expand(B, N, M, -1)
        pre = fi @ A.T + layer.kernel_b1 + fj @ Bmat.T  # (B, N, M, R)
        if layer.offset_table is not None:
            idx = torch.zeros(B, N, M, dtype=torch.long)
            stride = 1
            for d in reversed(range(layer.pos_dim)):
                lo, hi = layer.window[d]
                o = (off[..., d] - lo).round().long().clamp(0, hi - lo)
                idx = idx + o * stride
                stride *= hi - lo + 1
            pre = pre + layer.offset_table[idx]
        hid = _ACT[layer.activation](pre)
        logits = logits + torch.einsum("bijr,hr->bhij", hid, layer.kernel_W2) + layer.kernel_b2[:, None, None]
    support = torch.ones(B, 1, N, M, dtype=torch.bool)
    if layer.window is not None:
        inside = torch.ones(B, N, M, dtype=torch.bool)
        for d, (lo, hi) in enumerate(layer.window):
            inside &= (off[..., d] >= lo) & (off[..., d] <= hi)
        support &= inside[:, None]
    if causal:
        support &= torch.ones(N, M, dtype=torch.bool).tril()
    if key_padding_mask is not None:
        support &= ~key_padding_mask[:, None, None, :]
    if layer.normalize == "softmax":
        z = logits.masked_fill(~support, float("-inf"))
        empty = ~support.any(-1, keepdim=True)
        a = torch.softmax(z.masked_fill(empty, 0.0), -1).masked_fill(~support, 0.0)
    else:
        a = logits * support
    y = torch.einsum("bhij,bjhd->bihd", a, v).reshape(B, N, E)
    return layer.out_proj(y)


def _grid(h, w):
    ii, jj = torch.meshgrid(torch.arange(h, dtype=DT), torch.arange(w, dtype=DT), indexing="ij")
    return torch.stack([ii, jj], -1).reshape(1, h * w, 2)


# (name, constructor kwargs, call setup)
CONFIGS = [
    ("mlp-relu", dict(kernel_hidden=6, activation="relu"), {}),
    ("mlp-gelu", dict(kernel_hidden=6, activation="gelu"), {}),
    ("mlp-silu-nocontent", dict(kernel_hidden=6, activation="silu", content=False), {}),
    ("offset1d-relative", dict(kernel_hidden=5, window=(-2, 3), offset_embedding=True,
                               relative_positions=True), {}),
    ("offset1d-none-causal", dict(kernel_hidden=5, window=2, offset_embedding=True, normalize="none",
                                  causal=True, content=False), {}),
    ("offset2d-positions", dict(kernel_hidden=4, pos_dim=2, window=((-1, 1), (-2, 1)),
                                offset_embedding=True), {"grid": (3, 4)}),
    ("window-float-pointcloud", dict(kernel_hidden=4, pos_dim=3, window=0.6, relative_positions=True,
                                     activation="silu"), {"points": True}),
    ("content-window-causal", dict(window=(-3, 0), causal=True), {}),
    ("cross-kvdim-batchfirst", dict(kernel_hidden=4, kdim=6, vdim=5, batch_first=True,
                                    relative_positions=True), {"cross": True}),
    ("cross-kvdim-window-offset", dict(kernel_hidden=3, kdim=6, vdim=5, window=(-1, 2),
                                       offset_embedding=True, nobias=True), {"cross": True}),
    ("is-causal-call", dict(kernel_hidden=3, normalize="none"), {"is_causal": True}),
]


def _make_inputs(layer, setup, gen, B=2):
    E = layer.embed_dim
    if "grid" in setup:
        h, w = setup["grid"]
        N = M = h * w
        qpos = kpos = _grid(h, w)
    elif setup.get("points"):
        N = M = 10
        qpos = torch.rand(B, N, 3, generator=gen, dtype=DT)
        kpos = qpos
    elif setup.get("cross"):
        N, M = 6, 9
        qpos = (torch.arange(N, dtype=DT) * 2 - 1).view(1, N, 1)  # strided grid, integer
        kpos = torch.arange(M, dtype=DT).view(1, M, 1)
    else:
        N = M = 8
        qpos = kpos = None
    query = torch.randn(B, N, E, generator=gen, dtype=DT)
    if setup.get("cross"):
        key = torch.randn(B, M, layer.kdim, generator=gen, dtype=DT)
        value = torch.randn(B, M, layer.vdim, generator=gen, dtype=DT)
    else:
        key = value = None
    return query, key, value, qpos, kpos


@pytest.mark.parametrize("name,kwargs,setup", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_layer_matches_naive_and_grads_flow(name, kwargs, setup):
    kwargs = dict(kwargs)
    bias = not kwargs.pop("nobias", False)
    torch.manual_seed(0)
    layer = IntegralTransform(16, 4, bias=bias, dtype=DT, **kwargs)
    with torch.no_grad():  # non-trivial biases / offset table
        for n_, p in layer.named_parameters():
            if n_.endswith("bias") or n_ in ("kernel_b2", "offset_table"):
                p.normal_()
    gen = torch.Generator().manual_seed(1)
    query, key, value, qpos, kpos = _make_inputs(layer, setup, gen)
    B, N = query.shape[:2]
    query.requires_grad_()
    kpm = None
    if setup.get("cross"):
        key.requires_grad_()
        value.requires_grad_()
        kpm = torch.zeros(B, key.shape[1], dtype=torch.bool)
        kpm[1, -3:] = True
    is_causal = setup.get("is_causal", False)

    def call(q, k, v):
        if not layer.batch_first:
            q, k, v = (None if x is None else x.transpose(0, 1) for x in (q, k, v))
        y = layer(q, k, v, query_pos=qpos, key_pos=kpos, key_padding_mask=kpm, is_causal=is_causal)
        return y if layer.batch_first else y.transpose(0, 1)

    out = call(query, key, value)
    k_ = query if key is None else key
    v_ = query if value is None else value
    M = k_.shape[1]
    qp = qpos if qpos is not None else torch.arange(N, dtype=DT).view(1, N, 1)
    kp = kpos if kpos is not None else torch.arange(M, dtype=DT).view(1, M, 1)
    ref = naive(layer, query, k_, v_, qp, kp, key_padding_mask=kpm, causal=layer.causal or is_causal)
    assert out.shape == (B, N, 16)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOL

    g = torch.randn(out.shape, generator=gen, dtype=DT)
    grads = torch.autograd.grad((out * g).sum(), [query] + list(layer.parameters()), allow_unused=True)
    grads_ref = torch.autograd.grad((ref * g).sum(), [query] + list(layer.parameters()), allow_unused=True)
    names = ["query"] + [n_ for n_, _ in layer.named_parameters()]
    for n_, a, b in zip(names, grads, grads_ref):
        assert a is not None, f"no gradient reaches {n_}"
        assert torch.isfinite(a).all(), n_
        if n_ == "kernel_b2" and layer.normalize == "softmax":
            # b2 is a per-head constant logit shift: softmax is invariant to it, the gradient
            # is zero up to roundoff
            assert a.abs().max() <= 1e-12, n_
            continue
        assert rel_err(a, b) <= TOL, f"grad wrt {n_}"
        assert a.abs().max() > 0, f"zero gradient for {n_}"


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kvdim", [False, True])
@pytest.mark.parametrize("masks", ["none", "kpm+bool", "kpm+float3d"])
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")
def test_equals_multihead_attention(batch_first, kvdim, masks):
    torch.manual_seed(3)
    kd, vd = (12, 10) if kvdim else (16, 16)
    mha = nn.MultiheadAttention(16, 4, kdim=kd, vdim=vd, batch_first=batch_first, dtype=DT)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    layer = IntegralTransform(16, 4, kdim=kd, vdim=vd, batch_first=batch_first, dtype=DT)
    layer.load_state_dict(mha.state_dict())  # same parameter names and shapes
    B, N, M = 3, 7, 9
    gen = torch.Generator().manual_seed(4)

    def inp(L, C):
        return torch.randn((B, L, C) if batch_first else (L, B, C), generator=gen, dtype=DT).requires_grad_()

    q, k, v = inp(N, 16), inp(M, kd), inp(M, vd)
    kpm = attn = None
    if masks != "none":
        kpm = torch.rand(B, M, generator=gen) < 0.3
        kpm[:, 0] = False
    if masks == "kpm+bool":
        attn = torch.rand(N, M, generator=gen) < 0.3
        attn[:, 0] = False
    elif masks == "kpm+float3d":
        attn = torch.randn(B * 4, N, M, generator=gen, dtype=DT)
        attn[:, 2:4, 3] = float("-inf")
    ref = mha(q, k, v, key_padding_mask=kpm, attn_mask=attn, need_weights=False)[0]
    out = layer(q, k, v, key_padding_mask=kpm, attn_mask=attn)
    assert rel_err(out, ref) <= TOL
    g = torch.randn(out.shape, generator=gen, dtype=DT)
    ga = torch.autograd.grad((out * g).sum(), [q, k, v] + list(layer.parameters()))
    gb = torch.autograd.grad((ref * g).sum(), [q, k, v] + list(mha.parameters()))
    for a, b in zip(ga, gb):
        assert rel_err(a, b) <= TOL


def test_is_causal_and_self_attention_defaults():
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(16, 4, dtype=DT)
    layer = IntegralTransform(16, 4, dtype=DT)
    layer.load_state_dict(mha.state_dict())
    x = torch.randn(6, 2, 16, dtype=DT)
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=DT)
    ref = mha(x, x, x, attn_mask=causal, need_weights=False)[0]
    assert rel_err(layer(x, is_causal=True), ref) <= TOL  # is_causal needs no attn_mask here
    assert rel_err(layer(x, x, x, attn_mask=causal), ref) <= TOL
    lc = IntegralTransform(16, 4, causal=True, dtype=DT)
    lc.load_state_dict(mha.state_dict())
    assert rel_err(lc(x), ref) <= TOL


def test_unbatched_and_layouts_agree():
    torch.manual_seed(6)
    a = IntegralTransform(16, 4, kernel_hidden=4, window=(-2, 2), offset_embedding=True, dtype=DT)
    b = IntegralTransform(16, 4, kernel_hidden=4, window=(-2, 2), offset_embedding=True,
                          batch_first=True, dtype=DT)
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, 3, 16, dtype=DT)  # (N, B, E)
    ya = a(x)
    assert rel_err(b(x.transpose(0, 1)).transpose(0, 1), ya) <= TOL
    for i in range(3):
        assert rel_err(a(x[:, i]), ya[:, i]) <= TOL  # unbatched (N, E)


def test_positions_defaults_and_shapes():
    torch.manual_seed(7)
    layer = IntegralTransform(16, 4, kernel_hidden=4, dtype=DT)
    x = torch.randn(5, 2, 16, dtype=DT)
    idx = torch.arange(5, dtype=DT)
    y = layer(x)
    assert rel_err(layer(x, query_pos=idx.view(1, 5, 1)), y) <= TOL  # key_pos follows query_pos
    assert rel_err(layer(x, query_pos=idx.view(5, 1), key_pos=idx.view(1, 5, 1).expand(2, 5, 1)), y) <= TOL
    assert rel_err(layer(x, query_pos=idx.view(1, 5, 1) + 2.0), y) > 1e-6  # absolute positions matter
    rel = IntegralTransform(16, 4, kernel_hidden=4, relative_positions=True, dtype=DT)
    assert rel_err(rel(x, query_pos=idx.view(1, 5, 1) + 2.0), rel(x)) <= TOL  # only offsets matter
    with pytest.raises(ValueError, match="query_pos"):
        layer(x, query_pos=torch.zeros(1, 4, 1, dtype=DT))
    with pytest.raises(ValueError, match="query_pos is required"):
        IntegralTransform(16, 4, kernel_hidden=4, pos_dim=2)(x.float())


def test_empty_support_is_zero_not_nan():
    torch.manual_seed(8)
    layer = IntegralTransform(16, 4, kernel_hidden=3, dtype=DT)
    with torch.no_grad():
        layer.out_proj.bias.normal_()
    x = torch.randn(2, 5, 16, dtype=DT, requires_grad=True)
    kpm = torch.zeros(5, 2, dtype=torch.bool).T.contiguous()
    kpm[1] = True  # every key of batch 1 is padding
    y = layer(x.transpose(0, 1), key_padding_mask=kpm).transpose(0, 1)
    assert torch.equal(y[1], layer.out_proj.bias.expand(5, 16))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(embed_dim=10, num_heads=3), "divisible"),
    (dict(embed_dim=0, num_heads=1), "embed_dim"),
    (dict(num_heads=0), "num_heads"),
    (dict(kernel_hidden=-1), "kernel_hidden"),
    (dict(activation="tanh", kernel_hidden=2), "activation"),
    (dict(normalize="sparsemax"), "normalize"),
    (dict(content=False), "at least one logit term"),
    (dict(offset_embedding=True, kernel_hidden=2), "requires a window"),
    (dict(offset_embedding=True, window=(-1, 1)), "kernel_hidden > 0"),
    (dict(offset_embedding=True, kernel_hidden=2, window=(-0.5, 1)), "integer window"),
    (dict(relative_positions=True), "kernel_hidden > 0"),
    (dict(window=(2, -2)), "lo <= hi"),
    (dict(window=((0, 1), (0, 1))), "pos_dim"),
    (dict(window="abc"), "window"),
    (dict(pos_dim=0), "pos_dim"),
    (dict(kdim=0), "kdim"),
])
def test_bad_constructor_args(kwargs, match):
    kw = dict(embed_dim=16, num_heads=4)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        IntegralTransform(**kw)


def test_bad_call_args():
    layer = IntegralTransform(16, 4, kdim=8)
    x = torch.randn(5, 2, 16)
    with pytest.raises(ValueError, match="key must have 8 features"):
        layer(x)
    with pytest.raises(ValueError, match="value must have 16 features"):
        layer(x, torch.randn(5, 2, 8))  # value defaults to key
    with pytest.raises(ValueError, match="same batch size"):
        layer(x, torch.randn(5, 3, 8), torch.randn(5, 3, 16))
    with pytest.raises(ValueError, match="attn_mask"):
        layer(x, torch.randn(6, 2, 8), torch.randn(6, 2, 16), attn_mask=torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="3-D"):
        layer(x, torch.randn(6, 8), torch.randn(6, 16))


def test_exported():
    assert itnet_ext.IntegralTransform is itnet_ext.nn.IntegralTransform
    assert "kernel_hidden=4" in repr(IntegralTransform(16, 4, kernel_hidden=4))
