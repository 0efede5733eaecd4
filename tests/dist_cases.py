"""Worker side of tests/test_distributed.py: cases run inside every spawned gloo process.

Each case builds the whole problem from one seed (the same on every rank), evaluates the
single-process fused op on it (the oracle) with autograd, then this rank's shard through
itnet_ext.distributed and compares outputs and gradients to float64 rounding. Replicated
parameters are compared after summing the ranks' contributions.
"""
import traceback

import torch
import torch.distributed as dist

import itnet_ext  # noqa: F401
from itnet_ext import distributed as D
from itnet_ext.functional import integral_transform as local_op

B, H, Dk, Dv, R = 2, 2, 4, 3, 5


def _problem(seed, n, *, content=True, mlp=True, offset=False, window=None, kw=False,
             kpm=False, t_batch=B):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x = {"v": r(B, H, n, Dv)}
    if content:
        x["q"], x["k"] = r(B, H, n, Dk), r(B, H, n, Dk)
    if mlp:
        x.update(u=r(B, n, R), t=r(t_batch, n, R), W2=r(H, R), b2=r(H))
    if offset:
        vol = window[0][1] - window[0][0] + 1
        x["offset_table"] = r(vol, R)
    if kw:
        x["key_weight"] = torch.rand(B, n, generator=g, dtype=torch.float64) + 0.5
    if kpm:
        m = torch.rand(B, n, generator=g) < 0.3
        m[0] = True                                   # batch 0: every key padded (empty rows)
        x["key_padding_mask"] = m
    return x


SEQ_DIM = {"q": 2, "k": 2, "v": 2, "u": 1, "t": 1, "key_weight": 1, "key_padding_mask": 1,
           "q_pos": 1, "k_pos": 1}
REPLICATED = ("W2", "b2", "offset_table")


def _compare(name, seed, n, opts, problem_kw, use_lse=False):
    rank, world = dist.get_rank(), dist.get_world_size()
    layout = opts.get("layout", "contiguous")
    full = _problem(seed, n, **problem_kw)
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in full.items()}
    static = {k: opts[k] for k in ("causal", "window", "normalize", "activation") if k in opts}
    g = torch.Generator().manual_seed(seed + 1)
    w_out = torch.randn(B, H, n, Dv, generator=g, dtype=torch.float64)
    w_lse = torch.randn(B, H, n, generator=g, dtype=torch.float64)

    def loss(res, wo, wl):
        if use_lse:
            out, lse = res
            lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
            return (out * wo).sum() + (lse * wl).sum()
        return (res * wo).sum()

    ref = local_op(leaves.get("q"), leaves.get("k"), leaves["v"], return_lse=use_lse,
                   **{k: v for k, v in leaves.items() if k not in ("q", "k", "v")}, **static)
    loss(ref, w_out, w_lse).backward()

    mine = {}
    for k, v in full.items():
        x = D.shard(v, SEQ_DIM[k], rank, world, layout) if k in SEQ_DIM else v
        mine[k] = x.clone().requires_grad_(x.is_floating_point())
    res = D.integral_transform(mine.get("q"), mine.get("k"), mine["v"], return_lse=use_lse,
                               layout=layout, comm=opts.get("comm", "ring"),
                               **{k: v for k, v in mine.items() if k not in ("q", "k", "v")},
                               **static)
    shard = lambda x, d: D.shard(x, d, rank, world, layout)
    loss(res, shard(w_out, 2), shard(w_lse, 2)).backward()
    out_ref = ref[0] if use_lse else ref
    out = res[0] if use_lse else res
    torch.testing.assert_close(out, shard(out_ref, 2), atol=1e-12, rtol=1e-10,
                               msg=lambda m: f"{name} out: {m}")
    if use_lse:
        torch.testing.assert_close(res[1], shard(ref[1], 2), atol=1e-12, rtol=1e-10,
                                   msg=lambda m: f"{name} lse: {m}")
    for k, leaf in leaves.items():
        if not leaf.is_floating_point():
            continue
        gm = mine[k].grad
        if k in REPLICATED:
            gm = gm.clone()
            dist.all_reduce(gm)
            want = leaf.grad
        else:
            want = shard(leaf.grad, SEQ_DIM[k])
        torch.testing.assert_close(gm, want, atol=1e-11, rtol=1e-9,
                                   msg=lambda m, k=k: f"{name} grad {k}: {m}")


def _n(world, mult=3):
    return 2 * world * mult          # divisible by the 2P chunks of the zigzag layout


CASES = {
    "softmax_ring": lambda w: _compare("softmax_ring", 1, _n(w), {}, {}),
    "softmax_allgather": lambda w: _compare("softmax_allgather", 2, _n(w),
                                            {"comm": "allgather"}, {}),
    "causal_zigzag_ring": lambda w: _compare(
        "causal_zigzag_ring", 3, _n(w), {"causal": True, "layout": "zigzag"}, {}),
    "causal_contiguous_allgather": lambda w: _compare(
        "causal_contiguous_allgather", 4, _n(w), {"causal": True, "comm": "allgather"}, {}),
    "window_offset_causal_zigzag": lambda w: _compare(
        "window_offset_causal_zigzag", 5, _n(w),
        {"causal": True, "layout": "zigzag", "window": [(-4, 0)]},
        {"offset": True, "window": [(-4, 0)]}),
    "none_weights_padding": lambda w: _compare(
        "none_weights_padding", 6, _n(w), {"normalize": "none"},
        {"kw": True, "kpm": True}),
    "softmax_padding_lse": lambda w: _compare(
        "softmax_padding_lse", 7, _n(w), {"layout": "zigzag"},
        {"kw": True, "kpm": True}, use_lse=True),
    "mlp_only_t_batch1": lambda w: _compare(
        "mlp_only_t_batch1", 8, _n(w), {"causal": True, "activation": "silu"},
        {"content": False, "t_batch": 1}),
    "content_only_none_window": lambda w: _compare(
        "content_only_none_window", 9, _n(w),
        {"normalize": "none", "window": [(-3, 5)], "comm": "allgather"}, {"mlp": False}),
}


def _sparse_problem(seed, n, S=5, *, content=True, mlp=True, offset=False):
    """A random pair list over the whole key set (padded form: idx -1 / log_w -inf for
    absent pairs; some rows empty), plus the kernel arguments of :func:`_problem`."""
    x = _problem(seed, n, content=content, mlp=mlp)
    g = torch.Generator().manual_seed(seed + 100)
    x["idx"] = torch.randint(0, n, (B, n, S), generator=g)
    lw = torch.randn(B, n, S, generator=g, dtype=torch.float64) * 0.5
    absent = torch.rand(B, n, S, generator=g) < 0.3
    absent[:, 0] = True                                       # query 0: no pairs at all
    x["idx"] = torch.where(absent, -1, x["idx"])
    x["log_w"] = torch.where(absent, float("-inf"), lw)
    if offset:                                                # window (-n, n): all pairs
        x["offset_table"] = torch.randn(2 * n + 1, R, generator=g, dtype=torch.float64)
    return x


def _to_csr(idx, log_w):
    """Padded -> CSR without the absent pairs (per batch widths padded to the widest)."""
    Bn, N, S = idx.shape
    keep = ~torch.isneginf(log_w)
    counts = keep.sum(2)
    rp = torch.cat([torch.zeros(Bn, 1, dtype=torch.int64), counts.cumsum(1)], 1)
    E = max(1, int(counts.sum(1).max()))
    col = torch.zeros(Bn, E, dtype=torch.int64)
    lw = torch.zeros(Bn, E, dtype=log_w.dtype)
    for b in range(Bn):
        m = keep[b].flatten()
        col[b, :int(m.sum())] = idx[b].flatten()[m]
        lw[b, :int(m.sum())] = log_w[b].flatten()[m]
    return rp, col, lw


def _compare_sparse(name, seed, n, opts, problem_kw, use_lse=False, csr=False):
    from itnet_ext.functional import sparse_integral_transform as local_sparse
    rank, world = dist.get_rank(), dist.get_world_size()
    layout = opts.get("layout", "contiguous")
    full = _sparse_problem(seed, n, **problem_kw)
    if "offset_table" in full:
        opts = dict(opts, window=[(-n, n)])
    static = {k: opts[k] for k in ("window", "normalize", "activation") if k in opts}
    g = torch.Generator().manual_seed(seed + 1)
    w_out = torch.randn(B, H, n, Dv, generator=g, dtype=torch.float64)
    w_lse = torch.randn(B, H, n, generator=g, dtype=torch.float64)

    def loss(res, wo, wl):
        if use_lse:
            out, lse = res
            return (out * wo).sum() + (torch.where(torch.isfinite(lse), lse, 0) * wl).sum()
        return (res * wo).sum()

    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in full.items()}
    ref = local_sparse(leaves.get("q"), leaves.get("k"), leaves["v"], return_lse=use_lse,
                       **{k: v for k, v in leaves.items() if k not in ("q", "k", "v")},
                       **static)
    loss(ref, w_out, w_lse).backward()
    seq = dict(SEQ_DIM, idx=1, log_w=1)
    mine = {}
    for k, v in full.items():
        x = D.shard(v, seq[k], rank, world, layout) if k in seq else v
        mine[k] = x.clone().requires_grad_(x.is_floating_point())
    pairs = {"idx": mine["idx"], "log_w": mine["log_w"]}
    if csr:
        rp, col, lw = _to_csr(mine["idx"], mine["log_w"].detach())
        lw.requires_grad_(True)
        pairs = {"row_ptr": rp, "col_idx": col, "log_w": lw}
    res = D.sparse_integral_transform(
        mine.get("q"), mine.get("k"), mine["v"], return_lse=use_lse, layout=layout,
        comm=opts.get("comm", "ring"), **pairs,
        **{k: v for k, v in mine.items() if k not in ("q", "k", "v", "idx", "log_w")},
        **static)
    shard = lambda x, d: D.shard(x, d, rank, world, layout)
    loss(res, shard(w_out, 2), shard(w_lse, 2)).backward()
    out, out_ref = (res[0], ref[0]) if use_lse else (res, ref)
    torch.testing.assert_close(out, shard(out_ref, 2), atol=1e-12, rtol=1e-10,
                               msg=lambda m: f"{name} out: {m}")
    for k, leaf in leaves.items():
        if not leaf.is_floating_point():
            continue
        gm = mine[k].grad
        if k == "log_w" and csr:
            continue                       # compared below, in the CSR entries' order
        if k in REPLICATED:
            gm = gm.clone()
            dist.all_reduce(gm)
            want = leaf.grad
        else:
            want = shard(leaf.grad, seq[k])
        if k == "log_w":                   # absent pairs: gradient 0 (the oracle may say NaN)
            gm = torch.where(torch.isneginf(mine[k].detach()), 0, gm)
            want = torch.where(torch.isneginf(mine[k].detach()), 0, want)
        torch.testing.assert_close(gm, want, atol=1e-11, rtol=1e-9,
                                   msg=lambda m, k=k: f"{name} grad {k}: {m}")
    if csr:
        want_lw = shard(leaves["log_w"].grad, 1)
        _, _, want_csr = _to_csr(mine["idx"], torch.where(
            torch.isneginf(mine["log_w"].detach()), float("-inf"), want_lw))
        rp = pairs["row_ptr"]
        listed = torch.arange(pairs["col_idx"].shape[1])[None] < rp[:, -1:]
        torch.testing.assert_close(torch.where(listed, pairs["log_w"].grad, 0),
                                   torch.where(listed, want_csr, 0), atol=1e-11, rtol=1e-9,
                                   msg=lambda m: f"{name} grad log_w (csr): {m}")


SPARSE_CASES = {
    "sparse_softmax_ring": lambda w: _compare_sparse("sparse_softmax_ring", 11, _n(w), {}, {}),
    "sparse_zigzag_allgather_lse": lambda w: _compare_sparse(
        "sparse_zigzag_allgather_lse", 12, _n(w), {"layout": "zigzag", "comm": "allgather"},
        {}, use_lse=True),
    "sparse_none_csr": lambda w: _compare_sparse(
        "sparse_none_csr", 13, _n(w), {"normalize": "none"}, {}, csr=True),
    "sparse_mlp_offset": lambda w: _compare_sparse(
        "sparse_mlp_offset", 14, _n(w), {"activation": "relu"},
        {"content": False, "offset": True}),
}
CASES.update(SPARSE_CASES)


def _compare_lowrank(name, seed, n, kw, fm_factory=None):
    from itnet_ext.functional import lowrank_integral_transform as local_lowrank
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(seed)
    full = {"q": torch.randn(B, H, n, Dk, generator=g, dtype=torch.float64) * 0.5,
            "k": torch.randn(B, H, n, Dk, generator=g, dtype=torch.float64) * 0.5,
            "v": torch.randn(B, H, n, Dv, generator=g, dtype=torch.float64)}
    w_out = torch.randn(B, H, n, Dv, generator=g, dtype=torch.float64)
    if fm_factory is not None:
        torch.manual_seed(seed)                        # the same projection on every rank
        kw = dict(kw, feature_map=fm_factory())
    leaves = {k: v.clone().requires_grad_() for k, v in full.items()}
    ref = local_lowrank(leaves["q"], leaves["k"], leaves["v"], **kw)
    (ref * w_out).sum().backward()
    shard = lambda x: D.shard(x, 2, rank, world, "contiguous")
    mine = {k: shard(v).clone().requires_grad_() for k, v in full.items()}
    res = D.lowrank_integral_transform(mine["q"], mine["k"], mine["v"], **kw)
    (res * shard(w_out)).sum().backward()
    torch.testing.assert_close(res, shard(ref), atol=1e-12, rtol=1e-10,
                               msg=lambda m: f"{name} out: {m}")
    for k in full:
        torch.testing.assert_close(mine[k].grad, shard(leaves[k].grad), atol=1e-11,
                                   rtol=1e-9, msg=lambda m, k=k: f"{name} grad {k}: {m}")


def _favor():
    from itnet_ext.nn.feature_maps import PositiveRandomFeatures
    return PositiveRandomFeatures(Dk, 8).double()


LOWRANK_CASES = {
    "lowrank_identity_none": lambda w: _compare_lowrank("lowrank_identity_none", 21, _n(w), {}),
    "lowrank_elu_softmax_causal": lambda w: _compare_lowrank(
        "lowrank_elu_softmax_causal", 22, _n(w),
        {"feature_map": "elu+1", "normalize": "softmax", "causal": True}),
    "lowrank_relu_softmax": lambda w: _compare_lowrank(
        "lowrank_relu_softmax", 23, _n(w), {"feature_map": "relu", "normalize": "softmax"}),
    "lowrank_callable_causal": lambda w: _compare_lowrank(
        "lowrank_callable_causal", 24, _n(w),
        {"feature_map": lambda x: torch.cat([x.exp(), x.square()], -1), "causal": True}),
    "lowrank_favor_none": lambda w: _compare_lowrank(
        "lowrank_favor_none", 25, _n(w), {}, fm_factory=_favor),
}
CASES.update(LOWRANK_CASES)


def _layer(seed, **kw):
    from itnet_ext.nn import IntegralTransform
    torch.manual_seed(seed)
    return IntegralTransform(8, 2, kernel_hidden=R, batch_first=True, dtype=torch.float64, **kw)


def layer_case(name, seed, n, layout, call=None, **kw):
    """The sharded layer against the same layer unsharded: outputs, input and parameter
    gradients; the state dict is untouched by the switch. ``call(generator, n)``: extra
    call arguments for the whole sequence (tensors with n rows along dim 1 are sharded
    like the input; ``neighbors`` hold global key indices)."""
    import copy
    rank, world = dist.get_rank(), dist.get_world_size()
    ref_layer = _layer(seed, **kw)
    layer = D.shard_layer(copy.deepcopy(ref_layer), layout=layout)
    assert list(layer.state_dict()) == list(ref_layer.state_dict())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, n, 8, generator=g, dtype=torch.float64)
    extra = call(g, n) if call is not None else {}
    (ref_layer(x, **extra) * w).sum().backward()
    shard = lambda t: D.shard(t, 1, rank, world, layout)
    extra_s = {k: shard(v) if isinstance(v, torch.Tensor) and v.dim() > 1 and v.shape[1] == n
               else v for k, v in extra.items()}
    xs = shard(x.detach()).requires_grad_()
    out = layer(xs, **extra_s)
    (out * shard(w)).sum().backward()
    torch.testing.assert_close(out, shard(ref_layer(x, **extra).detach()), atol=1e-12,
                               rtol=1e-10, msg=lambda m: f"{name} out: {m}")
    torch.testing.assert_close(xs.grad, shard(x.grad), atol=1e-11, rtol=1e-9,
                               msg=lambda m: f"{name} grad x: {m}")
    for (pn, p), pr in zip(layer.named_parameters(), ref_layer.parameters()):
        if p.grad is None:                 # the dense parameters a low-rank layer leaves unused
            assert pr.grad is None, f"{name} grad {pn}: none sharded, some unsharded"
            continue
        gp = p.grad.clone()
        dist.all_reduce(gp)
        torch.testing.assert_close(gp, pr.grad, atol=1e-11, rtol=1e-9,
                                   msg=lambda m, pn=pn: f"{name} grad {pn}: {m}")
    D.unshard_layer(layer)
    torch.testing.assert_close(layer(x, **extra), ref_layer(x, **extra), atol=0, rtol=0)


def _neighbor_call(S=6, pad=True):
    """Random global neighbours (B, n, S) (some repeated, some crossing every shard) and a
    padding mask hitting ~1/5 of the keys."""
    def call(g, n):
        idx = torch.randint(0, n, (B, n, S), generator=g)
        res = {"neighbors": idx}
        if pad:
            res["key_padding_mask"] = torch.rand(B, n, generator=g) < 0.2
        return res
    return call


def _padding_call(g, n):
    return {"key_padding_mask": torch.rand(B, n, generator=g) < 0.25}


def ddp_case(name, seed, n, layout):
    """DDP over the ranks, each holding its shard of the same sequences (context parallel):
    with every rank's loss scaled by world / (total tokens), DDP's gradient average is the
    gradient of the single-process mean loss, so five SGD steps follow the single-process
    run to rounding."""
    rank, world = dist.get_rank(), dist.get_world_size()

    def model():
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(3, 8, dtype=torch.float64),
                                   _layer(seed, causal=True, offset_embedding=True,
                                          window=[(-5, 0)]),
                                   torch.nn.Linear(8, 2, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(B, n, 2, generator=g, dtype=torch.float64)
    single = model()
    opt = torch.optim.SGD(single.parameters(), lr=0.05)
    ref_losses = []
    for _ in range(5):
        loss = (single(x) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
    sharded = model()
    D.shard_layer(sharded[1], layout=layout)
    ddp = torch.nn.parallel.DistributedDataParallel(sharded)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    xs, ys = D.shard(x, 1, rank, world, layout), D.shard(y, 1, rank, world, layout)
    losses = []
    for _ in range(5):
        local = (ddp(xs) - ys).square().sum() / y.numel()
        opt.zero_grad()
        (local * world).backward()
        opt.step()
        total = local.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item())
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < 1e-12, (losses, ref_losses)
    assert losses[-1] < losses[0]
    for p, q in zip(sharded.parameters(), single.parameters()):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10,
                                   msg=lambda m: f"{name} parameters after 5 steps: {m}")


CASES.update({
    "layer_mlp_causal_zigzag": lambda w: layer_case(
        "layer_mlp_causal_zigzag", 31, _n(w), "zigzag", causal=True),
    "layer_offset_window_contiguous": lambda w: layer_case(
        "layer_offset_window_contiguous", 32, _n(w), "contiguous", offset_embedding=True,
        window=[(-3, 3)], relative_positions=True),
    "ddp_zigzag": lambda w: ddp_case("ddp_zigzag", 33, _n(w), "zigzag"),
    "layer_neighbors_causal_zigzag": lambda w: layer_case(
        "layer_neighbors_causal_zigzag", 34, _n(w), "zigzag", _neighbor_call(),
        method="neighbors", causal=True, offset_embedding=True, window=[(-7, 0)]),
    "layer_neighbors_window_ring": lambda w: layer_case(
        "layer_neighbors_window_ring", 35, _n(w), "contiguous", _neighbor_call(pad=False),
        method="neighbors", window=[(-4, 4)], normalize="none"),
    "layer_lowrank_softmax_padding": lambda w: layer_case(
        "layer_lowrank_softmax_padding", 36, _n(w), "zigzag", _padding_call,
        method="lowrank", rank=4),
    "layer_lowrank_causal_none": lambda w: layer_case(
        "layer_lowrank_causal_none", 37, _n(w), "contiguous", method="lowrank", rank=3,
        causal=True, normalize="none"),
    "layer_lowrank_causal_softmax": lambda w: layer_case(
        "layer_lowrank_causal_softmax", 38, _n(w), "contiguous", _padding_call,
        method="lowrank", rank=4, causal=True),
})


def _expect_error(name, fn, match):
    try:
        fn()
    except ValueError as e:
        assert match in str(e), f"{name}: message {str(e)!r} lacks {match!r}"
        return
    raise AssertionError(f"{name}: no error raised")


def error_cases():
    rank, world = dist.get_rank(), dist.get_world_size()
    n = 4 + (rank == 1)                                # rank 1: one extra key and query
    x = torch.randn(1, 1, n, 2, dtype=torch.float64)
    _expect_error("shard sizes", lambda: D.integral_transform(x, x, x), "same shape")
    y = torch.randn(1, 1, 4, 2, dtype=torch.float64 if rank == 0 else torch.float32)
    _expect_error("dtypes", lambda: D.integral_transform(y, y, y), "same dtype")
    z = torch.randn(1, 1, 4, 2, dtype=torch.float64)
    _expect_error("attn_mask", lambda: D.integral_transform(
        z, z, z, attn_mask=torch.ones(4, 4, dtype=torch.bool)), "attn_mask")
    _expect_error("layout", lambda: D.integral_transform(z, z, z, layout="ring"), "layout")
    from itnet_ext.nn import IntegralTransform
    _expect_error("layer method", lambda: D.shard_layer(
        IntegralTransform(8, 2, method="sampled", samples=4)), "no sharded layer")
    causal_zigzag = D.shard_layer(IntegralTransform(8, 2, method="lowrank", rank=4,
                                                    causal=True, batch_first=True),
                                  layout="zigzag")
    _expect_error("lowrank layout", lambda: causal_zigzag(torch.randn(1, 4, 8)),
                  "'contiguous' layout")
    gnn = D.shard_layer(IntegralTransform(8, 2, method="neighbors", batch_first=True))
    _expect_error("neighbors global range", lambda: gnn(
        torch.randn(1, 4, 8), neighbors=torch.full((1, 4, 2), 4 * world)),
        "global key indices")
    _expect_error("neighbors shard sizes", lambda: gnn(
        torch.randn(1, n, 8), neighbors=torch.zeros(1, n, 2, dtype=torch.int64)),
        "same shape")
    _expect_error("layer type", lambda: D.shard_layer(torch.nn.Linear(2, 2)),
                  "IntegralTransform")
    _expect_error("sparse indices", lambda: D.sparse_integral_transform(
        z, z, z, idx=torch.full((1, 4, 2), 4 * world)), "global key indices")
    # a group of one rank: the local op, exactly
    solo = None
    for r in range(world):                             # every rank creates every group
        gr = dist.new_group([r])
        if r == rank:
            solo = gr
    torch.testing.assert_close(D.integral_transform(z, z, z, group=solo, causal=True),
                               local_op(z, z, z, causal=True), atol=0, rtol=0)


def run(rank, world, init_file, names, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    failures = []
    for name in names:
        try:
            (error_cases if name == "errors" else lambda: CASES[name](world))()
        except Exception:
            failures.append(f"[rank {rank}] {name}:\n{traceback.format_exc()}")
        dist.barrier()
    with open(f"{result_file}.{rank}", "w") as f:
        f.write("\n".join(failures))
    dist.destroy_process_group()
