"""The CUDA section of the benchmark (``python -m itnet_ext.bench --cuda``), checked on CPU:
FLOP formulas, argument parsing, the rows / targets / table built from synthetic
measurements, and a clear message (exit status 0, no traceback) where no GPU is present.
The measurements themselves need a GPU (scripts/gpu_check.sh runs them)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itnet_ext.bench import build_parser
from itnet_ext.bench import cuda as bc

ROOT = Path(__file__).resolve().parent.parent


def test_flop_formulas():
    B, H, N, M, Dh = 4, 16, 1024, 2048, 64
    fwd = 4 * B * H * N * M * Dh
    assert bc.attention_flops(B, H, N, M, Dh, "fwd") == fwd
    assert bc.attention_flops(B, H, N, M, Dh, "fwd+bwd") == 3.5 * fwd
    assert bc.mlp_flops(B, H, N, M, 16, "fwd") == 3 * 16 * B * H * N * M
    assert bc.mlp_flops(B, H, N, M, 16, "fwd+bwd") == 3.5 * 3 * 16 * B * H * N * M
    assert bc.case_flops("flash", B, H, N, M, Dh, "fwd") == fwd
    assert bc.case_flops("attn", B, H, N, M, Dh, "fwd+bwd") == 3.5 * fwd
    assert bc.case_flops("mlp-R32", B, H, N, M, Dh, "fwd") == fwd + 3 * 32 * B * H * N * M


def test_cuda_arguments():
    p = build_parser()
    cfg = bc.cuda_config(p.parse_args(["--cuda"]))
    assert cfg["sizes"] == [1024, 4096, 16384] and cfg["dh"] == [64, 128]
    assert cfg["dtypes"] == ["float16", "bfloat16"] and cfg["mlp_widths"] == [16, 32]
    assert (cfg["B"], cfg["H"]) == (4, 16)
    cfg = bc.cuda_config(p.parse_args(["--cuda", "--sizes", "512, 2048", "--dtypes", "bfloat16",
                                       "--dh", "128", "--time-budget-s", "30"]))
    assert cfg["sizes"] == [512, 2048] and cfg["dtypes"] == ["bfloat16"] and cfg["dh"] == [128]
    assert cfg["time_budget_s"] == 30
    quick = bc.cuda_config(p.parse_args(["--cuda", "--quick"]))
    assert quick["sizes"] == [256, 512] and quick["dh"] == [64]
    for bad in (["--dtypes", "float32"], ["--sizes", "1k"], ["--dh", ""], ["--sizes", "0"]):
        with pytest.raises(ValueError, match="--(dtypes|sizes|dh)"):
            bc.cuda_config(p.parse_args(["--cuda", *bad]))
    # the CPU run keeps its own default sizes
    assert p.parse_args([]).sizes is None and not p.parse_args([]).cuda


def test_cuda_bad_argument_is_a_usage_error(capsys):
    from itnet_ext.bench import main
    with pytest.raises(SystemExit) as e:
        main(["--cuda", "--dtypes", "float32"])
    assert e.value.code == 2
    assert "--dtypes: 'float32' is not one of float16, bfloat16" in capsys.readouterr().err


def _synthetic(ms_of):
    cfg = {"B": 4, "H": 16, "activation": "relu", "sizes": [1024, 4096], "dh": [64],
           "dtypes": ["float16"]}
    ms = []
    for N in cfg["sizes"]:
        for pas in bc.PASSES:
            for impl in ("flash", "attn", "mlp-R16", "mlp-R32"):
                t = ms_of(impl, N, pas)
                f = bc.case_flops(impl, 4, 16, N, N, 64, pas)
                ms.append({"impl": impl, "pass": pas, "N": N, "M": N, "Dh": 64,
                           "dtype": "float16", "flops": f, "ms": t,
                           "tflops": None if t is None else f / (t * 1e-3) / 1e12,
                           "skipped": None if t is not None else "out of memory",
                           "repeats": 3})
    return cfg, ms


def test_rows_targets_and_table():
    base = {"flash": 1.0, "attn": 1.1, "mlp-R16": 2.0, "mlp-R32": 3.0}

    def ms_of(impl, N, pas):
        if N == 4096 and pas == "fwd+bwd" and impl == "mlp-R32":
            return None  # skipped
        scale = (N / 1024) ** 2 * (3.5 if pas == "fwd+bwd" else 1)
        t = base[impl] * scale
        if N == 4096 and pas == "fwd" and impl == "attn":
            t = 1.5 * scale  # 0.67x flash: target not met
        return t

    cfg, ms = _synthetic(ms_of)
    rows = bc._rows(ms, cfg)
    assert len(rows) == 4
    r = rows[0]
    assert (r["dtype"], r["Dh"], r["N"], r["pass"]) == ("float16", 64, 1024, "fwd")
    assert r["attn_vs_flash"] == pytest.approx(1 / 1.1) and r["attn_target_met"] is True
    assert r["mlp16_vs_attn"] == pytest.approx(2 / 1.1) and r["mlp16_target_met"] is True
    assert r["attn_tflops"] == pytest.approx(4 * 4 * 16 * 1024 ** 2 * 64 / 1.1e-3 / 1e12)
    bad = [x for x in rows if x["N"] == 4096 and x["pass"] == "fwd"][0]
    assert bad["attn_target_met"] is False and bad["mlp16_target_met"] is True
    skipped = [x for x in rows if x["N"] == 4096 and x["pass"] == "fwd+bwd"][0]
    assert skipped["mlp-R32_ms"] is None and skipped["mlp32_vs_attn"] is None
    targets = bc._targets(rows)
    assert [t["met"] for t in targets] == [False, True]
    assert "3/4 rows met" in targets[0]["detail"] and "N=4096 fwd 0.67x" in targets[0]["detail"]

    meta = {"gpu_name": "Test GPU", "gpu_capability": "9.0", "driver_version": "1.0",
            "torch_version": "x", "cuda_version": "13.0", "git_commit": "0123456789ab",
            "git_dirty": False, "date": "2026-01-01"}
    text = bc.format_table({"meta": meta, "config": cfg, "rows": rows, "targets": targets,
                            "measurements": ms})
    assert "Test GPU (sm_90, driver 1.0)" in text and "[NOT MET]" in text and "[MET    ]" in text
    assert "skipped mlp-R32 float16 Dh=64 N=4096 fwd+bwd: out of memory" in text
    assert bc.default_out("NVIDIA H100 80GB HBM3").name.startswith("cuda_NVIDIA_H100_80GB_HBM3_")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the section would run")
def test_cuda_section_without_gpu_says_so(tmp_path):
    out = tmp_path / "cuda.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "itnet_ext.bench", "--cuda", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CUDA section skipped: no CUDA device is available" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert not out.exists()
