"""Low-rank benchmark: ``python -m itnet_ext.bench --lowrank``.

The same layer evaluated two ways (docs/design.md section 2, lowrank), side by side on the same inputs
and device: a dense :class:`~itnet_ext.nn.IntegralTransform` (``method="dense"``, the fused
dense op) and the low-rank layer :func:`itnet_ext.lowrank.fit` distils from it
(``method="lowrank"``, ``rank=F``; called as a layer, however it evaluates).

The layer: embed_dim 64, 4 heads (Dh = 16), content term plus the pair MLP (R = 16, gelu),
softmax, 1-D positions, ``batch_first``, random init (``torch.manual_seed(seed)``; not trained).
The inputs are smooth in the position p_i = (i + 1/2) / N (passed as ``query_pos``, so both
layers see positions in [0, 1) whatever N): x_i = [1, sin 2 pi f p_i, cos 2 pi f p_i]_{f=1..4} W
+ 0.1 noise, W a fixed random (9, 64) map; every N draws fresh noise from the same process.

The fit: ``lowrank.fit(dense, {query, query_pos}, rank=F, steps, landmarks=True)`` on a batch of
8 such sequences of ``--lowrank-fit-n`` (512) points (2 held out for its report), Adam; its
wall time, its report and, for scale, the output error of uniform attention (the same layer
with every logit 0) are reported separately from the timings.

For each N in ``--lowrank-sizes`` (default 64, 128, ..., 65536; B = 1): forward
(``torch.no_grad``) and forward+backward (``y.backward(g)``: gradients of the input and of every parameter) of both layers, timed and
metered by ``measure.py`` (one warmup call metered for peak extra memory, then timed repeats,
median); the output error ||y_lowrank - y_dense|| / ||y_dense|| over all N rows where the dense
layer ran, and at every N on ``--lowrank-err-rows`` random query rows (the dense layer called
with those queries against all N keys: the same rows of its output exactly). The dense layer is
O(N^2): it is not run above ``--lowrank-dense-max-n`` nor where its call, predicted
quadratically from the previous N, exceeds ``--lowrank-dense-call-limit-s``; those cells say
``not run (budget)`` and a separate, labelled table extrapolates them quadratically from the
two largest measured N. Calls predicted to exceed ``--budget-s`` are timed once, no warmup.

Summaries: the crossover N per pass (the smallest measured N where the low-rank layer is faster,
and the N where the log-log interpolation of the time ratio between the measured N around it
crosses 1), and the log-log slopes of time vs N (least squares over the measured N >= 1024, all
measured N where fewer than two are; linear = 1, quadratic = 2). 256 and 512 are in the default
sizes (cheap) so that a crossover below 1024 is located, not only bounded.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch

from .. import lowrank as _lowrank
from ..nn import IntegralTransform
from .cases import _passes
from .report import Section, run_section, section_header
from .scan import _measure_once
from .sparse import OTHERS_CPU_FLAG, _log_m, _mb, _measure, _t, loglog_fit, rel_err

E, H, R, FREQS, NOISE = 64, 4, 16, 4, 0.1
FIT_BATCH, FIT_HOLDOUT = 8, 0.25
PASSES = ("fwd", "fwd+bwd")
LAYERS = ("lowrank", "dense")
NOT_RUN = "not run (budget)"
SLOPE_MIN_N = 1024  # time slopes fitted over N >= this (all N where fewer than two are)


def _ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def lowrank_config(args):
    quick = args.quick
    sizes = _ints(args.lowrank_sizes if args.lowrank_sizes is not None else
                  ("256,512" if quick else "64,128,256,512,1024,2048,4096,8192,16384,32768,65536"))
    if not sizes or min(sizes) < 2:
        raise ValueError(f"--lowrank-sizes: expected a comma list of N >= 2, got {args.lowrank_sizes!r}")
    if args.dtype not in ("float32", "float64"):
        raise ValueError(f"--lowrank: --dtype float32 or float64, got {args.dtype}")
    rank = args.lowrank_rank
    steps = args.lowrank_fit_steps if args.lowrank_fit_steps is not None else (20 if quick else 200)
    fit_n = args.lowrank_fit_n if args.lowrank_fit_n is not None else (128 if quick else 512)
    err_rows = args.lowrank_err_rows if args.lowrank_err_rows is not None else (64 if quick else 1024)
    for name, v, least in (("--lowrank-rank", rank, 1), ("--lowrank-fit-steps", steps, 0),
                           ("--lowrank-fit-n", fit_n, rank), ("--lowrank-err-rows", err_rows, 1)):
        if v < least:
            raise ValueError(f"{name}: expected >= {least}, got {v}")
    return {
        "B": 1, "embed_dim": E, "num_heads": H, "head_dim": E // H, "kernel_hidden": R, "activation": "gelu",
        "content": True, "normalize": "softmax", "pos_dim": 1, "init": "random (torch.manual_seed(seed)), not trained",
        "inputs": f"x_i = [1, sin 2 pi f p_i, cos 2 pi f p_i]_(f=1..{FREQS}) W + {NOISE} randn, "
                  "W fixed randn (9, 64) / sqrt(4.5); p_i = (i + 1/2) / N passed as query_pos",
        "sizes": sorted(set(sizes)), "dtype": args.dtype, "seed": args.seed,
        "repeats": 1 if quick else args.repeats,
        "budget_s": min(args.budget_s, 1.0) if quick else args.budget_s,
        "rank": rank, "fit_steps": steps, "fit_n": fit_n, "fit_batch": FIT_BATCH, "fit_holdout": FIT_HOLDOUT,
        "fit_landmarks": True, "err_rows": err_rows,
        "dense_max_n": args.lowrank_dense_max_n, "dense_call_limit_s": args.lowrank_dense_call_limit_s,
    }


# ======================================================================================
# layers and inputs
# ======================================================================================
def signal_map(gen, device, dtype):
    """The fixed random map W (2 FREQS + 1, E) of the inputs' smooth part."""
    return (torch.randn(2 * FREQS + 1, E, generator=gen, dtype=torch.float64) / math.sqrt(FREQS + 0.5)).to(
        device=device, dtype=dtype)


def lowrank_inputs(B, N, W, device, dtype, gen):
    """x (B, N, E) and positions p (1, N, 1) of the smooth 1-D problem (module doc)."""
    p = (torch.arange(N, dtype=torch.float64) + 0.5) / N
    ang = 2 * math.pi * p[:, None] * torch.arange(1, FREQS + 1, dtype=torch.float64)
    four = torch.cat([torch.ones(N, 1, dtype=torch.float64), torch.sin(ang), torch.cos(ang)], 1)
    noise = torch.randn(B, N, E, generator=gen, dtype=torch.float64) * NOISE
    x = four.to(device=device, dtype=dtype) @ W + noise.to(device=device, dtype=dtype)
    return x.contiguous(), p.to(device=device, dtype=dtype).view(1, N, 1)


def dense_layer(seed, device, dtype):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return IntegralTransform(E, H, kernel_hidden=R, activation="gelu", normalize="softmax",
                                 batch_first=True, device=device, dtype=dtype)


def uniform_attention_error(dense, x, p):
    """||y_uniform - y_dense|| / ||y_dense||: y_uniform the same layer with every logit 0 (q/k
    projections and the pair MLP's output zeroed), i.e. the mean of the values: the error of a
    kernel that ignores (i, j), for scale."""
    uni = copy.deepcopy(dense)
    with torch.no_grad():
        uni.in_proj_weight[:2 * E].zero_()
        uni.in_proj_bias[:2 * E].zero_()
        uni.kernel_W2.zero_()
        uni.kernel_b2.zero_()
        return rel_err(uni(x, query_pos=p), dense(x, query_pos=p))


def fit_lowrank(cfg, dense, W, device, dtype, gen, log):
    """(low-rank layer, fit dict): lowrank.fit on FIT_BATCH sequences of fit_n points."""
    x, p = lowrank_inputs(FIT_BATCH, cfg["fit_n"], W, device, dtype, gen)
    log(f"fit: rank {cfg['rank']}, {cfg['fit_steps']} steps, {FIT_BATCH} x N={cfg['fit_n']} samples")
    t0 = time.perf_counter()
    lr_layer, rep = _lowrank.fit(dense, {"query": x, "query_pos": p}, cfg["rank"], cfg["fit_steps"],
                                 holdout=FIT_HOLDOUT, landmarks=True, progress=False,
                                 generator=torch.Generator().manual_seed(cfg["seed"] + 1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    fit_s = time.perf_counter() - t0
    log(str(rep))
    log(f"fit wall time {fit_s:.1f} s")
    return lr_layer, {"wall_s": fit_s, "report": dataclasses.asdict(rep),
                      "uniform_attention_output_rel_error": uniform_attention_error(dense, x[-1:], p)}


def layer_fns(layer, x, p, g):
    """(passes, reset, out): the layer's fwd (no_grad; keeps its output in ``out["y"]``) and
    fwd+bwd (gradients of x and of every parameter) callables and the gradient reset."""
    out = {}

    def fn():
        return layer(x, query_pos=p)

    passes, reset = _passes(fn, (x, *layer.parameters()), g)

    def fwd():
        with torch.no_grad():
            out["y"] = None  # (let the previous output go before the call)
            out["y"] = fn()

    passes["fwd"] = fwd
    return passes, reset, out


# ======================================================================================
# prediction, summaries
# ======================================================================================
def _predicted_dense_s(done, pas, N):
    """(seconds of one dense call at N, quadratic from the largest smaller measured N, that N) or None."""
    prev = [(r["N"], r["dense"][pas]["ms"]) for r in done
            if r["dense"][pas] is not None and r["dense"][pas]["ms"] is not None]
    if not prev:
        return None
    n0, ms = max(prev)
    return ms / 1e3 * (N / n0) ** 2, n0


def _dense_skip_reason(cfg, predicted, N):
    if cfg["dense_max_n"] is not None and N > cfg["dense_max_n"]:
        return f"{NOT_RUN}: N > {cfg['dense_max_n']} (--lowrank-dense-max-n)"
    if predicted is not None and predicted[0] > cfg["dense_call_limit_s"]:
        return (f"{NOT_RUN}: predicted {predicted[0]:.3g} s per call (quadratic from N={predicted[1]}) > "
                f"{cfg['dense_call_limit_s']:g} s (--lowrank-dense-call-limit-s)")
    return None


def _ms(m):
    return None if m is None else m["ms"]


def crossover(rows, pas):
    """The crossover N of one pass (dense time / low-rank time passes 1)."""
    pts = [(r["N"], _ms(r["dense"][pas]) / _ms(r["lowrank"][pas])) for r in rows
           if _ms(r["dense"][pas]) and _ms(r["lowrank"][pas])]
    out = {"pass": pas, "smallest_N_lowrank_faster": None, "interpolated_N": None, "between": None,
           "not_faster_after": [],
           "measured_N": [n for n, _ in pts], "detail": None}
    if not pts:
        out["detail"] = "not measured (no N with both layers)"
        return out
    faster = [n for n, s in pts if s > 1]
    out["smallest_N_lowrank_faster"] = faster[0] if faster else None
    # larger measured N where the low-rank layer is not faster again (noise, shared cores)
    out["not_faster_after"] = [n for n, s in pts if faster and n > faster[0] and s <= 1]
    if pts[0][1] > 1:
        out["detail"] = f"low-rank already faster at the smallest measured N={pts[0][0]} (crossover below it)"
        return out
    for (n1, s1), (n2, s2) in zip(pts, pts[1:]):
        if s1 <= 1 < s2:
            frac = -math.log(s1) / (math.log(s2) - math.log(s1)) if s2 != s1 else 0.0
            out["interpolated_N"] = math.exp(math.log(n1) + frac * (math.log(n2) - math.log(n1)))
            out["between"] = [n1, n2]
            out["detail"] = (f"low-rank faster from N={faster[0]} (measured); dense/lowrank {s1:.2f}x at N={n1}, "
                             f"{s2:.2f}x at N={n2}: crossover at N ~ {out['interpolated_N']:.0f} "
                             "(log-log interpolation)")
            if out["not_faster_after"]:
                out["detail"] += (f"; but NOT faster again at N={','.join(map(str, out['not_faster_after']))} "
                                  "(noisy timings?)")
            return out
    out["detail"] = (f"not reached: dense still faster at the largest N with both layers measured "
                     f"(N={pts[-1][0]}, dense/lowrank {pts[-1][1]:.2f}x)")
    return out


def scaling(rows, min_n=SLOPE_MIN_N):
    """Least-squares log-log slope of time vs N per layer and pass (linear = 1, quadratic = 2), over
    the measured N >= ``min_n`` (over all measured N where fewer than two are), and the slopes
    between consecutive N."""
    out = {}
    for layer in LAYERS:
        for pas in PASSES:
            pts = [(r["N"], _ms(r[layer][pas])) for r in rows if _ms(r[layer][pas])]
            big = [(n, t) for n, t in pts if n >= min_n]
            pts = big if len(big) >= 2 else pts
            slope, _ = loglog_fit([n for n, _ in pts], [t for _, t in pts])
            local = [math.log(t2 / t1) / math.log(n2 / n1) for (n1, t1), (n2, t2) in zip(pts, pts[1:])]
            out[f"{layer} {pas}"] = {"slope": slope, "N": [n for n, _ in pts], "local_slopes": local}
    return out


def extrapolate_dense(rows):
    """Dense times at the N where it did not run, quadratic (t ~ c N^2, c the geometric mean of
    t / N^2 at the two largest measured N). Labelled as extrapolated everywhere."""
    out = []
    for pas in PASSES:
        pts = sorted((r["N"], _ms(r["dense"][pas])) for r in rows if _ms(r["dense"][pas]))
        if len(pts) < 2:
            continue
        (n1, t1), (n2, t2) = pts[-2:]
        c = math.sqrt(t1 / n1 ** 2 * t2 / n2 ** 2)
        for r in rows:
            if r["dense"][pas] is None and r["N"] > n2:
                ext = c * r["N"] ** 2
                lr = _ms(r["lowrank"][pas])
                out.append({"N": r["N"], "pass": pas, "dense_ms_extrapolated": ext, "from_N": [n1, n2],
                            "dense_over_lowrank_extrapolated": ext / lr if lr else None})
    return out


# ======================================================================================
# the run
# ======================================================================================
class _Once:
    """A runner whose measure() is a single metered call (scan.py's ``_measure_once``)."""

    def __init__(self, runner):
        self.runner = runner

    def measure(self, fn, reset):
        return _measure_once(self.runner, fn, reset)


def _rows_error(dense, lr_y, x, p, rows):
    """The error on the query rows ``rows``: the dense layer on those queries against all keys."""
    with torch.no_grad():
        yd = dense(x[:, rows], x, query_pos=p[:, rows], key_pos=p)
    return rel_err(lr_y[:, rows], yd)


def run_lowrank(args, log=None):
    cfg = lowrank_config(args)
    sec = Section(args, cfg, log)
    log, device, dtype, runner, meta = sec.log, sec.device, sec.dtype, sec.runner, sec.meta
    once = _Once(runner)
    gen = torch.Generator().manual_seed(args.seed)

    W = signal_map(gen, device, dtype)
    dense = dense_layer(args.seed, device, dtype)
    lr_layer, fit = fit_lowrank(cfg, dense, W, device, dtype, gen, log)
    layers = {"lowrank": lr_layer, "dense": dense}

    # one tiny call of both layers first: one-time initialisation lands in no measurement
    x, p = lowrank_inputs(1, 16, W, device, dtype, gen)
    x.requires_grad_(True)
    for layer in layers.values():
        layer(x, query_pos=p).sum().backward()
        layer.zero_grad(set_to_none=True)
    del x, p

    rows = []
    for N in cfg["sizes"]:
        log(f"N={N}")
        x, p = lowrank_inputs(1, N, W, device, dtype, gen)
        x.requires_grad_(True)
        g = torch.randn(1, N, E, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        row = {"N": N, "lowrank": {}, "dense": {}, "dense_skipped": {}, "err": None, "err_rows": None,
               "err_rows_n": min(cfg["err_rows"], N)}
        outs = {}
        for name in LAYERS:
            passes, reset, out = layer_fns(layers[name], x, p, g)
            for pas in PASSES:
                if name == "dense":
                    predicted = _predicted_dense_s(rows, pas, N)
                    skip = _dense_skip_reason(cfg, predicted, N)
                    if skip:
                        row["dense"][pas], row["dense_skipped"][pas] = None, skip
                        log(f"  {'dense ' + pas:34s} {skip}")
                        continue
                    slow = predicted is not None and predicted[0] > cfg["budget_s"]
                else:
                    slow = False
                m = _measure(once if slow else runner, passes[pas], reset, device)
                row[name][pas] = m
                _log_m(log, f"{name} {pas}", m)
            outs[name] = out.get("y")
            del passes, reset, out
        try:
            if outs["lowrank"] is None:  # its fwd failed (reported): the error needs its output
                with torch.no_grad():
                    outs["lowrank"] = lr_layer(x, query_pos=p)
            if outs["dense"] is not None:
                row["err"] = rel_err(outs["lowrank"], outs["dense"])
            sel = torch.randperm(N, generator=gen)[:row["err_rows_n"]].sort().values.to(device)
            row["err_rows"] = _rows_error(dense, outs["lowrank"], x.detach(), p, sel)
        except Exception as e:  # the layer failed: reported, the run goes on
            row["err_error"] = f"{type(e).__name__}: {e}"[:300]
            log(f"  error computation failed: {row['err_error']}")
        for pas in PASSES:
            d, lr = _ms(row["dense"][pas]), _ms(row["lowrank"][pas])
            row[f"dense_over_lowrank_{pas}"] = d / lr if d and lr else None
        log(f"  output rel. error: all rows {row['err'] if row['err'] is not None else NOT_RUN}; "
            f"{row['err_rows_n']} random rows {row['err_rows']}")
        rows.append(row)
        del x, p, g, outs
        if device.type == "cuda":
            torch.cuda.empty_cache()

    result = {"meta": meta, "config": cfg, "fit": fit, "rows": rows,
              "crossover": {pas: crossover(rows, pas) for pas in PASSES},
              "scaling": scaling(rows), "dense_extrapolated": extrapolate_dense(rows)}
    shared = [m["others_cpu"] for _, m in _all_measurements(result) if m.get("others_cpu") is not None]
    meta["others_cpu_max"] = max(shared, default=None)
    sec.finish()
    return result


def _all_measurements(result):
    return [(f"{layer} N={r['N']} {pas}", r[layer][pas]) for r in result["rows"] for layer in LAYERS
            for pas in PASSES if r[layer].get(pas) is not None]


# ======================================================================================
# table, output
# ======================================================================================
def _c(x, spec):
    return "-" if x is None else format(x, spec)


def format_lowrank_table(result):
    meta, cfg, fit = result["meta"], result["config"], result["fit"]
    rep = fit["report"]
    lines = section_header("--lowrank", result)
    lines += [
        f"layer: IntegralTransform(embed_dim={cfg['embed_dim']}, num_heads={cfg['num_heads']}, "
        f"kernel_hidden={cfg['kernel_hidden']}, gelu, content term, softmax), {cfg['init']}; "
        f"B={cfg['B']}, M=N; inputs {cfg['inputs']}.",
        f"dense = method='dense' (fused dense op); lowrank = lowrank.fit(dense, ...) with rank={cfg['rank']} "
        f"features per head, called as a layer.",
        f"fit: {rep['steps']} steps on {cfg['fit_batch']} x N={cfg['fit_n']} (Nystrom init, "
        f"{rep['n_eval']} held out){', init kept' if rep['kept_init'] else ''}: {fit['wall_s']:.1f} s wall; "
        f"kernel rel. error {rep['kernel_rel_error']:.4f}, output rel. error {rep['output_rel_error']:.4f} "
        f"({rep['evaluated_on']}); uniform attention (every logit 0) would give "
        f"{fit['uniform_attention_output_rel_error']:.3f}.",
        f"ms = median of timed repeats after a warmup; MiB = peak extra memory of one call: "
        f"{meta['memory_description']}.",
        f"! after a time: other processes kept more than {OTHERS_CPU_FLAG:g} CPUs busy on average during that "
        f"measurement (/proc/stat); its time is inflated. Most shared measurement: "
        f"{_c(meta.get('others_cpu_max'), '.2f')} CPUs.",
        "err = ||y_lowrank - y_dense|| / ||y_dense|| over all rows; err rows = the same on random query rows "
        "(dense evaluated on those queries against all keys), at every N.",
        "",
        "| N | lowrank fwd ms | dense fwd ms | dense/lowrank fwd | lowrank fwd+bwd ms | dense fwd+bwd ms "
        "| dense/lowrank fwd+bwd | lowrank fwd MiB | dense fwd MiB | lowrank fwd+bwd MiB | dense fwd+bwd MiB "
        "| err | err rows (n) |",
        "|" + "---:|" * 13,
    ]

    def dcell(r, pas, val):
        return NOT_RUN if r["dense"][pas] is None else val

    for r in result["rows"]:
        lr, d = r["lowrank"], r["dense"]
        lines.append(
            f"| {r['N']} | {_t(lr['fwd'], '.2f')} | {dcell(r, 'fwd', _t(d['fwd'], '.2f'))} | "
            f"{_c(r['dense_over_lowrank_fwd'], '.2f')} | {_t(lr['fwd+bwd'], '.2f')} | "
            f"{dcell(r, 'fwd+bwd', _t(d['fwd+bwd'], '.2f'))} | {_c(r['dense_over_lowrank_fwd+bwd'], '.2f')} | "
            f"{_c(_mb(lr['fwd']), '.1f')} | {dcell(r, 'fwd', _c(_mb(d['fwd']), '.1f'))} | "
            f"{_c(_mb(lr['fwd+bwd']), '.1f')} | {dcell(r, 'fwd+bwd', _c(_mb(d['fwd+bwd']), '.1f'))} | "
            f"{dcell(r, 'fwd', _c(r['err'], '.4f'))} | "
            f"{_c(r['err_rows'], '.4f')} ({r['err_rows_n']}) |")
    ext = result["dense_extrapolated"]
    if ext:
        lines += ["", "dense where it did not run: EXTRAPOLATED (quadratic, t = c N^2 through the two largest "
                      "measured N), not measured:", "",
                  "| N | pass | dense ms (extrapolated) | from N | dense/lowrank (extrapolated) |", "|" + "---:|" * 5]
        for e in ext:
            lines.append(f"| {e['N']} | {e['pass']} | {e['dense_ms_extrapolated']:.0f} | "
                         f"{e['from_N'][0]},{e['from_N'][1]} | {_c(e['dense_over_lowrank_extrapolated'], '.1f')} |")
    lines += ["", "crossover (measured N only):"]
    for pas, c in result["crossover"].items():
        lines.append(f"  {pas}: {c['detail']}")
    lines += ["", f"scaling: log-log slope of time vs N (least squares over the measured N >= {SLOPE_MIN_N}, all N "
                  "where fewer than two are; linear = 1, quadratic = 2):"]
    for key, s in result["scaling"].items():
        loc = ", ".join(f"{x:.2f}" for x in s["local_slopes"])
        lines.append(f"  {key:16s} {_c(s['slope'], '.2f')}  over N={_c(min(s['N']) if s['N'] else None, 'd')}"
                     f"..{_c(max(s['N']) if s['N'] else None, 'd')}  (between consecutive N: {loc or '-'})")
    notes = [f"- dense N={r['N']} {pas}: {why}" for r in result["rows"] for pas, why in r["dense_skipped"].items()]
    notes += [f"- {name}: {m['error']}" for name, m in _all_measurements(result) if m.get("error")]
    notes += [f"- error N={r['N']}: {r['err_error']}" for r in result["rows"] if r.get("err_error")]
    if notes:
        lines += ["", "not run or failed:"] + notes
    return "\n".join(lines)


def main_lowrank(args, parser):
    """``--lowrank``: run, write the JSON and the table (same name, .txt), print the table."""
    from .plots import plot_lowrank
    return run_section(args, parser, prefix="lowrank", config=lowrank_config, run=run_lowrank,
                       format_table=format_lowrank_table, plot=plot_lowrank)
