"""The sparse benchmark (``python -m itnet_ext.bench --sparse``) and its GNO baseline.

``gno_baseline`` (neuraloperator's GNO integral transform in plain PyTorch: per-edge MLP over
the concatenated coordinates, product with f, ``torch.segment_reduce``) must compute the same
map as ``gno_fused`` (the fused sparse op with one head per channel), values and gradients,
in float64 to 1e-10. The quick mode of the command line is smoke-tested. Speed itself is not
tested (measured by bench/, not by timed tests).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itnet_ext import functional
from itnet_ext.bench.gno import (GNOKernel, fused_parameters, gno_baseline, gno_fused, radius_for_degree,
                                 row_lengths)
from itnet_ext.bench.sparse import gno_targets, loglog_fit, mc_fns, mc_inputs, s_for_error
from itnet_ext.nn import radius_graph

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _gno_problem(seed, N=37, M=45, D=3, batch=None):
    """Random points (x far from y for the last query: an empty neighbourhood), a radius graph,
    f, a cotangent; everything float64 and requiring grad where it can."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=gen, dtype=F64)
    x[-1] = 10.0                                   # no neighbour within the radius
    y = torch.rand(M, D, generator=gen, dtype=F64)
    row_ptr, col_idx = radius_graph(x[None], y[None], 0.4)
    fshape = (batch, M, 6) if batch else (M, 6)
    f = torch.randn(*fshape, generator=gen, dtype=F64)
    g = torch.randn(*fshape[:-2], N, 6, generator=gen, dtype=F64)
    return x, y, f, row_ptr, col_idx, g


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_gno_baseline_equals_fused(seed, batch, reduce, activation):
    x, y, f, row_ptr, col_idx, g = _gno_problem(seed, batch=batch)
    lengths = row_lengths(row_ptr)
    assert lengths[-1] == 0 and lengths.sum() > 3 * len(lengths)   # an empty row, and real neighbourhoods
    torch.manual_seed(100 + seed)
    ker = GNOKernel(3, 8, 6, activation).to(F64)
    with torch.no_grad():  # non-trivial biases
        ker.lin1.bias.normal_()
        ker.lin2.bias.normal_()
    for t in (x, y, f):
        t.requires_grad_(True)
    leaves = [x, y, f, *ker.parameters()]
    want = gno_baseline(x, y, f, row_ptr, col_idx, ker, reduce)
    got = gno_fused(x, y, f, row_ptr, col_idx, ker, reduce)
    assert got.shape == want.shape == g.shape and got.dtype == F64
    assert _rel(got, want) <= 1e-10
    assert torch.all(want[..., -1, :] == 0) and torch.all(got[..., -1, :] == 0)
    gw = torch.autograd.grad(want, leaves, g)
    gg = torch.autograd.grad(got, leaves, g)
    for name, a, b in zip(("x", "y", "f", "W1", "b1", "W2", "b2"), gg, gw):
        assert a.shape == b.shape and _rel(a, b) <= 1e-10, name


def test_gno_kernel_is_the_pair_mlp():
    """k(x_i, y_j) = MLP([y_j, x_i]) equals W2 act(u_i + t_j) + b2 with u = x A_x^T + b1, t = y A_y^T."""
    torch.manual_seed(3)
    ker = GNOKernel(2, 5, 4).to(F64)
    x, y = torch.rand(7, 2, dtype=F64), torch.rand(9, 2, dtype=F64)
    u, t, W2, b2 = fused_parameters(x, y, ker)
    assert u.shape == (1, 7, 5) and t.shape == (1, 9, 5) and W2.shape == (4, 5) and b2.shape == (4,)
    pair = torch.cat([y[None, :, :].expand(7, -1, -1), x[:, None, :].expand(-1, 9, -1)], -1)   # (i, j, 4)
    want = ker(pair)                                                                           # (7, 9, 4)
    got = torch.nn.functional.gelu(u[0, :, None] + t[0, None], approximate="tanh") @ W2.T + b2
    assert _rel(got, want) <= 1e-12


def test_radius_for_degree():
    pos = torch.rand(300, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    r = radius_for_degree(pos, 12)
    row_ptr, _ = radius_graph(pos[None], pos[None], r)
    assert abs(int(row_ptr[0, -1]) / 300 - 12) < 0.05


def test_mc_sparse_with_every_key_once_is_dense():
    """The benchmark's error reference: the sparse op over all keys (weight 1) is the dense op."""
    N = 48
    x = mc_inputs(N, torch.device("cpu"), F64, torch.Generator().manual_seed(0))
    idx = torch.arange(N).expand(1, N, N)
    for nm in ("softmax", "none"):
        with torch.no_grad():
            dense = mc_fns(x, normalize=nm)[0]()
            sparse = mc_fns(x, idx, torch.zeros(1, N, N, dtype=F64), nm)[0]()
            sparse_csr = functional.sparse_integral_transform(
                x["q"], x["k"], x["v"], row_ptr=(torch.arange(N + 1) * N)[None], col_idx=idx.reshape(1, -1),
                u=x["u"], t=x["t"], W2=x["W2"], b2=x["b2"], normalize=nm, scale=32 ** -0.5)
        assert _rel(sparse, dense) <= 1e-10 and _rel(sparse_csr, dense) <= 1e-10, nm


def test_fits_and_targets():
    S = [8, 32, 128]
    slope, coef = loglog_fit(S, [2.0 * s ** -0.5 for s in S])
    assert math.isclose(slope, -0.5, rel_tol=1e-12) and math.isclose(coef, 2.0, rel_tol=1e-12)
    assert math.isclose(s_for_error(0.05, slope, coef), 1600.0, rel_tol=1e-9)
    assert s_for_error(0.05, 0.1, 1.0) is None and loglog_fit([8], [1.0]) == (None, None)

    def row(pas, base_ms, fused_ms, base_mb, fused_mb):
        return {"R": 64, "pass": pas, "baseline": {"ms": base_ms, "peak_extra_mb": base_mb},
                "fused": {"ms": fused_ms, "peak_extra_mb": fused_mb},
                "speedup": base_ms / fused_ms, "memory_ratio": base_mb / fused_mb}

    cpu = torch.device("cpu")
    speed, mem = gno_targets({"rows": [row("fwd", 1, 1, 1, 1), row("fwd+bwd", 100.0, 20.0, 300.0, 10.0)]}, cpu)
    assert (speed["met"], mem["met"]) == (False, True) and speed["value"] == 5.0 and mem["value"] == 30.0
    assert [t["met"] for t in gno_targets(None, cpu)] == [None, None]


def test_bench_sparse_quick_writes_json(tmp_path):
    out = tmp_path / "sparse.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "itnet_ext.bench", "--sparse", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| N | S | sample ms |" in proc.stdout and "## GNO layer" in proc.stdout and "targets:" in proc.stdout
    assert out.with_suffix(".txt").read_text().startswith("itnet_ext.bench --sparse")
    res = json.loads(out.read_text())
    assert res["meta"]["threads"] == 1
    cfg = res["config"]
    mc, gno = res["mc"], res["gno"]
    sizes, S = cfg["mc"]["sizes"], cfg["mc"]["S"]
    assert [(r["N"], r["S"]) for r in mc["rows"]] == [(n, s) for n in sizes for s in S]

    def ok(m):
        return m["error"] is None and isinstance(m["ms"], float) and math.isfinite(m["ms"]) and m["ms"] > 0

    for r in mc["rows"]:
        assert ok(r["fwd"]) and ok(r["fwd+bwd"]) and ok(r["sample"]), r
        assert len(r["err_softmax"]) == cfg["mc"]["seeds"] and 0 < r["err_softmax_mean"] < 2
        assert 0 < r["err_none_mean"] < 2
    assert all(ok(d["fwd"]) and ok(d["fwd+bwd"]) for d in mc["dense"])
    for f in mc["fits"]:  # the error decreases with S, about as 1/sqrt(S)
        assert -0.8 < f["err_softmax_slope"] < -0.3 and -0.8 < f["err_none_slope"] < -0.3, f
    assert len(mc["equal_error"]) == len(sizes) * len(cfg["mc"]["targets"])
    for e in mc["equal_error"]:
        assert e["S"] is not None and e["note"] is None and ok(e["fwd"]) and e["err_mean"] > 0, e
    assert gno["graph"]["N"] == cfg["gno"]["N"] and gno["graph"]["edges"] > 0
    assert [(r["R"], r["pass"]) for r in gno["rows"]] == [(R, p) for R in cfg["gno"]["R"] for p in ("fwd", "fwd+bwd")]
    for r in gno["rows"]:
        assert ok(r["baseline"]) and ok(r["fused"]) and r["check_rel_diff"] < 1e-4, r
        if res["meta"]["memory_method"] != "none":
            assert r["baseline"]["peak_extra_mb"] >= 0 and r["fused"]["peak_extra_mb"] >= 0
    # R=64 is not in the quick run: the targets are reported as not measured
    assert [t["met"] for t in res["targets"]] == [None, None]


@pytest.mark.parametrize("part", ["mc", "gno"])
def test_bench_sparse_one_part_writes_plot(tmp_path, part):
    """--sparse-part runs one part: the other is None in the JSON, and the plot still draws."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "sparse.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "itnet_ext.bench", "--sparse", "--quick", "--threads", "1",
         "--sparse-part", part, "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    other = "gno" if part == "mc" else "mc"
    assert res[other] is None and res[part]["rows"]
    assert out.with_suffix(".png").stat().st_size > 1000
