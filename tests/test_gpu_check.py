"""scripts/gpu_check.sh and its summary, checked where there is no GPU: every step reports
skipped / ok cleanly and summary.md is written; the summary parses junit failures and
compute-sanitizer logs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check_summary  # noqa: E402


def test_summary_from_synthetic_outputs(tmp_path):
    (tmp_path / "env.kv").write_text("gpu_name=NVIDIA H100 80GB HBM3\ndriver=580.1\n")
    (tmp_path / "steps.tsv").write_text("env\tok\t2\t\nbuild\tFAILED (exit 1)\t100\tsm_90\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1" '
        'time="4.5"><testcase classname="tests.t" name="test_a"><failure message="assert 1 == 2">'
        '</failure></testcase><testcase classname="tests.t" name="test_b"/>'
        '<testcase classname="tests.t" name="test_c"><skipped/></testcase></testsuite></testsuites>')
    (tmp_path / "memcheck.log").write_text(
        "========= Invalid __global__ read of size 4 bytes\n=========     at k+0x10 in a.cu:7\n"
        "sanitize_cases: 35/36 cases ok in 9.0 s\n========= ERROR SUMMARY: 2 errors\n")
    (tmp_path / "bench.log").write_text("  progress\nitnet_ext.bench --cuda  X\nrow\nwrote f.json\n")
    text = gpu_check_summary.main(tmp_path)
    assert (tmp_path / "summary.md").read_text() == text
    assert "| card | NVIDIA H100 80GB HBM3 |" in text and "| build | FAILED (exit 1) | 100 |" in text
    assert "1 passed, 1 failed, 0 errors, 1 skipped of 3" in text
    assert "`tests.t::test_a`: assert 1 == 2" in text
    assert "memcheck: ERROR SUMMARY: 2 errors; sanitize_cases: 35/36" in text
    assert "first report: Invalid __global__ read of size 4 bytes at k+0x10 in a.cu:7" in text
    assert "racecheck: not run" in text
    assert "itnet_ext.bench --cuda  X\nrow\n```" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would build")
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and timeout")
def test_gpu_check_without_gpu(tmp_path):
    # (ITNET_EMULATE_TESTS=0: in a build with the device emulator the CUDA test files would
    # run under it, minutes of CPU time; here they must skip as on a machine without either)
    env = dict(os.environ, PYTHON=sys.executable, ITNET_GPU_CHECK_DEADLINE_S="200",
               ITNET_EMULATE_TESTS="0")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = {line.split("\t")[0]: line.split("\t")[1]
             for line in (tmp_path / "steps.tsv").read_text().splitlines()}
    assert steps == {"env": "ok", "build": "skipped", "kernels": "skipped", "diag": "skipped",
                     "tests": "ok",
                     "memcheck": "skipped", "racecheck": "skipped", "bench": "skipped",
                     "bench_scan": "skipped", "bench_sparse": "skipped",
                     "bench_lowrank": "skipped"}
    summary = (tmp_path / "summary.md").read_text()
    assert summary in proc.stdout
    assert "CUDA section skipped" in summary and " passed, 0 failed, 0 errors" in summary
    assert list((tmp_path / "results").glob("gpu_check_*.md"))
