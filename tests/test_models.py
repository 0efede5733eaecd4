"""itnet_ext.models: the ITNet block / stack, encoders and the scan mixer.

Oracles: the scan mixer against a plain sequential loop of its recurrence (float64); a
one-block stack against the same block assembled by hand from IntegralTransform and torch
modules; padding against the unpadded input; determinism with a seed; gradients reach every
parameter; a short training run whose loss must fall."""
import pytest
import torch
from torch.nn import functional as TF

import itnet_ext  # noqa: F401
from itnet_ext.models import (ITNet, ITNetBlock, OperatorConfig, PairClassifier, PatchEncoder,
                              PointEncoder, ScanMixer, TokenEncoder, VisionLanguageEncoder)


def _scan_loop(m: ScanMixer, x):
    """ScanMixer's recurrence, one step at a time, straight from its definition."""
    B, T, E = x.shape
    G, R = m.num_heads, m.rank
    dt = TF.softplus(m.dt_proj(x))
    v = m.v_proj(x)
    phi = m.phi_proj(x).view(B, T, G, R).repeat_interleave(E // G, dim=2)
    psi = m.psi_proj(x).view(B, T, G, R).repeat_interleave(E // G, dim=2)
    A = -torch.exp(m.A_log)
    h = x.new_zeros(B, E, R)
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, t, :, None] * A) * h + psi[:, t] * (dt[:, t] * v[:, t])[..., None]
        ys.append((phi[:, t] * h).sum(-1) + m.skip * v[:, t])
    return m.out_proj(torch.stack(ys, 1))


def test_scan_mixer_matches_loop():
    torch.manual_seed(0)
    m = ScanMixer(12, 3, rank=4).double()
    x = torch.randn(2, 17, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x), _scan_loop(m, x), rtol=1e-10, atol=1e-12)


def test_scan_mixer_padding_is_neutral():
    """Padded tokens (left and right) leave the other tokens' outputs as without them."""
    torch.manual_seed(1)
    m = ScanMixer(8, 2, rank=3).double()
    x = torch.randn(1, 9, 8, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 2, 8, dtype=torch.float64), x,
                        torch.randn(1, 3, 8, dtype=torch.float64)], 1)
    mask = torch.zeros(1, 14, dtype=torch.bool)
    mask[:, :2] = True
    mask[:, 11:] = True
    torch.testing.assert_close(m(padded, padding_mask=mask)[:, 2:11], m(x), rtol=1e-10, atol=1e-12)


def test_block_equals_hand_assembly():
    torch.manual_seed(2)
    cfg = OperatorConfig(16, num_heads=2, kernel_hidden=4, mlp_ratio=2.0)
    blk = ITNetBlock(cfg, "dense", pos_dim=1).double()
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    h = blk.mixer(blk.norm1(x))
    y = x + h
    y = y + blk.mlp[3](TF.gelu(blk.mlp[0](blk.norm2(y))))
    torch.testing.assert_close(blk(x), y, rtol=1e-12, atol=1e-12)
    assert blk.mixer.kernel_hidden == 4 and blk.mixer.batch_first


@pytest.mark.parametrize("method", ["dense", "sampled", "neighbors", "lowrank"])
def test_image_stack_every_method(method):
    torch.manual_seed(3)
    cfg = OperatorConfig(16, num_heads=2, kernel_hidden=4, samples=6, rank=4, neighbors_k=5,
                         window=1, offset_embedding=True)
    net = ITNet(PatchEncoder(8, 2, 1, 16), cfg, 2, [method, "dense"], num_outputs=10)
    img = torch.rand(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = net(img, generator=g)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.square().sum().backward()
    # every parameter the forward uses gets a gradient (lowrank: not the unused pair MLP)
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert grads["head.weight"].abs().sum() > 0
    assert grads["encoder.proj.weight"].abs().sum() > 0
    assert grads["blocks.0.mlp.0.weight"].abs().sum() > 0
    if method == "sampled":     # the same seed draws the same keys
        again = net(img, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, again, rtol=0, atol=0)


def test_causal_language_model_is_causal():
    torch.manual_seed(4)
    cfg = OperatorConfig(16, num_heads=2, kernel_hidden=4, rank=4)
    net = ITNet(TokenEncoder(11, 16), cfg, 2, ["scan", "dense"], causal=True,
                num_outputs=11, pool="none").double()
    tok = torch.randint(0, 11, (2, 12))
    out = net(tok)
    assert out.shape == (2, 12, 11)
    tok2 = tok.clone()
    tok2[:, 7:] = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(net(tok2)[:, :7], out[:, :7], rtol=1e-12, atol=1e-12)
    assert (net(tok2)[:, 7:] - out[:, 7:]).abs().max() > 1e-6


def test_token_padding_equals_unpadded():
    torch.manual_seed(5)
    cfg = OperatorConfig(16, num_heads=2, kernel_hidden=4)
    net = ITNet(TokenEncoder(9, 16, padding_idx=0), cfg, 2).double()
    tok = torch.randint(1, 9, (1, 6))
    padded = torch.cat([tok, torch.zeros(1, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(net(padded), net(tok), rtol=1e-10, atol=1e-12)


def test_point_stack_neighbors_and_determinism():
    cfg = OperatorConfig(16, num_heads=2, kernel_hidden=4, neighbors_k=6)
    pts = torch.randn(2, 30, 3)
    outs = []
    for _ in range(2):
        torch.manual_seed(6)
        net = ITNet(PointEncoder(16), cfg, 2, "neighbors", num_outputs=4)
        outs.append(net(pts))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert outs[0].shape == (2, 4)
    # permuting the points permutes nothing in a pooled output (a set function)
    perm = torch.randperm(30)
    torch.testing.assert_close(net(pts[:, perm]), outs[1], rtol=1e-5, atol=1e-6)


def test_vision_language_pair_head():
    torch.manual_seed(7)
    cfg = OperatorConfig(16, num_heads=2, kernel_hidden=4)
    enc = VisionLanguageEncoder(8, 4, 3, 20, 16)
    tokens = enc(torch.rand(2, 3, 8, 8), torch.tensor([[3, 4, 0], [5, 0, 0]]))
    assert tokens.x.shape == (2, 7, 16) and tokens.pos.shape == (1, 7, 3)
    assert tokens.padding_mask.tolist() == [[False] * 4 + [False, False, True],
                                            [False] * 4 + [False, True, True]]
    pc = PairClassifier(ITNet(enc, cfg, 1))
    out = pc(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.randint(1, 20, (2, 5)))
    assert out.shape == (2, 2)
    vqa = ITNet(VisionLanguageEncoder(8, 4, 3, 20, 16), cfg, 1, num_outputs=30)
    assert vqa(torch.rand(2, 3, 8, 8), torch.randint(1, 20, (2, 5))).shape == (2, 30)


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="embed_dim .* divisible by num_heads"):
        OperatorConfig(10, num_heads=3)
    with pytest.raises(ValueError, match="causal"):
        ITNet(TokenEncoder(5, 8), OperatorConfig(8, 2), 1, "scan")
    with pytest.raises(ValueError, match="one method per layer"):
        ITNet(TokenEncoder(5, 8), OperatorConfig(8, 2), 2, ["dense"])
    with pytest.raises(ValueError, match="methods: each must be one of"):
        ITNet(TokenEncoder(5, 8), OperatorConfig(8, 2), 1, "conv")
    with pytest.raises(ValueError, match="samples"):
        ITNet(TokenEncoder(5, 8), OperatorConfig(8, 2), 1, "sampled")
    with pytest.raises(ValueError, match="images: expected"):
        PatchEncoder(8, 2, 1, 8)(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="tokens: ids must be in"):
        TokenEncoder(5, 8)(torch.tensor([[1, 7]]))


def test_short_training_run_loss_falls():
    """A few dozen AdamW steps on a learnable toy task: the pooled label is whether the
    image's left half is brighter than its right half."""
    torch.manual_seed(8)
    cfg = OperatorConfig(16, num_heads=2, kernel_hidden=8)
    net = ITNet(PatchEncoder(8, 2, 1, 16), cfg, 1, num_outputs=2)
    x = torch.rand(64, 1, 8, 8)
    x[:32, ..., :4] += 0.5
    y = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = TF.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
