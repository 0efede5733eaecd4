"""The sparse (pair-list) reference (issue 5 groundwork): ``reference.sparse_integral_transform``
against the dense oracle ``reference.integral_transform`` in float64, with the dense support
listed explicitly (padded and CSR forms, shuffled, with absent and padding entries); repeated
keys as importance weights; empty rows; the window excluding listed pairs; gradcheck on fuzzed
pair lists; and the argument errors of ``_validate_sparse.check_sparse_inputs``.
"""
import math
import random

import pytest
import torch

from itnet_ext import reference
from itnet_ext.sparse.validate import check_sparse_inputs

from conftest import diff_inputs, make_problem, rel_err, run_with_grads, with_grad

from sparse_helpers import (F64, KERNEL_DIFF, NEG_INF, SMALL, _seed, assert_listed_equals_dense,
                            dense_support, list_pairs, sparse_fn, sparse_problem)


# --------------------------------------------------------------------------------------------
# (i) the dense support listed once, log_w = 0 (or log key_weight): equals the dense op
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("terms", ["content", "mlp", "both", "offset"])
def test_listed_support_equals_dense(terms, normalize, form, causal):
    assert_listed_equals_dense(reference.integral_transform, None,
                               _seed(terms, normalize, form, causal), terms, normalize, form, causal)


def test_listed_support_fuzz():
    """Random problems (key padding, key weights, float positions and fractional windows,
    positions per batch element or broadcast), both forms, outputs only."""
    rng = random.Random(0)
    worst = 0.0
    for i in range(24):
        seed = 1000 + i
        kw = make_problem(seed, choices=SMALL, mask=None, empty=rng.random() < 0.3)
        skw = list_pairs(kw, dense_support(kw), rng.choice(["padded", "csr"]), rng,
                         extra=rng.choice([0, 0, 2]))
        softmax = kw["normalize"] == "softmax"
        want = reference.integral_transform(**kw, return_lse=softmax)
        got = reference.sparse_integral_transform(**skw, return_lse=softmax)
        for a, b in zip(got if softmax else (got,), want if softmax else (want,)):
            worst = max(worst, rel_err(a, b))
    assert worst <= 1e-10


@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_window_excludes_listed_pairs(form, normalize):
    """Every key listed (none dropped for the window): pairs whose offset is outside the
    window are excluded, so the result is the dense op with that window, offset table
    included (whose rows the out-of-window offsets would not address)."""
    seed = _seed("window", form, normalize)
    kw = make_problem(seed, choices=SMALL, support="offset", mlp=True, causal=False, kpm=False,
                      mask=None, key_weight=None, empty=False, normalize=normalize)
    every = torch.ones_like(dense_support(kw))
    assert not bool(dense_support(kw).all())  # the window does cut pairs here
    skw = list_pairs(kw, every, form, random.Random(seed), extra=0)
    names = diff_inputs(kw, KERNEL_DIFF)
    kwg = with_grad(kw, names)
    res_d, g_d = run_with_grads(reference.integral_transform, kwg, names, seed=seed)
    res_s, g_s = run_with_grads(sparse_fn(skw), kwg, names, seed=seed)
    for a, b in zip(res_s, res_d):
        assert rel_err(a, b) <= 1e-10
    for n in names:
        assert rel_err(g_s[n], g_d[n]) <= 1e-10, n


# --------------------------------------------------------------------------------------------
# (ii) repeated keys: c copies of a pair with log_w - log c each equal one copy
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_repeated_keys_split_weight(form, normalize):
    seed = _seed("repeat", form, normalize)
    rng = random.Random(seed)
    kw, skw = sparse_problem(seed, "padded", "both", normalize, False, extra=1)
    once = reference.sparse_integral_transform(**skw)
    if "log_w" not in skw:
        skw["log_w"] = torch.zeros(skw["idx"].shape, dtype=F64)
    B, N, S = skw["idx"].shape
    rows = []
    for b in range(B):
        rows.append([])
        for i in range(N):
            row = []
            for s_ in range(S):
                j, w = int(skw["idx"][b, i, s_]), float(skw["log_w"][b, i, s_])
                c = rng.choice([1, 2, 2, 3])  # every pair split into c copies of weight 1/c
                row += [(j, w - math.log(c) if w > NEG_INF else w)] * c
            rng.shuffle(row)
            rows[b].append(row)
    split = dict(skw)
    del split["idx"], split["log_w"]
    if form == "padded":
        S2 = max(len(r) for rb in rows for r in rb)
        split["idx"] = torch.full((B, N, S2), -1, dtype=torch.long)
        split["log_w"] = torch.full((B, N, S2), NEG_INF, dtype=F64)
        for b in range(B):
            for i in range(N):
                for s_, (j, w) in enumerate(rows[b][i]):
                    split["idx"][b, i, s_], split["log_w"][b, i, s_] = j, w
    else:
        E = max(sum(len(r) for r in rb) for rb in rows)
        split["row_ptr"] = torch.zeros(B, N + 1, dtype=torch.long)
        split["col_idx"] = torch.zeros(B, E, dtype=torch.long)
        split["log_w"] = torch.zeros(B, E, dtype=F64)
        for b in range(B):
            e_ = 0
            for i in range(N):
                for j, w in rows[b][i]:
                    split["col_idx"][b, e_], split["log_w"][b, e_] = j, w
                    e_ += 1
                split["row_ptr"][b, i + 1] = e_
    twice = reference.sparse_integral_transform(**split)
    assert rel_err(twice, once) <= 1e-12
    # and a pair listed twice with log_w = 0 counts twice (not deduplicated): in none mode
    # doubling every pair doubles the output
    if normalize == "none":
        dbl = dict(skw, idx=torch.cat([skw["idx"]] * 2, -1),
                   log_w=torch.cat([skw["log_w"]] * 2, -1))
        assert rel_err(reference.sparse_integral_transform(**dbl), 2 * once) <= 1e-12


def test_log_w_importance_weights():
    """softmax: a per-pair log-weight is a multiplicative weight on exp(logit) (shifting a
    row by a constant changes nothing); none: it multiplies the logit."""
    kw, skw = sparse_problem(_seed("logw"), "padded", "content", "softmax", False, extra=0)
    B, N, S = skw["idx"].shape
    lw = torch.randn(B, N, S, dtype=F64)
    if "log_w" in skw:  # keep the absent (padding) slots absent
        lw[skw["log_w"] == NEG_INF] = NEG_INF
    base = reference.sparse_integral_transform(**dict(skw, log_w=lw))
    shifted = reference.sparse_integral_transform(
        **dict(skw, log_w=lw + torch.randn(B, N, 1, dtype=F64)))
    assert rel_err(shifted, base) <= 1e-12
    none = dict(skw, normalize="none")
    l1 = reference.sparse_integral_transform(**dict(none, log_w=lw))
    # none mode is linear in the pair weights: exp(lw) = exp(lw - log 2) + exp(lw - log 2)
    half = reference.sparse_integral_transform(**dict(none, log_w=lw - math.log(2)))
    assert rel_err(2 * half, l1) <= 1e-12


# --------------------------------------------------------------------------------------------
# (iii) empty rows: exactly 0, lse -inf, zero and finite gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_rows(form, normalize):
    seed = _seed("empty", form, normalize)
    kw = make_problem(seed, choices=SMALL, content=True, mlp=True, support="offset",
                      normalize=normalize, causal=False, kpm=False, mask=None, key_weight=None,
                      empty=False, N=17, M=31, D=1, pos="default", use_u=True, u_batch=2, B=2)
    sup = dense_support(kw, window=False)
    sup[0, ::3] = False   # no listed pair
    sup[1] = False        # batch element 1 has no pair at all
    skw = list_pairs(kw, sup, form, random.Random(seed), extra=1)
    # rows of batch element 0 whose listed pairs all lie outside the window are empty too
    empty = ~(sup & dense_support(kw)).any(-1)                           # (B, N)
    assert bool(empty[0, ::3].all()) and bool(empty[1].all()) and not bool(empty.all())
    names = diff_inputs(kw, KERNEL_DIFF)
    kwg = with_grad(kw, names)
    res, grads = run_with_grads(sparse_fn(skw), kwg, names, seed=seed)
    out = res[0].permute(0, 2, 1, 3)                                     # (B, N, H, Dv)
    assert not out[empty].any() and bool(out[~empty].abs().sum(-1).gt(0).all())
    if normalize == "softmax":
        lse = res[1].permute(0, 2, 1)
        assert bool((lse[empty] == NEG_INF).all()) and bool(torch.isfinite(lse[~empty]).all())
    for n, g in grads.items():
        assert g is not None and bool(torch.isfinite(g).all()), n
    # the query-side gradients of an empty row are exactly 0
    assert not grads["q"].permute(0, 2, 1, 3)[empty].any()
    assert not grads["u"][empty].any()
    # every row empty: output 0, every gradient exactly 0 (none NaN)
    none_listed = list_pairs(kw, torch.zeros_like(sup), form, random.Random(seed), extra=2)
    res0, g0 = run_with_grads(sparse_fn(none_listed), kwg, names, seed=seed)
    assert not res0[0].any()
    for n in names:
        assert g0[n] is None or (not g0[n].any() and bool(torch.isfinite(g0[n]).all())), n


def test_log_w_gradient_of_absent_pairs_is_zero():
    kw, skw = sparse_problem(_seed("absent"), "padded", "both", "softmax", False, extra=2)
    lw = skw["log_w"].clone().requires_grad_()
    out = reference.sparse_integral_transform(**dict(skw, log_w=lw))
    (g,) = torch.autograd.grad(out, lw, torch.randn_like(out))
    absent = lw.detach() == NEG_INF
    assert bool(absent.any()) and bool(torch.isfinite(g).all())
    assert not g[absent].any() and bool(g[~absent].ne(0).any())


# --------------------------------------------------------------------------------------------
# (iv) gradcheck on fuzzed pair lists: repeated keys, absent pairs, an empty row, offsets
# outside the window
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["padded", "csr"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_gradcheck(form, normalize):
    g = torch.Generator().manual_seed(_seed("gradcheck", form, normalize))
    B, H, N, M, Dk, Dv, R, S = 2, 2, 4, 5, 3, 2, 3, 5
    rn = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    q, k, v = rn(B, H, N, Dk), rn(B, H, M, Dk), rn(B, H, M, Dv)
    u, t, W2, b2 = rn(B, N, R), rn(1, M, R), rn(H, R), rn(H)
    window = (-2, 2)
    table = rn(5, R)
    q_pos = torch.randint(0, 6, (B, N, 1), generator=g).to(F64)
    k_pos = torch.randint(0, 6, (1, M, 1), generator=g).to(F64)
    idx = torch.randint(0, M, (B, N, S), generator=g)        # with replacement: repeats
    idx[0, 0, 1] = idx[0, 0, 0]                               # at least one repeat for sure
    lw = 0.5 * rn(B, N, S)
    lw[torch.rand(B, N, S, generator=g) < 0.25] = NEG_INF     # absent pairs
    lw[1, 2] = NEG_INF                                        # an empty row
    idx[lw == NEG_INF] = torch.where(torch.rand(B, N, S, generator=g) < 0.5, -1, 0)[lw == NEG_INF]
    if form == "padded":
        pairs = dict(idx=idx)
    else:  # the same pairs, rows of varying length (absent slots dropped from some rows)
        keep = (lw > NEG_INF) | (torch.rand(B, N, S, generator=g) < 0.5)
        counts = keep.sum(-1)
        row_ptr = torch.zeros(B, N + 1, dtype=torch.long)
        row_ptr[:, 1:] = counts.cumsum(-1)
        E = int(counts.sum(-1).max()) + 1
        col = torch.zeros(B, E, dtype=torch.long)
        lwc = torch.zeros(B, E, dtype=F64)
        for b in range(B):
            n_b = int(counts[b].sum())
            col[b, :n_b], lwc[b, :n_b] = idx[b][keep[b]], lw[b][keep[b]]
        pairs = dict(row_ptr=row_ptr, col_idx=col)
        lw = lwc
    leaves = [x.requires_grad_() for x in (q, k, v, u, t, W2, b2, table, lw)]

    def f(q, k, v, u, t, W2, b2, table, lw):
        res = reference.sparse_integral_transform(
            q, k, v, u=u, t=t, W2=W2, b2=b2, activation="silu", offset_table=table,
            q_pos=q_pos, k_pos=k_pos, window=window, normalize=normalize, log_w=lw,
            return_lse=normalize == "softmax", **pairs)
        if normalize == "none":
            return res
        out, lse = res
        # the empty row's lse is -inf (finite differences of it are NaN): check the others
        return out, torch.where(torch.isfinite(lse), lse, torch.zeros((), dtype=F64))

    assert torch.autograd.gradcheck(f, tuple(leaves))


def test_chunking_and_float32():
    kw, skw = sparse_problem(_seed("chunks"), "csr", "both", "softmax", True)
    names = diff_inputs(kw, KERNEL_DIFF)
    kwg = with_grad(kw, names)
    skg = dict(skw, **{n: kwg[n] for n in names})
    full, g_full = run_with_grads(reference.sparse_integral_transform, skg, names)
    chunked, g_ch = run_with_grads(
        lambda **a: reference.sparse_integral_transform(**a, chunk_size=2), skg, names)
    for a, b in zip(chunked, full):
        assert rel_err(a, b) <= 1e-13
    for n in names:
        assert rel_err(g_ch[n], g_full[n]) <= 1e-13, n
    f32 = {n: (x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
           for n, x in skw.items()}
    out32 = reference.sparse_integral_transform(**f32)
    assert out32.dtype == torch.float32
    assert rel_err(out32, full[0].detach(), floor=1.0) <= 1e-4


def test_check_sparse_inputs_problem():
    kw, skw = sparse_problem(_seed("problem"), "csr", "offset", "softmax", False)
    sp = check_sparse_inputs(**skw)
    assert sp.form == "csr" and sp.S == skw["col_idx"].shape[1]
    assert (sp.B, sp.N, sp.M) == (kw["v"].shape[0], skw["row_ptr"].shape[1] - 1, kw["v"].shape[2])
    assert sp.kernel.offset_volume > 0 and sp.has_log_w == ("log_w" in skw)
    # N from the pair list alone (no q, u or q_pos): positions default to arange(N)
    v, t, W2 = torch.randn(1, 2, 6, 3, dtype=F64), torch.randn(1, 6, 4, dtype=F64), \
        torch.randn(2, 4, dtype=F64)
    idx = torch.randint(0, 6, (1, 7, 3))
    sp = check_sparse_inputs(v=v, t=t, W2=W2, idx=idx)
    assert sp.N == 7 and sp.form == "padded" and not sp.has_log_w
    out = reference.sparse_integral_transform(v=v, t=t, W2=W2, idx=idx, window=(-3, 1))
    assert out.shape == (1, 2, 7, 3)


# --------------------------------------------------------------------------------------------
# (v) bad input
# --------------------------------------------------------------------------------------------
def _padded():
    g = torch.Generator().manual_seed(5)
    B, H, N, M = 2, 2, 4, 6
    return dict(q=torch.randn(B, H, N, 3, generator=g, dtype=F64),
                k=torch.randn(B, H, M, 3, generator=g, dtype=F64),
                v=torch.randn(B, H, M, 2, generator=g, dtype=F64),
                idx=torch.randint(0, M, (B, N, 3), generator=g),
                log_w=torch.zeros(B, N, 3, dtype=F64))


def _csr():
    a = _padded()
    del a["idx"], a["log_w"]
    a["row_ptr"] = torch.tensor([[0, 2, 2, 5, 6], [0, 1, 3, 3, 4]])
    a["col_idx"] = torch.tensor([[0, 5, 1, 1, 2, 3, 9], [4, 0, 2, 1, 9, 9, 9]])
    a["log_w"] = torch.zeros(2, 7, dtype=F64)
    a["log_w"][1, 4:] = math.nan  # padding past row_ptr[b, N]: never read
    return a


def _set(name, fn):
    return lambda a: a.__setitem__(name, fn(a[name]) if callable(fn) else fn)


def _idx_at(val, where=(0, 1, 2)):
    def f(x):
        x = x.clone()
        x[where] = val
        return x
    return f


BAD_PADDED = {
    "idx >= M": (_set("idx", _idx_at(6)),
                 r"idx: expected key indices in \[0, M\) = \[0, 6\), got 6"),
    "idx < -1": (_set("idx", _idx_at(-2)), r"idx: expected key indices in \[0, M\).*got -2"),
    "idx -1 present": (_set("idx", _idx_at(-1)), r"idx: .*-1 is only allowed where log_w is -inf"),
    "idx -2 absent": (lambda a: (_set("idx", _idx_at(-2))(a), _set("log_w", _idx_at(NEG_INF))(a)),
                      r"idx: .*or -1 where log_w is -inf, got -2"),
    "idx 7 absent": (lambda a: (_set("idx", _idx_at(7))(a), _set("log_w", _idx_at(NEG_INF))(a)),
                     r"idx: .*got 7"),
    "log_w shape": (_set("log_w", lambda x: x[..., :2]), r"log_w: expected shape \(B, N, S\)"),
    "log_w NaN": (_set("log_w", _idx_at(math.nan)), "log_w: contains NaN"),
    "log_w +inf": (_set("log_w", _idx_at(math.inf)), r"log_w: contains \+inf"),
    "log_w dtype": (_set("log_w", lambda x: x.float()), "log_w: expected dtype torch.float64"),
    "log_w device": (_set("log_w", lambda x: x.to("meta")), "log_w: expected all tensors on the "
                     "same device"),
    "log_w list": (_set("log_w", [0.0]), "log_w: expected a torch.Tensor"),
    "idx dtype": (_set("idx", lambda x: x.int()), "idx: expected dtype torch.int64"),
    "idx float": (_set("idx", lambda x: x.double()), "idx: expected dtype torch.int64"),
    "idx 2-D": (_set("idx", lambda x: x[0]), r"idx: expected a 3-D tensor \(B, N, S\)"),
    "idx B": (_set("idx", lambda x: x[:1]), r"idx: .*B \(from v\) = 2"),
    "idx N": (_set("idx", lambda x: x[:, :3]), r"idx: .*N \(from q, u or q_pos\) = 4"),
    "idx device": (_set("idx", lambda x: x.to("meta")), "idx: expected all tensors on the same"),
    "both forms": (_set("row_ptr", torch.zeros(2, 5, dtype=torch.long)), "idx: pass either idx"),
    "no pairs": (_set("idx", None), "idx: the pair list is required"),
    "q dtype": (_set("q", lambda x: x.float()), "q: expected dtype torch.float64"),
    "no term": (lambda a: (a.pop("q"), a.pop("k")), "sparse_integral_transform: no term enabled"),
    "table no window": (lambda a: a.update(W2=torch.zeros(2, 3, dtype=F64),
                                           offset_table=torch.zeros(3, 3, dtype=F64)),
                        "offset_table: requires a window"),
    "lse none": (lambda a: a.update(normalize="none", return_lse=True), "return_lse: lse is only"),
    "normalize": (lambda a: a.update(normalize="sum"), "normalize: expected one of"),
    "k_pos D": (lambda a: (a.pop("q"), a.pop("k"), a.update(
        W2=torch.zeros(2, 3, dtype=F64), window=[(-1, 1), (-1, 1)],
        k_pos=torch.zeros(1, 6, 2, dtype=F64))), "q_pos: defaults to arange with D = 1"),
}

BAD_CSR = {
    "row_ptr start": (_set("row_ptr", _idx_at(1, (1, 0))),
                      r"row_ptr: expected row_ptr\[b, 0\] = 0"),
    "row_ptr decreasing": (_set("row_ptr", _idx_at(1, (0, 2))),
                           r"row_ptr: expected non-decreasing rows, got "
                           r"row_ptr\[0, 2\] = 1 < row_ptr\[0, 1\] = 2"),
    "row_ptr decreasing 2": (_set("row_ptr", _idx_at(0, (1, 2))),
                             "row_ptr: expected non-decreasing"),
    "row_ptr > E": (_set("row_ptr", _idx_at(8, (0, 4))),
                    r"row_ptr: expected row_ptr\[b, N\] <= E = 7"),
    "row_ptr N": (_set("row_ptr", lambda x: x[:, :4]),
                  r"row_ptr: expected shape \(B, N \+ 1\) with N \+ 1 = 5"),
    "row_ptr 1-D": (_set("row_ptr", lambda x: x[0]),
                    r"row_ptr: expected a 2-D tensor \(B, N \+ 1\)"),
    "row_ptr dtype": (_set("row_ptr", lambda x: x.int()), "row_ptr: expected dtype torch.int64"),
    "row_ptr B": (_set("row_ptr", lambda x: x[:1]), r"row_ptr: .*B \(from v\) = 2"),
    "row_ptr empty": (_set("row_ptr", torch.zeros(2, 0, dtype=torch.long)),
                      "row_ptr: expected shape .* at least one column"),
    "col_idx range": (_set("col_idx", _idx_at(6, (0, 3))),
                      r"col_idx: expected key indices in \[0, M\)"),
    "col_idx -1": (_set("col_idx", _idx_at(-1, (1, 0))), "col_idx: .*-1 is only allowed"),
    "col_idx dtype": (_set("col_idx", lambda x: x.int()), "col_idx: expected dtype torch.int64"),
    "col_idx B": (_set("col_idx", lambda x: x[:1]), r"col_idx: .*B \(from v\) = 2"),
    "col_idx missing": (_set("col_idx", None), "col_idx: the CSR form needs both"),
    "row_ptr missing": (_set("row_ptr", None), "row_ptr: the CSR form needs both"),
    "log_w shape": (_set("log_w", lambda x: x[:, :6]), r"log_w: expected shape \(B, E\)"),
    "log_w NaN": (_set("log_w", _idx_at(math.nan, (1, 3))), "log_w: contains NaN"),
    "log_w dtype": (_set("log_w", lambda x: x.float()), "log_w: expected dtype torch.float64"),
    "col_idx device": (_set("col_idx", lambda x: x.to("meta")), "col_idx: expected all tensors on"),
    "row_ptr device": (_set("row_ptr", lambda x: x.to("meta")), "row_ptr: expected all tensors on"),
}


@pytest.mark.parametrize("case", list(BAD_PADDED))
def test_bad_padded(case):
    a = _padded()
    reference.sparse_integral_transform(**a)  # the base case is valid
    BAD_PADDED[case][0](a)
    with pytest.raises(ValueError, match=BAD_PADDED[case][1]):
        reference.sparse_integral_transform(**a)


@pytest.mark.parametrize("case", list(BAD_CSR))
def test_bad_csr(case):
    a = _csr()
    reference.sparse_integral_transform(**a)  # valid: the NaN / out-of-range padding is unread
    BAD_CSR[case][0](a)
    with pytest.raises(ValueError, match=BAD_CSR[case][1]):
        reference.sparse_integral_transform(**a)


def test_bad_chunk_size_and_absent_minus_one_ok():
    a = _padded()
    with pytest.raises(ValueError, match="chunk_size: expected a positive int"):
        reference.sparse_integral_transform(**a, chunk_size=0)
    # -1 and -inf together: an absent pair, valid, and the same as not listing it
    b = _padded()
    b["idx"][0, 1, 2], b["log_w"][0, 1, 2] = -1, NEG_INF
    got = reference.sparse_integral_transform(**b)
    want = reference.sparse_integral_transform(**dict(b, idx=b["idx"].clamp(min=0)))
    assert torch.equal(got, want)


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_no_keys_and_no_queries(normalize):
    """M = 0 (every listed pair absent, or none listed): output 0, lse -inf, zero gradients;
    N = 0: an empty output of the right shape."""
    q = torch.randn(2, 1, 3, 2, dtype=F64, requires_grad=True)
    k, v = torch.randn(2, 1, 0, 2, dtype=F64), torch.randn(2, 1, 0, 4, dtype=F64)
    padded = dict(idx=torch.full((2, 3, 2), -1), log_w=torch.full((2, 3, 2), NEG_INF, dtype=F64))
    csr = dict(row_ptr=torch.zeros(2, 4, dtype=torch.long),
               col_idx=torch.zeros(2, 0, dtype=torch.long))
    for pairs in (padded, csr):
        res = reference.sparse_integral_transform(q, k, v, normalize=normalize, **pairs,
                                                  return_lse=normalize == "softmax")
        out = res[0] if normalize == "softmax" else res
        assert out.shape == (2, 1, 3, 4) and not out.any()
        if normalize == "softmax":
            assert bool((res[1] == NEG_INF).all())
        (g,) = torch.autograd.grad(out.sum(), q)
        assert not g.any()
    q0 = torch.randn(2, 1, 0, 2, dtype=F64)
    k, v = torch.randn(2, 1, 4, 2, dtype=F64), torch.randn(2, 1, 4, 3, dtype=F64)
    idx0 = torch.zeros(2, 0, 5, dtype=torch.long)
    out = reference.sparse_integral_transform(q0, k, v, idx=idx0, normalize=normalize)
    assert out.shape == (2, 1, 0, 3)
    out = reference.sparse_integral_transform(q0, k, v, row_ptr=torch.zeros(2, 1, dtype=torch.long),
                                              col_idx=torch.zeros(2, 5, dtype=torch.long),
                                              normalize=normalize)
    assert out.shape == (2, 1, 0, 3)
