"""The decay-scan benchmark (``python -m itnet_ext.bench --scan``) and its baselines.

``ssd_chunked`` (Mamba-2's chunked SSD algorithm, itnet_ext/bench/ssd.py) must compute the
same map as the sequential reference loop, values and gradients, for every log-decay form,
channel groups, skip, and sequence lengths that are not a multiple of the chunk; the dense
form the benchmark times must too. The quick mode of the command line is smoke-tested.
Speed itself is not tested (measured by bench/, not by timed tests).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from itnet_ext import reference
from itnet_ext.bench.scan import (_predicted_s, _skip_reason, dense_decay_scale, dense_scan, scan_rows,
                                   scan_targets, tuned_loop)
from itnet_ext.bench.ssd import ssd_chunked

ROOT = Path(__file__).resolve().parent.parent
B, D, RK = 2, 6, 4
FORMS = ("full", "rank1", "static", "dt_A")


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _problem(form, G, T, skip, dtype=torch.float64):
    """Leaf tensors (x, log_decay, phi, psi, skip) with mixed fast and slow decays."""
    def rnd(*shape):
        return torch.randn(*shape, dtype=dtype)

    x = rnd(B, T, D)
    if form == "full":
        ld = -torch.rand(B, T, D, RK, dtype=dtype) * 2
    elif form == "rank1":
        ld = -torch.rand(B, T, D, 1, dtype=dtype) * 2
    elif form == "static":
        ld = -torch.rand(D, RK, dtype=dtype)
    else:
        ld = (F.softplus(rnd(B, T, D) * 0.5 - 2), -torch.arange(1, RK + 1, dtype=dtype).repeat(D, 1))
    phi = rnd(B, T, G, RK) if G > 1 else rnd(B, T, RK)
    psi = rnd(*phi.shape)
    sk = rnd(D) if skip else None
    return x, ld, phi, psi, sk


def _leaves(x, ld, phi, psi, sk):
    ld = ld if isinstance(ld, tuple) else (ld,)
    return [t for t in (x, *ld, phi, psi, sk) if t is not None]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("T,skip", [(5, True), (16, False), (37, True)])
def test_ssd_equals_loop(form, G, T, skip):
    x, ld, phi, psi, sk = _problem(form, G, T, skip)
    want = reference.decay_scan(x, ld, phi, psi, skip=sk)
    # channel blocks of 4 cross the group boundary (3 channels per group at G = 2)
    for chunk, block in ((8, None), (8, 4), (64, 1)):
        got = ssd_chunked(x, ld, phi, psi, skip=sk, chunk=chunk, channel_block=block)
        assert got.dtype == torch.float64 and got.shape == (B, T, D)
        assert _rel(got, want) <= 1e-10, (chunk, block)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("G", [1, 2])
def test_ssd_gradients_equal_loop(form, G):
    T = 21
    x, ld, phi, psi, sk = _problem(form, G, T, skip=True)
    leaves = _leaves(x, ld, phi, psi, sk)
    for t in leaves:
        t.requires_grad_(True)
    g = torch.randn(B, T, D, dtype=torch.float64)
    want = torch.autograd.grad(reference.decay_scan(x, ld, phi, psi, skip=sk), leaves, g)
    got = torch.autograd.grad(ssd_chunked(x, ld, phi, psi, skip=sk, chunk=8, channel_block=4),
                              leaves, g)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and _rel(a, b) <= 1e-8, i


def test_ssd_float32_long_strong_decays():
    """Mamba's decays (down to -1.6 per step) over many chunks: the stable segment sums keep
    float32 close to the float64 loop."""
    T = 600
    x, (dt, A), phi, psi, _ = _problem("dt_A", 1, T, skip=False)
    dt = F.softplus(torch.randn(B, T, D, dtype=torch.float64) * 0.5 - 4) * 20
    want = reference.decay_scan(x, (dt, A), phi, psi)
    f = [t.float() for t in (x, dt, A, phi, psi)]
    got = ssd_chunked(f[0], (f[1], f[2]), f[3], f[4], chunk=64)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert _rel(got.double(), want) <= 1e-5


def test_dense_form_equals_loop():
    """The benchmark's dense method is the same map with the log-decays scaled by c."""
    T = 40
    x, (dt, A), phi, psi, _ = _problem("dt_A", 1, T, skip=False)
    dt = dt * 100  # |L| would reach the thousands: exp(+-L) overflows without the scale
    c = dense_decay_scale(dt, A)
    assert 0 < c < 1
    assert torch.cumsum(dt[..., None] * c * A, 1).abs().max() <= 25 + 1e-9
    want = reference.decay_scan(x, (dt * c, A), phi, psi)
    assert _rel(dense_scan(x, dt, A, phi, psi, c), want) <= 1e-10


@pytest.mark.parametrize("T", [1, 37])
def test_tuned_loop_matches_reference(T):
    """The benchmark's tuned loop computes the scan (values and every gradient)."""
    x, (dt, A), phi, psi, _ = _problem("dt_A", 1, T, False)
    leaves = [x, dt, A, phi, psi]
    for t in leaves:
        t.requires_grad_(True)
    g = torch.randn(B, T, D, dtype=torch.float64)
    want = reference.decay_scan(x, (dt, A), phi, psi)
    got = tuned_loop(x, dt, A, phi, psi)
    assert _rel(got, want) <= 1e-12
    gw = torch.autograd.grad(want, leaves, g)
    gg = torch.autograd.grad(got, leaves, g)
    for a, b in zip(gg, gw):  # (at T = 1 the decay gradients are exactly 0: h_0 = 0)
        assert (a - b).norm() <= 1e-12 * (1 + b.norm())


def test_skip_rules():
    cfg = {"D": 1024, "loop_bwd_max_T": 4096, "dense_max_T": 4096, "call_limit_s": 100.0}
    chunks = {1024: 16, 2048: 16, 4096: 16, 16384: 32}
    done = [{"method": "ssd", "pass": "fwd+bwd", "T": 1024, "ms": 30e3},
            {"method": "dense", "pass": "fwd", "T": 1024, "ms": 4e3}]
    # ssd's work ~ T (Lc + T / Lc^2): 4096 * 32 / (1024 * 20) = 6.4x; dense's ~ T^2
    seconds, base_T = _predicted_s("ssd", "fwd+bwd", 4096, done, chunks)
    assert base_T == 1024 and math.isclose(seconds, 30 * 6.4)
    assert math.isclose(_predicted_s("dense", "fwd", 2048, done, chunks)[0], 16.0)
    assert _predicted_s("loop", "fwd", 4096, done, chunks) is None
    assert "--scan-call-limit-s" in _skip_reason(cfg, "ssd", "fwd", 4096, (192.0, 1024))
    # a measurement a target compares is run whatever the prediction; the fused op always
    assert _skip_reason(cfg, "ssd", "fwd+bwd", 4096, (192.0, 1024)) is None
    assert _skip_reason(cfg, "scan", "fwd+bwd", 16384, (1e9, 4096)) is None
    assert "--scan-loop-bwd-max-t" in _skip_reason(cfg, "loop", "fwd+bwd", 16384, None)
    assert "--scan-loop-bwd-max-t" in _skip_reason(cfg, "tuned_loop", "fwd+bwd", 16384, None)
    assert _skip_reason(cfg, "loop", "fwd", 16384, None) is None
    assert "--scan-dense-max-t" in _skip_reason(cfg, "dense", "fwd", 16384, None)


def test_targets_from_numbers():
    def meas(method, ms):
        return {"method": method, "T": 4096, "pass": "fwd+bwd", "ms": ms, "peak_extra_mb": 1.0,
                "skipped": None, "error": None}

    cpu = torch.device("cpu")
    rows = scan_rows([meas("scan", 10.0), meas("loop", 300.0), meas("tuned_loop", 120.0), meas("ssd", 9.0),
                      meas("dense", 50.0)], [4096])
    assert rows[1]["vs_scan"] == {"loop": 30.0, "tuned_loop": 12.0, "ssd": 0.9, "dense": 5.0}
    loop, ssd = scan_targets(rows, cpu)
    assert (loop["met"], ssd["met"]) == (True, False) and loop["speedup"] == 12.0
    # the target compares the faster loop of the run: here the tuned one
    rows = scan_rows([meas("scan", 10.0), meas("loop", 300.0), meas("tuned_loop", 90.0), meas("ssd", 11.0)],
                     [4096])
    assert scan_targets(rows, cpu)[0]["baseline"] == "tuned_loop"
    # ... and here the reference loop
    rows = scan_rows([meas("scan", 10.0), meas("loop", 95.0), meas("tuned_loop", 130.0), meas("ssd", 11.0)],
                     [4096])
    assert scan_targets(rows, cpu)[0]["baseline"] == "loop"
    assert [t["met"] for t in scan_targets(rows, cpu)] == [False, True]
    assert [t["met"] for t in scan_targets(rows, torch.device("meta"))] == [None, None]


def test_bench_scan_quick_writes_json(tmp_path):
    out = tmp_path / "scan.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "itnet_ext.bench", "--scan", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| T | pass | scan ms |" in proc.stdout and "targets:" in proc.stdout
    res = json.loads(out.read_text())
    assert res["meta"]["threads"] == 1
    cfg = res["config"]
    sizes = cfg["sizes"]
    assert len(sizes) >= 2 and cfg["B"] == 2 and cfg["Rk"] == 16

    assert [(r["T"], r["pass"]) for r in res["rows"]] == [(T, p) for T in sizes for p in ("fwd", "fwd+bwd")]
    for r in res["rows"]:
        assert r["notes"] == {}, r
        for m in ("scan", "loop", "tuned_loop", "ssd", "dense"):
            assert isinstance(r["ms"][m], float) and math.isfinite(r["ms"][m]) and r["ms"][m] > 0, (r, m)
            if res["meta"]["memory_method"] != "none":
                assert r["peak_mb"][m] >= 0, (r, m)
        for b in ("loop", "tuned_loop", "ssd", "dense"):
            assert math.isclose(r["vs_scan"][b], r["ms"][b] / r["ms"]["scan"], rel_tol=1e-9)
    assert len(res["measurements"]) == 10 * len(sizes)
    assert all(m["error"] is None and m["skipped"] is None for m in res["measurements"])
    # T=4096 is not in the quick sizes: the targets are reported as not measured
    assert [t["met"] for t in res["targets"]] == [None, None]
    assert all(t["name"].startswith("CPU fwd+bwd scan") for t in res["targets"])
