"""``python -m itnet_ext.bench --peers`` and the figures: the FlexAttention score_mod is
the fused op's pair-MLP logit, the patched neuraloperator reduction is a segment sum, the
peers' outputs agree with the fused ops, a missing peer is skipped with its install hint,
and every stored result can be drawn. Timing is the benchmark's business, not the tests'."""
import json
import os

import pytest
import torch

from itnet_ext import functional as F
from itnet_ext.bench import cli, peers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_score_mod_is_the_fused_mlp_logit():
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch.nn.attention.flex_attention import flex_attention
    g = torch.Generator().manual_seed(0)
    B, H, N, M, D, R = 2, 3, 17, 23, 8, 5
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (N, M, M))
    u, t = torch.randn(B, N, R, generator=g), torch.randn(B, M, R, generator=g)
    W2, b2 = torch.randn(H, R, generator=g), torch.randn(H, generator=g)
    got = flex_attention(q, k, v, score_mod=peers.mlp_score_mod(u, t, W2, b2))   # eager
    want = F.integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2, activation="gelu")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    # the logits really carry the MLP term: without it the outputs differ
    assert (flex_attention(q, k, v) - want).abs().max() > 1e-2


@pytest.mark.parametrize("batched", [False, True])
def test_segment_reduce_csr_is_the_row_sum(batched):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([3, 0, 5, 1, 0, 4])
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    src = torch.randn(2, int(lengths.sum()), 4, generator=g, dtype=torch.float64)
    if not batched:
        src = src[0]
    ptr = indptr.expand(2, -1) if batched else indptr
    got = peers._segment_reduce_csr(src, ptr, "sum")
    rows = [src[..., int(indptr[i]):int(indptr[i + 1]), :].sum(-2) for i in range(len(lengths))]
    torch.testing.assert_close(got, torch.stack(rows, -2), atol=1e-14, rtol=0)


def test_flex_quick_run_agrees_and_is_recorded(tmp_path):
    pytest.importorskip("torch.nn.attention.flex_attention")
    out = tmp_path / "peers.json"
    res = cli.main(["--peers", "--quick", "--peers-which", "flex", "--out", str(out),
                    "--no-print"])
    rows = res["rows"]
    assert {r["section"] for r in rows} == {"flex-mlp", "flex-attn"}
    for r in rows:
        if r.get("max_abs_diff") is not None:
            assert r["max_abs_diff"] < 1e-4, r
        if r["pass"] == "fwd":
            assert r["ratio"] is not None and r["ratio"] > 0, r
    # FlexAttention's missing CPU backward is recorded, not hidden
    bwd = [r for r in rows if r["pass"] == "fwd+bwd" and r["peer"].startswith("flex")]
    assert all(r["ratio"] is None and "backward" in r["peer_error"] for r in bwd)
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    assert out.with_suffix(".txt").read_text().count("flex") >= 6
    if pytest.importorskip("matplotlib"):
        assert out.with_suffix(".png").stat().st_size > 1000


def test_missing_peer_is_skipped_with_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(peers, "_available", lambda name: False)
    res = cli.main(["--peers", "--quick", "--peers-which", "neuralop,performer",
                    "--out", str(tmp_path / "p.json")])
    assert res["rows"] == [] and res["favor_sweep"] == []
    assert "pip install neuraloperator" in res["skipped"]["neuralop"]
    assert "skipped performer" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["--peers", "--peers-which", "flex,jax"])
    assert e.value.code == 2


def test_neuralop_and_performer_agree_with_the_fused_ops(tmp_path):
    pytest.importorskip("neuralop")
    pytest.importorskip("performer_pytorch")
    res = cli.main(["--peers", "--quick", "--peers-which", "neuralop,performer",
                    "--out", str(tmp_path / "p.json"), "--no-print"])
    gno = [r for r in res["rows"] if r["section"] == "gno"]
    assert len(gno) == 4 and all(r["max_abs_diff"] < 1e-4 for r in gno)
    favor = [r for r in res["rows"] if r["peer"] == "performer.FastAttention"]
    # one projection, one estimator: the errors against exact softmax agree (performer adds
    # eps = 1e-4 to every feature, the only difference)
    assert all(abs(r["peer_rel_err"] - r["fused_rel_err"]) < 0.05 for r in favor)
    sweep = res["favor_sweep"]
    assert [s["F"] for s in sweep] == [16, 32]
    assert sweep[1]["fused_rel_err"] < sweep[0]["fused_rel_err"]       # more features, less error


@pytest.mark.parametrize("name", ["cpu_2026-11-27_162054", "scan_cpu_2026-11-27",
                                  "sparse_cpu_2026-11-27", "lowrank_cpu_2026-11-28"])
def test_every_stored_section_can_be_drawn(name, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from itnet_ext.bench.plots import plot_any
    result = json.load(open(os.path.join(REPO, "bench", "results", name + ".json")))
    png = plot_any(result, tmp_path / (name + ".png"))
    assert png.stat().st_size > 5000
    with pytest.raises(ValueError, match="no figure"):
        plot_any({"rows": []}, tmp_path / "x.png")


def test_performer_without_eps_is_the_lowrank_op():
    """The FAVOR+ estimators are one estimator: performer's features with eps = 0 and the
    same projection give the low-rank op's output (its eps = 1e-4 is a bias toward
    uniform attention, the whole gap in the peers table)."""
    pytest.importorskip("performer_pytorch")
    from performer_pytorch.performer_pytorch import linear_attention, softmax_kernel

    from itnet_ext.lowrank.feature_maps import PositiveRandomFeatures
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 50, 16, generator=g, dtype=torch.float64) * 0.5
               for _ in range(3))
    fmap = PositiveRandomFeatures(16, 24, generator=torch.Generator().manual_seed(4)).double()
    P = fmap.projection
    pq = softmax_kernel(q, projection_matrix=P, is_query=True, eps=0.0)
    pk = softmax_kernel(k, projection_matrix=P, is_query=False, eps=0.0)
    ours = F.lowrank_integral_transform(q, k, v, feature_map=fmap, normalize="softmax")
    torch.testing.assert_close(linear_attention(pq, pk, v), ours, atol=1e-12, rtol=1e-10)
    pq = softmax_kernel(q, projection_matrix=P, is_query=True)          # eps = 1e-4
    assert (linear_attention(pq, pk, v) - ours).abs().max() > 1e-6


def test_scan_and_conv_peers_agree_with_the_fused_ops(tmp_path):
    """The always-available peers: Mamba-2's chunked SSD and the tuned loop against the
    fused scan, torch conv1d / conv2d against their converted transforms."""
    res = cli.main(["--peers", "--quick", "--peers-which", "scan,conv",
                    "--out", str(tmp_path / "p.json"), "--no-print"])
    rows = res["rows"]
    assert res["skipped"] == {}
    scan = [r for r in rows if r["section"] == "scan"]
    conv = [r for r in rows if r["section"] == "conv"]
    assert {r["peer"] for r in scan} == {"ssd_chunked(mamba2)", "tuned_loop"}
    assert {r["peer"] for r in conv} == {"torch.conv1d k=5", "torch.conv2d 3x3"}
    assert len(scan) == 4 and len(conv) == 4
    for r in scan + conv:
        assert r["max_abs_diff"] < 1e-4, r
        assert r["ratio"] is not None and r["ratio"] > 0, r
        assert r["peer_error"] is None and r["fused_error"] is None, r
