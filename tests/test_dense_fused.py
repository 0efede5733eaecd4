"""Fused dense op (itnet_ext.functional) against the float64 oracle (itnet_ext.reference).

Outputs, lse and the gradients of every differentiable input (q, k, v, u, t, W2, b2,
offset_table, key_weight) are compared over

- an explicit grid covering every feature combination: logit terms (content / MLP / both)
  x normalization (softmax / none) x support features (causal, integer window, fractional
  window on float positions, offset tables in 1, 2, 3 dims with default / per-batch /
  broadcast positions, key padding, bool and float attention masks of many broadcast shapes,
  key weights, rows with an empty support, everything at once), activations cycled;
- seeded random configurations (fuzz) and a hypothesis-driven search;
- sizes straddling the 64 x 64 CPU tiles, head counts around the kernel's chunk of 8;
- float32 against the float64 reference;
- non-contiguous inputs (transposed, expanded, sliced);
- "poisoned" padded keys (NaN / inf in k, v, t must not leak), determinism.
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from itnet_ext import functional, reference

F64 = torch.float64
F32 = torch.float32
RTOL64 = 1e-10


def fused(**kw):
    return functional.integral_transform(**kw)


def ref(**kw):
    return reference.integral_transform(**kw)


def check_vs_reference(dense, kw, dtype=F64, rtol_out=RTOL64, rtol_grad=RTOL64, seed=0):
    """Fused (in ``dtype``) vs the float64 reference: outputs, lse, all gradients."""
    names = dense.diff_inputs(kw)
    kw64 = dense.with_grad(kw, names, dtype=F64)
    kwf = dense.with_grad(kw, names, dtype=dtype)
    res_r, g_r = dense.run_with_grads(ref, kw64, names, seed=seed)
    res_f, g_f = dense.run_with_grads(fused, kwf, names, seed=seed)
    what = dense.describe(kw)
    assert len(res_f) == len(res_r)
    for i, (a, b) in enumerate(zip(res_f, res_r)):
        assert a.dtype == dtype, (i, a.dtype)
        err = dense.rel_err(a, b)
        assert err <= rtol_out, f"{'out' if i == 0 else 'lse'}: rel err {err:.3g}; {what}"
    for n in names:
        assert g_f[n] is not None and g_r[n] is not None, n
        assert g_f[n].shape == kw[n].shape, (n, g_f[n].shape)
        err = dense.rel_err(g_f[n], g_r[n])
        assert err <= rtol_grad, f"grad {n}: rel err {err:.3g}; {what}"
    return res_f, g_f


# --------------------------------------------------------------------------------------------
# explicit grid of feature combinations
# --------------------------------------------------------------------------------------------
SUPPORTS = {
    "plain": dict(support="none", causal=False, kpm=False, mask=None, key_weight=None, empty=False),
    "causal": dict(support="none", causal=True, kpm=False, mask=None, key_weight=None, empty=False),
    "window1": dict(support="window", D=1, pos="default", causal=False, kpm=False, mask=None,
                    key_weight=None, empty=False),
    "frac2": dict(support="frac", D=2, pos="batch", causal=False, kpm=False, mask=None,
                  key_weight="1", empty=False),
    "frac1_causal": dict(support="frac", D=1, pos="bcast", causal=True, kpm=True, mask=None,
                         key_weight=None, empty=False),
    "offset1": dict(support="offset", D=1, pos="default", causal=False, kpm=False, mask=None,
                    key_weight=None, empty=False),
    "offset2_bcast": dict(support="offset", D=2, pos="bcast", causal=False, kpm=False,
                          mask=None, key_weight="B", empty=False),
    "offset3_batch": dict(support="offset", D=3, pos="batch", causal=False, kpm=True,
                          mask=None, key_weight=None, empty=False),
    "kpm_kw": dict(support="none", causal=False, kpm=True, mask=None, key_weight="B", empty=False),
    "bool_NM": dict(support="none", causal=False, kpm=False, mask="bool", mask_shape="NM",
                    key_weight=None, empty=False),
    "bool_B1NM": dict(support="none", causal=True, kpm=False, mask="bool", mask_shape="B1NM",
                      key_weight="1", empty=False),
    "float_HNM": dict(support="none", causal=False, kpm=False, mask="float", mask_shape="HNM",
                      key_weight=None, empty=False),
    "float_111M": dict(support="window", D=1, pos="batch", causal=False, kpm=True, mask="float",
                       mask_shape="111M", key_weight=None, empty=False),
    "empty": dict(support="none", causal=False, kpm=True, mask="bool", mask_shape="BHNM",
                  key_weight=None, empty=True),
    "all": dict(support="offset", D=2, pos="batch", causal=True, kpm=True, mask="float",
                mask_shape="B1NM", key_weight="B", empty=True),
    "all_frac": dict(support="frac", D=3, pos="batch", causal=True, kpm=True, mask="bool",
                     mask_shape="1HN1", key_weight="1", empty=True),
}
TERMS = {"content": dict(content=True, mlp=False), "mlp": dict(content=False, mlp=True),
         "both": dict(content=True, mlp=True)}
ACTS = ("relu", "gelu", "silu")

GRID = []
for ti, (tname, topt) in enumerate(TERMS.items()):
    for si, (sname, sopt) in enumerate(SUPPORTS.items()):
        if sopt["support"] == "offset" and not topt["mlp"]:
            continue  # the offset table is part of the MLP term
        for normalize in ("softmax", "none"):
            opts = dict(topt, **sopt, normalize=normalize,
                        activation=ACTS[(ti + si + len(GRID)) % 3])
            GRID.append(pytest.param(opts, id=f"{tname}-{sname}-{normalize}"))


@pytest.mark.parametrize("opts", GRID)
def test_grid_vs_reference(dense, opts, _seed):
    kw = dense.make_problem(_seed % 100000, **opts)
    check_vs_reference(dense, kw, seed=_seed)


@pytest.mark.parametrize("seed", range(40))
def test_fuzz_vs_reference(dense, seed):
    kw = dense.make_problem(1000 + seed)
    check_vs_reference(dense, kw, seed=seed)


@pytest.mark.parametrize("mask_shape", ["NM", "B1NM", "HNM", "111M", "BHNM", "1H1M", "M",
                                        "B11M", "N1", "1HN1"])
@pytest.mark.parametrize("mask", ["bool", "float"])
def test_attn_mask_broadcast_shapes(dense, mask, mask_shape, _seed):
    kw = dense.make_problem(_seed % 100000, mask=mask, mask_shape=mask_shape, B=2, H=3, N=17,
                            M=65, support="none", kpm=False, empty=False)
    check_vs_reference(dense, kw, seed=_seed)


def test_attn_mask_lower_rank_and_scalar(dense):
    """attn_mask of rank 1..3 that broadcasts from the right."""
    base = dense.make_problem(7, content=True, mlp=False, B=2, H=3, N=9, M=11, support="none",
                              causal=False, kpm=False, mask=None, key_weight=None, empty=False,
                              normalize="softmax")
    for am in [torch.rand(11) > 0.3, torch.randn(1, dtype=F64),
               torch.randn(3, 1, 11, dtype=F64), torch.rand(9, 11) > 0.5]:
        check_vs_reference(dense, dict(base, attn_mask=am))


# --------------------------------------------------------------------------------------------
# tile borders (64 x 64), head chunks (8), hidden widths, odd sizes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,M", [(1, 1), (1, 257), (257, 1), (63, 64), (64, 63), (65, 127),
                                 (127, 129), (129, 65), (97, 257), (257, 97)])
def test_tile_borders(dense, N, M, _seed):
    big = N * M > 20000
    kw = dense.make_problem(_seed % 100000, N=N, M=M, content=True, mlp=True, B=1 if big else 2,
                            H=2 if big else 3, R=7, Dk=8, Dv=5, causal=(N + M) % 2 == 0,
                            support="window" if M > 100 else "none", D=1, pos="default",
                            kpm=True, mask=None, key_weight="B", empty=False)
    check_vs_reference(dense, kw, seed=_seed)
    kw_none = dict(kw, normalize="none" if kw["normalize"] == "softmax" else "softmax")
    check_vs_reference(dense, kw_none, seed=_seed)


@pytest.mark.parametrize("H", [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17])
def test_head_chunks_mlp(dense, H, _seed):
    """The MLP projection keeps 8 heads' accumulators in registers: H around multiples of 8."""
    kw = dense.make_problem(_seed % 100000, H=H, mlp=True, content=H % 2 == 0, B=1, N=33, M=70,
                            R=[1, 7, 32, 33][H % 4], activation=ACTS[H % 3], support="offset",
                            D=1, pos="default", empty=False, mask=None)
    check_vs_reference(dense, kw, seed=_seed)


@pytest.mark.parametrize("R", [1, 7, 32, 33])
@pytest.mark.parametrize("activation", ACTS)
def test_hidden_width_and_activation(dense, R, activation, _seed):
    kw = dense.make_problem(_seed % 100000, R=R, activation=activation, mlp=True, B=2, H=3,
                            N=20, M=67, support="offset", D=2, pos="batch", empty=False)
    check_vs_reference(dense, kw, seed=_seed)


@pytest.mark.parametrize("Dk,Dv", [(1, 1), (3, 17), (16, 2), (17, 64), (64, 16), (33, 65)])
def test_head_dims(dense, Dk, Dv, _seed):
    kw = dense.make_problem(_seed % 100000, Dk=Dk, Dv=Dv, content=True, mlp=Dk % 2 == 1, B=1,
                            H=2, N=40, M=70, support="none", causal=True, mask=None)
    check_vs_reference(dense, kw, seed=_seed)


def test_M_differs_from_N_causal(dense):
    """causal is index based and top-left aligned also when N != M."""
    for N, M in [(5, 97), (97, 5), (70, 130), (130, 70)]:
        kw = dense.make_problem(N * 1000 + M, N=N, M=M, causal=True, B=1, H=2, support="none",
                                kpm=False, mask=None, empty=False)
        check_vs_reference(dense, kw)


def test_mlp_partial_inputs(dense):
    """u / t / b2 each optional (also all three absent: only the table, or a constant)."""
    for i, (use_u, use_t, use_b2) in enumerate([(True, False, False), (False, True, False),
                                                (False, False, True), (False, False, False)]):
        for support in ("offset", "none"):
            kw = dense.make_problem(300 + i, mlp=True, content=True, use_u=use_u, use_t=use_t,
                                    use_b2=use_b2, support=support, D=1, pos="default", B=2,
                                    H=3, N=19, M=66)
            check_vs_reference(dense, kw)


def test_mlp_only_n_from_q_pos(dense):
    """Neither q nor u: N comes from q_pos."""
    kw = dense.make_problem(5, mlp=True, content=False, support="offset", D=2, pos="batch",
                            B=2, H=3, N=21, M=40, use_t=True)
    kw.pop("u")
    check_vs_reference(dense, kw)


def test_window_with_infinite_bounds(dense):
    kw = dense.make_problem(11, content=True, mlp=True, support="none", B=2, H=2, N=70, M=70)
    for win in [(-math.inf, 0.0), (0.0, math.inf), (-math.inf, math.inf), (-3.5, -0.5)]:
        check_vs_reference(dense, dict(kw, window=win))


# --------------------------------------------------------------------------------------------
# empty supports: exactly 0 output, lse -inf, zero (never NaN) gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_support_exact_zero(dense, normalize):
    B, H, N, M = 2, 9, 70, 67
    kw = dense.make_problem(21, B=B, H=H, N=N, M=M, content=True, mlp=True, normalize=normalize,
                            support="offset", D=1, pos="default", causal=False, kpm=False,
                            mask=None, key_weight="B", empty=False)
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[0] = True                     # batch 0: all keys padded
    am = torch.ones(1, 1, N, M, dtype=torch.bool)
    am[..., 5, :] = False             # row 5 empty in every batch/head
    am[..., 66, :] = False            # ... and a row in the second query tile
    kw.update(key_padding_mask=kpm, attn_mask=am)
    empty = torch.zeros(B, 1, N, dtype=torch.bool)
    empty[0] = True
    empty[:, :, [5, 66]] = True
    res, grads = check_vs_reference(dense, kw)
    out = res[0]
    assert (out.masked_select(empty[..., None].expand_as(out)) == 0).all()
    if normalize == "softmax":
        lse = res[1]
        assert torch.isneginf(lse.masked_select(empty.expand_as(lse))).all()
        assert torch.isfinite(lse.masked_select(~empty.expand_as(lse))).all()
    for n, g in grads.items():
        assert torch.isfinite(g).all(), n
    assert (grads["q"].masked_select(empty[..., None].expand_as(out.new_empty(kw["q"].shape)))
            == 0).all()
    assert (grads["k"][0] == 0).all() and (grads["v"][0] == 0).all()
    if "u" in grads and kw["u"].shape[0] == B:
        assert (grads["u"][0] == 0).all()


def test_no_keys_at_all(dense):
    """M = 0: every row empty."""
    q = torch.randn(2, 3, 5, 4, dtype=F64, requires_grad=True)
    k = torch.randn(2, 3, 0, 4, dtype=F64, requires_grad=True)
    v = torch.randn(2, 3, 0, 6, dtype=F64, requires_grad=True)
    out, lse = fused(q=q, k=k, v=v, return_lse=True)
    assert out.shape == (2, 3, 5, 6) and (out == 0).all() and torch.isneginf(lse).all()
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    assert (gq == 0).all()


# --------------------------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_float32_vs_float64_reference(dense, seed):
    kw = dense.make_problem(2000 + seed, dtype=F32)
    # bound relative to what plain PyTorch float32 achieves on the same problem
    kw32 = dense.with_grad(kw, dense.diff_inputs(kw))
    names = dense.diff_inputs(kw)
    kw64 = dense.with_grad(kw, names, dtype=F64)
    r64, g64 = dense.run_with_grads(ref, kw64, names)
    r32, g32 = dense.run_with_grads(ref, kw32, names)
    f32, gf = dense.run_with_grads(fused, dense.with_grad(kw, names), names)
    for i, (a, b, c) in enumerate(zip(f32, r64, r32)):
        bound = max(1e-4, 10 * dense.rel_err(c, b))
        assert dense.rel_err(a, b) <= bound, (i, dense.rel_err(a, b), bound)
    for n in names:
        bound = max(1e-4, 10 * dense.rel_err(g32[n], g64[n]))
        err = dense.rel_err(gf[n], g64[n])
        assert err <= bound, (n, err, bound, dense.describe(kw))


# --------------------------------------------------------------------------------------------
# non-contiguous inputs
# --------------------------------------------------------------------------------------------
def _noncontig(x, kind):
    """A non-contiguous tensor equal to x."""
    if kind == "transpose":
        if x.dim() >= 2:
            return x.transpose(-1, -2).contiguous().transpose(-1, -2)
        return x
    if kind == "slice":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1] + 1, dtype=x.dtype)
        big[..., 1::2] = x
        return big[..., 1::2]
    if kind == "perm" and x.dim() == 4:  # (B, H, L, D) stored as (B, L, H, D)
        return x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    if kind == "perm" and x.dim() == 3:
        return x.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    return x


@pytest.mark.parametrize("kind", ["transpose", "slice", "perm"])
def test_noncontiguous_inputs(dense, kind):
    kw = dense.make_problem(31, content=True, mlp=True, B=2, H=3, N=70, M=66, Dk=5, Dv=7, R=7,
                            support="offset", D=2, pos="batch", kpm=True, mask="float",
                            mask_shape="B1NM", key_weight="B", normalize="softmax", empty=False)
    base_out, base_g = check_vs_reference(dense, kw)
    nc = {}
    for n, x in kw.items():
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            y = _noncontig(x, kind) if x.dtype != torch.bool else x.t().contiguous().t() \
                if x.dim() == 2 else x
            assert torch.equal(y, x)
            nc[n] = y
        else:
            nc[n] = x
    if kind == "transpose":
        assert not nc["q"].is_contiguous()
    names = dense.diff_inputs(kw)
    # leaves that are non-contiguous views: make the view the leaf
    kwn = dict(nc)
    for n in names:
        kwn[n] = nc[n].detach().requires_grad_()
    res, grads = dense.run_with_grads(fused, kwn, names)
    for a, b in zip(res, base_out):
        assert dense.rel_err(a, b) <= 1e-13
    for n in names:
        assert dense.rel_err(grads[n], base_g[n]) <= 1e-12, n


def test_expanded_broadcast_inputs(dense):
    """Stride-0 (expanded) tensors: q, k, v shared over heads, u / t / positions / key_weight /
    masks expanded over the batch, W2 / b2 / offset_table expanded; gradients flow back to the
    small leaves exactly as through the reference."""
    B, H, N, M, Dk, Dv, R = 3, 4, 37, 71, 6, 5, 7
    g = torch.Generator().manual_seed(3)

    def rn(*s):
        return torch.randn(*s, generator=g, dtype=F64).requires_grad_()

    leaves = dict(q=rn(B, 1, N, Dk), k=rn(1, 1, M, Dk), v=rn(B, 1, M, Dv), u=rn(1, N, R),
                  t=rn(1, M, R), W2=rn(1, R), b2=rn(1), offset_table=rn(1, R),
                  key_weight=(torch.rand(1, M, generator=g, dtype=F64) + 0.5).requires_grad_())
    fixed = dict(q_pos=torch.randint(0, 6, (1, N, 2), generator=g).to(F64).expand(B, N, 2),
                 k_pos=torch.randint(0, 6, (1, M, 2), generator=g).to(F64).expand(B, M, 2),
                 key_padding_mask=(torch.rand(1, M, generator=g) < 0.2).expand(B, M),
                 attn_mask=(torch.rand(1, 1, 1, M, generator=g) < 0.8).expand(B, H, N, M),
                 window=[(-1, 1), (-1, 2)], causal=False, activation="silu")

    def args(contig):
        a = dict(q=leaves["q"].expand(B, H, N, Dk), k=leaves["k"].expand(B, H, M, Dk),
                 v=leaves["v"].expand(B, H, M, Dv), u=leaves["u"].expand(B, N, R),
                 t=leaves["t"].expand(B, M, R), W2=leaves["W2"].expand(H, R),
                 b2=leaves["b2"].expand(H), offset_table=leaves["offset_table"].expand(12, R),
                 key_weight=leaves["key_weight"].expand(B, M), **fixed)
        if contig:
            a = {n: x.contiguous() if isinstance(x, torch.Tensor) else x for n, x in a.items()}
        return a

    for normalize in ("softmax", "none"):
        lse = normalize == "softmax"
        outs = []
        for fn, contig in ((fused, False), (ref, True)):
            res = fn(**args(contig), normalize=normalize, return_lse=lse)
            res = res if isinstance(res, tuple) else (res,)
            cot = [torch.linspace(-1, 1, r.numel(), dtype=F64).reshape(r.shape) for r in res]
            grads = torch.autograd.grad(res, list(leaves.values()), cot)
            outs.append((res, grads))
        (ra, ga), (rb, gb) = outs
        for x, y in zip(ra, rb):
            assert dense.rel_err(x, y) <= RTOL64
        for n, x, y in zip(leaves, ga, gb):
            assert dense.rel_err(x, y) <= RTOL64, n


# --------------------------------------------------------------------------------------------
# NaN / inf poisoning of padded keys; determinism
# --------------------------------------------------------------------------------------------
def _remove_keys(kw, keep):
    """kw restricted to the keys `keep` (bool (M,)): k, v, t, k_pos, key_weight, masks."""
    out = dict(kw)
    for n, dim in (("k", 2), ("v", 2), ("t", 1), ("k_pos", 1), ("key_weight", 1),
                   ("key_padding_mask", 1)):
        if out.get(n) is not None:
            out[n] = out[n].index_select(dim, keep.nonzero()[:, 0])
    if out.get("attn_mask") is not None:
        am = out["attn_mask"]
        out["attn_mask"] = am.index_select(am.dim() - 1, keep.nonzero()[:, 0]) \
            if am.shape[-1] > 1 else am
    return out


@pytest.mark.parametrize("where", ["k", "v", "t"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_padded_keys_do_not_leak(dense, where, poison):
    B, H, N, M = 2, 3, 70, 80
    kw = dense.make_problem(41, B=B, H=H, N=N, M=M, content=True, mlp=True, use_t=True,
                            support="none", causal=True, kpm=False, mask="bool",
                            mask_shape="B1NM", key_weight="B", empty=False)
    kw["t"] = kw["t"].expand(B, M, -1).clone()
    pad = torch.zeros(M, dtype=torch.bool)
    pad[-9:] = True          # trailing padding (index-based causal unaffected by removing them)
    kw["key_padding_mask"] = pad.expand(B, M).clone()
    expected = ref(**_remove_keys(kw, ~pad), return_lse=True)
    poisoned = dict(kw)
    x = poisoned[where].clone()
    if where == "t":
        x[:, pad] = poison
    else:
        x[:, :, pad] = poison
    poisoned[where] = x
    for normalize in ("softmax", "none"):
        exp = expected if normalize == "softmax" else \
            (ref(**dict(_remove_keys(kw, ~pad), normalize="none")),)
        got = fused(**dict(poisoned, normalize=normalize), return_lse=normalize == "softmax")
        got = got if isinstance(got, tuple) else (got,)
        out, ref_out = got[0], exp[0]
        assert torch.isfinite(out).all(), f"{normalize}: padded {where}={poison} leaked"
        assert dense.rel_err(out, ref_out) <= RTOL64
        if normalize == "softmax":  # lse: -inf exactly on empty rows, finite elsewhere
            lse, ref_lse = got[1], exp[1]
            assert not torch.isnan(lse).any()
            assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
            fin = torch.isfinite(ref_lse)
            assert dense.rel_err(lse[fin], ref_lse[fin]) <= RTOL64


def test_padded_keys_garbage_finite_values_do_not_leak(dense):
    """Huge (finite) garbage in padded keys is ignored (what the additive bias handles)."""
    B, H, N, M = 2, 3, 40, 70
    kw = dense.make_problem(43, B=B, H=H, N=N, M=M, content=True, mlp=True, use_t=True,
                            support="none", causal=False, kpm=False, mask=None, empty=False,
                            normalize="softmax")
    kw["t"] = kw["t"].expand(B, M, -1).clone()
    pad = torch.zeros(M, dtype=torch.bool)
    pad[::7] = True
    kw["key_padding_mask"] = pad.expand(B, M).clone()
    expected = ref(**_remove_keys(kw, ~pad), return_lse=True)
    p = dict(kw)
    p["v"] = kw["v"].clone()
    p["v"][:, :, pad] = 1e30
    p["k"] = kw["k"].clone()
    p["k"][:, :, pad] = 1e3
    for a, b in zip(fused(**p, return_lse=True), expected):
        assert dense.rel_err(a, b) <= RTOL64


def test_deterministic_repeated_calls_and_threads(dense):
    kw = dense.make_problem(51, content=True, mlp=True, B=2, H=9, N=130, M=140, R=7,
                            support="offset", D=1, pos="default", kpm=True, key_weight="B",
                            normalize="softmax", empty=False)
    names = dense.diff_inputs(kw)
    old = torch.get_num_threads()
    runs = {}
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            kwg = dense.with_grad(kw, names)
            runs.setdefault(threads, []).append(dense.run_with_grads(fused, kwg, names))
    finally:
        torch.set_num_threads(old)
    (r1, g1), = runs[1]
    (r2, g2), (r2b, g2b) = runs[2]
    # forward: every output row is computed by one work item -> bitwise equal
    for a, b, c in zip(r1, r2, r2b):
        assert torch.equal(b, c)
        assert torch.equal(a, b)
    for n in names:
        assert torch.equal(g2[n], g2b[n]), n   # same thread count: bitwise
        assert dense.rel_err(g1[n], g2[n]) <= 1e-13, n  # per-thread partial sums: rounding


# --------------------------------------------------------------------------------------------
# hypothesis
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    terms=st.sampled_from(["content", "mlp", "both"]),
    normalize=st.sampled_from(["softmax", "none"]),
    support=st.sampled_from(["none", "window", "frac", "offset"]),
    D=st.integers(1, 3),
    causal=st.booleans(),
    kpm=st.booleans(),
    mask=st.sampled_from([None, "bool", "float"]),
    mask_shape=st.sampled_from(["NM", "B1NM", "HNM", "111M", "BHNM", "1H1M", "M", "N1"]),
    key_weight=st.sampled_from([None, "B", "1"]),
    N=st.sampled_from([1, 2, 63, 65, 97]),
    M=st.sampled_from([1, 3, 64, 66, 97]),
    H=st.integers(1, 10),
    R=st.sampled_from([1, 7, 32, 33]),
    seed=st.integers(0, 2 ** 16),
)
def test_hypothesis_vs_reference(dense, terms, normalize, support, D, causal, kpm, mask,
                                 mask_shape, key_weight, N, M, H, R, seed):
    content = terms != "mlp"
    mlp = terms != "content"
    if support == "offset" and not mlp:
        support = "window"
    kw = dense.make_problem(seed, content=content, mlp=mlp, normalize=normalize, support=support,
                            D=D, causal=causal, kpm=kpm, mask=mask, mask_shape=mask_shape,
                            key_weight=key_weight, N=N, M=M, H=H, R=R, B=2,
                            pos="default" if D == 1 else "batch")
    check_vs_reference(dense, kw, seed=seed)


def test_infinite_positions_window(dense):
    """Positions must be finite (an inf position made the offset inf - inf = NaN, which the
    fused op and the oracle treated differently): the same error from both."""
    inf = math.inf
    q = torch.randn(1, 1, 3, 2, dtype=F64)
    k = torch.randn(1, 1, 3, 2, dtype=F64)
    v = torch.randn(1, 1, 3, 2, dtype=F64)
    q_pos = torch.tensor([[[inf], [inf], [inf]]], dtype=F64)
    for k_pos in (torch.tensor([[[inf], [inf], [inf]]], dtype=F64),
                  torch.tensor([[[inf], [0.0], [1.0]]], dtype=F64)):
        for normalize in ("softmax", "none"):
            kw = dict(q=q, k=k, v=v, q_pos=q_pos, k_pos=k_pos, window=(-1.0, 1.0),
                      normalize=normalize)
            for fn in (fused, ref):
                with pytest.raises(ValueError, match="q_pos: contains NaN or inf"):
                    fn(**kw)



@pytest.mark.parametrize("case", [
    "M0", "Dv0",
    "N0", "H0", "B0", "Dk0", "R0"])
@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_zero_size_dims(dense, case, normalize):
    """Zero-size dimensions are valid (empty results, zero-size gradients, R = 0: the MLP term
    is the constant b2[h])."""
    B, H, N, M, Dk, Dv, R = 2, 2, 4, 5, 3, 2, 4
    B, H, N, M, Dk, Dv, R = [0 if case == f"{n}0" else x for n, x in
                             zip(("B", "H", "N", "M", "Dk", "Dv", "R"), (B, H, N, M, Dk, Dv, R))]
    g = torch.Generator().manual_seed(0)

    def rn(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    kw = dict(q=rn(B, H, N, Dk), k=rn(B, H, M, Dk), v=rn(B, H, M, Dv), u=rn(1, N, R),
              t=rn(1, M, R), W2=rn(H, R), b2=rn(H) + 1.0, normalize=normalize)
    names = dense.diff_inputs(kw)
    outs = []
    for fn in (fused, ref):
        args = dense.with_grad(kw, names)
        res = fn(**args, return_lse=normalize == "softmax")
        res = res if isinstance(res, tuple) else (res,)
        grads = torch.autograd.grad(res[0], [args[n] for n in names], torch.ones_like(res[0]),
                                    allow_unused=True)
        outs.append((res, grads))
    (ra, ga), (rb, gb) = outs
    for x, y in zip(ra, rb):
        assert x.shape == y.shape
        if x.numel():
            assert dense.rel_err(x, y) <= RTOL64
    for n, x, y in zip(names, ga, gb):
        y = torch.zeros_like(kw[n]) if y is None else y
        assert x is not None and x.shape == kw[n].shape, n
        if x.numel():
            assert dense.rel_err(x, y) <= RTOL64, n
