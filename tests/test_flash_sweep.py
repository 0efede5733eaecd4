"""The flash configuration sweep (csrc/dense/flash/sweep.h, itnet_ext.dense.sweep): every
compiled configuration, forward and backward, in float16 and bfloat16, for both head-dim
instances (64 and 128) and both modes (attention only, pair MLP), against the float64
reference with the rule of tests/test_dense_cuda_half.py (at most 2x / 3x plain PyTorch's own
low-precision error).

The problems have partial query and key tiles for every tile shape of the sweep (N = 150,
M = 200), causal masking or a window with an offset table, key padding, and R = 18 (not a
multiple of 4: the packed pairs' zero padding). The packed-MLP configurations compute the MLP
term in 16-bit pairs; the rule still holds for them (PyTorch's low-precision yardstick evaluates
the MLP in the same dtype).

Runs where the sweep is compiled (ITNET_FLASH_SWEEP at build time): on a GPU, or under the
device emulator (CI's emulate stage builds it); skipped elsewhere.
"""
import pytest
import torch

from cuda_helpers import CUDA_TESTS, EMULATED, GPU
from test_dense_cuda_half import HALF, check_half, make_problem  # noqa: F401 (fixture)
from itnet_ext.dense import sweep

pytestmark = CUDA_TESTS


def _names(backward):
    if not (GPU or EMULATED):
        return []
    return sweep.configs(backward, emulated=EMULATED)


FWD, BWD = _names(False), _names(True)
_WHY = "the flash sweep is not compiled (build with ITNET_FLASH_SWEEP=all)"
needs_sweep = pytest.mark.skipif(not FWD, reason=_WHY)
needs_bwd_sweep = pytest.mark.skipif(not BWD, reason=_WHY)


def check_instance(kw, dtype, seed):
    """check_half; a partial sweep build (ITNET_FLASH_SWEEP patterns) may lack the instance
    for this dtype or head dim: skipped then, with the reason (CI builds them all)."""
    try:
        check_half(kw, dtype, seed=seed)
    except RuntimeError as e:
        if "has no instance for head dim" in str(e):
            pytest.skip(str(e).splitlines()[0])
        raise


def problem(make_problem, seed, head_dim, mlp):
    """Partial tiles everywhere; the MLP case ("mlp") with a window, an offset table and every
    MLP input, "mlp-plain" without a window (the MLP code without the per-pair window test),
    the attention case (False) causal with key padding."""
    common = dict(B=1, H=2, N=150, M=200, Dk=head_dim - 8, Dv=head_dim, normalize="softmax",
                  content=True, mask=None, key_weight=None)
    if mlp == "mlp-plain":
        return make_problem(seed, mlp=True, R=18, activation="gelu", support="none",
                            causal=True, kpm=True, use_u=True, use_t=True, use_b2=True,
                            **common)
    if mlp:
        return make_problem(seed, mlp=True, R=18, activation="gelu", support="offset", D=1,
                            causal=False, kpm=False, use_u=True, use_t=True, use_b2=True,
                            **common)
    return make_problem(seed, mlp=False, support="none", causal=True, kpm=True, **common)


CASES = [(d, mlp) for d in (64, 128) for mlp in (False, True)]
IDS = [f"d{d}-{'mlp' if mlp else 'attn'}" for d, mlp in CASES]
FWD_CASES = CASES + [(64, "mlp-plain"), (128, "mlp-plain")]
FWD_IDS = IDS + ["d64-mlp-plain", "d128-mlp-plain"]


@needs_sweep
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", FWD_CASES, ids=FWD_IDS)
@pytest.mark.parametrize("name", FWD or ["-"])
def test_forward_config(name, case, dtype, make_problem):
    d, mlp = case
    kw = problem(make_problem, 900 + d + FWD_CASES.index(case), d, mlp)
    with sweep.use(fwd=name, emulated=EMULATED):
        assert sweep.current(emulated=EMULATED) == (name, "")
        check_instance(kw, dtype, d)
    assert sweep.current(emulated=EMULATED) == ("", "")


@needs_bwd_sweep
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("name", BWD or ["-"])
def test_backward_config(name, case, dtype, make_problem):
    d, mlp = case
    kw = problem(make_problem, 950 + d + mlp, d, mlp)
    with sweep.use(bwd=name, emulated=EMULATED):
        check_instance(kw, dtype, d)


@needs_sweep
def test_selection_errors(make_problem):
    with pytest.raises(RuntimeError, match="fwd: no forward configuration 'nope'"):
        sweep.use(fwd="nope", emulated=EMULATED).__enter__()
    with pytest.raises(RuntimeError, match="bwd: no backward configuration 'nope'"):
        sweep.use(bwd="nope", emulated=EMULATED).__enter__()
    assert sweep.current(emulated=EMULATED) == ("", "")
    # a head dim above the sweep's instances, an activation it was not compiled for
    kw = problem(make_problem, 990, 256, False)
    with sweep.use(fwd=FWD[0], emulated=EMULATED):
        with pytest.raises(RuntimeError, match="has no instance for head dim 256"):
            check_half(kw, torch.float16)
    kw = problem(make_problem, 991, 64, True)
    kw["activation"] = "relu"
    with sweep.use(fwd=FWD[0], emulated=EMULATED):
        with pytest.raises(RuntimeError, match="activation 'gelu' only, got 'relu'"):
            check_half(kw, torch.float16)


@needs_sweep
@needs_bwd_sweep
@pytest.mark.skipif(not EMULATED, reason="the script's --emulate mode runs on the emulator")
def test_sweep_script_runs_every_config(tmp_path):
    """python -m itnet_ext.bench.flash_sweep --emulate: every configuration runs, in both modes,
    and the forward outputs agree with the default configuration's (the GPU run's plumbing)."""
    import json

    from itnet_ext.bench import flash_sweep

    out = tmp_path / "sweep.json"
    assert flash_sweep.main(["--emulate", "--dtypes", "float16", "--dh", "64",
                             "--time-budget-s", "1e9", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = [r for r in res["rows"] if "skipped" not in r]
    assert len(rows) == len(res["rows"]) == 2 * (len(FWD) + len(BWD) + 2)
    for mode in flash_sweep.MODES:
        fwd = {r["config"] for r in rows if r["mode"] == mode and r["pass"] == "fwd"}
        bwd = {r["config"] for r in rows if r["mode"] == mode and r["pass"] == "fwd+bwd"}
        assert fwd == {"default", *FWD} and bwd == {"default", *BWD}
    errs = {r["config"]: r["err"] for r in rows if r["pass"] == "fwd" and r["mode"] != "attn"}
    # float16 outputs: different tile orders round differently; packed MLP math a bit more
    assert all(e < 1e-2 for e in errs.values()), errs
    assert (tmp_path / "sweep.md").read_text().startswith("# Flash configuration sweep")
