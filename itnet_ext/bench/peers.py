"""``python -m itnet_ext.bench --peers``: the fused ops against the libraries users already
run, in one run per device (time, peak memory, error; JSON + table + PNG).

- ``flex``: torch FlexAttention (``torch.compile``d) with the pair MLP written as a
  ``score_mod`` over the captured u, t, W2, b2 against the fused MLP op (the same logits:
  q.k / sqrt(Dh) + sum_r W2[h, r] gelu_tanh(u_ir + t_jr) + b2[h]); plain FlexAttention and
  SDPA against the fused attention-only op. FlexAttention has no backward on CPU: its
  fwd+bwd rows there are recorded as errors. Compile time is reported apart.
- ``neuralop``: neuraloperator's own ``IntegralTransform`` (the PyPI package, its CSR
  ``segment_csr`` without torch_scatter) against the same map through the fused sparse op
  (:mod:`itnet_ext.bench.gno`), on points in the unit cube with ~``--peers-gno-degree``
  neighbours; the kernel MLP [2D, R, C] is neuraloperator's, its weights shared.
- ``performer``: performer-pytorch's ``FastAttention`` (FAVOR+) against the low-rank op
  with :class:`~itnet_ext.lowrank.PositiveRandomFeatures` at the same number of features
  and the same projection; both errors are against exact softmax attention (float64).
- ``scan``: the decay scan (Mamba's dt * A decay, B=2, D=1024, Rk=16 at T =
  ``--peers-scan-t``) against Mamba-2's chunked SSD algorithm and the tuned eager loop of
  :mod:`itnet_ext.bench.scan` (mamba-ssm's own kernels are CUDA-only).
- ``conv``: torch's conv1d / conv2d against the same convolutions converted to integral
  transforms (``IntegralTransform.from_conv1d`` / ``from_conv2d``, exact, weights copied).

A peer that is not installed is skipped with the install hint (``pip install -e
'.[peers]'``); the others still run. Every comparison row carries ``ratio`` = fused /
peer time (the regression gate's key, lower is better).
"""
from __future__ import annotations

import importlib.util
import math
import time

import torch
import torch.nn.functional as TF

from .. import functional as _fused
from .cases import _passes
from .report import Section, section_header

__all__ = ["PEERS", "peers_config", "run_peers", "format_peers_table", "main_peers"]

PEERS = ("flex", "neuralop", "performer", "scan", "conv")
_MODULES = {"flex": "torch.nn.attention.flex_attention", "neuralop": "neuralop",
            "performer": "performer_pytorch", "scan": "torch", "conv": "torch"}
_INSTALL = {"flex": "torch >= 2.5 (FlexAttention)", "neuralop": "pip install neuraloperator",
            "performer": "pip install performer-pytorch", "scan": "torch", "conv": "torch"}


def _csv(s, cast=int):
    return [cast(x) for x in str(s).split(",") if x.strip()]


def peers_config(args) -> dict:
    """The run's sizes (``--quick``: tiny, seconds); ValueError for a bad option."""
    which = _csv(args.peers_which, str) if args.peers_which else list(PEERS)
    bad = [w for w in which if w not in PEERS]
    if bad:
        raise ValueError(f"--peers-which: expected names from {PEERS}, got {bad}")
    q = args.quick
    cfg = dict(which=which, dtype=args.dtype,
               repeats=1 if q else args.repeats, budget_s=args.budget_s,
               flex=dict(B=1, H=2 if q else 8, Dh=32 if q else 64, R=4 if q else 16,
                         sizes=[128] if q else _csv(args.peers_sizes)),
               gno=dict(N=512 if q else args.peers_gno_n, D=3,
                        R=16 if q else 64, C=16 if q else 64,
                        degree=12.0 if q else args.peers_gno_degree),
               performer=dict(B=1, H=2 if q else 8, Dh=32 if q else 64,
                              F=32 if q else args.peers_features,
                              sizes=[256] if q else _csv(args.peers_sizes)),
               scan=dict(B=2, D=64 if q else 1024, Rk=16, T=32 if q else args.peers_scan_t),
               conv=dict(C=16 if q else 64, K=5, K2=3, sizes=[128] if q else _csv(args.peers_sizes),
                         grid=8 if q else 32))
    if args.dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype: the peers section runs float32 or float64, got {args.dtype}")
    for n in cfg["flex"]["sizes"]:
        if n < 1:
            raise ValueError(f"--peers-sizes: expected positive sizes, got {n}")
    return cfg


def _available(name):
    try:
        return importlib.util.find_spec(_MODULES[name]) is not None
    except ModuleNotFoundError:
        return False


# ======================================================================================
# the comparisons
# ======================================================================================
def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def mlp_score_mod(u, t, W2, b2):
    """The fused op's pair-MLP logit as a FlexAttention ``score_mod`` (R unrolled terms)."""
    R = W2.shape[1]

    def score_mod(score, b, h, q_idx, kv_idx):
        acc = b2[h]
        for r in range(R):
            acc = acc + W2[h, r] * _gelu_tanh(u[b, q_idx, r] + t[b, kv_idx, r])
        return score + acc
    return score_mod


def _row(section, N, pas, peer, p, f, **extra):
    ok = p.get("ms") is not None and f.get("ms") is not None
    return {"section": section, "N": N, "pass": pas, "peer": peer,
            "peer_ms": p.get("ms"), "fused_ms": f.get("ms"),
            "ratio": f["ms"] / p["ms"] if ok and p["ms"] else None,
            "peer_peak_mb": p.get("peak_extra_mb"), "fused_peak_mb": f.get("peak_extra_mb"),
            "peer_error": p.get("error"), "fused_error": f.get("error"), **extra}


def _measure(sec, fn, params, g, fwd_fn=None):
    """{pass: measurement} of fn's forward and forward + backward; a pass that raises is
    recorded with its error (the others still run). ``fwd_fn``: the forward on inputs
    that do not require grad (FlexAttention on CPU refuses any that do)."""
    passes, reset = _passes(fn, params, g)
    if fwd_fn is not None:
        passes["fwd"] = _passes(fwd_fn, (), g)[0]["fwd"]
    out = {}
    for pas, call in passes.items():
        try:
            out[pas] = {**sec.runner.measure(call, reset), "error": None}
        except Exception as e:                     # noqa: BLE001 - recorded, not hidden
            reset()
            out[pas] = {"ms": None, "peak_extra_mb": None,
                        "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    return out


def _flex(sec, cfg, dtype, gen, log):
    from torch.nn.attention.flex_attention import flex_attention
    c = cfg["flex"]
    B, H, Dh, R = c["B"], c["H"], c["Dh"], c["R"]
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for N in c["sizes"]:
        log(f"[peers flex] N={N}")
        rnd = lambda *s, sc=1.0: (torch.randn(*s, generator=gen) * sc).to(
            sec.device, dtype).requires_grad_()
        q, k, v = rnd(B, H, N, Dh), rnd(B, H, N, Dh), rnd(B, H, N, Dh)
        u, t = rnd(B, N, R), rnd(B, N, R)
        W2, b2 = rnd(H, R, sc=R ** -0.5), rnd(H, sc=0.1)
        g = torch.randn(B, H, N, Dh, generator=gen).to(sec.device, dtype)
        sm = mlp_score_mod(u.detach(), t.detach(), W2.detach(), b2.detach())
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        t0 = time.perf_counter()
        with torch.no_grad():
            o_flex = flex(qd, kd, vd, score_mod=sm)
            o_plain = flex(qd, kd, vd)
        compile_s = time.perf_counter() - t0
        with torch.no_grad():
            o_fused = _fused.integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2,
                                                activation="gelu")
            o_attn = _fused.integral_transform(q, k, v)
        diff_mlp = float((o_flex - o_fused).abs().max())
        diff_attn = float((o_plain - o_attn).abs().max())
        # the captured u, t, W2, b2 are constants of the score_mod: its backward (where it
        # runs) reaches q, k, v only, as the fused op's gradient list below
        m = {
            "flex_mlp": _measure(sec, lambda: flex(q, k, v, score_mod=sm), (q, k, v), g,
                                 fwd_fn=lambda: flex(qd, kd, vd, score_mod=sm)),
            "fused_mlp": _measure(sec, lambda: _fused.integral_transform(
                q, k, v, u=u, t=t, W2=W2, b2=b2, activation="gelu"), (q, k, v, u, t, W2, b2), g),
            "flex": _measure(sec, lambda: flex(q, k, v), (q, k, v), g,
                             fwd_fn=lambda: flex(qd, kd, vd)),
            "sdpa": _measure(sec, lambda: TF.scaled_dot_product_attention(q, k, v), (q, k, v), g),
            "fused_attn": _measure(sec, lambda: _fused.integral_transform(q, k, v), (q, k, v), g),
        }
        for pas in ("fwd", "fwd+bwd"):
            rows.append(_row("flex-mlp", N, pas, "flex_attention+score_mod", m["flex_mlp"][pas],
                             m["fused_mlp"][pas], max_abs_diff=diff_mlp, R=R,
                             compile_s=compile_s))
            rows.append(_row("flex-attn", N, pas, "flex_attention", m["flex"][pas],
                             m["fused_attn"][pas], max_abs_diff=diff_attn))
            rows.append(_row("flex-attn", N, pas, "sdpa", m["sdpa"][pas], m["fused_attn"][pas]))
    return rows


def _neuralop(sec, cfg, dtype, gen, log):
    from neuralop.layers.integral_transform import IntegralTransform as NOTransform

    from ..nn import radius_graph
    from .gno import GNOKernel, gno_fused, radius_for_degree
    c = cfg["gno"]
    N, D, R, C = c["N"], c["D"], c["R"], c["C"]
    log(f"[peers neuralop] N={N} degree~{c['degree']}")
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    peer = NOTransform(channel_mlp_layers=[2 * D, R, C],
                       channel_mlp_non_linearity=lambda x: TF.gelu(x, approximate="tanh"),
                       transform_type="linear", reduction="sum",
                       use_torch_scatter=False).to(sec.device, dtype)
    kernel = GNOKernel(D, R, C, "gelu").to(sec.device, dtype)
    with torch.no_grad():                            # neuraloperator's weights, shared
        kernel.lin1.weight.copy_(peer.channel_mlp.fcs[0].weight)
        kernel.lin1.bias.copy_(peer.channel_mlp.fcs[0].bias)
        kernel.lin2.weight.copy_(peer.channel_mlp.fcs[1].weight)
        kernel.lin2.bias.copy_(peer.channel_mlp.fcs[1].bias)
    pos = torch.rand(N, D, generator=gen).to(sec.device, dtype)
    row_ptr, col_idx = radius_graph(pos[None], pos[None], radius_for_degree(pos, c["degree"]))
    rp, ci = row_ptr.reshape(-1), col_idx.reshape(-1)[: int(row_ptr.reshape(-1)[-1])]
    nbrs = {"neighbors_index": ci, "neighbors_row_splits": rp}
    f = torch.randn(1, N, C, generator=gen).to(sec.device, dtype).requires_grad_()
    g = torch.randn(1, N, C, generator=gen).to(sec.device, dtype)
    with torch.no_grad():
        diff = float((peer(pos, nbrs, x=pos, f_y=f) - gno_fused(
            pos, pos, f, rp, ci, kernel)).abs().max())
    import neuralop.layers.integral_transform as no_it
    stock = no_it.segment_csr
    m_stock = _measure(sec, lambda: peer(pos, nbrs, x=pos, f_y=f), (f, *peer.parameters()), g)
    # torch_scatter does not build against this torch; neuraloperator's own fallback is a
    # Python loop over the rows. The strongest form of the real layer reduces with
    # torch.segment_reduce (one kernel, the same sums), patched in for the second peer.
    no_it.segment_csr = _segment_reduce_csr
    try:
        with torch.no_grad():
            diff_fast = float((peer(pos, nbrs, x=pos, f_y=f) - gno_fused(
                pos, pos, f, rp, ci, kernel)).abs().max())
        m_fast = _measure(sec, lambda: peer(pos, nbrs, x=pos, f_y=f),
                          (f, *peer.parameters()), g)
    finally:
        no_it.segment_csr = stock
    m_fused = _measure(sec, lambda: gno_fused(pos, pos, f, rp, ci, kernel),
                       (f, *kernel.parameters()), g)
    degree = ci.numel() / N
    rows = []
    for pas in ("fwd", "fwd+bwd"):
        rows.append(_row("gno", N, pas, "neuralop+segment_reduce", m_fast[pas], m_fused[pas],
                         max_abs_diff=diff_fast, R=R, C=C, mean_degree=degree))
        rows.append(_row("gno", N, pas, "neuralop(stock fallback)", m_stock[pas], m_fused[pas],
                         max_abs_diff=diff, R=R, C=C, mean_degree=degree))
    return rows


def _segment_reduce_csr(src, indptr, reduction, use_scatter=True):
    """neuraloperator's ``segment_csr`` contract (src (B?, E, C), indptr (B?, N + 1)) on
    ``torch.segment_reduce``; an empty row gives 0, as torch_scatter's."""
    axis = 1 if src.dim() == 3 else 0
    lengths = indptr[..., 1:] - indptr[..., :-1]
    return torch.segment_reduce(src, reduction, lengths=lengths, axis=axis, unsafe=True,
                                initial=0)


def _performer(sec, cfg, dtype, gen, log):
    from performer_pytorch import FastAttention

    from ..lowrank.feature_maps import PositiveRandomFeatures
    c = cfg["performer"]
    B, H, Dh, F = c["B"], c["H"], c["Dh"], c["F"]
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    peer = FastAttention(dim_heads=Dh, nb_features=F, causal=False).to(sec.device, dtype)
    fmap = PositiveRandomFeatures(Dh, F).to(sec.device, dtype)
    with torch.no_grad():                            # one projection for both estimators
        fmap.projection.copy_(peer.projection_matrix)
    rows = []
    for N in c["sizes"]:
        log(f"[peers performer] N={N} F={F}")
        rnd = lambda *s: (torch.randn(*s, generator=gen) * 0.5).to(sec.device, dtype) \
            .requires_grad_()
        q, k, v = rnd(B, H, N, Dh), rnd(B, H, N, Dh), rnd(B, H, N, Dh)
        g = torch.randn(B, H, N, Dh, generator=gen).to(sec.device, dtype)
        ours = lambda: _fused.lowrank_integral_transform(q, k, v, feature_map=fmap,
                                                         normalize="softmax")
        with torch.no_grad():
            exact = TF.scaled_dot_product_attention(q.double(), k.double(), v.double())
            nrm = float(exact.norm())
            err_peer = float((peer(q, k, v).double() - exact).norm()) / nrm
            err_fused = float((ours().double() - exact).norm()) / nrm
        m_peer = _measure(sec, lambda: peer(q, k, v), (q, k, v), g)
        m_fused = _measure(sec, ours, (q, k, v), g)
        m_sdpa = _measure(sec, lambda: TF.scaled_dot_product_attention(q, k, v), (q, k, v), g)
        for pas in ("fwd", "fwd+bwd"):
            rows.append(_row("favor", N, pas, "performer.FastAttention", m_peer[pas],
                             m_fused[pas], F=F, peer_rel_err=err_peer, fused_rel_err=err_fused))
            rows.append(_row("favor", N, pas, "sdpa(exact)", m_sdpa[pas], m_fused[pas], F=F,
                             fused_rel_err=err_fused))
    return rows


def favor_sweep(cfg, dtype, gen, device, log):
    """FAVOR+ error vs exact softmax at F = 16, 32, ... up to the configured F (the largest
    size, one draw per F, the projection shared by performer-pytorch and the low-rank op)."""
    from performer_pytorch import FastAttention

    from ..lowrank.feature_maps import PositiveRandomFeatures
    c = cfg["performer"]
    B, H, Dh, N = c["B"], c["H"], c["Dh"], max(c["sizes"])
    q, k, v = [(torch.randn(B, H, N, Dh, generator=gen) * 0.5).to(device, dtype)
               for _ in range(3)]
    exact = TF.scaled_dot_product_attention(q.double(), k.double(), v.double())
    out, F = [], 16
    while F <= c["F"]:
        log(f"[peers performer] error sweep F={F}")
        torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
        peer = FastAttention(dim_heads=Dh, nb_features=F, causal=False).to(device, dtype)
        fmap = PositiveRandomFeatures(Dh, F).to(device, dtype)
        with torch.no_grad():
            fmap.projection.copy_(peer.projection_matrix)
            ours = _fused.lowrank_integral_transform(q, k, v, feature_map=fmap,
                                                     normalize="softmax")
            nrm = float(exact.norm())
            out.append({"N": N, "F": F,
                        "peer_rel_err": float((peer(q, k, v).double() - exact).norm()) / nrm,
                        "fused_rel_err": float((ours.double() - exact).norm()) / nrm})
        F *= 2
    return out


def _scan(sec, cfg, dtype, gen, log):
    from .scan import scan_inputs, tuned_loop
    from .ssd import auto_chunk, ssd_chunked
    c = cfg["scan"]
    T, chunk = c["T"], auto_chunk(c["T"])
    log(f"[peers scan] T={T} D={c['D']} (ssd chunk {chunk})")
    inp = scan_inputs(T, c["D"], sec.device, dtype, gen)
    x, dt, A, phi, psi, g = (inp[n] for n in ("x", "dt", "A", "phi", "psi", "g"))
    params = (x, dt, A, phi, psi)
    fused = lambda: _fused.decay_scan(x, (dt, A), phi, psi)
    peers = {"ssd_chunked(mamba2)": lambda: ssd_chunked(x, (dt, A), phi, psi, chunk=chunk),
             "tuned_loop": lambda: tuned_loop(x, dt, A, phi, psi)}
    m_fused = _measure(sec, fused, params, g)
    rows = []
    with torch.no_grad():
        want = fused()
    for name, fn in peers.items():
        with torch.no_grad():
            diff = float((fn() - want).abs().max())
        m = _measure(sec, fn, params, g)
        for pas in ("fwd", "fwd+bwd"):
            rows.append(_row("scan", T, pas, name, m[pas], m_fused[pas], max_abs_diff=diff,
                             D=c["D"], Rk=c["Rk"]))
    return rows


def _conv(sec, cfg, dtype, gen, log):
    from ..nn import IntegralTransform
    c = cfg["conv"]
    C = c["C"]
    rows = []
    cases = [(f"conv1d k={c['K']}", N, torch.nn.Conv1d(C, C, c["K"], padding="same"), (1, C, N))
             for N in c["sizes"]]
    G = c["grid"]
    cases.append((f"conv2d {c['K2']}x{c['K2']}", G * G,
                  torch.nn.Conv2d(C, C, c["K2"], padding=1), (1, C, G, G)))
    for name, N, conv, shape in cases:
        log(f"[peers conv] {name} N={N}")
        conv = conv.to(sec.device, dtype)
        iconv = (IntegralTransform.from_conv1d(conv) if conv.weight.dim() == 3
                 else IntegralTransform.from_conv2d(conv))
        x = torch.randn(*shape, generator=gen).to(sec.device, dtype).requires_grad_()
        g = torch.randn(*shape, generator=gen).to(sec.device, dtype)
        with torch.no_grad():
            diff = float((iconv(x) - conv(x)).abs().max())
        m_peer = _measure(sec, lambda: conv(x), (x, *conv.parameters()), g)
        m_fused = _measure(sec, lambda: iconv(x), (x, *iconv.parameters()), g)
        for pas in ("fwd", "fwd+bwd"):
            rows.append(_row("conv", N, pas, "torch." + name, m_peer[pas], m_fused[pas],
                             max_abs_diff=diff, C=C))
    return rows


_RUN = {"flex": _flex, "neuralop": _neuralop, "performer": _performer, "scan": _scan,
        "conv": _conv}


def run_peers(args) -> dict:
    cfg = peers_config(args)
    sec = Section(args, cfg)
    gen = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, cfg["dtype"])
    rows, skipped = [], {}
    for name in cfg["which"]:
        if not _available(name):
            skipped[name] = f"{_MODULES[name]} is not installed ({_INSTALL[name]}; or " \
                            f"pip install -e '.[peers]')"
            sec.log(f"[peers] skipped {name}: {skipped[name]}")
            continue
        rows += _RUN[name](sec, cfg, dtype, gen, sec.log)
    sweep = favor_sweep(cfg, dtype, gen, sec.device, sec.log) \
        if "performer" in cfg["which"] and "performer" not in skipped else []
    return {"meta": sec.finish(), "config": cfg, "rows": rows, "favor_sweep": sweep,
            "skipped": skipped}


def _f(x, spec):
    return format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0]))


def format_peers_table(result) -> str:
    lines = section_header("--peers", result)
    lines.append("ratio = fused ms / peer ms (< 1: the fused op is faster); peak MiB = peak "
                 "extra memory of one call; diff = max |fused - peer| of the outputs")
    hdr = (f"{'section':10s} {'N':>6s} {'pass':8s} {'peer':28s} {'peer ms':>9s} {'fused ms':>9s} "
           f"{'ratio':>7s} {'peer MiB':>9s} {'fused MiB':>9s}  notes")
    lines += [hdr, "-" * len(hdr)]
    for r in result["rows"]:
        notes = []
        if r.get("max_abs_diff") is not None:
            notes.append(f"diff {r['max_abs_diff']:.1e}")
        if r.get("peer_rel_err") is not None:
            notes.append(f"err vs exact: peer {r['peer_rel_err']:.3f}")
        if r.get("fused_rel_err") is not None:
            notes.append(f"fused {r['fused_rel_err']:.3f}")
        if r.get("compile_s") is not None and r["pass"] == "fwd":
            notes.append(f"compile {r['compile_s']:.0f} s")
        for who in ("peer", "fused"):
            if r.get(f"{who}_error"):
                notes.append(f"{who}: {r[who + '_error']}")
        lines.append(f"{r['section']:10s} {r['N']:6d} {r['pass']:8s} {r['peer']:28s} "
                     f"{_f(r['peer_ms'], '9.2f')} {_f(r['fused_ms'], '9.2f')} "
                     f"{_f(r['ratio'], '7.2f')} {_f(r['peer_peak_mb'], '9.1f')} "
                     f"{_f(r['fused_peak_mb'], '9.1f')}  {'; '.join(notes)}")
    for s in result.get("favor_sweep", []):
        lines.append(f"FAVOR+ error vs exact softmax, N={s['N']} F={s['F']:4d}: performer "
                     f"{s['peer_rel_err']:.4f}, lowrank op {s['fused_rel_err']:.4f}")
    for name, why in result["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def main_peers(args, parser):
    from .plots import plot_peers
    from .report import run_section
    return run_section(args, parser, prefix="peers", config=peers_config, run=run_peers,
                       format_table=format_peers_table, plot=plot_peers)
