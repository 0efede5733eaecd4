"""Shared helpers of the sparse-op tests (test_sparse_reference.py, test_sparse_op.py,
test_sparse_cuda.py): the dense support of a problem written out, and that support listed as
a pair list (padded or CSR, shuffled, with absent and padding entries)."""
import math
import random
import zlib

import torch

from itnet_ext import reference
from itnet_ext._common.checks import normalize_window

from conftest import diff_inputs, make_problem, rel_err, run_with_grads, with_grad

F64 = torch.float64
NEG_INF = float("-inf")
# Differentiable tensors shared by the dense and the sparse op (the dense key_weight becomes
# the sparse log_w, which is checked separately).
KERNEL_DIFF = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table")
# Small problems: the sparse reference gathers (B, N, S, H, Dk) key rows.
SMALL = dict(B=[2, 3], H=[1, 2, 3, 5], N=[1, 5, 17, 33], M=[1, 6, 31, 40], Dk=[1, 3, 8],
             Dv=[1, 2, 5], R=[1, 7, 16])
# The equivalence cases proper: enough queries and keys for many pairs per row (the fuzz
# test keeps the degenerate sizes).
MEDIUM = dict(SMALL, N=[5, 17, 33], M=[6, 31, 40])
DENSE_ONLY = ("causal", "key_padding_mask", "attn_mask", "key_weight")


def _seed(*key):
    return zlib.crc32(repr(key).encode())  # stable across processes


# --------------------------------------------------------------------------------------------
# the dense support, listed
# --------------------------------------------------------------------------------------------
def dense_support(kw, window=True):
    """(B, N, M) bool: the dense op's support of a problem without attn_mask (key padding,
    causal, window), written out from the definition in docs/design.md section 1."""
    v = kw["v"]
    B, _, M, _ = v.shape
    N = next(kw[n].shape[-2] if n == "q" else kw[n].shape[1]
             for n in ("q", "u", "q_pos") if kw.get(n) is not None)
    sup = torch.ones(B, N, M, dtype=torch.bool)
    if kw.get("key_padding_mask") is not None:
        sup &= ~kw["key_padding_mask"][:, None, :]
    if kw.get("causal"):
        sup &= torch.ones(N, M, dtype=torch.bool).tril()
    if window and kw.get("window") is not None:
        qp = kw.get("q_pos")
        kp = kw.get("k_pos")
        qp = torch.arange(N, dtype=F64).reshape(1, N, 1) if qp is None else qp.double()
        kp = torch.arange(M, dtype=F64).reshape(1, M, 1) if kp is None else kp.double()
        win = normalize_window(kw["window"], qp.shape[-1])
        off = kp[:, None, :, :] - qp[:, :, None, :]
        inside = torch.ones(off.shape[:-1], dtype=torch.bool)
        for d, (lo, hi) in enumerate(win):
            inside &= (off[..., d] >= lo) & (off[..., d] <= hi)
        sup &= inside
    return sup


def list_pairs(kw, sup, form, rng, *, extra=0, garbage=None):
    """The sparse arguments listing the pairs of ``sup`` (B, N, M) once each, in random order
    per row, with log_w = log(key_weight) (or 0). Padded: ``extra`` absent slots per row
    (log_w = -inf, key -1 or a random key). CSR: ``extra`` absent entries scattered into the
    rows, and padding past row_ptr[b, N] holding out-of-range keys and NaN log-weights when
    ``garbage`` (never read; default: drawn from rng). log_w is left out (default 0) when
    nothing needs it, for some draws. Tensors of kw are shared, not copied."""
    out = {n: x for n, x in kw.items() if n not in DENSE_ONLY}
    B, N, M = sup.shape
    kwt = kw.get("key_weight")
    logw_key = (torch.log(kwt).expand(B, M) if kwt is not None
                else torch.zeros(B, M, dtype=kw["v"].dtype))
    rows = [[[(j, logw_key[b, j]) for j in torch.nonzero(sup[b, i])[:, 0].tolist()]
             for i in range(N)] for b in range(B)]
    for b in range(B):
        for i in range(N):
            row = rows[b][i]
            for _ in range(extra):  # absent pairs: key -1 or any valid key, log_w -inf
                key = rng.choice([-1, rng.randrange(M)]) if M else -1
                row.append((key, NEG_INF))
            rng.shuffle(row)
    need_lw = kwt is not None or extra > 0 or rng.random() < 0.5
    if form == "padded":
        S = max([len(r) for rb in rows for r in rb], default=0)
        idx = torch.full((B, N, S), -1, dtype=torch.long)
        lw = torch.full((B, N, S), NEG_INF, dtype=kw["v"].dtype)
        for b in range(B):
            for i in range(N):
                for s_, (j, w) in enumerate(rows[b][i]):
                    idx[b, i, s_], lw[b, i, s_] = j, w
        out["idx"] = idx
        if need_lw or bool((lw == NEG_INF).any()):  # -inf slots (absent, padding) need log_w
            out["log_w"] = lw
    else:
        if garbage is None:
            garbage = rng.random() < 0.7
        flat = [[p for r in rb for p in r] for rb in rows]
        E = max([len(f) for f in flat], default=0) + (2 if garbage else 0)
        row_ptr = torch.zeros(B, N + 1, dtype=torch.long)
        col = torch.full((B, E), M + 7 if garbage else 0, dtype=torch.long)
        lw = torch.full((B, E), math.nan if garbage else 0.0, dtype=kw["v"].dtype)
        for b in range(B):
            row_ptr[b, 1:] = torch.cumsum(torch.tensor([len(r) for r in rows[b]], dtype=torch.long),
                                          0)
            for e_, (j, w) in enumerate(flat[b]):
                col[b, e_], lw[b, e_] = j, w
        out["row_ptr"], out["col_idx"] = row_ptr, col
        if need_lw or garbage:
            out["log_w"] = lw
    return out


def sparse_problem(seed, form, terms, normalize, causal, *, extra=1):
    """A dense problem (make_problem) and the same problem with its support listed."""
    rng = random.Random(seed)
    # key padding: the supports, so the pair counts, differ between batch elements
    opt = dict(normalize=normalize, causal=causal, mask=None, empty=False, kpm=True,
               content=terms in ("content", "both") or (terms == "offset" and rng.random() < 0.5),
               mlp=terms in ("mlp", "both", "offset"))
    opt["support"] = "offset" if terms == "offset" else rng.choice(["none", "window", "frac"])
    for attempt in range(50):  # the first draw with a substantial support (deterministic)
        kw = make_problem(seed + attempt, choices=MEDIUM, **opt)
        counts = dense_support(kw).sum(-1)                   # (B, N) pairs per row
        if int(counts.sum()) >= 10 * counts.shape[0] and int(counts.max()) >= 3:
            break
    skw = list_pairs(kw, dense_support(kw), form, rng, extra=extra)
    return kw, skw


def sparse_fn(skw_template, op=None):
    """fn(**kernel args) -> ``op`` (default: the sparse reference) with the pair list of
    ``skw_template``."""
    pairs = {n: skw_template[n] for n in ("idx", "log_w", "row_ptr", "col_idx")
             if n in skw_template}

    def fn(**kw):
        kw = {n: x for n, x in kw.items() if n not in DENSE_ONLY}
        return (op or reference.sparse_integral_transform)(**kw, **pairs)
    return fn


def assert_listed_equals_dense(dense_op, sparse_op, seed, terms, normalize, form, causal):
    """``sparse_op`` on the listed dense support of a problem equals ``dense_op`` on the
    problem (outputs, lse and every kernel gradient) to 1e-10, float64."""
    kw, skw = sparse_problem(seed, form, terms, normalize, causal)
    names = list(diff_inputs(kw, KERNEL_DIFF))
    kwg = with_grad(kw, names)
    res_d, g_d = run_with_grads(dense_op, kwg, names, seed=seed)
    res_s, g_s = run_with_grads(sparse_fn(skw, sparse_op), kwg, names, seed=seed)
    counts = dense_support(kw).sum(-1)                       # (B, N) pairs per row
    assert int(counts.sum()) >= 10 * counts.shape[0] and int(counts.max()) >= 3
    for a, b in zip(res_s, res_d):
        assert rel_err(a, b) <= 1e-10
    for n in names:
        if g_d[n] is None:
            assert g_s[n] is None or not g_s[n].any(), n
        else:
            assert rel_err(g_s[n], g_d[n]) <= 1e-10, n


def long_rows(B=2, H=3, N=7, M=13, Dk=5, Dv=6, R=9, S=150, dtype=F64, gen=None, content=True):
    """Rows much longer than a kernel chunk (64 pairs): every key many times over, 20% of the
    pairs absent (log_w = -inf, key -1) and row 1 of batch 0 empty. ``content=False``: the
    MLP term alone (no q, k)."""
    g = gen or torch.Generator().manual_seed(5)

    def rn(*s):
        return torch.randn(*s, generator=g, dtype=F64).to(dtype)
    kw = dict(q=rn(B, H, N, Dk), k=rn(B, H, M, Dk), v=rn(B, H, M, Dv), u=rn(B, N, R),
              t=rn(1, M, R), W2=rn(H, R) / 3, b2=rn(H))
    if not content:
        del kw["q"], kw["k"]
    idx = torch.randint(0, M, (B, N, S), generator=g)
    lw = rn(B, N, S)
    lw[torch.rand(B, N, S, generator=g) < 0.2] = NEG_INF
    lw[0, 1] = NEG_INF          # an empty row
    idx[lw == NEG_INF] = -1
    return kw, idx, lw


def check_cpu_capability(normalize, **shape):
    """The fused op on ``long_rows(**shape)`` against the float64 reference, float64 and float32
    (values and every gradient; run under the ITNET_CPU_CAPABILITY the caller set)."""
    from itnet_ext import functional
    for dtype in (F64, torch.float32):
        kw, idx, lw = long_rows(**shape, dtype=dtype)
        kwg = with_grad(kw, list(kw))
        out = functional.sparse_integral_transform(**kwg, idx=idx, log_w=lw, normalize=normalize)
        g = torch.autograd.grad(out.sum(), [kwg[n] for n in kw])
        kw64 = {n: x.detach().double().requires_grad_(True) for n, x in kw.items()}
        want = reference.sparse_integral_transform(**kw64, idx=idx, log_w=lw.double(),
                                                   normalize=normalize)
        gw = torch.autograd.grad(want.sum(), list(kw64.values()))
        tol = 1e-10 if dtype == F64 else 3e-5
        assert rel_err(out.double(), want) <= tol
        for n, a, b in zip(kw, g, gw):
            if dtype == F64:
                assert rel_err(a, b) <= tol, n
            else:  # float32: db2 of softmax is 0 up to rounding, so bound by max(|b|, 1)
                assert (a.double() - b).norm() <= tol * max(float(b.norm()), 1.0), n


def check_nan_poisoning(normalize, **shape):
    """Key rows that no present pair reads (unlisted keys, keys of absent pairs) and log_w of
    absent pairs hold NaN / inf: outputs equal the clean run's and every gradient is finite
    (``long_rows(**shape)`` with 30 keys, of which only the first 20 are listed)."""
    from itnet_ext import functional
    kw, idx, lw = long_rows(**dict(dict(S=20, M=30), **shape))
    idx = idx % 20                                          # keys 20.. are never listed
    read = torch.zeros(30, dtype=torch.bool)
    read[idx[lw != NEG_INF]] = True
    assert not read.all()
    poisoned = dict(kw)
    for n in ("k", "v"):
        if n in kw:
            x = kw[n].clone()
            x[:, :, ~read] = math.nan
            poisoned[n] = x
    t = kw["t"].clone()
    t[:, ~read] = math.inf
    poisoned["t"] = t
    idx_p = idx.clone()
    idx_p[lw == NEG_INF] = torch.nonzero(~read)[0, 0]  # absent pairs point at a poisoned key
    clean = functional.sparse_integral_transform(**kw, idx=idx, log_w=lw, normalize=normalize)
    pk = with_grad(poisoned, list(poisoned))
    out = functional.sparse_integral_transform(**pk, idx=idx_p, log_w=lw, normalize=normalize)
    assert torch.equal(out, clean)
    out.sum().backward()
    for n, x in pk.items():
        g = x.grad
        assert torch.isfinite(g).all(), n
        if n in ("k", "v"):
            assert not g[:, :, ~read].any(), n


def check_threads_deterministic(normalize="softmax", **shape):
    """float32 ``long_rows(**shape)``: one thread and two agree to 1e-5 (sums in another order),
    and two runs on two threads are bitwise equal."""
    from itnet_ext import functional
    kw, idx, lw = long_rows(**shape, dtype=torch.float32)
    names = list(kw)

    def run():
        kwg = with_grad(kw, names)
        out = functional.sparse_integral_transform(**kwg, idx=idx, log_w=lw, normalize=normalize)
        return [out] + list(torch.autograd.grad(out.square().sum(), [kwg[n] for n in names]))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two, again = run(), run()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, two, again):
        assert torch.equal(b, c)  # same thread count: bitwise repeatable
        # float32 sums in another order (db2 of softmax is 0 up to rounding: bound by max(|a|, 1))
        a, b = a.detach().double(), b.detach().double()
        assert (a - b).norm() <= 1e-5 * max(float(a.norm()), 1.0)
