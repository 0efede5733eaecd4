"""Sparse / sampled benchmark: ``python -m itnet_ext.bench --sparse``.

Two parts (``--sparse-part mc|gno|all``, default all), on the same device (default CPU):

**mc** -- Monte Carlo evaluation of a self-attention-like transform (docs/design.md section 2, sampled).
B=1, H=4, Dk=Dv=32, M=N in ``--sparse-sizes`` (default 4096,16384), content term plus the pair
MLP (R=16, gelu), softmax. The kernel is smooth in a 1-D position p_i = (i + 1/2) / N:
q, k, v are random linear maps of the Fourier features [1, sin(2 pi f p), cos(2 pi f p)],
f = 1..3, and the MLP's first layer is a random affine map of the position, u_i = a_x p_i + b1,
t_j = a_y p_j (a "1-D position MLP"). For every S in ``--sparse-s`` (default
8,16,32,64,128,256), S keys per query are drawn with :func:`itnet_ext.nn.samplers.uniform`
(importance log-weights from ``importance_log_weights``) and evaluated by
``functional.sparse_integral_transform`` (padded form):

- time of the fused sparse op, forward (``torch.no_grad``) and forward+backward (gradients of
  q, k, v, u, t, W2, b2), the sampling excluded (timed separately as ``sample ms``); the
  log-log slope of time vs S (linear = 1) over S >= 32;
- relative error ``||y_S - y_dense|| / ||y_dense||`` against ``functional.integral_transform``
  (the dense op, same inputs), mean over ``--sparse-seeds`` (default 3) samples, for softmax
  (self-normalized) and ``none`` (unbiased) mode, and the fit err ~ C S^slope (1/sqrt(S):
  slope -0.5);
- sampled vs dense at equal error: for each error in ``--sparse-targets`` (default 5%, 1%) the S
  the softmax fit says reaches it, where S <= M, its time measured (and its error, to check
  the fit) against the dense op's time. Not measured when S > M, or when the time of one call,
  predicted linearly from the largest S of the grid, exceeds ``--sparse-call-limit-s``.

**gno** -- the point-cloud problem of neuraloperator's GNO layer: ``--sparse-gno-n`` (4096)
points uniform in the unit cube, the radius graph (``itnet_ext.nn.radius_graph``, self
included) at the radius where the mean degree is ``--sparse-gno-degree`` (50), 64 channels,
kernel MLP hidden width R in ``--sparse-gno-r`` (64,32), float32, sum reduction. The fused
op (``bench/gno.py`` ``gno_fused``) vs neuraloperator's formulation in plain PyTorch
(``gno_baseline``: per-edge MLP over the concatenated coordinates, product with f, then
``torch.segment_reduce``), forward and forward+backward (gradients of f and the MLP's
weights); the graph is built once, outside the timings.

Timing and peak memory: ``measure.py``'s runner (one warmup call, metered for memory, then
timed repeats, median; at least 5 repeats for gno).
"""
from __future__ import annotations

import math
import os
import time

import torch

from .. import functional as _fused
from ..nn import radius_graph, samplers
from .cases import _passes
from .gno import GNOKernel, gno_baseline, gno_fused, radius_for_degree
from .measure import _Runner
from .report import Section, _cpu_seconds, run_section, section_header

# mc
MC_B, MC_H, MC_D, MC_R, MC_FREQS = 1, 4, 32, 16, 3
MC_SLOPE_MIN_S = 32  # time slope fitted over S >= this
# gno
GNO_DIM, GNO_CH = 3, 64
GNO_MIN_REPEATS = 5
TARGET_GNO_SPEEDUP = 10.0
TARGET_GNO_MEMORY = 5.0
TARGET_GNO_R = 64


def _ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def sparse_config(args):
    quick = args.quick
    part = args.sparse_part
    if part not in ("all", "mc", "gno"):
        raise ValueError(f"--sparse-part: expected all, mc or gno, got {part!r}")
    sizes = _ints(args.sparse_sizes if args.sparse_sizes is not None else ("256,512" if quick else "4096,16384"))
    S = _ints(args.sparse_s if args.sparse_s is not None else ("4,8,16" if quick else "8,16,32,64,128,256"))
    rs = _ints(args.sparse_gno_r if args.sparse_gno_r is not None else ("16" if quick else "64,32"))
    targets = _floats(args.sparse_targets if args.sparse_targets is not None else ("0.3" if quick else "0.05,0.01"))
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sparse-sizes: expected a comma list of positive N, got {args.sparse_sizes!r}")
    if len(S) < 2 or min(S) < 1:
        raise ValueError(f"--sparse-s: expected at least two positive S, got {args.sparse_s!r}")
    if not rs or min(rs) < 1:
        raise ValueError(f"--sparse-gno-r: expected a comma list of positive R, got {args.sparse_gno_r!r}")
    if not all(0 < t < 1 for t in targets):
        raise ValueError(f"--sparse-targets: expected relative errors in (0, 1), got {args.sparse_targets!r}")
    if args.dtype not in ("float32", "float64"):
        raise ValueError(f"--sparse: --dtype float32 or float64, got {args.dtype}")
    seeds = 2 if quick else args.sparse_seeds
    if seeds < 1:
        raise ValueError(f"--sparse-seeds: expected >= 1, got {seeds}")
    gno_n = args.sparse_gno_n if args.sparse_gno_n is not None else (512 if quick else 4096)
    gno_deg = args.sparse_gno_degree if args.sparse_gno_degree is not None else (16.0 if quick else 50.0)
    return {
        "part": part, "dtype": args.dtype, "seed": args.seed,
        "repeats": 1 if quick else args.repeats,
        "budget_s": min(args.budget_s, 1.0) if quick else args.budget_s,
        "mc": {"B": MC_B, "H": MC_H, "Dk": MC_D, "Dv": MC_D, "R": MC_R, "activation": "gelu",
               "normalize": "softmax (and none for the error)", "sizes": sorted(sizes), "S": sorted(set(S)),
               "seeds": seeds, "targets": sorted(targets, reverse=True), "proposal": "uniform",
               "call_limit_s": args.sparse_call_limit_s, "fourier_freqs": MC_FREQS,
               "time_slope_min_S": MC_SLOPE_MIN_S},
        "gno": {"N": gno_n, "dim": GNO_DIM, "channels": GNO_CH, "R": rs, "degree": gno_deg,
                "activation": "gelu (tanh form, the op's)", "reduce": "sum",
                "min_repeats": 1 if quick else GNO_MIN_REPEATS},
    }


# ======================================================================================
# mc inputs
# ======================================================================================
def mc_inputs(N, device, dtype, gen):
    """Leaf tensors q, k, v (1, H, N, 32), u, t (1, N, R), W2, b2 and the cotangent g of the smooth
    self-attention-like problem (positions p_i = (i + 1/2) / N)."""
    f64 = torch.float64
    p = (torch.arange(N, dtype=f64) + 0.5) / N
    fr = torch.arange(1, MC_FREQS + 1, dtype=f64)
    ang = 2 * math.pi * p[:, None] * fr
    phi = torch.cat([torch.ones(N, 1, dtype=f64), torch.sin(ang), torch.cos(ang)], 1)
    phi = phi / math.sqrt(MC_FREQS + 0.5)                              # rows of unit mean square
    nf = phi.shape[1]

    def leaf(x):  # contiguous: the layout the op's kernels read directly
        return x.to(device=device, dtype=dtype).contiguous().requires_grad_(True)

    def heads(dout):
        w = torch.randn(nf, MC_H * dout, generator=gen, dtype=f64)
        return leaf((phi @ w).reshape(N, MC_H, dout).transpose(0, 1)[None])

    q, k, v = heads(MC_D), heads(MC_D), heads(MC_D)
    a_x = torch.randn(MC_R, generator=gen, dtype=f64) * 3.0
    a_y = torch.randn(MC_R, generator=gen, dtype=f64) * 3.0
    b1 = torch.randn(MC_R, generator=gen, dtype=f64)
    u = leaf((p[:, None] * a_x + b1)[None])
    t = leaf((p[:, None] * a_y)[None])
    W2 = leaf(torch.randn(MC_H, MC_R, generator=gen, dtype=f64) * MC_R ** -0.5)
    b2 = leaf(torch.randn(MC_H, generator=gen, dtype=f64) * 0.1)
    g = torch.randn(MC_B, MC_H, N, MC_D, generator=gen).to(device=device, dtype=dtype)
    return dict(q=q, k=k, v=v, u=u, t=t, W2=W2, b2=b2, g=g)


def _kernel_args(x):
    return dict(u=x["u"], t=x["t"], W2=x["W2"], b2=x["b2"], activation="gelu", scale=MC_D ** -0.5)


def mc_sample(N, S, normalize, seed, device, dtype):
    """(idx, log_w) of S uniform draws per query (a fresh CPU generator seeded ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    idx, log_q = samplers.uniform(MC_B, N, N, S, generator=gen, device=device)
    return idx, samplers.importance_log_weights(log_q, normalize, dtype=dtype)


def mc_fns(x, idx=None, log_w=None, normalize="softmax"):
    """(callable, leaves) of the sparse op on (idx, log_w), or of the dense op (idx None)."""
    q, k, v = x["q"], x["k"], x["v"]
    leaves = (q, k, v, x["u"], x["t"], x["W2"], x["b2"])
    kw = _kernel_args(x)
    if idx is None:
        return (lambda: _fused.integral_transform(q, k, v, normalize=normalize, **kw)), leaves
    return (lambda: _fused.sparse_integral_transform(q, k, v, idx=idx, log_w=log_w, normalize=normalize,
                                                     **kw)), leaves


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def loglog_fit(xs, ys):
    """Least-squares fit log y = a + b log x: returns (b, exp(a)) or (None, None)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None, None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None, None
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return b, math.exp(my - b * mx)


def s_for_error(target, slope, coef):
    """The S at which the fit coef * S^slope reaches ``target`` (None without convergence)."""
    if slope is None or slope >= 0:
        return None
    return math.exp(math.log(target / coef) / slope)


# ======================================================================================
# measurement helpers
# ======================================================================================
def _empty(extra=None):
    m = {"ms": None, "min_ms": None, "times_ms": [], "repeats": 0, "inner_loops": 0, "warmup_ms": None,
         "peak_extra_mb": None, "error": None}
    m.update(extra or {})
    return m


def _system_busy_s():
    """CPU seconds all processes of the machine have been busy (``/proc/stat``: user, nice,
    system, irq, softirq, steal), or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
        return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


OTHERS_CPU_FLAG = 0.3  # flag a measurement during which other processes used more CPUs than this


def _measure(runner, fn, reset, device):
    """runner.measure with failures recorded, and ``others_cpu``: the CPUs other processes kept
    busy on average during the measurement (0 on an idle machine; jiffy resolution, 10 ms)."""
    busy0, mine0, t0 = _system_busy_s(), _cpu_seconds(), time.perf_counter()
    try:
        m = runner.measure(fn, reset)
        m["error"] = None
    except Exception as e:  # keep going: the table and JSON report it
        m = _empty({"error": f"{type(e).__name__}: {e}"[:300]})
        reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    busy1, mine1, wall = _system_busy_s(), _cpu_seconds(), time.perf_counter() - t0
    m["others_cpu"] = (max(0.0, (busy1 - busy0) - (mine1 - mine0)) / wall
                       if busy0 is not None and busy1 is not None and wall > 0 else None)
    return m


def _log_m(log, label, m):
    if m["error"]:
        log(f"  {label:34s} ERROR {m['error']}")
    else:
        mem = "n/a" if m["peak_extra_mb"] is None else f"{m['peak_extra_mb']:.1f} MiB"
        log(f"  {label:34s} {m['ms']:10.2f} ms  x{m['repeats']}"
            f"{'' if m['inner_loops'] == 1 else '*' + str(m['inner_loops'])}  peak {mem}")


# ======================================================================================
# mc part
# ======================================================================================
def run_mc(cfg, runner, device, dtype, gen, log):
    mc = cfg["mc"]
    seeds = list(range(mc["seeds"]))
    dense, rows, fits, equal = [], [], [], []
    for N in mc["sizes"]:
        log(f"mc N={N}")
        x = mc_inputs(N, device, dtype, gen)
        # ---- the dense op: time (softmax) and the two reference outputs ----
        fn, leaves = mc_fns(x)
        passes, reset = _passes(fn, leaves, x["g"])
        d = {"N": N}
        for pas in ("fwd", "fwd+bwd"):
            d[pas] = _measure(runner, passes[pas], reset, device)
            _log_m(log, f"dense {pas}", d[pas])
        dense.append(d)
        with torch.no_grad():
            ref = {nm: mc_fns(x, normalize=nm)[0]().detach() for nm in ("softmax", "none")}

        def errors(S):
            e = {"softmax": [], "none": []}
            for nm in e:
                for s in seeds:
                    idx, lw = mc_sample(N, S, nm, s, device, dtype)
                    with torch.no_grad():
                        e[nm].append(rel_err(mc_fns(x, idx, lw, nm)[0](), ref[nm]))
            return e

        def time_at(S):
            idx, lw = mc_sample(N, S, "softmax", 0, device, dtype)
            fn, leaves = mc_fns(x, idx, lw)
            passes, reset = _passes(fn, leaves, x["g"])
            out = {}
            for pas in ("fwd", "fwd+bwd"):
                out[pas] = _measure(runner, passes[pas], reset, device)
                _log_m(log, f"sparse S={S} {pas}", out[pas])
            return out

        # ---- the grid of S ----
        n_rows = []
        for S in mc["S"]:
            samp = _measure(runner, lambda S=S: mc_sample(N, S, "softmax", 0, device, dtype), lambda: None, device)
            tm = time_at(S)
            e = errors(S)
            r = {"N": N, "S": S, "pairs": N * S, "sample": samp, "fwd": tm["fwd"], "fwd+bwd": tm["fwd+bwd"],
                 "err_softmax": e["softmax"], "err_none": e["none"],
                 "err_softmax_mean": sum(e["softmax"]) / len(seeds), "err_none_mean": sum(e["none"]) / len(seeds)}
            r["ns_per_pair_fwd"] = tm["fwd"]["ms"] * 1e6 / (N * S) if tm["fwd"]["ms"] else None
            r["ns_per_pair_fwd_bwd"] = tm["fwd+bwd"]["ms"] * 1e6 / (N * S) if tm["fwd+bwd"]["ms"] else None
            log(f"  S={S}: err softmax {r['err_softmax_mean']:.4f}  none {r['err_none_mean']:.4f}  "
                f"sample {samp['ms'] or float('nan'):.2f} ms")
            n_rows.append(r)
        rows += n_rows

        # ---- fits ----
        Ss = [r["S"] for r in n_rows]
        f = {"N": N}
        for nm in ("softmax", "none"):
            f[f"err_{nm}_slope"], f[f"err_{nm}_coef"] = loglog_fit(Ss, [r[f"err_{nm}_mean"] for r in n_rows])
        big = [r for r in n_rows if r["S"] >= MC_SLOPE_MIN_S] or n_rows
        for pas in ("fwd", "fwd+bwd"):
            f[f"time_{pas}_slope"], _ = loglog_fit([r["S"] for r in big], [r[pas]["ms"] for r in big])
        f["time_slope_S"] = [r["S"] for r in big]
        fits.append(f)

        # ---- sampled vs dense at equal error ----
        last = n_rows[-1]
        for target in mc["targets"]:
            e = {"N": N, "target": target, "S_fit": None, "S": None, "err_mean": None, "err": None,
                 "fwd": None, "fwd+bwd": None, "dense_fwd_ms": d["fwd"]["ms"], "dense_fwd_bwd_ms": d["fwd+bwd"]["ms"],
                 "speedup_fwd": None, "speedup_fwd_bwd": None, "note": None, "predicted_fwd_bwd_s": None}
            s_fit = s_for_error(target, f["err_softmax_slope"], f["err_softmax_coef"])
            e["S_fit"] = s_fit
            if s_fit is None:
                e["note"] = "the error does not decrease with S"
            else:
                S = max(1, math.ceil(s_fit))
                e["S"] = S
                pred = [last[p]["ms"] / 1e3 * S / last["S"] for p in ("fwd", "fwd+bwd") if last[p]["ms"]]
                e["predicted_fwd_bwd_s"] = max(pred) if pred else None
                if S > N:
                    e["note"] = f"S = {S} > M = {N}: the dense op is cheaper and exact"
                elif pred and max(pred) > mc["call_limit_s"]:
                    e["note"] = (f"predicted {max(pred):.3g} s per call (linear in S from S={last['S']}) > "
                                 f"{mc['call_limit_s']:.3g} s (--sparse-call-limit-s)")
                else:
                    hit = next((r for r in n_rows if r["S"] == S), None)
                    tm = {p: hit[p] for p in ("fwd", "fwd+bwd")} if hit else time_at(S)
                    ee = errors(S)["softmax"] if not hit else hit["err_softmax"]
                    e.update({"fwd": tm["fwd"], "fwd+bwd": tm["fwd+bwd"], "err": ee, "err_mean": sum(ee) / len(ee)})
                    if tm["fwd"]["ms"] and d["fwd"]["ms"]:
                        e["speedup_fwd"] = d["fwd"]["ms"] / tm["fwd"]["ms"]
                    if tm["fwd+bwd"]["ms"] and d["fwd+bwd"]["ms"]:
                        e["speedup_fwd_bwd"] = d["fwd+bwd"]["ms"] / tm["fwd+bwd"]["ms"]
                    log(f"  equal error {target:g}: S={S}, measured err {e['err_mean']:.4f}")
            equal.append(e)
        x = ref = None  # (free before the next N; the closures above are done)
    return {"dense": dense, "rows": rows, "fits": fits, "equal_error": equal}


# ======================================================================================
# gno part
# ======================================================================================
def gno_problem(N, degree, device, dtype, gen):
    """Points (N, 3) uniform in the unit cube, the radius for the mean degree, the CSR graph."""
    pos = torch.rand(N, GNO_DIM, generator=gen, dtype=torch.float64)
    r = radius_for_degree(pos, degree)
    pos = pos.to(device=device, dtype=dtype)
    row_ptr, col_idx = radius_graph(pos[None], pos[None], r)
    return pos, r, row_ptr, col_idx


def run_gno(cfg, runner, device, dtype, gen, log):
    gc_ = cfg["gno"]
    N = gc_["N"]
    pos, r, row_ptr, col_idx = gno_problem(N, gc_["degree"], device, dtype, gen)
    lengths = (row_ptr[0, 1:] - row_ptr[0, :-1]).double()
    E = int(row_ptr[0, -1])
    graph = {"N": N, "radius": r, "edges": E, "mean_degree": E / N, "min_degree": int(lengths.min()),
             "max_degree": int(lengths.max())}
    log(f"gno N={N}: radius {r:.4f}, {E} edges, degree mean {E / N:.1f} (min {graph['min_degree']}, "
        f"max {graph['max_degree']})")
    runner_g = _Runner(device, max(runner.repeats, gc_["min_repeats"]), runner.budget_s, runner.log,
                       min_repeat_s=runner.min_repeat_s)
    runner_g.meter = runner.meter
    f = torch.randn(1, N, GNO_CH, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(1, N, GNO_CH, generator=gen).to(device=device, dtype=dtype)
    rows = []
    for R in gc_["R"]:
        torch.manual_seed(cfg["seed"] + R)  # the kernel MLP's initialization
        ker = GNOKernel(GNO_DIM, R, GNO_CH, "gelu").to(device=device, dtype=dtype)
        leaves = (f, *ker.parameters())
        impls = {
            "baseline": lambda: gno_baseline(pos, pos, f, row_ptr, col_idx, ker, "sum"),
            "fused": lambda: gno_fused(pos, pos, f, row_ptr, col_idx, ker, "sum"),
        }
        with torch.no_grad():
            check = rel_err(impls["fused"](), impls["baseline"]())
        log(f"gno R={R}: fused vs baseline relative difference {check:.2e}")
        for pas in ("fwd", "fwd+bwd"):
            row = {"R": R, "pass": pas, "check_rel_diff": check}
            for impl, fn in impls.items():
                passes, reset = _passes(fn, leaves, g)
                row[impl] = _measure(runner_g, passes[pas], reset, device)
                _log_m(log, f"gno R={R} {pas} {impl}", row[impl])
            b, fu = row["baseline"], row["fused"]
            row["speedup"] = b["ms"] / fu["ms"] if b["ms"] and fu["ms"] else None
            row["memory_ratio"] = (b["peak_extra_mb"] / fu["peak_extra_mb"]
                                   if b["peak_extra_mb"] is not None and fu["peak_extra_mb"] else None)
            rows.append(row)
        ker = impls = None
    return {"graph": graph, "rows": rows}


def gno_targets(gno, device):
    out = []
    row = next((r for r in gno["rows"] if r["R"] == TARGET_GNO_R and r["pass"] == "fwd+bwd"), None) if gno else None
    for key, least, name in (
            ("speedup", TARGET_GNO_SPEEDUP, f"GNO fwd+bwd (R={TARGET_GNO_R}): fused >= {TARGET_GNO_SPEEDUP:g}x faster "
                                            "than the PyTorch baseline"),
            ("memory_ratio", TARGET_GNO_MEMORY, f"GNO fwd+bwd (R={TARGET_GNO_R}): fused peak memory >= "
                                                f"{TARGET_GNO_MEMORY:g}x smaller than the baseline")):
        t = {"name": name, "met": None, "value": None, "device": str(device)}
        if row is None or row[key] is None:
            t["detail"] = "not measured"
        else:
            v = row[key]
            t.update(met=v >= least, value=v)
            if key == "speedup":
                t["detail"] = f"baseline {row['baseline']['ms']:.1f} ms / fused {row['fused']['ms']:.1f} ms = {v:.2f}x"
            else:
                t["detail"] = (f"baseline {row['baseline']['peak_extra_mb']:.1f} MiB / fused "
                               f"{row['fused']['peak_extra_mb']:.1f} MiB = {v:.2f}x")
        out.append(t)
    return out


# ======================================================================================
# the run, table, output
# ======================================================================================
def run_sparse(args, log=None):
    cfg = sparse_config(args)
    sec = Section(args, cfg, log)
    log, device, dtype, runner, meta = sec.log, sec.device, sec.dtype, sec.runner, sec.meta
    gen = torch.Generator().manual_seed(args.seed)

    # one tiny call of everything first: one-time initialisation lands in no measurement
    x = mc_inputs(16, device, dtype, gen)
    idx, lw = mc_sample(16, 4, "softmax", 0, device, dtype)
    for fn, _ in (mc_fns(x), mc_fns(x, idx, lw)):
        fn().backward(x["g"])
    pos = torch.rand(32, GNO_DIM, generator=gen).to(device=device, dtype=dtype)
    rp, ci = radius_graph(pos[None], pos[None], 0.5)
    ker = GNOKernel(GNO_DIM, 4, GNO_CH).to(device=device, dtype=dtype)
    f = torch.randn(1, 32, GNO_CH, device=device, dtype=dtype, requires_grad=True)
    for fn in (gno_baseline, gno_fused):
        fn(pos, pos, f, rp, ci, ker).sum().backward()
    del x, idx, lw, pos, rp, ci, ker, f

    result = {"meta": meta, "config": cfg, "mc": None, "gno": None}
    if cfg["part"] in ("all", "mc"):
        result["mc"] = run_mc(cfg, runner, device, dtype, gen, log)
    if cfg["part"] in ("all", "gno"):
        result["gno"] = run_gno(cfg, runner, device, dtype, gen, log)
    result["targets"] = gno_targets(result["gno"], device)
    shared = [m["others_cpu"] for _, m in _all_measurements(result) if m.get("others_cpu") is not None]
    meta["others_cpu_max"] = max(shared, default=None)
    sec.finish()
    return result


def _all_measurements(result):
    """(label, measurement) of every timed measurement of a result."""
    out = []
    mc, gno = result.get("mc"), result.get("gno")
    if mc:
        out += [(f"mc dense N={d['N']} {p}", d[p]) for d in mc["dense"] for p in ("fwd", "fwd+bwd")]
        out += [(f"mc sparse N={r['N']} S={r['S']} {p}", r[p]) for r in mc["rows"]
                for p in ("sample", "fwd", "fwd+bwd")]
        out += [(f"mc sparse N={e['N']} S={e['S']} {p}", e[p]) for e in mc["equal_error"] for p in ("fwd", "fwd+bwd")
                if e[p] is not None]
    if gno:
        out += [(f"gno R={r['R']} {r['pass']} {i}", r[i]) for r in gno["rows"] for i in ("baseline", "fused")]
    return [(label, m) for label, m in out if m is not None]


def _c(x, spec):
    return "-" if x is None else format(x, spec)


def _ms(m):
    return None if m is None else m["ms"]


def _shared(m):
    return bool(m) and (m.get("others_cpu") or 0.0) > OTHERS_CPU_FLAG


def _t(m, spec):
    """A measurement's time, with ``!`` where other processes shared the cores during it."""
    return _c(_ms(m), spec) + ("!" if _shared(m) else "")


def _mb(m):
    return None if m is None else m["peak_extra_mb"]


def format_sparse_table(result):
    meta, cfg = result["meta"], result["config"]
    lines = section_header("--sparse", result)
    lines.append(f"ms = median of timed repeats after a warmup; MiB = peak extra memory of one call: "
                 f"{meta['memory_description']}.")
    lines.append(f"! after a time: other processes kept more than {OTHERS_CPU_FLAG:g} CPUs busy on average during that "
                 f"measurement (/proc/stat); its time is inflated by the shared cores. Most shared measurement: "
                 f"{_c(meta.get('others_cpu_max'), '.2f')} CPUs.")
    mc = result.get("mc")
    if mc:
        c = cfg["mc"]
        lines += [
            "",
            f"## Monte Carlo (sampled) vs dense: B={c['B']} H={c['H']} Dk=Dv={c['Dk']} R={c['R']} (gelu), content + "
            f"MLP, M=N, smooth 1-D position kernel; {c['proposal']} proposal; err = ||y_S - y_dense|| / ||y_dense||, "
            f"mean of {c['seeds']} samples; sparse time excludes sampling (sample ms).",
            "",
            "| N | S | sample ms | fwd ms | fwd+bwd ms | ns/pair fwd | ns/pair fwd+bwd | fwd MiB | fwd+bwd MiB "
            "| err softmax | err none |",
            "|" + "---:|" * 11,
        ]
        for r in mc["rows"]:
            lines.append(
                f"| {r['N']} | {r['S']} | {_t(r['sample'], '.2f')} | {_t(r['fwd'], '.2f')} | "
                f"{_t(r['fwd+bwd'], '.2f')} | {_c(r['ns_per_pair_fwd'], '.0f')} | "
                f"{_c(r['ns_per_pair_fwd_bwd'], '.0f')} | {_c(_mb(r['fwd']), '.1f')} | "
                f"{_c(_mb(r['fwd+bwd']), '.1f')} | "
                f"{r['err_softmax_mean']:.4f} | {r['err_none_mean']:.4f} |")
        lines += ["", "| N | dense fwd ms | dense fwd+bwd ms | dense fwd MiB | dense fwd+bwd MiB | time slope fwd "
                      "| time slope fwd+bwd | err slope softmax | err slope none |", "|" + "---:|" * 9]
        for d, f in zip(mc["dense"], mc["fits"]):
            lines.append(
                f"| {d['N']} | {_t(d['fwd'], '.1f')} | {_t(d['fwd+bwd'], '.1f')} | "
                f"{_c(_mb(d['fwd']), '.1f')} | {_c(_mb(d['fwd+bwd']), '.1f')} | {_c(f['time_fwd_slope'], '.2f')} | "
                f"{_c(f['time_fwd+bwd_slope'], '.2f')} | {_c(f['err_softmax_slope'], '.3f')} | "
                f"{_c(f['err_none_slope'], '.3f')} |")
        lines.append(f"(time slope: log-log fit of sparse time vs S over S >= {c['time_slope_min_S']}, linear = 1; "
                     "err slope: log-log fit of the mean error vs S, 1/sqrt(S) = -0.5)")
        lines += ["", "sampled (softmax) vs dense at equal error: S from the error fit, measured there:", "",
                  "| N | target err | S (fit) | err at S | sparse fwd ms | dense fwd ms | dense/sparse fwd "
                  "| sparse fwd+bwd ms | dense fwd+bwd ms | dense/sparse fwd+bwd |", "|" + "---:|" * 10]
        notes = []
        for e in mc["equal_error"]:
            lines.append(
                f"| {e['N']} | {e['target']:g} | {_c(e['S_fit'], '.0f')} | {_c(e['err_mean'], '.4f')} | "
                f"{_t(e['fwd'], '.1f')} | {_c(e['dense_fwd_ms'], '.1f')} | {_c(e['speedup_fwd'], '.2f')} | "
                f"{_t(e['fwd+bwd'], '.1f')} | {_c(e['dense_fwd_bwd_ms'], '.1f')} | "
                f"{_c(e['speedup_fwd_bwd'], '.2f')} |")
            if e["note"]:
                notes.append(f"- N={e['N']} target {e['target']:g}: not measured: {e['note']}")
        lines += ([""] + notes) if notes else []
    gno = result.get("gno")
    if gno:
        gr, c = gno["graph"], cfg["gno"]
        lines += [
            "",
            f"## GNO layer: {gr['N']} points uniform in the unit cube, radius graph r={gr['radius']:.4f} "
            f"(self included), {gr['edges']} edges, degree mean {gr['mean_degree']:.1f} (min {gr['min_degree']}, "
            f"max {gr['max_degree']}), {c['channels']} channels, kernel MLP Linear(6, R) -> gelu -> Linear(R, 64), "
            f"sum; fused = sparse_integral_transform (H=64, Dv=1, none), baseline = per-edge MLP + "
            f"torch.segment_reduce.",
            "",
            "| R | pass | baseline ms | fused ms | baseline/fused time | baseline MiB | fused MiB "
            "| baseline/fused MiB | fused vs baseline rel. diff |",
            "|" + "---:|" * 9,
        ]
        for r in gno["rows"]:
            lines.append(
                f"| {r['R']} | {r['pass']} | {_t(r['baseline'], '.1f')} | {_t(r['fused'], '.1f')} | "
                f"{_c(r['speedup'], '.2f')} | {_c(_mb(r['baseline']), '.1f')} | {_c(_mb(r['fused']), '.1f')} | "
                f"{_c(r['memory_ratio'], '.1f')} | {r['check_rel_diff']:.1e} |")
    errs = [f"- {name}: {m['error']}" for name, m in _all_measurements(result) if m.get("error")]
    if errs:
        lines += ["", "failed measurements:"] + errs
    lines += ["", "targets:"]
    for t in result["targets"]:
        state = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"  {state}: {t['name']} ({t['detail']})")
    return "\n".join(lines)


def main_sparse(args, parser):
    """``--sparse``: run, write the JSON and the table (same name, .txt), print the table."""
    from .plots import plot_sparse
    return run_section(args, parser, prefix="sparse", config=sparse_config, run=run_sparse,
                       format_table=format_sparse_table, plot=plot_sparse)
