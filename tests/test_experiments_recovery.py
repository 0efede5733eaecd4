"""The recovery experiments (itnet_ext.experiments.recovery): the command's outputs, its
determinism, the least-squares baseline against an exactly linear teacher and an
independent solve, a short run whose held-out error falls, and argument errors. Speed is
measured by the command itself, not here."""
import json
import math
import os

import pytest
import torch

from itnet_ext.experiments import recovery as REC
from itnet_ext.experiments import recovery_teachers as RT


def test_quick_run_writes_json_and_png_with_finite_errors(tmp_path):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    rec = REC.main(["--quick", "--out", str(tmp_path), "--widths", "4,8",
                    "--configs", "causal-none,stack2"])
    assert os.path.isfile(rec["paths"]["json"]) and os.path.isfile(rec["paths"]["png"])
    assert os.path.basename(rec["paths"]["json"]).startswith("recovery_")
    with open(rec["paths"]["json"]) as f:
        on_disk = json.load(f)
    assert set(on_disk["teachers"]) == set(RT.TEACHERS)
    for name, tr in on_disk["teachers"].items():
        assert math.isfinite(tr["baseline"]["linear_lstsq"])
        assert tr["baseline"]["zero"] == pytest.approx(1.0, abs=0.2)   # normalised teacher
        expect = ["causal-none", "stack2"] if RT.FAMILIES[name] == "causal" else None
        if expect:
            assert list(tr["configs"]) == expect
        assert tr["best_config"] in tr["configs"]
        for cfg in tr["configs"].values():
            assert set(cfg["widths"]) == {"4", "8"}
            for w in cfg["widths"].values():
                assert math.isfinite(w["final_error"]) and w["params"] > 0
                assert w["curve"][0][0] == 0 and w["curve"][-1][0] == REC.QUICK["steps"]
                assert all(math.isfinite(e) for _, e in w["curve"])


def test_same_seed_same_errors():
    pytest.importorskip("tqdm")
    st = dict(REC.QUICK)
    a = REC.run_teacher("conv1d", [4], st, seed=3, quick=True, progress=False)
    b = REC.run_teacher("conv1d", [4], st, seed=3, quick=True, progress=False)
    ca, cb = a["configs"]["conv"]["widths"]["4"]["curve"], b["configs"]["conv"]["widths"]["4"]["curve"]
    assert len(ca) == len(cb)
    for (sa, ea), (sb, eb) in zip(ca, cb):
        assert sa == sb and abs(ea - eb) < 1e-6
    assert abs(a["baseline"]["linear_lstsq"] - b["baseline"]["linear_lstsq"]) < 1e-6


def test_lstsq_baseline_is_exact_on_a_pointwise_linear_teacher():
    pytest.importorskip("tqdm")
    st = dict(REC.QUICK, steps=1)
    res = REC.run_teacher("conv1d", [4], st, seed=0, quick=True, progress=False, kernel_size=1)
    assert res["baseline"]["linear_lstsq"] < 1e-4
    # and the kernel_size=5 teacher is not pointwise: the baseline cannot fit it
    res5 = REC.run_teacher("conv1d", [4], st, seed=0, quick=True, progress=False)
    assert res5["baseline"]["linear_lstsq"] > 0.3


def test_lstsq_fit_matches_the_normal_equations():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 7, 5, generator=g)
    y = torch.randn(40, 7, 3, generator=g)
    W, b = RT.lstsq_fit(x, y)
    X = torch.cat([x.reshape(-1, 5).double(), torch.ones(280, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.solve(X.T @ X, X.T @ y.reshape(-1, 3).double())
    torch.testing.assert_close(W, sol[:-1].T, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(b, sol[-1], rtol=1e-9, atol=1e-10)
    assert RT.lstsq_apply(W, b, x).shape == y.shape


def test_training_reduces_the_conv1d_error():
    pytest.importorskip("tqdm")
    st = dict(REC.QUICK, steps=60, batch_size=16, lr=1e-2, evals=2)
    res = REC.run_teacher("conv1d", [8], st, seed=0, quick=True, progress=False)
    curve = res["configs"]["conv"]["widths"]["8"]["curve"]
    assert curve[0][0] == 0
    assert curve[-1][1] < 0.9 * curve[0][1]


def test_rel_err_definition():
    t = torch.tensor([[3.0, 4.0]])
    assert RT.rel_err(t, t) == 0.0
    assert RT.rel_err(torch.zeros_like(t), t) == pytest.approx(1.0)
    assert RT.rel_err(t + torch.tensor([[0.0, 5.0]]), t) == pytest.approx(1.0)


@pytest.mark.parametrize("argv, msg", [
    (["--teachers", "conv3d"], "unknown teacher 'conv3d'"),
    (["--widths", "4,0"], "positive"),
    (["--widths", "-2"], "positive"),
    (["--widths", "a"], "integers"),
    (["--steps", "0"], "--steps"),
    (["--configs", "rnn"], "unknown configuration"),
])
def test_bad_arguments_exit_with_a_message(argv, msg, capsys):
    with pytest.raises(SystemExit):
        REC.main(argv + ["--quick"])
    assert msg in capsys.readouterr().err


def test_build_teacher_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="unknown teacher"):
        RT.build_teacher("transformer", 0)
