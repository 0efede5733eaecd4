"""The regression gate (itnet_ext.bench.compare, ``--compare``): ratios found by key and
direction, matched by their identifying fields, flagged past the tolerance."""
import json
import random

import pytest

from itnet_ext.bench import cli
from itnet_ext.bench.compare import compare, ratios


def _main_like(rng, scale=None):
    """A result shaped like the main section's: rows with fused/baseline ``ratio``."""
    rows = []
    for N in (256, 512):
        for mode in ("attn", "mlp-R32"):
            for pas in ("fwd", "fwd+bwd"):
                rows.append({"mode": mode, "N": N, "pass": pas, "baseline": "sdpa",
                             "baseline_ms": rng.uniform(1, 9), "ratio": rng.uniform(0.5, 3)})
    return {"meta": {"ratio": 99.0}, "rows": rows,
            "gno": {"rows": [{"R": 64, "pass": "fwd", "speedup": rng.uniform(3, 6)}]},
            "scan": [{"T": 1024, "pass": "fwd", "vs_scan": {"loop": rng.uniform(5, 20)}}]}


def test_directions_and_names():
    r = ratios(_main_like(random.Random(0)))
    assert len(r) == 8 + 1 + 1                        # meta is not read
    assert r["/rows[mode=attn baseline=sdpa N=256 pass=fwd]/ratio"][1] is False
    assert r["/gno/rows[R=64 pass=fwd]/speedup"][1] is True
    assert r["/scan[T=1024 pass=fwd]/vs_scan/loop"][1] is True
    assert not any("baseline_ms" in k for k in r)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flags_exactly_the_ratios_past_the_tolerance(seed):
    rng = random.Random(seed)
    old = _main_like(rng)
    new = json.loads(json.dumps(old))
    worse = rng.randrange(7)                          # not the row dropped below
    slightly = (worse + 1) % 7
    new["rows"][worse]["ratio"] *= 1.2                # lower is better: 20% worse
    new["rows"][slightly]["ratio"] *= 1.1             # within 15%
    new["gno"]["rows"][0]["speedup"] /= 1.3           # higher is better: 30% worse
    new["scan"][0]["vs_scan"]["loop"] *= 2            # better
    new["rows"].pop()                                 # a size only the old run has
    cmp = compare(old, new, 0.15)
    wr = new["rows"][worse]
    want = {f"/rows[mode={wr['mode']} baseline=sdpa N={wr['N']} pass={wr['pass']}]/ratio",
            "/gno/rows[R=64 pass=fwd]/speedup"}
    assert set(cmp["regressions"]) == want
    assert len(cmp["only_old"]) == 1 and not cmp["only_new"]
    by = {r["name"]: r for r in cmp["rows"]}
    assert by["/scan[T=1024 pass=fwd]/vs_scan/loop"]["change"] == pytest.approx(0.5)
    assert not compare(old, old)["regressions"]


def test_cli_gate_exit_status(tmp_path, capsys):
    rng = random.Random(4)
    old = _main_like(rng)
    bad = json.loads(json.dumps(old))
    bad["rows"][0]["ratio"] *= 1.5
    paths = {}
    for name, res in (("old", old), ("bad", bad), ("other", {"rows": [{"T": 1, "ratio": 1.0}]})):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(res))
    assert cli.main(["--compare", str(paths["old"]), "--compare-new", str(paths["old"])]) == old
    with pytest.raises(SystemExit) as e:
        cli.main(["--compare", str(paths["old"]), "--compare-new", str(paths["bad"])])
    assert e.value.code == 1
    assert "WORSE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:                # nothing in common: no silent pass
        cli.main(["--compare", str(paths["old"]), "--compare-new", str(paths["other"])])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["--compare", str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--compare-new", str(paths["old"])])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="tolerance"):
        compare(old, old, -1)
