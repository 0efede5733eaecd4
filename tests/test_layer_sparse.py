"""IntegralTransform's sparse evaluation methods (docs/design.md section 2): ``method="neighbors"``
(a given pair list) and ``method="sampled"`` (importance-weighted Monte Carlo).

Oracle: a naive float64 evaluation of docs/design.md section 1 built here from the layer's
parameters (``naive`` below, independent of the library), with an explicit support and
per-pair weights, and the dense layer itself (tested against its own naive oracle in
tests/test_layer.py).

- neighbours listing every key of the support once (weight 1) equal the dense layer
  (<= 1e-10), padded and CSR, with causal, key padding, window, content and MLP terms; a
  radius neighbourhood with per-pair log-weights equals the naive weighted sum;
- sampled: the same generator seed gives the same output; the ``none`` estimate is unbiased
  (mean over many draws within 5 standard errors of the dense layer, elementwise); the
  softmax estimate's error decreases with the number of samples; a stratified near field
  that covers the support is exact;
- every proposal runs, outputs are finite and gradients reach every parameter;
- state dicts move between dense and sparse layers; the method can be switched;
- bad arguments raise ValueError naming the argument.
"""
import math

import pytest
import torch
from torch.nn import functional as TF

from itnet_ext import IntegralTransform
from itnet_ext.nn import radius_graph

DT = torch.float64
TOL = 1e-10

_ACT = {
    "relu": TF.relu,
    "gelu": lambda x: TF.gelu(x, approximate="tanh"),
    "silu": TF.silu,
}


def rel_err(a, b):
    scale = b.abs().max()
    return ((a - b).abs().max() / (scale if scale > 0 else 1.0)).item()


# --------------------------------------------------------------------------------------------
# the oracle
# --------------------------------------------------------------------------------------------
def support_mask(layer, B, N, M, qpos, kpos, kpm=None, causal=False):
    """The dense support (B, N, M) bool: window, causal (index), key padding."""
    pq = qpos.expand(B, N, -1)
    pk = kpos.expand(B, M, -1)
    off = pk[:, None, :, :] - pq[:, :, None, :]
    sup = torch.ones(B, N, M, dtype=torch.bool)
    if layer.window is not None:
        for d, (lo, hi) in enumerate(layer.window):
            sup &= (off[..., d] >= lo) & (off[..., d] <= hi)
    if causal:
        sup &= torch.ones(N, M, dtype=torch.bool).tril()
    if kpm is not None:
        sup &= ~kpm[:, None, :]
    return sup


def naive(layer, query, key, value, qpos, kpos, support, weight=None):
    """Batch-first (B, L, C) inputs, positions (B or 1, L, D), ``support`` (B, N, M) bool,
    ``weight`` (B, N, M) >= 0 per-pair weights (default 1). softmax: exp(l) w / sum exp(l) w;
    none: l w. Returns the layer output (B, N, E)."""
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
    pq = qpos.expand(B, N, -1)
    pk = kpos.expand(B, M, -1)
    off = pk[:, None, :, :] - pq[:, :, None, :]
    if R > 0:
        A = layer.kernel_A
        fi = torch.cat([query, pq], -1)[:, :, None, :].expand(B, N, M, -1)
        Bmat = torch.cat([layer.kernel_B, -A[:, E:]], 1) if layer.relative_positions \
            else layer.kernel_B
        fj = torch.cat([key, pk], -1)[:, None, :, :].expand(B, N, M, -1)
        pre = fi @ A.T + layer.kernel_b1 + fj @ Bmat.T
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
        logits = logits + torch.einsum("bijr,hr->bhij", hid, layer.kernel_W2) \
            + layer.kernel_b2[:, None, None]
    w = torch.ones(B, N, M, dtype=DT) if weight is None else weight
    sup = (support & (w > 0))[:, None]
    w = w[:, None]
    if layer.normalize == "softmax":
        z = (logits + torch.log(w.clamp_min(1e-300))).masked_fill(~sup, float("-inf"))
        empty = ~sup.any(-1, keepdim=True)
        a = torch.softmax(z.masked_fill(empty, 0.0), -1).masked_fill(~sup, 0.0)
    else:
        a = logits * w * sup
    y = torch.einsum("bhij,bjhd->bihd", a, v).reshape(B, N, E)
    return layer.out_proj(y)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def make_layer(seed=0, **kw):
    torch.manual_seed(seed)
    layer = IntegralTransform(16, 4, dtype=DT, **kw)
    with torch.no_grad():  # non-trivial biases / offset table
        for n, p in layer.named_parameters():
            if n.endswith("bias") or n in ("kernel_b2", "offset_table"):
                p.normal_()
    return layer


def twin(layer, **method):
    """A layer of the same configuration and parameters with another evaluation method."""
    other = IntegralTransform(
        layer.embed_dim, layer.num_heads, kernel_hidden=layer.kernel_hidden,
        content=layer.content, activation=layer.activation, normalize=layer.normalize,
        causal=layer.causal, window=layer.window, pos_dim=layer.pos_dim,
        offset_embedding=layer.offset_embedding, relative_positions=layer.relative_positions,
        kdim=layer.kdim, vdim=layer.vdim, batch_first=layer.batch_first, dtype=DT, **method)
    other.load_state_dict(layer.state_dict())
    return other


def index_pos(L):
    return torch.arange(L, dtype=DT).view(1, L, 1)


def grid_pos(h, w):
    ii, jj = torch.meshgrid(torch.arange(h, dtype=DT), torch.arange(w, dtype=DT), indexing="ij")
    return torch.stack([ii, jj], -1).reshape(1, h * w, 2)


def csr_from_mask(mask, gen, shuffle=True):
    """CSR (row_ptr (B, N + 1), col_idx (B, E)) listing the True entries of mask (B, N, M)
    once each, in a random order within each row; E the largest count, padding -1."""
    B, N, M = mask.shape
    counts = mask.sum(-1)                                          # (B, N)
    row_ptr = torch.zeros(B, N + 1, dtype=torch.int64)
    row_ptr[:, 1:] = counts.cumsum(-1)
    E = int(row_ptr[:, -1].max())
    col_idx = torch.full((B, E + 3), -1, dtype=torch.int64)     # 3 padding entries past the end
    for b in range(B):
        for i in range(N):
            keys = mask[b, i].nonzero().flatten()
            if shuffle:
                keys = keys[torch.randperm(len(keys), generator=gen)]
            col_idx[b, row_ptr[b, i]:row_ptr[b, i + 1]] = keys
    return row_ptr, col_idx


# (name, constructor kwargs, setup)
CONFIGS = [
    ("softmax-content-mlp-kpm", dict(kernel_hidden=6), dict(kpm=True)),
    ("none-content-mlp-causal-kpm", dict(kernel_hidden=5, normalize="none", activation="relu"),
     dict(kpm=True, is_causal=True)),
    ("softmax-window-offset-causal", dict(kernel_hidden=4, window=(-3, 2), offset_embedding=True,
                                          causal=True, activation="silu"), dict(kpm=True)),
    ("none-window-offset-nocontent", dict(kernel_hidden=4, window=2, offset_embedding=True,
                                          content=False, normalize="none"), dict(kpm=True)),
    ("softmax-content-window", dict(window=(-2, 1)), dict()),
    ("none-2d-grid-offset", dict(kernel_hidden=3, pos_dim=2, window=((-1, 1), (-1, 2)),
                                 offset_embedding=True, normalize="none"), dict(grid=(3, 4), kpm=True)),
    ("softmax-cross-kvdim-batchfirst", dict(kernel_hidden=4, kdim=6, vdim=5, batch_first=True,
                                            relative_positions=True), dict(cross=True, kpm=True)),
]


def make_inputs(layer, setup, gen, B=2):
    """Batch-first inputs (query, key, value, qpos, kpos, kpm, call_qpos, call_kpos)."""
    E = layer.embed_dim
    if "grid" in setup:
        h, w = setup["grid"]
        N = M = h * w
        qpos = kpos = grid_pos(h, w)
        call_q = call_k = qpos
    elif setup.get("cross"):
        N, M = 6, 9
        qpos, kpos = index_pos(N), index_pos(M)
        call_q = call_k = None
    else:
        N = M = 9
        qpos = kpos = index_pos(N)
        call_q = call_k = None
    query = torch.randn(B, N, E, generator=gen, dtype=DT)
    if setup.get("cross"):
        key = torch.randn(B, M, layer.kdim, generator=gen, dtype=DT)
        value = torch.randn(B, M, layer.vdim, generator=gen, dtype=DT)
    else:
        key = value = query
    kpm = None
    if setup.get("kpm"):
        kpm = torch.rand(B, M, generator=gen) < 0.3
        kpm[-1] = True  # last batch element: no key at all (empty rows -> out_proj.bias)
    return query, key, value, qpos, kpos, kpm, call_q, call_k


def call(layer, query, key, value, **kw):
    """Call with batch-first inputs whatever the layer's layout; returns batch-first."""
    if not layer.batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    y = layer(query, key, value, **kw)
    return y if layer.batch_first else y.transpose(0, 1)


# --------------------------------------------------------------------------------------------
# (1) neighbours
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["padded-all-keys", "csr-support"])
@pytest.mark.parametrize("name,kwargs,setup", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_neighbors_listing_the_support_equals_dense(name, kwargs, setup, form):
    dense = make_layer(1, **kwargs)
    layer = twin(dense, method="neighbors")
    gen = torch.Generator().manual_seed(2)
    query, key, value, qpos, kpos, kpm, call_q, call_k = make_inputs(dense, setup, gen)
    query.requires_grad_()
    B, N, M = query.shape[0], query.shape[1], key.shape[1]
    is_causal = setup.get("is_causal", False)
    causal = dense.causal or is_causal
    sup = support_mask(dense, B, N, M, qpos, kpos, kpm, causal)
    if form == "padded-all-keys":
        # every key of every row: the layer must drop padded / non-causal keys itself (and the
        # op the pairs outside the window)
        nb = torch.arange(M).expand(B, N, M).contiguous()
    else:
        nb = csr_from_mask(sup, gen)
    kw = dict(query_pos=call_q, key_pos=call_k, key_padding_mask=kpm, is_causal=is_causal)
    out = call(layer, query, key, value, neighbors=nb, **kw)
    ref_dense = call(dense, query, key, value, **kw)
    ref = naive(dense, query, key, value, qpos, kpos, sup)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOL
    assert rel_err(out, ref_dense) <= TOL
    if kpm is not None:  # the last batch element has no key: out_proj.bias
        assert torch.equal(out[-1], dense.out_proj.bias.expand(N, -1))

    g = torch.randn(out.shape, generator=gen, dtype=DT)
    params = [query] + list(layer.parameters())
    ga = torch.autograd.grad((out * g).sum(), params, allow_unused=True)
    gb = torch.autograd.grad((ref * g).sum(), [query] + list(dense.parameters()), allow_unused=True)
    for (n, _), a, b in zip([("query", None)] + list(layer.named_parameters()), ga, gb):
        assert a is not None and torch.isfinite(a).all(), n
        if n == "kernel_b2" and layer.normalize == "softmax":
            assert a.abs().max() <= 1e-12
            continue
        assert rel_err(a, b) <= TOL, f"grad wrt {n}"


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_neighbors_radius_graph_with_pair_weights(normalize):
    """A partial neighbourhood (radius graph on a point cloud) with per-pair log-weights,
    unbatched and batched, CSR and padded: the naive weighted sum over exactly those pairs."""
    dense = make_layer(3, kernel_hidden=5, pos_dim=2, relative_positions=True,
                       normalize=normalize, batch_first=True)
    layer = twin(dense, method="neighbors")
    gen = torch.Generator().manual_seed(4)
    B, N = 2, 12
    pos = torch.rand(B, N, 2, generator=gen, dtype=DT)
    x = torch.randn(B, N, 16, generator=gen, dtype=DT)
    row_ptr, col_idx = radius_graph(pos, pos, 0.45)
    log_w = torch.randn(col_idx.shape, generator=gen, dtype=DT)
    # the weight matrix of the graph
    W = torch.zeros(B, N, N, dtype=DT)
    for b in range(B):
        for i in range(N):
            for e in range(int(row_ptr[b, i]), int(row_ptr[b, i + 1])):
                W[b, i, col_idx[b, e]] += log_w[b, e].exp()
    adj = W > 0
    ref = naive(dense, x, x, x, pos, pos, adj, W)
    out = layer(x, query_pos=pos, neighbors=(row_ptr, col_idx, log_w))
    assert rel_err(out, ref) <= TOL
    # padded form of the same pairs (rows padded with absent pairs, idx -1)
    S = int((row_ptr[:, 1:] - row_ptr[:, :-1]).max())
    idx = torch.full((B, N, S), -1, dtype=torch.int64)
    lw = torch.full((B, N, S), -math.inf, dtype=DT)
    for b in range(B):
        for i in range(N):
            s, e = int(row_ptr[b, i]), int(row_ptr[b, i + 1])
            idx[b, i, :e - s] = col_idx[b, s:e]
            lw[b, i, :e - s] = log_w[b, s:e]
    assert rel_err(layer(x, query_pos=pos, neighbors=(idx, lw)), ref) <= TOL
    # unbatched: drop the batch dim everywhere
    for b in range(B):
        yb = layer(x[b], query_pos=pos[b], neighbors=(row_ptr[b], col_idx[b], log_w[b]))
        assert rel_err(yb, ref[b]) <= TOL
    # with softmax a per-pair log-weight is an additive logit: the dense layer with a float
    # attn_mask of log W (-inf off the graph) is the same function
    if normalize == "softmax":
        am = torch.log(W).repeat_interleave(4, 0)  # (B * H, N, N)
        assert rel_err(dense(x, query_pos=pos, attn_mask=am), ref) <= TOL


def test_neighbors_float_key_padding_mask():
    """A float key_padding_mask: -inf entries are padding, finite ones additive (softmax)."""
    dense = make_layer(5, kernel_hidden=3)
    layer = twin(dense, method="neighbors")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(7, 2, 16, generator=gen, dtype=DT)
    kpm = torch.randn(2, 7, generator=gen, dtype=DT)
    kpm[0, 2] = kpm[1, 5] = -math.inf
    nb = torch.arange(7).expand(2, 7, 7).contiguous()
    assert rel_err(layer(x, key_padding_mask=kpm, neighbors=nb),
                   dense(x, key_padding_mask=kpm)) <= TOL


# --------------------------------------------------------------------------------------------
# (2) sampled
# --------------------------------------------------------------------------------------------
def test_sampled_same_seed_same_output_and_layouts():
    layer = make_layer(7, kernel_hidden=4, method="sampled", samples=5, causal=True)
    x = torch.randn(10, 3, 16, dtype=DT)  # (N, B, E)
    kpm = torch.rand(3, 10) < 0.3

    def run(seed, inp=x, mask=kpm, lay=layer):
        return lay(inp, key_padding_mask=mask, generator=torch.Generator().manual_seed(seed))

    y1, y2, y3 = run(11), run(11), run(12)
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)
    # batch_first: the same draws (the generator is consumed in (B, N, S) order)
    bf = twin(layer, method="sampled", samples=5)
    bf.batch_first = True
    assert torch.equal(run(11, x.transpose(0, 1), lay=bf).transpose(0, 1), y1)
    # unbatched = batch of one
    xb, mb = x[:, :1], kpm[:1]
    assert rel_err(run(13, x[:, 0], kpm[0]), run(13, xb, mb)[:, 0]) <= 1e-14
    sal = twin(layer, method="sampled", samples=5, proposal="saliency")
    sc = torch.randn(1, 10, dtype=DT)
    y_un = sal(x[:, 0], key_padding_mask=kpm[0], key_scores=sc[0],
               generator=torch.Generator().manual_seed(14))
    y_b1 = sal(xb, key_padding_mask=mb, key_scores=sc, generator=torch.Generator().manual_seed(14))
    assert rel_err(y_un, y_b1[:, 0]) <= 1e-14


def _estimates(layer, n_draws, x, gen_seed, key_padding_mask=None, key_scores=None, **kw):
    """n_draws independent estimates (n_draws, N, B, E) of layer(x) ((N, B, E) input), from
    one call on n_draws copies of the batch (every batch element draws its own keys)."""
    N, B, E = x.shape
    gen = torch.Generator().manual_seed(gen_seed)
    rep = dict(kw)
    if key_padding_mask is not None:
        rep["key_padding_mask"] = key_padding_mask.repeat(n_draws, 1)
    if key_scores is not None:
        rep["key_scores"] = key_scores.repeat(n_draws, 1)
    with torch.no_grad():
        y = layer(x.repeat(1, n_draws, 1), generator=gen, **rep)
    return y.view(N, n_draws, B, E).transpose(0, 1)


@pytest.mark.parametrize("proposal", ["uniform", "local", "saliency", "stratified"])
def test_sampled_none_is_unbiased(proposal):
    """E[estimate] = dense for normalize='none': the mean over n draws is within 5 standard
    errors (sample std / sqrt(n)) of the dense output, in every element."""
    opts = dict(uniform={}, local=dict(sigma=4.0), saliency={},
                stratified=dict(near_window=(-1, 1)))[proposal]
    dense = make_layer(8, kernel_hidden=4, normalize="none", causal=True, window=(-7, 3))
    layer = twin(dense, method="sampled", samples=3, proposal=proposal, **opts)
    gen = torch.Generator().manual_seed(9)
    N, B = 14, 2
    x = torch.randn(N, B, 16, generator=gen, dtype=DT)
    kpm = torch.rand(B, N, generator=gen) < 0.25
    kw = dict(key_padding_mask=kpm)
    if proposal == "saliency":
        kw["key_scores"] = torch.randn(B, N, generator=gen, dtype=DT)
    n = 2000
    est = _estimates(layer, n, x, 10, **kw)
    ref = dense(x, key_padding_mask=kpm).detach()
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    dev = (mean - ref).abs()
    assert torch.all(dev <= 5 * se + 1e-10 * ref.abs().max()), float((dev / se.clamp_min(1e-300)).max())
    # the bound has power: it is small next to the output, and an estimator that forgets
    # the 1/S factor (a bias of factor S) is far outside it
    assert float(se.max()) < 0.1 * float(ref.abs().max())
    assert not torch.all((3 * mean - ref).abs() <= 5 * 3 * se + 1e-10)


def test_sampled_softmax_error_decreases_with_samples():
    dense = make_layer(12, kernel_hidden=4)
    gen = torch.Generator().manual_seed(13)
    N, B = 48, 2
    x = torch.randn(N, B, 16, generator=gen, dtype=DT)
    ref = dense(x, is_causal=True).detach()
    errs = []
    for S in (2, 8, 32, 128):
        layer = twin(dense, method="sampled", samples=S)
        est = _estimates(layer, 8, x, 14, is_causal=True)
        errs.append(float((est - ref).pow(2).mean().sqrt()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.3 * errs[0], errs  # ~ 1/sqrt(S): 0.125 expected


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_stratified_covering_window_is_exact(normalize):
    """A near field covering the whole support leaves no far field: the dense layer exactly."""
    dense = make_layer(15, kernel_hidden=4, normalize=normalize, window=(-4, 2),
                       offset_embedding=True)
    layer = twin(dense, method="sampled", samples=2, proposal="stratified", near_window=(-4, 2))
    x = torch.randn(11, 2, 16, dtype=DT)
    kpm = torch.rand(2, 11) < 0.3
    if normalize == "softmax":  # a float mask: -inf = padding, finite = additive logit
        kpm = torch.randn(2, 11, dtype=DT).masked_fill(kpm, -math.inf)
    ref = dense(x, key_padding_mask=kpm, is_causal=True)
    out = layer(x, key_padding_mask=kpm, is_causal=True, generator=torch.Generator().manual_seed(0))
    assert rel_err(out, ref) <= TOL


# --------------------------------------------------------------------------------------------
# (3) every proposal runs, gradients reach every parameter
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("proposal", ["uniform", "local", "saliency", "stratified"])
def test_every_proposal_runs_and_grads_flow(proposal, normalize):
    opts = dict(uniform={}, local=dict(sigma=(1.5, 2.0)), saliency={},
                stratified=dict(near_window=1))[proposal]
    layer = make_layer(16, kernel_hidden=4, pos_dim=2, window=((-2, 2), (-3, 3)),
                       offset_embedding=True, normalize=normalize, method="sampled",
                       samples=4, proposal=proposal, **opts)
    gen = torch.Generator().manual_seed(17)
    pos = grid_pos(4, 5)
    x = torch.randn(20, 2, 16, generator=gen, dtype=DT, requires_grad=True)
    kw = dict(query_pos=pos, key_padding_mask=torch.rand(2, 20, generator=gen) < 0.2,
              generator=gen)
    if proposal == "saliency":
        kw["key_scores"] = torch.randn(2, 20, generator=gen, dtype=DT)
    y = layer(x, **kw)
    assert y.shape == x.shape and torch.isfinite(y).all()
    names = ["input"] + [n for n, _ in layer.named_parameters()]
    grads = torch.autograd.grad((y * torch.randn_like(y)).sum(), [x] + list(layer.parameters()),
                                allow_unused=True)
    for n, g in zip(names, grads):
        assert g is not None, f"no gradient reaches {n}"
        assert torch.isfinite(g).all(), n
        if not (n == "kernel_b2" and normalize == "softmax"):  # softmax: invariant to b2
            assert g.abs().max() > 0, f"zero gradient for {n}"


# --------------------------------------------------------------------------------------------
# (4) state dicts and switching
# --------------------------------------------------------------------------------------------
def test_state_dict_round_trip_and_switching():
    dense = make_layer(18, kernel_hidden=4, window=(-3, 3), offset_embedding=True)
    sampled = IntegralTransform(16, 4, kernel_hidden=4, window=(-3, 3), offset_embedding=True,
                                dtype=DT, method="sampled", samples=8)
    assert set(sampled.state_dict()) == set(dense.state_dict())
    sampled.load_state_dict(dense.state_dict())  # strict
    back = IntegralTransform(16, 4, kernel_hidden=4, window=(-3, 3), offset_embedding=True,
                             dtype=DT)
    back.load_state_dict(sampled.state_dict())
    for (n, a), (_, b) in zip(dense.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.randn(9, 2, 16, dtype=DT)
    ref = dense(x)
    assert torch.equal(back(x), ref)
    # the sampled layer is the dense one evaluated by sampling: a stratified near field
    # covering the window is exact
    g = torch.Generator().manual_seed(0)
    assert rel_err(sampled.evaluate_with(proposal="stratified", near_window=3)(x, generator=g),
                   ref) <= TOL
    assert "method='sampled'" in repr(sampled) and "near_window" in repr(sampled)
    # switching a trained layer in place, and back
    assert dense.evaluate_with(method="neighbors") is dense
    nb = torch.arange(9).expand(2, 9, 9).contiguous()
    assert rel_err(dense(x, neighbors=nb), ref) <= TOL
    dense.method = "dense"
    assert torch.equal(dense(x), ref)
    dense.samples = 3
    dense.method = "sampled"
    assert (dense.method, dense.samples, dense.proposal) == ("sampled", 3, "uniform")
    assert dense(x, generator=g).shape == x.shape
    with pytest.raises(ValueError, match="sigma"):
        dense.proposal = "local"
    assert dense.proposal == "uniform"  # unchanged after a failed switch
    dense.evaluate_with(proposal="local", sigma=1.0)
    assert dense.sigma == (1.0,)


# --------------------------------------------------------------------------------------------
# (5) bad arguments
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(method="monte-carlo"), "method"),
    (dict(method="sampled"), "samples"),
    (dict(method="sampled", samples=0), "samples"),
    (dict(samples=-3), "samples"),
    (dict(samples=2.5), "samples"),
    (dict(method="sampled", samples=4, proposal="gaussian"), "proposal"),
    (dict(method="sampled", samples=4, proposal="local"), "sigma"),
    (dict(method="sampled", samples=4, proposal="local", sigma=0.0), "sigma"),
    (dict(method="sampled", samples=4, proposal="local", sigma=(1.0, 2.0)), "sigma"),
    (dict(method="sampled", samples=4, proposal="stratified"), "near_window"),
    (dict(method="sampled", samples=4, proposal="stratified", near_window=(3, -3)), "near_window"),
])
def test_bad_method_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IntegralTransform(16, 4, **kwargs)
    layer = IntegralTransform(16, 4)
    with pytest.raises(ValueError, match=match):
        layer.evaluate_with(**kwargs)
    assert layer.method == "dense"


def test_bad_call_args():
    x = torch.randn(6, 2, 16)
    nbl = IntegralTransform(16, 4, method="neighbors")
    smp = IntegralTransform(16, 4, method="sampled", samples=3)
    sal = IntegralTransform(16, 4, method="sampled", samples=3, proposal="saliency")
    dense = IntegralTransform(16, 4)
    full = torch.arange(6).expand(2, 6, 6).contiguous()
    with pytest.raises(ValueError, match="neighbors is required"):
        nbl(x)
    with pytest.raises(ValueError, match="attn_mask"):
        nbl(x, neighbors=full, attn_mask=torch.zeros(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        smp(x, attn_mask=torch.zeros(6, 6))
    with pytest.raises(ValueError, match="neighbors"):
        smp(x, neighbors=full)
    with pytest.raises(ValueError, match="neighbors"):
        dense(x, neighbors=full)
    with pytest.raises(ValueError, match="neighbors"):
        nbl(x, neighbors=full.float())
    with pytest.raises(ValueError, match="neighbors"):
        nbl(x, neighbors=full[:, :5])
    with pytest.raises(ValueError, match="neighbors"):
        nbl(x, neighbors=(torch.zeros(2, 6, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64)))
    with pytest.raises(ValueError, match="neighbors: log_w"):
        nbl(x, neighbors=(full, torch.zeros(2, 6, 5)))
    with pytest.raises(ValueError, match="idx"):  # a key out of range (checked by the op)
        nbl(x, neighbors=full + 1)
    with pytest.raises(ValueError, match="key_scores is required"):
        sal(x)
    with pytest.raises(ValueError, match="key_scores"):
        sal(x, key_scores=torch.randn(2, 5))
    with pytest.raises(ValueError, match="key_scores"):
        smp(x, key_scores=torch.randn(2, 6))
    with pytest.raises(ValueError, match="generator"):
        smp(x, generator=123)
    with pytest.raises(ValueError, match="key_padding_mask"):
        IntegralTransform(16, 4, method="neighbors", normalize="none")(
            x, neighbors=full, key_padding_mask=torch.randn(2, 6))
    with pytest.raises(ValueError, match="query_pos is required"):
        IntegralTransform(16, 4, pos_dim=2, method="sampled", samples=2, proposal="local",
                          sigma=1.0)(x)
