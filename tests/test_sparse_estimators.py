"""Monte Carlo estimators of the sampled evaluation, run through the fused sparse op.

docs/design.md section 2 (sampled): per query, S keys drawn from a proposal q(. | i) and

    none     y_i ~= (1/S) sum_s l(i, j_s) w_{j_s} v_{j_s} / q(j_s | i)      (unbiased)
    softmax  y_i ~= sum_s rho_s v_{j_s} / sum_s rho_s,  rho_s = exp(l) w / q  (consistent)

Everything here goes through ``itnet_ext.functional.sparse_integral_transform`` (the fused
C++ op) with the full kernel (content term + pair MLP, and an offset table where a window
allows one), on index sets drawn by ``itnet_ext.nn.samplers``, and is judged against the fused
dense op ``itnet_ext.functional.integral_transform`` (itself checked against the float64
reference). The n independent draws of one problem are n batch elements of one op call.

- unbiasedness of ``none`` for every proposal: per output element, |mean - dense| <=
  Z_BOUND * (sample std) / sqrt(n); the same check rejects deliberately biased estimators
  (forgotten -log S, forgotten -log q, far draws without 1/S, a dropped far field);
- ``softmax``: the error falls as S grows and is small at S = 256; stratified with a window
  covering every key is exact;
- the ``none`` RMS error scales like 1/sqrt(S) (ratios at S / 4S, fitted log-log slope) and
  matches the exact importance-sampling variance computed from per-pair contributions;
- seeds reproduce samples and op outputs bit for bit, a different seed differs;
- key weights folded into log_w reproduce the dense op's key_weight (w_j = 0 = padding);
- the fused op equals the float64 reference on sampled index sets (repeated keys, empty
  rows -> exactly 0), values and gradients.

CPU, float64, fixed torch.Generator seeds: every test is deterministic.
"""
import math

import pytest
import torch

from itnet_ext import functional as F
from itnet_ext import reference
from itnet_ext.nn import samplers

F64 = torch.float64
INF = math.inf
Z_BOUND = 4.5       # unbiasedness: |mean - dense| <= Z_BOUND * std / sqrt(n_draws)
N_DRAWS = 1000      # power: the SE is 2-13% of max |dense| per case; a 5% error in log_q of
                    # the uniform proposal is caught in 3 of its 4 cases, gross bugs in all


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# problems and helpers
# --------------------------------------------------------------------------------------------
def make_kernel(N, M, seed, *, H=2, Dk=4, Dv=2, R=6, table_rows=None):
    """Random kernel arguments for one problem (batch 1): content term + gelu pair MLP."""
    g = gen(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    kern = dict(q=r(1, H, N, Dk), k=r(1, H, M, Dk), v=r(1, H, M, Dv),
                u=0.7 * r(1, N, R), t=0.7 * r(1, M, R), W2=r(H, R) / math.sqrt(R),
                b2=0.3 * r(H), activation="gelu")
    if table_rows is not None:
        kern["offset_table"] = r(table_rows, R)
    return kern


def rep(x, n):
    return x.expand(n, *x.shape[1:]).contiguous()


def sparse_op(kern, idx, log_w, normalize, fn=F.sparse_integral_transform, **extra):
    """The sparse op on n = idx.shape[0] draws of the batch-1 problem ``kern``."""
    n = idx.shape[0]
    kw = dict(kern)
    for name in ("q", "k", "v"):
        kw[name] = rep(kern[name], n)
    return fn(**kw, idx=idx, log_w=log_w, normalize=normalize, **extra)


def dense_op(kern, normalize, **support):
    """The fused dense op (batch 1) -> (H, N, Dv), checked against the float64 reference."""
    out = F.integral_transform(**kern, normalize=normalize, **support)
    ref = reference.integral_transform(**kern, normalize=normalize, **support)
    scale = max(1.0, float(ref.abs().max()))
    assert float((out - ref).abs().max()) <= 1e-12 * scale
    return out[0]


def z_scores(est, dense):
    """Per element |mean - dense| / (std / sqrt(n)) over the draws (dim 0) of ``est``.

    Elements whose estimate is the same in every draw (std 0: a single-key support under a
    uniform proposal, an empty row) get z = 0 if exact to 1e-12, else inf."""
    n = est.shape[0]
    err = (est.mean(0) - dense).abs()
    se = est.std(0) / math.sqrt(n)
    det = se <= 1e-14 * (1 + dense.abs())
    z = torch.where(det, torch.where(err <= 1e-12 * (1 + dense.abs()), 0.0, INF),
                    err / torch.where(det, 1.0, se))
    return z, se


def kpm_1m(M, seed, frac=0.3, pad_first=0):
    kpm = torch.rand(1, M, generator=gen(seed)) < frac
    kpm[0, :pad_first] = True
    kpm[0, pad_first] = False
    return kpm


# --------------------------------------------------------------------------------------------
# proposals: name -> problem, dense support, op extras, draw(n, S, seed) -> (idx, log_w, info)
# --------------------------------------------------------------------------------------------
N_Q, M_K = 10, 14


def make_case(name):
    """A sampled-estimator case. ``draw`` returns (idx, log_w for 'none', log_q or None, far
    mask or None); ``log_q`` is None for stratified (ready log-weights, far slots marked)."""
    N, M = N_Q, M_K
    extra, support, table = {}, {}, None
    seed = sum(map(ord, name))
    if name == "uniform":
        def draw(n, S, s):
            return samplers.uniform(n, N, M, S, generator=gen(s))
    elif name == "uniform_causal":
        support = dict(causal=True)

        def draw(n, S, s):
            return samplers.uniform(n, N, M, S, causal=True, generator=gen(s))
    elif name == "uniform_window_table":
        # integer offsets in a window, learned offset table: the op needs the window too
        win = (-3, 2)
        table = win[1] - win[0] + 1
        support = dict(window=win)
        extra = dict(window=win)

        def draw(n, S, s):
            return samplers.uniform(n, N, M, S, window=win, generator=gen(s))
    elif name == "uniform_causal_kpm":
        kpm = kpm_1m(M, 7, pad_first=2)       # keys 0, 1 padded: rows 0 and 1 are empty
        support = dict(causal=True, key_padding_mask=kpm)

        def draw(n, S, s):
            return samplers.uniform(n, N, M, S, causal=True, key_padding_mask=rep(kpm, n),
                                    generator=gen(s))
    elif name == "local_1d":
        # random 1-D float positions, Gaussian proposal, a window (also given to the op)
        qp = torch.rand(1, N, 1, generator=gen(21), dtype=F64) * M
        kp = torch.rand(1, M, 1, generator=gen(22), dtype=F64) * M
        win = (-6.0, 4.0)
        support = dict(window=win, q_pos=qp, k_pos=kp)
        extra = dict(window=win, q_pos=qp, k_pos=kp)

        def draw(n, S, s):
            return samplers.local(n, N, M, S, sigma=2.5, q_pos=qp, k_pos=kp, window=win,
                                  generator=gen(s))
    elif name == "local_1d_nowindow":
        qp = torch.rand(1, N, 1, generator=gen(23), dtype=F64) * M
        kp = torch.rand(1, M, 1, generator=gen(24), dtype=F64) * M

        def draw(n, S, s):
            # sigma not too small against the spread of the positions (0..14): with sigma 1.5
            # some support keys have q ~ 1e-9, the estimate's variance is dominated by draws
            # that never happen in 6000 tries, and the sample std underestimates the true one
            # ~100-fold (|z| ~ 12 although the estimator is exactly unbiased)
            return samplers.local(n, N, M, S, sigma=3.0, q_pos=qp, k_pos=kp, generator=gen(s))
    elif name == "saliency":
        scores = torch.randn(1, M, generator=gen(25), dtype=F64)

        def draw(n, S, s):
            return samplers.saliency(rep(scores, n), N, S, generator=gen(s))
    elif name == "saliency_causal_kpm":
        scores = 1.2 * torch.randn(1, M, generator=gen(26), dtype=F64)
        kpm = kpm_1m(M, 8)
        support = dict(causal=True, key_padding_mask=kpm)

        def draw(n, S, s):
            return samplers.saliency(rep(scores, n), N, S, causal=True,
                                     key_padding_mask=rep(kpm, n), generator=gen(s))
    elif name == "stratified":
        kpm = kpm_1m(M, 9)
        support = dict(causal=True, key_padding_mask=kpm)

        def draw(n, S, s):
            # the window only splits the support: not passed to the op
            return samplers.stratified(n, N, M, S, window=(-2, 1), causal=True,
                                       key_padding_mask=rep(kpm, n), generator=gen(s))
    else:
        raise AssertionError(name)
    return dict(N=N, M=M, kern=make_kernel(N, M, seed, table_rows=table), support=support,
                extra=extra, draw=draw, seed=seed)


IID_CASES = ["uniform", "uniform_causal", "uniform_window_table", "uniform_causal_kpm",
             "local_1d", "local_1d_nowindow", "saliency", "saliency_causal_kpm"]
CASES = IID_CASES + ["stratified"]


def _draw_none(name, case, n, S, seed):
    idx, second = case["draw"](n, S, seed)
    if name == "stratified":
        return idx, second, None
    return idx, samplers.importance_log_weights(second, "none"), second


# --------------------------------------------------------------------------------------------
# 1. unbiasedness of `none`, and the check's power
# --------------------------------------------------------------------------------------------
def _biased_variants(name, idx, log_w, log_q, S):
    """Deliberately wrong log-weights (each a plausible bug) that the check must reject."""
    out = {"no -log S": log_w + math.log(S)}
    if log_q is not None:
        # forgetting -log q: (1/S) sum f(j_s), the mean under q instead of the sum
        out["no -log q"] = torch.where(log_q == INF, -INF, -torch.full_like(log_q, math.log(S)))
    else:
        K = idx.shape[-1] - S
        far = torch.zeros_like(log_w, dtype=torch.bool)
        far[..., K:] = True
        # far draws weighted n_far (the 1/S forgotten), or the far field dropped
        out["far: no 1/S"] = torch.where(far, log_w + math.log(S), log_w)
        out["far field dropped"] = torch.where(far, -INF, log_w)
    return out


@pytest.mark.parametrize("name", CASES)
def test_none_unbiased(name):
    S = 6
    case = make_case(name)
    kern = case["kern"]
    dense = dense_op(kern, "none", **case["support"])                 # (H, N, Dv)
    idx, log_w, log_q = _draw_none(name, case, N_DRAWS, S, 1000 + case["seed"])
    est = sparse_op(kern, idx, log_w, "none", **case["extra"])        # (n, H, N, Dv)
    z, se = z_scores(est, dense)
    zmax = float(z.max())
    print(f"{name}: max |bias| / SE = {zmax:.2f} over {z.numel()} elements, "
          f"max SE / max |dense| = {float(se.max()) / float(dense.abs().max()):.3f}")
    assert zmax <= Z_BOUND, (name, zmax)
    # the bound is not vacuous: the standard error is small against the values ...
    assert float(se.max()) < 0.2 * float(dense.abs().max()), name
    # ... most elements are genuinely random (std > 0) ...
    assert int((se > 0).sum()) >= z.numel() // 2, name
    # ... and every deliberately biased estimator fails the same check
    for bug, lw_bad in _biased_variants(name, idx, log_w, log_q, S).items():
        bad = sparse_op(kern, idx, lw_bad, "none", **case["extra"])
        zb, _ = z_scores(bad, dense)
        print(f"  biased ({bug}): max |bias| / SE = {float(zb.max()):.1f}, "
              f"{int((zb > Z_BOUND).sum())} of {zb.numel()} elements fail")
        assert float(zb.max()) > Z_BOUND, (name, bug)


def test_none_unbiased_draws_match_frequency_weighted_sum():
    # The mean of the estimate over n draws is exactly the count-weighted sum over keys:
    # (1/n) sum_draws sum_s f(j_s) / (S q) = sum_j (c_j / (n S q_j)) f_j. Check that identity
    # for the fused op (no Monte Carlo noise: a pure bookkeeping check of log_w / repeats).
    name = "saliency_causal_kpm"
    case = make_case(name)
    kern, N, M = case["kern"], case["N"], case["M"]
    n, S = 64, 5
    idx, log_w, log_q = _draw_none(name, case, n, S, 77)
    est = sparse_op(kern, idx, log_w, "none").mean(0)                 # (H, N, Dv)
    # per-key counts c (N, M) and weights 1 / (n S q)
    cnt = torch.zeros(N, M, dtype=F64)
    wsum = torch.zeros(N, M, dtype=F64)
    ok = idx >= 0
    rows = torch.arange(N)[None, :, None].expand_as(idx)
    cnt.index_put_((rows[ok], idx[ok]), torch.ones(int(ok.sum()), dtype=F64), accumulate=True)
    wsum.index_put_((rows[ok], idx[ok]), torch.exp(log_w[ok]) / n, accumulate=True)
    # listing each key once per row with log_w = log(sum of its weights) gives the same sum
    keys = torch.arange(M).expand(1, N, M).contiguous()
    lw = torch.where(cnt > 0, torch.log(wsum.clamp_min(1e-300)), -INF)[None]
    direct = sparse_op(kern, keys, lw, "none")[0]
    assert float((est - direct).abs().max()) <= 1e-12 * max(1.0, float(direct.abs().max()))


# --------------------------------------------------------------------------------------------
# 2. softmax: consistent (error falls with S), stratified covering everything is exact
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["uniform_causal_kpm", "local_1d", "saliency", "stratified"])
def test_softmax_error_falls_with_S(name):
    case = make_case(name)
    kern = case["kern"]
    dense = dense_op(kern, "softmax", **case["support"])
    n = 200
    errs = []
    for S in (4, 16, 64, 256):
        idx, second = case["draw"](n, S, 50 + S)
        log_w = second if name == "stratified" else \
            samplers.importance_log_weights(second, "softmax")
        est = sparse_op(kern, idx, log_w, "softmax", **case["extra"])
        errs.append(float((est - dense).abs().mean()))
    # the softmax output is a convex combination of values: measure against their spread
    scale = float(kern["v"].std())
    print(f"{name}: mean |error| / std(v) at S = 4, 16, 64, 256:",
          [f"{e / scale:.4f}" for e in errs], f"ratio S=4 / S=256: {errs[0] / errs[-1]:.2f}")
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.15 * scale, (errs[-1], scale)
    assert errs[0] > 4 * errs[-1]            # it really falls (1/sqrt(S): 8x over 4..256)


def test_softmax_forgetting_log_q_is_inconsistent():
    # Self-normalization cancels 1/S but not q: dropping -log q under a non-uniform proposal
    # converges to the wrong answer (the error stays put as S grows).
    case = make_case("saliency")
    kern = case["kern"]
    dense = dense_op(kern, "softmax")
    errs = []
    for S in (64, 1024):
        idx, log_q = case["draw"](100, S, 9 + S)
        est = sparse_op(kern, idx, torch.zeros_like(log_q), "softmax")
        errs.append(float((est.mean(0) - dense).abs().max()))
    print("softmax without -log q: max |mean - dense| at S = 64, 1024:", errs)
    assert errs[1] > 0.05 * float(dense.abs().max())
    assert errs[1] > 0.5 * errs[0]


@pytest.mark.parametrize("normalize", ["none", "softmax"])
def test_stratified_window_covering_all_is_exact(normalize):
    N, M, B = 12, 17, 3
    kern = make_kernel(N, M, 31)
    kpm = kpm_1m(M, 32, pad_first=1)     # key 0 padded: row 0 (causal) is empty
    dense = dense_op(kern, normalize, causal=True, key_padding_mask=kpm)
    kw_key = 0.5 + torch.rand(1, M, generator=gen(33), dtype=F64)
    dense_w = dense_op(kern, normalize, causal=True, key_padding_mask=kpm, key_weight=kw_key)
    for key_weight, ref in ((None, dense), (kw_key, dense_w)):
        idx, log_w = samplers.stratified(B, N, M, 8, window=(-M, M), causal=True,
                                         key_padding_mask=rep(kpm, B), key_weight=key_weight,
                                         generator=gen(34))
        assert bool((log_w[..., -8:] == -INF).all())      # far field empty: no draw used
        out = sparse_op(kern, idx, log_w, normalize)
        scale = max(1.0, float(ref.abs().max()))
        assert float((out - ref).abs().max()) <= 1e-12 * scale
        assert bool((out[:, :, 0] == 0).all())             # the empty row


# --------------------------------------------------------------------------------------------
# 3. the `none` error scales like 1/sqrt(S), with the exact importance-sampling variance
# --------------------------------------------------------------------------------------------
def _pair_contributions(kern, N, M, **extra):
    """f (M, H, N, Dv): f[j] = l(i, j) v_j for every (i, j), one key per row (B = M)."""
    idx = torch.arange(M)[:, None, None].expand(M, N, 1).contiguous()
    return sparse_op(kern, idx, torch.zeros(M, N, 1, dtype=F64), "none", **extra)


def test_none_error_scales_like_inverse_sqrt_S():
    case = make_case("uniform_causal")
    kern, N, M = case["kern"], case["N"], case["M"]
    dense = dense_op(kern, "none", causal=True)
    # exact variance of the uniform-proposal estimate: (1/S) (c_i sum_j f^2 - (sum_j f)^2)
    f = _pair_contributions(kern, N, M)
    causal = (torch.arange(M)[:, None] <= torch.arange(N)[None, :]).to(F64)  # (M, N)
    f = f * causal[:, None, :, None]
    c = causal.sum(0)[None, :, None]                                         # (1, N, 1)
    assert float((f.sum(0) - dense).abs().max()) <= 1e-12 * float(dense.abs().max())
    var1 = c * (f ** 2).sum(0) - f.sum(0) ** 2                               # S = 1
    n = 500
    Ss, rms, pred = [4, 16, 64, 256], [], []
    for S in Ss:
        idx, log_q = samplers.uniform(n, N, M, S, causal=True, generator=gen(S))
        est = sparse_op(kern, idx, samplers.importance_log_weights(log_q, "none"), "none")
        rms.append(float(((est - dense) ** 2).mean().sqrt()))
        pred.append(float((var1 / S).mean().sqrt()))
    x = torch.log(torch.tensor(Ss, dtype=F64))
    y = torch.log(torch.tensor(rms, dtype=F64))
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    ratios = [a / b for a, b in zip(rms, rms[1:])]
    print("none RMS error vs S:", {S: f"{r:.4e}" for S, r in zip(Ss, rms)},
          "ratios S/4S:", [f"{r:.3f}" for r in ratios], f"slope {slope:.3f}",
          "measured / exact RMS:", [f"{a / b:.3f}" for a, b in zip(rms, pred)])
    assert all(1.6 <= r <= 2.5 for r in ratios), ratios
    assert -0.6 <= slope <= -0.4, slope
    assert all(0.9 <= a / b <= 1.1 for a, b in zip(rms, pred)), (rms, pred)


# --------------------------------------------------------------------------------------------
# 4. reproducibility
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_seed_reproducible(name):
    case = make_case(name)
    kern = case["kern"]
    n, S = 3, 7
    i1, a1 = case["draw"](n, S, 5)
    i2, a2 = case["draw"](n, S, 5)
    i3, a3 = case["draw"](n, S, 6)
    assert torch.equal(i1, i2) and torch.equal(a1, a2)
    assert not torch.equal(i1, i3)
    for normalize in ("none", "softmax"):
        if name == "stratified":
            w1, w2, w3 = a1, a2, a3
        else:
            w1, w2, w3 = (samplers.importance_log_weights(a, normalize) for a in (a1, a2, a3))
        o1 = sparse_op(kern, i1, w1, normalize, **case["extra"])
        o2 = sparse_op(kern, i2, w2, normalize, **case["extra"])
        o3 = sparse_op(kern, i3, w3, normalize, **case["extra"])
        assert torch.equal(o1, o2)
        assert not torch.equal(o1, o3)


def test_generator_advances_and_global_generator():
    # one generator object drawn twice gives two different samples (no reseeding inside);
    # generator=None uses the global CPU generator: torch.manual_seed(s) == Generator(s)
    g = gen(3)
    a, _ = samplers.uniform(2, 5, 9, 4, generator=g)
    b, _ = samplers.uniform(2, 5, 9, 4, generator=g)
    assert not torch.equal(a, b)
    c, _ = samplers.uniform(2, 5, 9, 4, generator=gen(3))
    assert torch.equal(a, c)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(3)
        d, _ = samplers.local(2, 5, 9, 4, sigma=2.0, generator=None)
    finally:
        torch.set_rng_state(state)
    e, _ = samplers.local(2, 5, 9, 4, sigma=2.0, generator=gen(3))
    assert torch.equal(d, e)


# --------------------------------------------------------------------------------------------
# 5. key weights
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["uniform_causal_kpm", "saliency", "stratified"])
def test_key_weight_none_unbiased(name):
    case = make_case(name)
    kern, M, S = case["kern"], case["M"], 6
    kw_key = 0.2 + 1.8 * torch.rand(1, M, generator=gen(41), dtype=F64)
    dense = dense_op(kern, "none", key_weight=kw_key, **case["support"])
    dense_unw = dense_op(kern, "none", **case["support"])
    seed = 2000 + case["seed"]
    if name == "stratified":
        kpm = case["support"]["key_padding_mask"]
        idx, log_w = samplers.stratified(N_DRAWS, N_Q, M, S, window=(-2, 1), causal=True,
                                         key_padding_mask=rep(kpm, N_DRAWS),
                                         key_weight=kw_key, generator=gen(seed))
        idx0, log_w0 = case["draw"](N_DRAWS, S, seed)
        assert torch.equal(idx, idx0)
        log_w_unw = log_w0
    else:
        idx, log_q = case["draw"](N_DRAWS, S, seed)
        log_w = samplers.importance_log_weights(log_q, "none", key_weight=kw_key, idx=idx)
        log_w_unw = samplers.importance_log_weights(log_q, "none")
    est = sparse_op(kern, idx, log_w, "none")
    z, _ = z_scores(est, dense)
    # the same draws without the key weight: unbiased for the unweighted dense op, and
    # rejected against the weighted one (the key weight really matters here)
    est_unw = sparse_op(kern, idx, log_w_unw, "none")
    z_unw, _ = z_scores(est_unw, dense_unw)
    z_wrong, _ = z_scores(est_unw, dense)
    print(f"{name}: key_weight max |bias| / SE = {float(z.max()):.2f}; unweighted "
          f"{float(z_unw.max()):.2f}; unweighted vs weighted dense {float(z_wrong.max()):.1f}")
    assert float(z.max()) <= Z_BOUND
    assert float(z_unw.max()) <= Z_BOUND
    assert float(z_wrong.max()) > Z_BOUND


def test_key_weight_softmax_consistent():
    case = make_case("saliency_causal_kpm")
    kern, M = case["kern"], case["M"]
    kw_key = 0.2 + 1.8 * torch.rand(1, M, generator=gen(42), dtype=F64)
    dense = dense_op(kern, "softmax", key_weight=kw_key, **case["support"])
    dense_unw = dense_op(kern, "softmax", **case["support"])
    n, err, err_drop, err_drop_unw = 100, {}, None, None
    for S in (16, 1024):
        idx, log_q = case["draw"](n, S, 60 + S)
        log_w = samplers.importance_log_weights(log_q, "softmax", key_weight=kw_key, idx=idx)
        err[S] = float((sparse_op(kern, idx, log_w, "softmax") - dense).abs().mean())
        if S == 1024:   # the key weight forgotten: consistent for the unweighted op instead
            est = sparse_op(kern, idx, samplers.importance_log_weights(log_q, "softmax"),
                            "softmax")
            err_drop = float((est - dense).abs().mean())
            err_drop_unw = float((est - dense_unw).abs().mean())
    scale = float(kern["v"].std())
    print(f"softmax with key_weight: mean |error| / std(v) at S = 16, 1024: "
          f"{err[16] / scale:.4f}, {err[1024] / scale:.4f}; key weight dropped (S = 1024): "
          f"{err_drop / scale:.4f} vs the weighted op, {err_drop_unw / scale:.4f} vs the "
          f"unweighted one")
    assert err[1024] < 0.25 * err[16]          # 1/sqrt(64) = 0.125 expected
    assert err[1024] < 0.05 * scale
    assert err_drop > 3 * err[1024]
    assert err_drop_unw < 0.5 * err_drop


def test_zero_key_weight_is_padding():
    # w_j = 0 makes the pair absent: the estimate is that of the dense op with key j padded
    case = make_case("uniform_causal")
    kern, N, M, S = case["kern"], case["N"], case["M"], 6
    kw_key = 0.5 + torch.rand(1, M, generator=gen(43), dtype=F64)
    zero = torch.zeros(1, M, dtype=torch.bool)
    zero[0, [0, 3, 4, 9]] = True                     # key 0 weighted 0: row 0 has nothing
    kw_key = torch.where(zero, 0.0, kw_key)
    dense = dense_op(kern, "none", causal=True, key_padding_mask=zero,
                     key_weight=torch.where(zero, 1.0, kw_key))
    idx, log_q = samplers.uniform(N_DRAWS, N, M, S, causal=True, generator=gen(44))
    log_w = samplers.importance_log_weights(log_q, "none", key_weight=kw_key, idx=idx)
    assert bool((log_w[torch.isin(idx, torch.tensor([0, 3, 4, 9]))] == -INF).all())
    est = sparse_op(kern, idx, log_w, "none")
    z, _ = z_scores(est, dense)
    print(f"zero key weights: max |bias| / SE = {float(z.max()):.2f}")
    assert float(z.max()) <= Z_BOUND
    assert bool((est[:, :, 0] == 0).all())
    lw_sm = samplers.importance_log_weights(log_q, "softmax", key_weight=kw_key, idx=idx)
    sm, lse = sparse_op(kern, idx, lw_sm, "softmax", return_lse=True)
    assert bool((sm[:, :, 0] == 0).all()) and bool((lse[:, :, 0] == -INF).all())
    assert not bool(torch.isnan(sm).any())


# --------------------------------------------------------------------------------------------
# 6. the fused op against the float64 reference on sampled index sets
# --------------------------------------------------------------------------------------------
def _sampled_sets():
    """(name, kern, idx, log_w by normalize, extra): sampled with replacement, S larger than
    many supports (repeated keys), rows with an empty support."""
    N, M, B = 9, 13, 3
    out = []
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[:, :3] = True                                # rows 0..2 of a causal op: no key
    kpm[1, 7] = True
    idx, log_q = samplers.uniform(B, N, M, 11, causal=True, key_padding_mask=kpm,
                                  generator=gen(51))
    out.append(("uniform_causal_kpm", make_kernel(N, M, 52), idx, log_q, {}))
    qp = torch.rand(1, N, 1, generator=gen(53), dtype=F64) * M
    kp = torch.rand(1, M, 1, generator=gen(54), dtype=F64) * M
    kp[0, :, 0] = torch.where(kp[0, :, 0] < 3.0, kp[0, :, 0] + 3.0, kp[0, :, 0])
    qp[0, 0, 0] = -10.0                             # query 0: nothing within the window
    idx, log_q = samplers.local(B, N, M, 9, sigma=2.0, q_pos=qp, k_pos=kp, window=(-4.0, 3.0),
                                generator=gen(55))
    out.append(("local_window", make_kernel(N, M, 56), idx, log_q,
                dict(window=(-4.0, 3.0), q_pos=qp, k_pos=kp)))
    # a window not containing offset 0: query 8 (of keys 0..12) has none in 13..16
    idx, log_q = samplers.uniform(B, N, M, 10, window=(5, 8), generator=gen(57))
    out.append(("uniform_window_table", make_kernel(N, M, 58, table_rows=4), idx, log_q,
                dict(window=(5, 8))))
    scores = 2.0 * torch.randn(B, M, generator=gen(59), dtype=F64)
    idx, log_q = samplers.saliency(scores, N, 12, causal=True, key_padding_mask=kpm,
                                   generator=gen(60))
    out.append(("saliency_causal_kpm", make_kernel(N, M, 61), idx, log_q, {}))
    return out


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("normalize", ["none", "softmax"])
def test_fused_matches_reference_on_sampled_sets(normalize):
    for name, kern, idx, log_q, extra in _sampled_sets():
        log_w = samplers.importance_log_weights(log_q, normalize)
        empty = (idx < 0).all(-1)                                       # (B, N)
        assert bool(empty.any()), name
        cnt = torch.zeros(*idx.shape[:2], kern["v"].shape[2] + 1, dtype=torch.int64)
        cnt.scatter_add_(-1, idx.clamp_min(-1) + 1, torch.ones_like(idx))
        assert int(cnt[..., 1:].max()) >= 2, name                       # repeated keys
        B = idx.shape[0]
        leaves = {nm: (rep(kern[nm], B) if nm in ("q", "k", "v") else kern[nm]).clone()
                  .requires_grad_() for nm in kern if isinstance(kern[nm], torch.Tensor)}
        lw = log_w.clone().requires_grad_()
        args = dict(kern, **leaves)
        want_lse = normalize == "softmax"
        res_f = F.sparse_integral_transform(**args, idx=idx, log_w=lw, normalize=normalize,
                                            return_lse=want_lse, **extra)
        res_r = reference.sparse_integral_transform(**args, idx=idx, log_w=lw,
                                                    normalize=normalize,
                                                    return_lse=want_lse, **extra)
        res_f = res_f if isinstance(res_f, tuple) else (res_f,)
        res_r = res_r if isinstance(res_r, tuple) else (res_r,)
        out_f, out_r = res_f[0], res_r[0]
        assert _rel(out_f, out_r) <= 1e-12, (name, _rel(out_f, out_r))
        e = empty[:, None, :, None].expand_as(out_f)
        assert bool((out_f[e] == 0).all()), name                         # empty rows: 0
        assert bool((out_f[~e].abs().sum() > 0)), name
        if want_lse:
            lse_f, lse_r = res_f[1].detach(), res_r[1].detach()
            assert torch.equal(torch.isinf(lse_f), torch.isinf(lse_r)), name
            assert bool((lse_f[empty[:, None, :].expand_as(lse_f)] == -INF).all()), name
            fin = torch.isfinite(lse_r)
            assert float((lse_f[fin] - lse_r[fin]).abs().max()) <= 1e-12 * \
                max(1.0, float(lse_r[fin].abs().max())), name
        # pathwise gradients (kernel, values, log-weights) against the reference
        g = gen(62)
        cot = torch.randn(out_f.shape, generator=g, dtype=F64)
        names = list(leaves) + ["log_w"]
        tens = [leaves[nm] for nm in leaves] + [lw]
        gf = torch.autograd.grad(out_f, tens, cot, allow_unused=True)
        gr = torch.autograd.grad(out_r, tens, cot, allow_unused=True)
        for nm, a, b in zip(names, gf, gr):
            if b is None:
                assert a is None or float(a.abs().max()) == 0, (name, nm)
                continue
            assert a is not None, (name, nm)
            assert not bool(torch.isnan(a).any()), (name, nm)
            assert _rel(a, b) <= 1e-10, (name, nm, _rel(a, b))
        # absent pairs (log_w -inf) get zero log_w gradient
        glw = gf[-1]
        assert bool((glw[log_w == -INF] == 0).all()), name
