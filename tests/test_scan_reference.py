"""The decay-scan references (issue 4 foundation): the sequential loop against the dense
causal integral transform in `none` mode (one head per channel), in float64, over every
log-decay form (full, per-channel Rk = 1, time-invariant (D, Rk), factored (dt, A)), channel
groups, skip, initial state and the final state; the loop against a hand-written step
recurrence; gradcheck; and the argument errors.
"""
import random
import zlib

import pytest
import torch

from itnet_ext import reference

from scan_helpers import F64, FORMS, rel, scan_problem


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("G,grouped", [(1, False), (1, True), (2, True), (3, True)])
@pytest.mark.parametrize("extras", ["none", "skip", "h0", "both"])
def test_loop_equals_dense_kernel(form, G, grouped, extras):
    seed = zlib.crc32(repr((form, G, grouped, extras)).encode())  # stable across processes
    args, kw = scan_problem(seed, form, G=G, grouped=grouped,
                            skip=extras in ("skip", "both"), h0=extras in ("h0", "both"))
    y, hT = reference.decay_scan(*args, **kw, return_final_state=True)
    yd, hd = reference.decay_scan_dense(*args, **kw, return_final_state=True)
    assert y.shape == args[0].shape and hT.shape == (2, 6, 4)
    assert rel(y, yd) <= 1e-10
    assert rel(hT, hd) <= 1e-10


def test_loop_equals_step_recurrence():
    """Independent of the vectorized loop: scalar recurrence per (b, d, r), written out."""
    args, kw = scan_problem(5, "factored", B=1, T=9, D=4, Rk=3, G=2)
    x, (dt, A), phi, psi = args
    y = reference.decay_scan(*args, **kw)
    skip, h0 = kw["skip"], kw["initial_state"]
    D, Rk = 4, 3
    exp_y = torch.zeros_like(y)
    for d in range(D):
        g = d // (D // 2)
        h = [h0[0, d, r].item() for r in range(Rk)]
        for t in range(9):
            for r in range(Rk):
                a = dt[0, t, d].item() * A[d, r].item()
                h[r] = torch.exp(torch.tensor(a, dtype=F64)).item() * h[r] + \
                    psi[0, t, g, r].item() * x[0, t, d].item()
            exp_y[0, t, d] = sum(phi[0, t, g, r].item() * h[r] for r in range(Rk)) + \
                skip[d].item() * x[0, t, d].item()
    assert rel(y, exp_y) <= 1e-12


def test_empty_sequence_and_float32():
    args, kw = scan_problem(7, "full", T=0)
    y, hT = reference.decay_scan(*args, **kw, return_final_state=True)
    assert y.shape == (2, 0, 6) and torch.equal(hT, kw["initial_state"])
    yd, hd = reference.decay_scan_dense(*args, **kw, return_final_state=True)
    assert yd.shape == (2, 0, 6) and torch.equal(hd, kw["initial_state"])
    args32, kw32 = scan_problem(8, "static", dtype=torch.float32)
    args64, kw64 = scan_problem(8, "static")
    y32 = reference.decay_scan(*args32, **kw32)
    assert y32.dtype == torch.float32
    assert rel(y32.double(), reference.decay_scan(*args64, **kw64)) <= 1e-5


@pytest.mark.parametrize("form", ["full", "factored"])
def test_gradcheck(form):
    args, kw = scan_problem(11, form, B=1, T=5, D=2, Rk=2)
    ld = args[1]
    leaves = [args[0], *(ld if isinstance(ld, tuple) else (ld,)), args[2], args[3], kw["skip"],
              kw["initial_state"]]
    for t in leaves:
        t.requires_grad_()

    def f(x, *rest):
        if form == "factored":
            dt, A, phi, psi, skip, h0 = rest
            ldx = (dt, A)
        else:
            ldx, phi, psi, skip, h0 = rest
        return reference.decay_scan(x, ldx, phi, psi, skip=skip, initial_state=h0,
                                    return_final_state=True)

    assert torch.autograd.gradcheck(f, tuple(leaves))


# ------------------------------------------------------------------------------------------
# argument errors
# ------------------------------------------------------------------------------------------
def _base():
    (x, ld, phi, psi), kw = scan_problem(3, "full", h0=True)
    return dict(x=x, log_decay=ld, phi=phi, psi=psi, **kw)


BAD = {
    "x 2-D": (lambda a: a.update(x=a["x"][0]), r"x: expected shape \(B, T, D\)"),
    "x int": (lambda a: a.update(x=a["x"].long()), "x: expected a floating-point"),
    "phi T": (lambda a: a.update(phi=a["phi"][:, :-1]), "phi: expected shape"),
    "phi != psi": (lambda a: a.update(psi=a["psi"][..., :-1]), "phi, psi: expected the same"),
    "groups": (lambda a: a.update(phi=torch.randn(2, 23, 4, 4, dtype=F64),
                                  psi=torch.randn(2, 23, 4, 4, dtype=F64)),
               "G = 4 must divide D = 6"),
    "decay 3-D": (lambda a: a.update(log_decay=a["log_decay"][0]), "log_decay: expected 4 dims"),
    "decay shape": (lambda a: a.update(log_decay=a["log_decay"][..., :2]),
                    "log_decay: expected a shape broadcastable"),
    "static shape": (lambda a: a.update(log_decay=torch.zeros(6, 3, dtype=F64)),
                     "log_decay: a 2-D log-decay is time-invariant"),
    "pair len": (lambda a: a.update(log_decay=(a["x"],)), "the pair \\(dt, A\\)"),
    "dt shape": (lambda a: a.update(log_decay=(a["x"][:, :, :3], torch.zeros(6, 4, dtype=F64))),
                 "log_decay dt: expected shape"),
    "A shape": (lambda a: a.update(log_decay=(a["x"], torch.zeros(6, 5, dtype=F64))),
                "log_decay A: expected shape"),
    "dtype": (lambda a: a.update(phi=a["phi"].float(), psi=a["psi"].float()),
              "phi: expected dtype torch.float64"),
    "skip": (lambda a: a.update(skip=torch.zeros(5, dtype=F64)), r"skip: expected shape \(6,\)"),
    "h0": (lambda a: a.update(initial_state=torch.zeros(2, 6, 3, dtype=F64)),
           r"initial_state: expected shape \(2, 6, 4\)"),
    "not a tensor": (lambda a: a.update(phi=[1.0]), "phi: expected a tensor"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("fn", ["decay_scan", "decay_scan_dense"])
def test_bad_input(case, fn):
    a = _base()
    BAD[case][0](a)
    with pytest.raises(ValueError, match=BAD[case][1]):
        getattr(reference, fn)(a.pop("x"), a.pop("log_decay"), a.pop("phi"), a.pop("psi"), **a)


def test_random_forms_fuzz():
    rng = random.Random(0)
    for i in range(20):
        form = rng.choice(FORMS)
        G = rng.choice([1, 2, 3, 6])
        args, kw = scan_problem(100 + i, form, B=rng.randint(1, 3), T=rng.randint(1, 40), D=6,
                                Rk=rng.choice([1, 2, 5]), G=G, grouped=G > 1 or rng.random() < 0.5,
                                skip=rng.random() < 0.5, h0=rng.random() < 0.5)
        y, hT = reference.decay_scan(*args, **kw, return_final_state=True)
        yd, hd = reference.decay_scan_dense(*args, **kw, return_final_state=True)
        assert rel(y, yd) <= 1e-10, (i, form)
        assert rel(hT, hd) <= 1e-10, (i, form)
