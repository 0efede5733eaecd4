"""Hostile inputs for every public op and layer (tests/bad_input_cases.py: wrong rank, size,
dtype, device, non-tensors, NaN / inf where values are checked, empty dimensions), run in a
subprocess with a timeout: a crash or a hang fails this test with the case it happened in,
instead of taking the session down. Every case must raise a ValueError / TypeError that starts
with the argument's name, or (valid edge inputs) return the right shape without NaN."""
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_bad_inputs_in_a_subprocess():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HERE / "bad_input_cases.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    started = [x["start"] for x in lines if "start" in x]
    results = [x for x in lines if "case" in x]
    if not any(x.get("done") for x in lines):
        last = started[-1] if started else "(before the first case)"
        raise AssertionError(f"the case run died (exit {proc.returncode}) in case {last}:\n"
                             f"{proc.stderr[-3000:]}")
    assert len(results) == len(started) >= 60, (len(results), len(started))
    bad = [f"{x['case']}: {x['problem']}" for x in results if not x["ok"]]
    assert not bad, "\n".join(bad)
