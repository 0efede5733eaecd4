"""The low-rank benchmark (``python -m itnet_ext.bench --lowrank``): its summaries (crossover,
slopes, quadratic extrapolation) on made-up rows, the rows-subset error it reports where the
dense layer does not run, and a smoke test of the quick mode of the command line. Speed itself
is not tested (measured by bench/, not by timed tests)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from itnet_ext.bench.lowrank import (NOT_RUN, crossover, dense_layer, extrapolate_dense, lowrank_inputs, scaling,
                                     signal_map)

ROOT = Path(__file__).resolve().parent.parent


def _m(ms):
    return {"ms": ms}


def _rows(lr_ms, dense_ms):
    """Rows of N = 1024 * 2^k with the given times (None: dense not run)."""
    rows = []
    for k, (lr, d) in enumerate(zip(lr_ms, dense_ms)):
        rows.append({"N": 1024 * 2 ** k, "lowrank": {"fwd": _m(lr), "fwd+bwd": _m(lr)},
                     "dense": {"fwd": None if d is None else _m(d), "fwd+bwd": None if d is None else _m(d)}})
    return rows


def test_crossover_scaling_extrapolation():
    # lowrank 10 N / 1024 ms (linear), dense 2.5 (N / 1024)^2 ms (quadratic): equal at N = 4096
    lr = [10.0 * 2 ** k for k in range(5)]
    dense = [2.5 * 4 ** k for k in range(4)] + [None]
    rows = _rows(lr, dense)
    c = crossover(rows, "fwd+bwd")
    # dense/lowrank = 0.25, 0.5, 1.0, 2.0: not faster at 4096 (ratio exactly 1), faster from 8192
    assert c["smallest_N_lowrank_faster"] == 8192 and c["between"] == [4096, 8192]
    assert math.isclose(c["interpolated_N"], 4096.0, rel_tol=1e-9)
    s = scaling(rows)
    assert math.isclose(s["lowrank fwd"]["slope"], 1.0, rel_tol=1e-9)
    assert math.isclose(s["dense fwd+bwd"]["slope"], 2.0, rel_tol=1e-9) and s["dense fwd"]["N"] == [1024, 2048, 4096,
                                                                                                      8192]
    assert scaling(rows, min_n=2048)["lowrank fwd"]["N"] == [2048, 4096, 8192, 16384]
    assert scaling(rows, min_n=16384)["lowrank fwd"]["N"] == [1024, 2048, 4096, 8192, 16384]  # (< 2 points: all)
    ext = extrapolate_dense(rows)
    assert [(e["N"], e["pass"]) for e in ext] == [(16384, "fwd"), (16384, "fwd+bwd")]
    assert math.isclose(ext[0]["dense_ms_extrapolated"], 2.5 * 256, rel_tol=1e-9) and ext[0]["from_N"] == [4096, 8192]
    assert math.isclose(ext[0]["dense_over_lowrank_extrapolated"], 4.0, rel_tol=1e-9)
    # interpolation between two measured N
    c = crossover(_rows([10.0, 10.0], [5.0, 20.0]), "fwd")
    assert math.isclose(c["interpolated_N"], 1024 * 2 ** 0.5, rel_tol=1e-9)
    c = crossover(_rows([10.0, 10.0, 10.0], [5.0, 20.0, 9.0]), "fwd")  # noisy: slower again at the largest N
    assert c["smallest_N_lowrank_faster"] == 2048 and c["not_faster_after"] == [4096] and "NOT faster" in c["detail"]
    # low-rank faster everywhere / never
    assert "smallest measured" in crossover(_rows([1.0, 2.0], [5.0, 20.0]), "fwd")["detail"]
    c = crossover(_rows([100.0, 200.0], [5.0, 20.0]), "fwd")
    assert c["interpolated_N"] is None and c["smallest_N_lowrank_faster"] is None and "not reached" in c["detail"]
    assert crossover(_rows([1.0], [None]), "fwd")["detail"].startswith("not measured")


def test_rows_error_is_the_full_error_on_those_rows():
    """Where the dense layer is too slow, the error is taken on random query rows, with the dense
    layer evaluated on those queries against all keys: exactly those rows of the full output."""
    dev, dt = torch.device("cpu"), torch.float64
    gen = torch.Generator().manual_seed(0)
    W = signal_map(gen, dev, dt)
    dense = dense_layer(0, dev, dt)
    x, p = lowrank_inputs(1, 50, W, dev, dt, gen)
    rows = torch.tensor([0, 7, 19, 49])
    with torch.no_grad():
        full = dense(x, query_pos=p)
        part = dense(x[:, rows], x, query_pos=p[:, rows], key_pos=p)
    assert ((part - full[:, rows]).norm() / full.norm()).item() < 1e-12


def test_bench_lowrank_quick_writes_json(tmp_path):
    out = tmp_path / "lowrank.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "itnet_ext.bench", "--lowrank", "--quick", "--threads", "1",
         "--lowrank-dense-max-n", "256", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| N | lowrank fwd ms |" in proc.stdout and "crossover" in proc.stdout and "scaling" in proc.stdout
    assert out.with_suffix(".txt").read_text().startswith("itnet_ext.bench --lowrank")
    res = json.loads(out.read_text())
    meta, cfg, fit = res["meta"], res["config"], res["fit"]
    assert meta["threads"] == 1 and meta["torch_version"] == torch.__version__ and "git_commit" in meta
    assert "cpu_model" in meta and meta["device"] == "cpu"
    assert cfg["sizes"] == [256, 512] and cfg["dense_max_n"] == 256 and cfg["rank"] >= 1

    def finite(v):
        return isinstance(v, float) and math.isfinite(v)

    def ok(m):
        return m is not None and m["error"] is None and finite(m["ms"]) and m["ms"] > 0

    # the fit: ran, its errors are relative errors, below the trivial (uniform attention) one
    rep = fit["report"]
    assert fit["wall_s"] > 0 and rep["rank"] == cfg["rank"] and rep["steps"] == cfg["fit_steps"]
    for k in ("kernel_rel_error", "output_rel_error", "train_kernel_rel_error"):
        assert finite(rep[k]) and 0 < rep[k] < 1, (k, rep)
    assert 0 < rep["output_rel_error"] < fit["uniform_attention_output_rel_error"]

    rows = res["rows"]
    assert [r["N"] for r in rows] == [256, 512]
    for r in rows:
        assert ok(r["lowrank"]["fwd"]) and ok(r["lowrank"]["fwd+bwd"]), r
        if meta["memory_method"] != "none":
            assert r["lowrank"]["fwd"]["peak_extra_mb"] >= 0 and r["lowrank"]["fwd+bwd"]["peak_extra_mb"] >= 0
        assert finite(r["err_rows"]) and 0 < r["err_rows"] < 1 and r["err_rows_n"] == 64
    # N=256: both layers, the full error, consistent with the rows error and the fit's
    r = rows[0]
    assert ok(r["dense"]["fwd"]) and ok(r["dense"]["fwd+bwd"]) and r["dense_skipped"] == {}
    assert finite(r["err"]) and 0 < r["err"] < 1
    assert 0.5 < r["err_rows"] / r["err"] < 2 and 0.5 < r["err"] / rep["output_rel_error"] < 2
    for pas in ("fwd", "fwd+bwd"):
        assert math.isclose(r[f"dense_over_lowrank_{pas}"], r["dense"][pas]["ms"] / r["lowrank"][pas]["ms"])
    # N=512 > --lowrank-dense-max-n: dense not run, said so, nothing silently extrapolated in the rows
    r = rows[1]
    assert r["dense"] == {"fwd": None, "fwd+bwd": None} and r["err"] is None
    assert all(why.startswith(NOT_RUN) for why in r["dense_skipped"].values()) and len(r["dense_skipped"]) == 2
    assert r["dense_over_lowrank_fwd"] is None and NOT_RUN in proc.stdout
    assert res["dense_extrapolated"] == []  # (needs two measured N)
    # summaries present and consistent with the rows
    for pas in ("fwd", "fwd+bwd"):
        c = res["crossover"][pas]
        assert c["measured_N"] == [256] and c["detail"]
    s = res["scaling"]
    assert s["lowrank fwd"]["N"] == [256, 512] and finite(s["lowrank fwd"]["slope"])
    assert s["dense fwd"]["N"] == [256] and s["dense fwd"]["slope"] is None
