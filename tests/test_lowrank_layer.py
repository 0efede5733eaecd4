"""IntegralTransform(method="lowrank") and itnet_ext.lowrank.fit, against hand-written oracles."""
import math

import pytest
import torch

import itnet_ext
from itnet_ext import functional, reference
from itnet_ext.lowrank import LowRankFitReport, fit
from itnet_ext.nn import IntegralTransform

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny problems: thread start-up dominates, and the CPU may be shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------
# the oracle
# ------------------------------------------------------------------------------------------
def _mlp_features(fm, x, pos, H, F):
    """Raw features by hand: W_o silu(W_h [x; p] + b_h) + b_o + W_s [x; p] -> (B, H, n, F)."""
    B, n, _ = x.shape
    inp = torch.cat([x, pos.expand(B, n, pos.shape[-1]).to(x.dtype)], -1)
    h = inp @ fm.hidden_layer.weight.T + fm.hidden_layer.bias
    h = h * torch.sigmoid(h)
    z = h @ fm.out_layer.weight.T + fm.out_layer.bias + inp @ fm.skip.weight.T
    return z.reshape(B, n, H, F).permute(0, 2, 1, 3)


def _oracle(layer, x_bf, pos=None, padding=None, causal=None):
    """out_proj(sum_j (phi_i.psi_j) v_j [/ sum_j phi_i.psi_j]) in float64, self attention,
    batch-first x (B, N, E); unstabilized exp features in softmax mode."""
    B, N, E = x_bf.shape
    H, F, Dh = layer.num_heads, layer.rank, layer.head_dim
    causal = layer.causal if causal is None else causal
    if pos is None:
        pos = torch.arange(N, dtype=DT).view(1, N, 1)
    phi = _mlp_features(layer.lowrank_phi, x_bf, pos, H, F)
    psi = _mlp_features(layer.lowrank_psi, x_bf, pos, H, F)
    if layer.normalize == "softmax":
        phi, psi = phi.exp(), psi.exp()
    wv = layer.in_proj_weight[2 * E:]
    bv = layer.in_proj_bias[2 * E:]
    v = (x_bf @ wv.T + bv).reshape(B, N, H, Dh).permute(0, 2, 1, 3)
    w = torch.einsum("bhif,bhjf->bhij", phi, psi)
    mask = torch.ones(B, 1, N, N, dtype=torch.bool)
    if causal:
        mask = mask & torch.ones(N, N, dtype=torch.bool).tril()
    if padding is not None:
        mask = mask & ~padding[:, None, None, :]
    w = w * mask
    y = w @ v
    if layer.normalize == "softmax":
        den = w.sum(-1, keepdim=True)
        # an empty support (all keys padded / after the query) outputs 0, as the dense layer
        y = torch.where(den != 0, y / torch.where(den != 0, den, torch.ones_like(den)),
                        torch.zeros_like(y))
    y = y.permute(0, 2, 1, 3).reshape(B, N, E)
    return y @ layer.out_proj.weight.T + layer.out_proj.bias


def _randomize(layer, gen, scale=0.5):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return layer


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


# ------------------------------------------------------------------------------------------
# (a) forward
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["none", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_forward_matches_oracle(normalize, causal, batch_first):
    gen = torch.Generator().manual_seed(hash((normalize, causal, batch_first)) % 1000)
    layer = IntegralTransform(8, 2, normalize=normalize, causal=causal, batch_first=batch_first,
                              method="lowrank", rank=3, lowrank_hidden=5, dtype=DT)
    _randomize(layer, gen)
    x = torch.randn(3, 7, 8, generator=gen, dtype=DT)
    xin = x if batch_first else x.transpose(0, 1)
    y = layer(xin)
    y = y if batch_first else y.transpose(0, 1)
    assert _rel(y, _oracle(layer, x)) < 1e-10
    # positions and a bool key_padding_mask (psi of padded keys = 0)
    pos = torch.randn(1, 7, 1, generator=gen, dtype=DT)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    pad[2, 0] = True
    y = layer(xin, query_pos=pos, key_padding_mask=pad)
    y = y if batch_first else y.transpose(0, 1)
    assert _rel(y, _oracle(layer, x, pos=pos, padding=pad)) < 1e-10
    # is_causal in the call
    if not causal:
        y = layer(xin, is_causal=True)
        y = y if batch_first else y.transpose(0, 1)
        assert _rel(y, _oracle(layer, x, causal=True)) < 1e-10


def test_softmax_stabilizer_large_features():
    """exp features far beyond float64's range still give the (cancelled) exact output."""
    gen = torch.Generator().manual_seed(3)
    layer = IntegralTransform(8, 2, method="lowrank", rank=3, batch_first=True, dtype=DT)
    _randomize(layer, gen)
    x = torch.randn(2, 6, 8, generator=gen, dtype=DT)
    ref = _oracle(layer, x)
    with torch.no_grad():
        layer.lowrank_phi.out_layer.bias.add_(800.0)   # exp(800) overflows float64
        layer.lowrank_psi.out_layer.bias.add_(-800.0)
    y = layer(x)
    assert torch.isfinite(y).all()
    assert _rel(y, ref) < 1e-10


def test_float32_and_fused_op_looked_up_at_call_time(monkeypatch):
    layer = IntegralTransform(8, 2, method="lowrank", rank=4, batch_first=True)
    x = torch.randn(2, 5, 8)
    calls = []
    # the evaluator looks the fused op up in its strategy's functional module at call time
    lr_functional = itnet_ext.lowrank.functional
    orig = lr_functional.lowrank_integral_transform

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(lr_functional, "lowrank_integral_transform", spy)
    y = layer(x)
    assert calls and y.dtype == torch.float32
    layer64 = IntegralTransform(8, 2, method="lowrank", rank=4, batch_first=True, dtype=DT)
    layer64.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    assert _rel(y.double(), layer64(x.double())) < 1e-5


# ------------------------------------------------------------------------------------------
# (b) gradients
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["none", "softmax"])
def test_gradients_reach_feature_maps(normalize):
    gen = torch.Generator().manual_seed(5)
    layer = IntegralTransform(8, 2, normalize=normalize, causal=True, method="lowrank", rank=3,
                              dtype=DT)
    _randomize(layer, gen, 0.3)
    x = torch.randn(6, 2, 8, generator=gen, dtype=DT)
    (layer(x) * torch.randn(6, 2, 8, generator=gen, dtype=DT)).sum().backward()
    for name, p in layer.named_parameters():
        if name.startswith("lowrank_") or name.startswith("out_proj"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the value rows of in_proj get a gradient; the q / k rows (unused) get none
    g = layer.in_proj_weight.grad
    assert g[16:].abs().sum() > 0 and g[:16].abs().sum() == 0


# ------------------------------------------------------------------------------------------
# (c) fit on an exactly low-rank kernel
# ------------------------------------------------------------------------------------------
def _dense_logits_by_hand(dense, x):
    E, H = dense.embed_dim, dense.num_heads
    Dh = E // H
    B, N, _ = x.shape
    q = (x @ dense.in_proj_weight[:E].T + dense.in_proj_bias[:E]).reshape(B, N, H, Dh)
    k = (x @ dense.in_proj_weight[E:2 * E].T + dense.in_proj_bias[E:2 * E]).reshape(B, N, H, Dh)
    return torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(Dh)


def _exact_lowrank_dense(seed=1):
    torch.manual_seed(seed)
    return IntegralTransform(8, 2, normalize="none", batch_first=True, dtype=DT)  # Dh = 4


def test_fit_exact_lowrank_nystrom():
    dense = _exact_lowrank_dense()
    x = torch.randn(8, 12, 8, generator=torch.Generator().manual_seed(2), dtype=DT)
    lr_layer, rep = fit(dense, x, 4, 20, landmarks=True, progress=False,
                        generator=torch.Generator().manual_seed(0))
    assert isinstance(rep, LowRankFitReport) and rep.nystrom_init and rep.steps == 20
    assert rep.kernel_rel_error < 1e-2 and rep.output_rel_error < 1e-2
    assert rep.final_loss < 1e-4  # the reported loss belongs to the returned features
    # independent: kernel and output on fresh inputs
    xf = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(9), dtype=DT)
    pos = torch.arange(10, dtype=DT).view(1, 10, 1)
    with torch.no_grad():
        phi = _mlp_features(lr_layer.lowrank_phi, xf, pos, 2, 4)
        psi = _mlp_features(lr_layer.lowrank_psi, xf, pos, 2, 4)
        kern = torch.einsum("bhif,bhjf->bhij", phi, psi)
        assert _rel(kern, _dense_logits_by_hand(dense, xf)) < 1e-2
        assert _rel(lr_layer(xf), dense(xf)) < 1e-2


def test_fit_report_consistent_with_recomputation():
    dense = _exact_lowrank_dense(4)
    x = torch.randn(6, 10, 8, generator=torch.Generator().manual_seed(3), dtype=DT)
    lr_layer, rep = fit(dense, x, 4, 60, holdout=0.0, progress=False,
                        generator=torch.Generator().manual_seed(1))
    assert rep.evaluated_on == "train" and rep.n_eval == 6 and rep.steps == 60
    assert not rep.nystrom_init and not rep.kept_init and math.isfinite(rep.final_loss)
    pos = torch.arange(10, dtype=DT).view(1, 10, 1)
    with torch.no_grad():
        phi = _mlp_features(lr_layer.lowrank_phi, x, pos, 2, 4)
        psi = _mlp_features(lr_layer.lowrank_psi, x, pos, 2, 4)
        kern_err = _rel(torch.einsum("bhif,bhjf->bhij", phi, psi), _dense_logits_by_hand(dense, x))
        out_err = _rel(_oracle(lr_layer, x), dense(x))
    assert 1e-4 < rep.kernel_rel_error < 1.0  # a non-trivial number to compare
    assert rep.kernel_rel_error == pytest.approx(kern_err, rel=1e-8)
    assert rep.train_kernel_rel_error == pytest.approx(kern_err, rel=1e-8)
    assert rep.output_rel_error == pytest.approx(out_err, rel=1e-8)
    s = str(rep)
    assert "kernel rel. error" in s and "output rel. error" in s and "rank 4" in s
    # the fitted layer keeps the teacher: evaluated densely it is the dense layer
    with torch.no_grad():
        lr_layer.evaluate_with(method="dense")
        assert _rel(lr_layer(x), dense(x)) < 1e-12
        lr_layer.evaluate_with(method="lowrank")
        assert _rel(lr_layer(x), _oracle(lr_layer, x)) < 1e-10


def test_fit_progress_text_fallback(capsys):
    dense = _exact_lowrank_dense()
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(2), dtype=DT)
    fit(dense, x, 2, 10, progress=True, generator=torch.Generator().manual_seed(0))
    err = capsys.readouterr().err
    assert "lowrank.fit" in err or "it/s" in err or "10/10" in err


# ------------------------------------------------------------------------------------------
# (d) generic softmax layer: error decreases with the rank
# ------------------------------------------------------------------------------------------
def test_fit_softmax_error_decreases_with_rank():
    torch.manual_seed(2)
    dense = IntegralTransform(8, 2, batch_first=True)
    x = 2 * torch.randn(32, 16, 8, generator=torch.Generator().manual_seed(7))
    errs = []
    for r in (1, 4, 16):
        _, rep = fit(dense, x, r, 150, hidden=16, progress=False,
                     generator=torch.Generator().manual_seed(0))
        errs.append((rep.kernel_rel_error, rep.output_rel_error))
    k, o = zip(*errs)
    assert k[0] > k[1] > k[2] and o[0] > o[1] > o[2], errs


# ------------------------------------------------------------------------------------------
# (e) bad arguments
# ------------------------------------------------------------------------------------------
def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        IntegralTransform(8, 2, method="lowrank")
    with pytest.raises(ValueError, match="rank"):
        IntegralTransform(8, 2, method="lowrank", rank=0)
    with pytest.raises(ValueError, match="rank"):
        IntegralTransform(8, 2, rank=4)
    with pytest.raises(ValueError, match="lowrank_hidden"):
        IntegralTransform(8, 2, method="lowrank", rank=2, lowrank_hidden=0)
    with pytest.raises(ValueError, match="window"):
        IntegralTransform(8, 2, method="lowrank", rank=2, window=2)
    with pytest.raises(ValueError, match="offset_embedding"):
        IntegralTransform(8, 2, kernel_hidden=4, window=2, offset_embedding=True,
                          method="lowrank", rank=2)
    with pytest.raises(ValueError, match="method"):
        IntegralTransform(8, 2).evaluate_with(method="lowrank")
    layer = IntegralTransform(8, 2, method="lowrank", rank=2, batch_first=True)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="attn_mask"):
        layer(x, attn_mask=torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask"):
        layer(x, key_padding_mask=torch.full((2, 5), 0.5))
    with pytest.raises(ValueError, match="key_padding_mask"):
        layer(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="neighbors"):
        layer(x, neighbors=torch.zeros(2, 5, 1, dtype=torch.long))


def test_fit_bad_arguments():
    dense = _exact_lowrank_dense()
    x = torch.randn(4, 6, 8, dtype=DT)
    for kwargs, name in [
        (dict(rank=0), "rank"), (dict(steps=-1), "steps"), (dict(lr=0.0), "lr"),
        (dict(holdout=1.0), "holdout"), (dict(landmarks=[0, 1]), "landmarks"),
        (dict(landmarks=[0, 0, 1, 2]), "landmarks"), (dict(generator=3), "generator"),
        (dict(rows_per_step=0), "rows_per_step"), (dict(progress="yes"), "progress"),
    ]:
        args = dict(rank=4, steps=1, progress=False)
        args.update(kwargs)
        with pytest.raises(ValueError, match=name):
            fit(dense, x, args.pop("rank"), args.pop("steps"), **args)
    with pytest.raises(ValueError, match="dense_layer"):
        fit(torch.nn.Linear(8, 8), x, 4, 1)
    with pytest.raises(ValueError, match="dense_layer"):
        fit(IntegralTransform(8, 2, window=1, dtype=DT), x, 4, 1)
    with pytest.raises(ValueError, match="sample_inputs"):
        fit(dense, "x", 4, 1)
    with pytest.raises(ValueError, match="sample_inputs"):
        fit(dense, x[0], 4, 1)
    with pytest.raises(ValueError, match="holdout"):
        fit(dense, x[:1], 4, 1, holdout=0.5)


# ------------------------------------------------------------------------------------------
# (f) state dicts
# ------------------------------------------------------------------------------------------
def test_state_dict_between_dense_and_lowrank():
    torch.manual_seed(0)
    dense = IntegralTransform(8, 2, kernel_hidden=3, batch_first=True, dtype=DT)
    lowrank = IntegralTransform(8, 2, kernel_hidden=3, batch_first=True, dtype=DT,
                                method="lowrank", rank=3)
    lr_keys = {k for k in lowrank.state_dict() if k.startswith("lowrank_")}
    assert lr_keys and set(lowrank.state_dict()) == set(dense.state_dict()) | lr_keys
    res = lowrank.load_state_dict(dense.state_dict(), strict=False)
    assert set(res.missing_keys) == lr_keys and not res.unexpected_keys
    for k, v in dense.state_dict().items():
        assert torch.equal(lowrank.state_dict()[k], v)
    res = dense.load_state_dict(lowrank.state_dict(), strict=False)
    assert set(res.unexpected_keys) == lr_keys and not res.missing_keys
    with pytest.raises(RuntimeError):
        lowrank.load_state_dict(dense.state_dict())
    with pytest.raises(RuntimeError):
        dense.load_state_dict(lowrank.state_dict())
    # round trip between low-rank layers is strict and exact
    other = IntegralTransform(8, 2, kernel_hidden=3, batch_first=True, dtype=DT,
                              method="lowrank", rank=3)
    other.load_state_dict(lowrank.state_dict())
    x = torch.randn(2, 5, 8, dtype=DT)
    assert torch.equal(other(x), lowrank(x))
    # the method is configuration, not state
    assert "method" not in " ".join(lowrank.state_dict())


@pytest.mark.parametrize("causal", [False, True])
def test_autocast_bf16_layer(causal):
    """AMP: the low-rank layer under torch.autocast("cpu", bfloat16) stays finite, with
    gradients, and close to the same layer in float64 (positions in [0, 1), see the class doc
    on the positions' scale)."""
    torch.manual_seed(3)
    layer = IntegralTransform(16, 2, method="lowrank", rank=6, batch_first=True, causal=causal)
    layer64 = IntegralTransform(16, 2, method="lowrank", rank=6, batch_first=True, causal=causal,
                                dtype=DT)
    layer64.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    N = 1500
    x = torch.randn(2, N, 16)
    pos = ((torch.arange(N) + 0.5) / N)[None, :, None].expand(2, N, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x, query_pos=pos)
    y.float().square().sum().backward()
    ref = layer64(x.double(), query_pos=pos.double())
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    assert layer.lowrank_phi is not None and any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in layer.lowrank_phi.parameters())
    assert _rel(y.double(), ref) < 2e-2
