"""torch.autograd.gradcheck (float64) of the fused dense op, per major configuration.

The fused backward (torch.ops.itnet.dense_bwd) is checked against finite differences of the
fused forward: content / MLP / both, softmax / none, offset tables with windows, masks, key
weights, head counts above the kernel's chunk of 8, sizes across the 64 x 64 tiles, the lse
output's own gradient, and rows with an empty support (zero, never NaN, gradients).
"""
import pytest
import torch

from itnet_ext import functional, reference

F64 = torch.float64
DIFF = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "key_weight")


def rnd(*shape):
    return torch.randn(*shape, dtype=F64)


def gradcheck_op(kw, outputs="out", fast_mode=True, fn=functional.integral_transform):
    """gradcheck of fn w.r.t. every differentiable tensor in kw.

    outputs: "out", "both" (out, lse) or "lse"."""
    names = [n for n in DIFF if kw.get(n) is not None]
    fixed = {n: x for n, x in kw.items() if n not in names}
    inputs = tuple(kw[n].detach().clone().requires_grad_() for n in names)

    def f(*xs):
        args = dict(fixed, **dict(zip(names, xs)))
        if outputs == "out":
            return fn(**args)
        out, lse = fn(**args, return_lse=True)
        return (out, lse) if outputs == "both" else lse

    assert torch.autograd.gradcheck(f, inputs, fast_mode=fast_mode, atol=1e-8, rtol=1e-6)


def int_pos(B, L, D, hi):
    return torch.randint(0, hi, (B, L, D)).to(F64)


CONFIGS = {
    "content_softmax_lse": lambda: (dict(q=rnd(2, 3, 5, 4), k=rnd(2, 3, 7, 4), v=rnd(2, 3, 7, 3)),
                                    "both"),
    "content_none_kw": lambda: (dict(q=rnd(2, 2, 5, 3), k=rnd(2, 2, 6, 3), v=rnd(2, 2, 6, 2),
                                     key_weight=torch.rand(2, 6, dtype=F64) + 0.5,
                                     normalize="none", causal=True), "out"),
    "mlp_gelu_softmax_lse": lambda: (dict(v=rnd(2, 3, 7, 3), u=rnd(2, 5, 4), t=rnd(1, 7, 4),
                                          W2=rnd(3, 4), b2=rnd(3), activation="gelu"), "both"),
    "mlp_offset2_causal_silu": lambda: (dict(
        q=rnd(2, 2, 6, 3), k=rnd(2, 2, 8, 3), v=rnd(2, 2, 8, 2), u=rnd(1, 6, 3), t=rnd(2, 8, 3),
        W2=rnd(2, 3), b2=rnd(2), offset_table=rnd(3 * 4 + 2, 3), q_pos=int_pos(2, 6, 2, 3),
        k_pos=int_pos(1, 8, 2, 3), window=[(-1, 1), (-2, 1)], causal=True,
        key_padding_mask=torch.tensor([[False] * 7 + [True], [True] + [False] * 7]),
        key_weight=torch.rand(1, 8, dtype=F64) + 0.5, activation="silu"), "out"),
    "mlp_offset2_lse": lambda: (dict(
        q=rnd(2, 2, 6, 3), k=rnd(2, 2, 8, 3), v=rnd(2, 2, 8, 2), u=rnd(1, 6, 3), t=rnd(2, 8, 3),
        W2=rnd(2, 3), b2=rnd(2), offset_table=rnd(5 * 5, 3), q_pos=int_pos(2, 6, 2, 3),
        k_pos=int_pos(1, 8, 2, 3), window=[(-2, 2), (-2, 2)],
        key_weight=torch.rand(1, 8, dtype=F64) + 0.5, activation="gelu"), "both"),
    "mlp_offset1_relu_none": lambda: (dict(
        v=rnd(1, 3, 9, 2), u=rnd(1, 6, 5), t=rnd(1, 9, 5), W2=rnd(3, 5),
        offset_table=rnd(7, 5), window=(-3, 3), activation="relu", normalize="none",
        key_weight=torch.rand(1, 9, dtype=F64) + 0.5), "out"),
    "both_masks_frac_window": lambda: (dict(
        q=rnd(2, 2, 5, 3), k=rnd(2, 2, 7, 3), v=rnd(2, 2, 7, 4), u=rnd(2, 5, 3), t=rnd(2, 7, 3),
        W2=rnd(2, 3), b2=rnd(2), q_pos=torch.rand(2, 5, 2, dtype=F64) * 3,
        k_pos=torch.rand(2, 7, 2, dtype=F64) * 3, window=[(-1.5, 1.25), (-2.0, 2.5)],
        attn_mask=torch.where(torch.rand(2, 1, 5, 7) < 0.15, float("-inf"), rnd(2, 1, 5, 7)),
        activation="gelu"), "both"),
    "bool_mask_none": lambda: (dict(
        q=rnd(1, 3, 6, 2), k=rnd(1, 3, 6, 2), v=rnd(1, 3, 6, 3), W2=rnd(3, 2), t=rnd(1, 6, 2),
        attn_mask=torch.rand(3, 6, 6) < 0.7, normalize="none", activation="silu"), "out"),
    "heads9_mlp": lambda: (dict(
        q=rnd(1, 9, 4, 2), k=rnd(1, 9, 5, 2), v=rnd(1, 9, 5, 2), u=rnd(1, 4, 3), t=rnd(1, 5, 3),
        W2=rnd(9, 3), b2=rnd(9), activation="gelu"), "both"),
    "tiles_66x67": lambda: (dict(
        q=rnd(1, 2, 66, 3), k=rnd(1, 2, 67, 3), v=rnd(1, 2, 67, 2), u=rnd(1, 66, 3),
        t=rnd(1, 67, 3), W2=rnd(2, 3), b2=rnd(2), offset_table=rnd(13, 3), window=(-6, 6),
        causal=True, key_weight=torch.rand(1, 67, dtype=F64) + 0.5, activation="silu"), "both"),
    "tiles_none_130x65": lambda: (dict(
        q=rnd(1, 1, 130, 2), k=rnd(1, 1, 65, 2), v=rnd(1, 1, 65, 2), W2=rnd(1, 2),
        t=rnd(1, 65, 2), u=rnd(1, 130, 2), normalize="none", activation="gelu",
        key_padding_mask=torch.rand(1, 65) < 0.2), "out"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradcheck(name):
    kw, outputs = CONFIGS[name]()
    if outputs != "out":  # finite differences of lse need rows with a non-empty support
        _, lse = functional.integral_transform(**kw, return_lse=True)
        assert torch.isfinite(lse).all()
    gradcheck_op(kw, outputs)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("mlp", [False, True])
def test_gradcheck_lse_only(activation, mlp):
    """Only lse is used: the op's backward gets grad_out = None and a grad_lse."""
    kw = dict(q=rnd(1, 2, 5, 3), k=rnd(1, 2, 6, 3), v=rnd(1, 2, 6, 2), activation=activation)
    if mlp:
        kw.update(u=rnd(1, 5, 3), t=rnd(1, 6, 3), W2=rnd(2, 3), b2=rnd(2))
    gradcheck_op(kw, "lse")


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_lse_gradient_matches_reference(activation):
    """d lse / d inputs equals the reference's, for every activation (the softmax flag of the
    backward must not depend on the activation)."""
    kw = dict(q=rnd(1, 2, 5, 3), k=rnd(1, 2, 6, 3), v=rnd(1, 2, 6, 2), u=rnd(1, 5, 3),
              t=rnd(1, 6, 3), W2=rnd(2, 3), b2=rnd(2), activation=activation)
    names = ["q", "k", "u", "t", "W2", "b2"]
    grads = []
    for fn in (functional.integral_transform, reference.integral_transform):
        args = {n: (x.clone().requires_grad_() if n in names else x) for n, x in kw.items()}
        _, lse = fn(**args, return_lse=True)
        grads.append(torch.autograd.grad(lse.sum(), [args[n] for n in names]))
    for n, a, b in zip(names, *grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"d lse / d {n}")


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_empty_rows_zero_gradients(normalize):
    B, H, N, M, R = 2, 3, 7, 6, 3
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[0] = True                                # batch 0: all keys padded
    am = torch.ones(N, M, dtype=torch.bool)
    am[4] = False                                # row 4 empty everywhere
    kw = dict(q=rnd(B, H, N, 2), k=rnd(B, H, M, 2), v=rnd(B, H, M, 3), u=rnd(B, N, R),
              t=rnd(B, M, R), W2=rnd(H, R), b2=rnd(H), offset_table=rnd(5, R), window=(-2, 2),
              key_weight=torch.rand(B, M, dtype=F64) + 0.5, key_padding_mask=kpm, attn_mask=am,
              normalize=normalize, activation="gelu")
    # rows 0..N-1 of batch 0, row 4 of batch 1, and rows whose window misses all keys
    names = [n for n in DIFF if kw.get(n) is not None]
    args = {n: (x.clone().requires_grad_() if n in names else x) for n, x in kw.items()}
    res = functional.integral_transform(**args, return_lse=normalize == "softmax")
    res = res if isinstance(res, tuple) else (res,)
    out = res[0]
    empty = torch.zeros(B, N, dtype=torch.bool)
    empty[0] = True
    empty[:, 4] = True
    assert (out[empty[:, None, :, None].expand_as(out)] == 0).all()
    cots = [torch.ones_like(r) for r in res]
    grads = dict(zip(names, torch.autograd.grad(res, [args[n] for n in names], cots)))
    for n, g in grads.items():
        assert torch.isfinite(g).all(), f"non-finite gradient for {n}"
    assert (grads["q"][empty[:, None, :, None].expand_as(grads["q"])] == 0).all()
    assert (grads["u"][empty[:, :, None].expand_as(grads["u"])] == 0).all()
    for n in ("k", "v", "t"):
        assert (grads[n][0] == 0).all(), n     # batch 0 has no pair at all
    assert (grads["key_weight"][0] == 0).all()
    # and gradcheck with those empty rows present (out only: lse is -inf there)
    gradcheck_op(kw, "out")


def test_double_backward_raises_or_is_correct():
    q = rnd(1, 2, 4, 3).requires_grad_()
    k, v = rnd(1, 2, 5, 3), rnd(1, 2, 5, 2)
    (g_ref,) = torch.autograd.grad(reference.integral_transform(q, k, v).square().sum(), q,
                                   create_graph=True)
    (gg_ref,) = torch.autograd.grad(g_ref.sum(), q)
    try:
        (g,) = torch.autograd.grad(functional.integral_transform(q, k, v).square().sum(), q,
                                   create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), q)
    except RuntimeError:
        return  # a clear error is acceptable
    torch.testing.assert_close(gg, gg_ref, rtol=1e-8, atol=1e-10)
