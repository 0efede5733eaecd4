"""Smoke test of the benchmark entry point (``python -m itnet_ext.bench --quick``).

Runs the real command line in a subprocess with tiny sizes, one repeat and one
thread, and checks the JSON it writes: every expected row, finite positive
times and memory, the targets block and the metadata. Speed itself is not
tested (docs/design.md section 4: speed is measured by bench/, not by timed tests).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _finite_pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


def test_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "itnet_ext.bench", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "targets:" in proc.stdout and "fused ms" in proc.stdout
    res = json.loads(out.read_text())

    meta = res["meta"]
    for key in ("date", "torch_version", "itnet_cpu_capability", "threads", "cpu_model", "memory_method"):
        assert key in meta
    assert meta["threads"] == 1
    assert res["config"]["sizes"] == [32, 64] and res["config"]["big"] == [128]

    rows = {(r["mode"], r["N"], r["pass"], r["baseline"]): r for r in res["rows"]}
    expected = []
    for n in (32, 64):
        for p in ("fwd", "fwd+bwd"):
            expected += [("attn", n, p, "sdpa"), ("mlp-R32", n, p, "reference"),
                         ("mlp-R32", n, p, "sdpa"), ("conv1d", n, p, "F.conv1d")]
    for p in ("fwd", "fwd+bwd"):
        expected += [("attn", 128, p, None), ("mlp-R32", 128, p, None)]
    assert sorted(rows, key=str) == sorted(expected, key=str)

    for key, r in rows.items():
        assert _finite_pos(r["fused_ms"]) and r["fused_ms"] > 0, key
        if r["fused_peak_mb"] is not None or meta["memory_method"] != "none":
            assert _finite_pos(r["fused_peak_mb"]), key
        if r["baseline"] is not None:
            assert _finite_pos(r["baseline_ms"]) and r["baseline_ms"] > 0, key
            assert _finite_pos(r["ratio"]), key
            assert math.isclose(r["ratio"], r["fused_ms"] / r["baseline_ms"], rel_tol=1e-9)
        else:
            assert r["baseline_ms"] is None and r["ratio"] is None

    assert all(m["error"] is None for m in res["measurements"])
    names = [t["name"] for t in res["targets"]]
    assert len(names) == 12 and all(t["met"] in (True, False, None) for t in res["targets"])
