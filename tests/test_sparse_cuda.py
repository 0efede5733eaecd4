"""CUDA sparse (pair-list) op (itnet_ext.functional.sparse_integral_transform on CUDA tensors)
against the float64 oracle itnet_ext.reference.sparse_integral_transform on CPU copies of the
same (rounded) inputs.

Outputs, lse and the gradients of every differentiable input (q, k, v, u, t, W2, b2,
offset_table, log_w) over seeded random pair lists in both forms (padded idx (B, N, S); CSR
row_ptr / col_idx with absent entries inside the rows and garbage padding past row_ptr[b, N]),
every logit term (content, MLP, MLP + offset table on an integer window, content + MLP with
a window on integer or float positions, all of them), both normalizations, the three
activations, u / t batch-broadcast, absent pairs (-inf log-weights, key -1), repeated keys,
empty rows, pairs excluded by the window; sizes that exercise the kernels' structure (more
than 32 pairs per row: several chunks; H above the 8 (float32) / 4 (float64) heads kept in
registers; R, Dk, Dv above 32 and not multiples of it; few keys shared by many pairs: atomic
contention); degenerate sizes (N, M, E, H, B, R, Dk, Dv = 0). float32: bound 1e-4 relative
to max(1, max |reference|); float64: 1e-10. Plus: the deterministic mode is bitwise
repeatable (and agrees with the reference); CUDA and CPU kernels agree to 1e-12 in float64;
gradcheck on the GPU; opcheck; a side stream; bad inputs give clear errors.

Without a GPU (or in a build without the CUDA kernels) the kernels run under the device
emulator of an ITNET_EMULATE=1 build (cuda_helpers: DEVICE = "cpu", fewer cases of the slow
parametrizations, the tests that need a real GPU skipped), or everything is skipped.
"""
import math
import random
import zlib

import pytest
import torch

from itnet_ext import functional, reference
from conftest import rel_err as _rel_err
from cuda_helpers import CUDA_TESTS, DEVICE, cpu_kernels, requires_gpu

F64 = torch.float64
F32 = torch.float32
TOL = {F64: 1e-10, F32: 1e-4}
NEG_INF = float("-inf")
DIFF = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "log_w")
ACTS = ("relu", "gelu", "silu")
TERMS = ("content", "mlp", "offset", "both", "all")

pytestmark = CUDA_TESTS

# Where the fused op runs (cuda_helpers.DEVICE): "cuda", or "cpu" under the device emulator
# (the CUDA kernels, emulated). The helpers also run the same checks against the CPU kernels
# when pointed at "cpu" outside the emulator, which is how this file's own logic can be
# checked on a machine without a GPU.


def _seed(*key):
    return zlib.crc32(repr(key).encode())  # stable across processes


def rel_err(a, b):
    """conftest.rel_err with errors relative to max(1, max |b|), no absolute cut-off."""
    return _rel_err(a, b, atol=0.0, floor=1.0)


# --------------------------------------------------------------------------------------------
# problem generator
# --------------------------------------------------------------------------------------------
def sparse_problem(seed, *, terms=None, normalize=None, form=None, B=2, H=3, N=19, M=29, S=10,
                   Dk=8, Dv=6, R=12, activation=None, window=None, absent=True,
                   empty_rows=True, repeats=True, garbage=True, use_u=None, use_t=None,
                   u_batch=None, t_batch=None, use_b2=None, scale=None, use_log_w=None):
    """Keyword arguments of ``sparse_integral_transform`` (CPU float64 tensors, none requiring
    grad). Options left None are drawn from ``random.Random(seed)``.

    terms: "content" (q, k), "mlp" (W2 ...), "offset" (MLP + offset table on an integer
    window), "both" (content + MLP), "all" (content + MLP + offset table).
    window: None, "int" (integer positions, integer bounds) or "frac" (float positions,
    fractional bounds, one of them infinite sometimes); "offset" / "all" force "int".
    Pairs: each row gets 0..S present pairs (keys uniform in [0, M), log-weights ~ N(0, 0.5)),
    ``absent`` adds up to two absent entries per row (log_w = -inf, key -1 or a valid key),
    ``empty_rows`` empties row 0 of batch 0 and the middle row of the last batch,
    ``repeats`` lists the first key of some rows twice; CSR ``garbage`` pads past
    row_ptr[b, N] with out-of-range keys and NaN log-weights (never read).
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)

    def pick(val, choices):
        return rng.choice(choices) if val is None else val

    def randn(*shape, s=1.0):
        return torch.randn(*shape, generator=gen, dtype=F64) * s

    terms = pick(terms, list(TERMS))
    normalize = pick(normalize, ["softmax", "none"])
    form = pick(form, ["padded", "csr"])
    content = terms in ("content", "both", "all")
    mlp = terms != "content"
    table = terms in ("offset", "all")

    kw = dict(v=randn(B, H, M, Dv), normalize=normalize)
    if content:
        kw["q"] = randn(B, H, N, Dk)
        kw["k"] = randn(B, H, M, Dk)
        if scale is not None:
            kw["scale"] = scale
    if mlp:
        kw["W2"] = randn(H, R, s=1.5 / math.sqrt(max(R, 1)))
        kw["activation"] = pick(activation, list(ACTS))
        if pick(use_u, [True, True, False]):
            kw["u"] = randn(pick(u_batch, [B, 1]), N, R)
        if pick(use_t, [True, True, False]):
            kw["t"] = randn(pick(t_batch, [B, 1]), M, R)
        if pick(use_b2, [True, False]):
            kw["b2"] = randn(H)

    # ---- positions and window ----
    window = "int" if table else pick(window, [None, "int", "frac"])
    if window == "int":
        D = rng.choice([1, 1, 2])
        if D == 1 and rng.random() < 0.4:
            side = max(N, M, 1)  # default positions: the integer index
        else:
            side = max(2, int(math.ceil(max(N, M, 1) ** (1.0 / D))) + 1)
            Bq = rng.choice([B, 1])
            kw["q_pos"] = torch.randint(0, side, (Bq, N, D), generator=gen).to(F64)
            kw["k_pos"] = torch.randint(0, side, (rng.choice([Bq, 1]), M, D), generator=gen).to(F64)
        reach = max(1, side // 2)
        win = [(-rng.randint(0, reach), rng.randint(0, reach)) for _ in range(D)]
        kw["window"] = win if D > 1 else win[0]
        if table:
            vol = 1
            for lo, hi in win:
                vol *= hi - lo + 1
            kw["offset_table"] = randn(vol + rng.choice([0, 3]), R, s=0.7)
    elif window == "frac":
        D = rng.choice([1, 2])
        sp = max(N, M, 1) ** (1.0 / D)
        Bq = rng.choice([B, 1])
        kw["q_pos"] = torch.rand(Bq, N, D, generator=gen, dtype=F64) * sp
        kw["k_pos"] = torch.rand(rng.choice([Bq, 1]), M, D, generator=gen, dtype=F64) * sp
        win = []
        for _ in range(D):
            lo, hi = -rng.uniform(0.2, 0.7) * sp, rng.uniform(0.2, 0.7) * sp
            r = rng.random()
            if r < 0.15:
                lo = -math.inf
            elif r < 0.3:
                hi = math.inf
            win.append((lo, hi))
        kw["window"] = win if D > 1 else win[0]

    # ---- the pair list: rows of (key, log-weight) ----
    rows = []
    for b in range(B):
        rb = []
        for i in range(N):
            cnt = rng.randint(0, S) if M > 0 else 0
            row = [(rng.randrange(M), rng.gauss(0.0, 0.5)) for _ in range(cnt)]
            if repeats and cnt >= 2 and rng.random() < 0.5:
                row[1] = (row[0][0], rng.gauss(0.0, 0.5))
            if absent:
                for _ in range(rng.randint(0, 2)):
                    key = rng.choice([-1, rng.randrange(M)]) if M > 0 else -1
                    row.insert(rng.randint(0, len(row)), (key, NEG_INF))
            rb.append(row)
        rows.append(rb)
    if empty_rows and N > 0 and B > 0:
        rows[0][0] = [(-1, NEG_INF)] if absent else []
        rows[-1][N // 2] = []
    has_inf = any(w == NEG_INF for rb in rows for r in rb for _, w in r)

    if form == "padded":
        S_tot = max([len(r) for rb in rows for r in rb], default=0)
        S_tot = max(S_tot, 1)
        idx = torch.full((B, N, S_tot), -1, dtype=torch.long)
        lw = torch.full((B, N, S_tot), NEG_INF, dtype=F64)
        for b in range(B):
            for i in range(N):
                for s_, (j, w) in enumerate(rows[b][i]):
                    idx[b, i, s_], lw[b, i, s_] = j, w
        kw["idx"] = idx
        short = any(len(r) < S_tot for rb in rows for r in rb)
        if has_inf or short or pick(use_log_w, [True, True, False]):
            kw["log_w"] = lw
        elif M > 0:
            idx.clamp_(min=0)
    else:
        flat = [[p for r in rb for p in r] for rb in rows]
        E = max([len(f) for f in flat], default=0) + (2 if garbage else 0)
        row_ptr = torch.zeros(B, N + 1, dtype=torch.long)
        col = torch.full((B, E), M + 7 if garbage else 0, dtype=torch.long)
        lw = torch.full((B, E), math.nan if garbage else 0.0, dtype=F64)
        for b in range(B):
            counts = torch.tensor([len(r) for r in rows[b]], dtype=torch.long)
            row_ptr[b, 1:] = torch.cumsum(counts, 0)
            for e_, (j, w) in enumerate(flat[b]):
                col[b, e_], lw[b, e_] = j, w
        kw["row_ptr"], kw["col_idx"] = row_ptr, col
        if has_inf or garbage or pick(use_log_w, [True, True, False]):
            kw["log_w"] = lw
    return kw


def describe(kw):
    return ", ".join(f"{k}={tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}={v!r}"
                     for k, v in kw.items())


def to_dev(kw, dtype, device):
    """Fresh leaves (requiring grad) of the differentiable inputs in dtype on device; the
    other tensors moved too (float ones, positions included, cast)."""
    out = {}
    for n, x in kw.items():
        if isinstance(x, torch.Tensor):
            x = x.detach().to(device)
            if x.is_floating_point():
                x = x.to(dtype)
            if n in DIFF:
                x = x.clone().requires_grad_()
        out[n] = x
    return out


def run(fn, kw, seed):
    """fn(**kw) with lse in softmax mode, backprop of fixed random cotangents (the lse
    cotangent included, on its finite entries); returns (results, {name: grad})."""
    softmax = kw.get("normalize", "softmax") == "softmax"
    res = fn(**kw, return_lse=True) if softmax else (fn(**kw),)
    gen = torch.Generator().manual_seed(seed + 777)
    cot = [torch.randn(r.shape, generator=gen, dtype=F64).to(r.device, r.dtype) for r in res]
    if softmax:  # no cotangent on the lse = -inf of empty rows (their gradient is 0 anyway)
        cot[1] = torch.where(torch.isfinite(res[1].detach()), cot[1], torch.zeros_like(cot[1]))
    names = [n for n in DIFF if kw.get(n) is not None]
    pairs = [(r, c) for r, c in zip(res, cot) if r.requires_grad]
    grads = torch.autograd.grad([r for r, _ in pairs], [kw[n] for n in names],
                                [c for _, c in pairs], allow_unused=True)
    return res, dict(zip(names, grads))


def fused(**kw):
    return functional.sparse_integral_transform(**kw)


def oracle(**kw):
    return reference.sparse_integral_transform(**kw)


def check_vs_reference(kw, dtype, device=None, fn=fused, seed=0, tol=None):
    """The fused op in dtype on device vs the float64 reference on CPU (same rounded inputs).
    Returns the fused op's (results, grads)."""
    tol = TOL[dtype] if tol is None else tol
    device = DEVICE if device is None else device
    kwd = to_dev(kw, dtype, device)
    kwr = to_dev({n: (x.detach().cpu() if isinstance(x, torch.Tensor) else x)
                  for n, x in kwd.items()}, F64, "cpu")
    res_d, g_d = run(fn, kwd, seed)
    res_r, g_r = run(oracle, kwr, seed)
    what = describe(kw)
    for name, a, b in zip(("out", "lse"), res_d, res_r):
        assert a.device.type == torch.device(device).type and a.dtype == dtype, (name, a.dtype)
        err = rel_err(a, b)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol}; {what}"
    for n in g_r:
        gd = torch.zeros_like(kwd[n]) if g_d[n] is None else g_d[n]
        gr = torch.zeros_like(kwr[n]) if g_r[n] is None else g_r[n]
        assert gd.shape == kwd[n].shape, (n, gd.shape)
        err = rel_err(gd, gr)
        assert err <= tol, f"grad {n}: rel err {err:.3g} > {tol}; {what}"
    return res_d, g_d


class deterministic:
    """torch.use_deterministic_algorithms(mode) inside a with block."""

    def __init__(self, mode=True):
        self.mode = mode

    def __enter__(self):
        self.prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(self.mode)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.prev)


# --------------------------------------------------------------------------------------------
# against the reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("terms", TERMS)
def test_terms_vs_reference(terms, normalize, form, dtype):
    seed = _seed("terms", terms, normalize, form)
    kw = sparse_problem(seed, terms=terms, normalize=normalize, form=form)
    check_vs_reference(kw, dtype, seed=seed)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("seed", range(16))
def test_fuzz_vs_reference(seed, dtype):
    """Random sizes and options: H around the register head groups, R / Dk / Dv around 32,
    rows longer than one chunk of 32 pairs, u / t batch-broadcast, scale."""
    rng = random.Random(seed)
    kw = sparse_problem(
        _seed("fuzz", seed), B=rng.choice([1, 2, 3]), H=rng.choice([1, 2, 4, 5, 8, 9, 13]),
        N=rng.choice([1, 7, 33, 50]), M=rng.choice([1, 5, 31, 64, 90]),
        S=rng.choice([1, 6, 31, 33, 70]), Dk=rng.choice([1, 3, 32, 33]),
        Dv=rng.choice([1, 4, 32, 37]), R=rng.choice([1, 7, 32, 33, 70]),
        scale=rng.choice([None, 0.3, 1.7]))
    check_vs_reference(kw, dtype, seed=seed)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_large_dims(dtype):
    """H = 12 (several head groups, hidden values kept in shared memory), R = 130, Dk = 129,
    Dv = 300 (several column passes per lane), up to 75 pairs per row (three chunks)."""
    kw = sparse_problem(_seed("large"), terms="all", normalize="softmax", form="csr", B=2, H=12,
                        N=23, M=57, S=72, Dk=129, Dv=300, R=130, activation="gelu",
                        use_u=True, use_t=True, use_b2=True)
    check_vs_reference(kw, dtype)


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_few_keys_many_pairs(normalize):
    """Three keys shared by every pair of 60 rows (up to 90 pairs each): the key-side atomics
    under contention, repeated keys in one chunk and across chunks."""
    kw = sparse_problem(_seed("few keys", normalize), terms="all", normalize=normalize,
                        form="padded", B=2, H=5, N=60, M=3, S=90, Dk=16, Dv=16, R=24)
    check_vs_reference(kw, F32)
    check_vs_reference(kw, F64)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_rows(normalize, dtype):
    """Rows without a pair that takes part (none listed, only absent ones, only pairs outside
    the window) output exactly 0 (lse -inf), get zero q / u / log_w gradients, and no
    gradient is NaN; the other rows match the reference."""
    B, N = 2, 12
    kw = sparse_problem(_seed("empty", normalize), terms="all", normalize=normalize,
                        form="csr", B=B, H=3, N=N, M=20, S=6, use_u=True, u_batch=B)
    res, grads = check_vs_reference(kw, dtype)
    # the rows without a pair that takes part, from the reference
    ref = reference.sparse_integral_transform(**kw, return_lse=True) \
        if normalize == "softmax" else (reference.sparse_integral_transform(**kw),)
    empty = (ref[0] == 0).all(-1).all(1)                      # (B, N)
    if normalize == "softmax":
        assert torch.equal(empty, (ref[1] == NEG_INF).all(1))
    assert empty[0, 0] and empty[1, N // 2]  # the generator's empty rows
    assert not empty.all()
    out = res[0].detach().cpu()
    assert (out[empty[:, None, :, None].expand_as(out)] == 0).all()
    if normalize == "softmax":
        lse = res[1].detach().cpu()
        assert (lse[empty[:, None, :].expand_as(lse)] == NEG_INF).all()
    for n, g in grads.items():
        assert g is None or not torch.isnan(g).any(), n
    dq = grads["q"].cpu()
    assert (dq[empty[:, None, :, None].expand_as(dq)] == 0).all()
    du = grads["u"].cpu()
    assert (du[empty[:, :, None].expand_as(du)] == 0).all()
    dlw = grads["log_w"].cpu()
    rp, lw = kw["row_ptr"], kw["log_w"]
    for b in range(B):
        for i in range(N):
            if empty[b, i]:
                assert (dlw[b, rp[b, i]:rp[b, i + 1]] == 0).all()
        assert (dlw[b, rp[b, -1]:] == 0).all()  # padding entries
    assert (dlw[lw == NEG_INF] == 0).all()      # absent pairs


@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_window_excludes_pairs(form, normalize):
    """A pair outside the window contributes nothing (also not to the offset-table gradient,
    whose rows it does not address): listing every key equals listing only those inside."""
    B, H, N, M, R = 2, 3, 14, 18, 8
    base = sparse_problem(_seed("window", form, normalize), terms="all", normalize=normalize,
                          form="padded", B=B, H=H, N=N, M=M, S=1, R=R, absent=False,
                          empty_rows=False, use_log_w=False)
    qp = base.get("q_pos", torch.arange(N, dtype=F64).reshape(1, N, 1))
    kp = base.get("k_pos", torch.arange(M, dtype=F64).reshape(1, M, 1))
    win = base["window"] if isinstance(base["window"], list) else [base["window"]]
    off = kp[:, None, :, :] - qp[:, :, None, :]                   # (B|1, N, M, D)
    inside = torch.ones(off.shape[:-1], dtype=torch.bool)
    for d, (lo, hi) in enumerate(win):
        inside &= (off[..., d] >= lo) & (off[..., d] <= hi)
    inside = inside.expand(B, N, M)
    assert not inside.all() and inside.any()
    every = torch.arange(M).expand(B, N, M).contiguous()
    kw_all = dict(base, idx=every, log_w=torch.zeros(B, N, M, dtype=F64))
    kw_in = dict(base, idx=every,
                 log_w=torch.where(inside, torch.zeros((), dtype=F64), torch.tensor(NEG_INF)))
    kw_all.pop("row_ptr", None), kw_all.pop("col_idx", None)
    kw_in.pop("row_ptr", None), kw_in.pop("col_idx", None)
    if form == "csr":
        for kwx in (kw_all, kw_in):
            idx, lw = kwx.pop("idx"), kwx.pop("log_w")
            kwx["row_ptr"] = (torch.arange(N + 1) * M).expand(B, N + 1).contiguous()
            kwx["col_idx"], kwx["log_w"] = idx.reshape(B, N * M), lw.reshape(B, N * M)
    r_all, g_all = check_vs_reference(kw_all, F64)
    r_in, g_in = run(fused, to_dev(kw_in, F64, DEVICE), 0)
    for a, b in zip(r_all, r_in):
        assert rel_err(a, b) <= 1e-12
    for n in g_all:
        if n != "log_w":
            assert rel_err(g_all[n], g_in[n]) <= 1e-12, n
    lw_grad = g_all["log_w"].detach().cpu().reshape(B, N, M)
    assert (lw_grad[~inside] == 0).all()


def test_repeated_key_is_log2_weight():
    """A key listed twice with log-weight w counts as listed once with w + log 2 (both
    normalizations, CUDA vs CUDA)."""
    for normalize in ("softmax", "none"):
        kw = sparse_problem(_seed("repeat", normalize), terms="both", normalize=normalize,
                            form="padded", B=2, H=3, N=9, M=12, S=1, absent=False,
                            empty_rows=False, use_log_w=True)
        idx, lw = kw["idx"], kw["log_w"]
        twice = dict(kw, idx=torch.cat([idx, idx], -1), log_w=torch.cat([lw, lw], -1))
        once = dict(kw, log_w=lw + math.log(2.0))
        a = fused(**to_dev(twice, F64, DEVICE))
        b = fused(**to_dev(once, F64, DEVICE))
        assert rel_err(a, b) <= 1e-12, normalize


@pytest.mark.parametrize("case", ["N0", "M0", "E0", "H0", "B0", "R0", "Dk0", "Dv0"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_degenerate_sizes(case, normalize):
    sizes = dict(B=2, H=3, N=9, M=12, S=5, Dk=4, Dv=3, R=6)
    form = "csr"
    opts = {}
    if case == "E0":
        sizes["S"] = 0
        opts = dict(absent=False, empty_rows=False, garbage=False)
    elif case == "M0":
        opts = dict(absent=True)
        sizes["M"] = 0
    else:
        key = case[:-1]
        sizes[key] = 0
    kw = sparse_problem(_seed("degenerate", case, normalize), terms="all" if case != "M0"
                        else "both", normalize=normalize, form=form, use_u=True, use_t=True,
                        use_b2=True, **sizes, **opts)
    res, grads = check_vs_reference(kw, F64)
    assert res[0].shape == (sizes["B"], sizes["H"], sizes["N"], sizes["Dv"])
    for n, g in grads.items():
        assert g is None or torch.isfinite(g).all(), n


# --------------------------------------------------------------------------------------------
# deterministic mode, CPU agreement, gradcheck, opcheck, streams
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_deterministic_mode(dtype, normalize):
    """Under torch.use_deterministic_algorithms(True): every gradient bitwise equal across
    calls (key-owned pass for dk / dv / dt, partial sums for dW2 / db2 / offset_table), and
    the same values as the reference and (to rounding) as the default atomic path."""
    kw = sparse_problem(_seed("det", normalize), terms="all", normalize=normalize, form="csr",
                        B=2, H=5, N=70, M=9, S=40, Dk=16, Dv=12, R=20, use_u=True, use_t=True,
                        use_b2=True)
    kwd = to_dev(kw, dtype, DEVICE)
    with deterministic():
        r1, g1 = run(fused, kwd, 1)
        r2, g2 = run(fused, kwd, 1)
        check_vs_reference(kw, dtype, seed=1)
    for a, b in zip(r1, r2):
        assert torch.equal(a, b)
    for n in g1:
        assert torch.equal(g1[n], g2[n]), n
    r3, g3 = run(fused, kwd, 1)  # atomics
    for n in g1:
        assert rel_err(g1[n], g3[n]) <= TOL[dtype], n


def test_cpu_and_cuda_agree():
    """The same float64 problem through the CPU kernels and the CUDA kernels: outputs and
    every gradient equal to 1e-12."""
    kw = sparse_problem(_seed("cpu"), terms="all", normalize="softmax", form="csr", B=2, H=9,
                        N=31, M=40, S=45, Dk=12, Dv=10, R=33)
    r_c, g_c = run(fused, to_dev(kw, F64, DEVICE), 3)
    with cpu_kernels():
        r_h, g_h = run(fused, to_dev(kw, F64, "cpu"), 3)
    for a, b in zip(r_c, r_h):
        assert rel_err(a, b) <= 1e-12
    for n in g_h:
        assert rel_err(g_c[n], g_h[n]) <= 1e-12, n


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_gradcheck_cuda(normalize):
    kw = sparse_problem(_seed("gradcheck", normalize), terms="all", normalize=normalize,
                        form="csr", B=2, H=2, N=5, M=6, S=4, Dk=3, Dv=2, R=4, use_u=True,
                        use_t=True, use_b2=True, activation="silu")
    kwd = to_dev(kw, F64, DEVICE)
    names = [n for n in DIFF if kwd.get(n) is not None]
    # log_w: the finite entries only (its -inf / NaN entries are no differentiable point)
    lw = kwd["log_w"].detach()
    finite = torch.isfinite(lw)

    def f(*xs):
        d = dict(kwd)
        for n, x in zip(names, xs):
            d[n] = x
        if "log_w" in d:
            d["log_w"] = torch.where(finite, d["log_w"], lw)
        out = functional.sparse_integral_transform(**d, return_lse=normalize == "softmax")
        if isinstance(out, tuple):
            return out[0], torch.where(torch.isfinite(out[1]), out[1], torch.zeros_like(out[1]))
        return out

    inputs = [kwd[n].detach().clone().requires_grad_() for n in names]
    inputs[names.index("log_w")] = torch.where(finite, lw, torch.zeros_like(lw)).requires_grad_()
    # (nondet_tol: the key-side gradients are summed with atomics)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5,
                                    nondet_tol=1e-12)


def _op_args(kw):
    """Positional arguments of torch.ops.itnet.sparse_fwd for a CSR problem."""
    from itnet_ext._common.checks import normalize_window
    win = kw.get("window")
    if win is None:
        lo, hi = [], []
    else:
        D = kw["q_pos"].shape[-1] if kw.get("q_pos") is not None else 1
        w = normalize_window(win, D)
        lo, hi = [float(a) for a, _ in w], [float(b) for _, b in w]
    scale = kw.get("scale", 1.0 / math.sqrt(kw["q"].shape[-1]) if kw.get("q") is not None else 1.0)
    return (kw.get("q"), kw.get("k"), kw["v"], kw.get("u"), kw.get("t"), kw.get("W2"),
            kw.get("b2"), kw.get("offset_table"), kw.get("q_pos"), kw.get("k_pos"),
            kw["row_ptr"], kw["col_idx"], kw.get("log_w"), lo, hi, float(scale),
            ACTS.index(kw.get("activation", "gelu")), kw["normalize"] == "softmax")


# opcheck's test_faketensor cannot run under the emulator: its dispatch mode redirects the
# FakeTensor call to torch.ops.itnet_emu, which has no fake (Meta) kernel
@requires_gpu
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_opcheck_cuda(normalize):
    kw = sparse_problem(_seed("opcheck", normalize), terms="all", normalize=normalize,
                        form="csr", B=2, H=2, N=6, M=7, S=4, Dk=3, Dv=2, R=4, garbage=False)
    kwd = to_dev(kw, F64, DEVICE)
    args = _op_args(kwd)
    torch.library.opcheck(torch.ops.itnet.sparse_fwd.default, args)
    out, lse = torch.ops.itnet.sparse_fwd(*args)
    g = torch.randn_like(out)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    for grad_lse in (None, torch.randn_like(lse) if lse.numel() else None):
        torch.library.opcheck(torch.ops.itnet.sparse_bwd.default,
                              (g, out.detach(), lse.detach(), grad_lse) + detached,
                              test_utils=("test_schema", "test_faketensor"))


@requires_gpu
def test_side_stream_and_device():
    """Runs on a non-default stream, on the device of the inputs."""
    kw = sparse_problem(_seed("stream"), terms="all", normalize="softmax", form="csr")
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    s = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(s):
        kwd = to_dev(kw, F64, dev)
        res, grads = run(fused, kwd, 0)
    s.synchronize()
    res_r, grads_r = run(oracle, to_dev(kw, F64, "cpu"), 0)
    assert res[0].device == dev
    for a, b in zip(res, res_r):
        assert rel_err(a, b) <= 1e-10
    for n in grads_r:
        assert rel_err(grads[n], grads_r[n]) <= 1e-10, n


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def _csr(**opt):
    kw = sparse_problem(_seed("errors"), terms="both", normalize="softmax", form="csr",
                        B=2, H=2, N=5, M=6, S=3, garbage=False, **opt)
    return to_dev(kw, F32, DEVICE)


def test_bad_values_direct_op():
    """The C++ checks (direct torch.ops calls, no Python validation) on CUDA tensors."""
    kw = _csr()
    args = list(_op_args(kw))
    RP, COL, LW = 10, 11, 12

    def call(i, value):
        a = list(args)
        a[i] = value
        return torch.ops.itnet.sparse_fwd(*a)

    rp = kw["row_ptr"].clone()
    rp[0, 2], rp[0, 3] = rp[0, 3] + 1, rp[0, 3]
    with pytest.raises(RuntimeError, match="row_ptr: expected non-decreasing rows"):
        call(RP, rp)
    rp = kw["row_ptr"].clone()
    rp[1, -1] = kw["col_idx"].shape[1] + 1
    with pytest.raises(RuntimeError, match=r"row_ptr: expected row_ptr\[b, N\] <= E"):
        call(RP, rp)
    col = kw["col_idx"].clone()
    lw = kw["log_w"].detach().clone()
    e = int(torch.nonzero(torch.isfinite(lw[0]))[0, 0])
    col[0, e] = 6
    with pytest.raises(RuntimeError, match=r"col_idx: expected key indices in \[0, M\)"):
        call(COL, col)
    lw[0, e] = math.nan
    with pytest.raises(RuntimeError, match="log_w: contains NaN"):
        call(LW, lw)
    with pytest.raises(RuntimeError, match="row_ptr: expected dtype torch.int64"):
        call(RP, kw["row_ptr"].int())
    if kw["v"].is_cuda:
        with pytest.raises(RuntimeError, match="col_idx: expected a tensor on"):
            call(COL, kw["col_idx"].cpu())
    with pytest.raises(RuntimeError, match="float32 or float64"):
        a = list(args)
        for i in (0, 1, 2, 3, 4, 5, 6):
            if isinstance(a[i], torch.Tensor):
                a[i] = a[i].detach().half()
        a[LW] = a[LW].detach().half()
        torch.ops.itnet.sparse_fwd(*a)


def test_bad_values_functional():
    """The Python checks name the argument (ValueError), as on CPU."""
    kw = _csr()
    bad = dict(kw, col_idx=kw["col_idx"].clone())
    lw = kw["log_w"].detach()
    e = int(torch.nonzero(torch.isfinite(lw[0]))[0, 0])
    bad["col_idx"][0, e] = -1
    with pytest.raises(ValueError, match="col_idx"):
        functional.sparse_integral_transform(**bad)
    with pytest.raises(ValueError, match="log_w"):
        functional.sparse_integral_transform(**dict(kw, log_w=kw["log_w"].detach()[:, :-1]))


def test_shared_memory_limit_error():
    """More hidden units than one warp's shared memory holds: a clear error, no launch
    failure (float64, H above the register head group, so the forward keeps R values per
    pair in shared memory)."""
    kw = sparse_problem(_seed("smem"), terms="mlp", normalize="softmax", form="csr", B=1, H=6,
                        N=2, M=3, S=2, R=4000, use_u=True, use_t=True)
    kwd = to_dev(kw, F64, DEVICE)
    with pytest.raises(RuntimeError, match="shared memory"):
        functional.sparse_integral_transform(**kwd)
