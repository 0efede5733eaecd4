"""Decay-scan benchmark: ``python -m itnet_ext.bench --scan``.

The fused decay scan against three other evaluations of the same map, forward (no_grad)
and forward+backward (gradients of x, dt, A, phi, psi), on the same inputs and device:

- ``scan``   ``itnet_ext.functional.decay_scan`` (the fused op)
- ``loop``   ``itnet_ext.reference.decay_scan``: the sequential loop over t, in float32
- ``tuned_loop``  the tuned sequential loop (``tuned_loop`` below): exp(dt * A) for every step
             as one tensor, the per-step operands unbound once, one addcmul and one bmm per
             step; the 10x target compares the faster of ``loop`` and ``tuned_loop``
- ``ssd``    ``itnet_ext.bench.ssd.ssd_chunked``: Mamba-2's chunked SSD algorithm in PyTorch
- ``dense``  ``itnet_ext.functional.integral_transform``, causal, ``none`` mode, one head per
             channel: q_t = phi_t exp(L_t), k_s = psi_s exp(-L_s), v = x (O(T^2))

Shapes: B=2, D=1024, Rk=16, T in ``--scan-sizes``; log-decay in Mamba's per-step form
dt * A with dt = softplus(randn * 0.5 - 4) (about 0.001 .. 0.1) and A = -(1, ..., 16) per
channel, as Mamba initializes it; phi, psi randn (B, T, Rk). exp(+-L) of the dense form
overflows float32 for these decays over long sequences, so ``dense`` runs with the log-decays
scaled so that |L| <= 25 (its time does not depend on the values). Timing and peak memory
are those of the main benchmark (``measure.py``). A call that the previous T predicts to take
longer than ``--budget-s`` is timed once (no warmup); slow baselines are skipped above T
limits (memory, O(T^2)) and where the prediction exceeds ``--scan-call-limit-s``, except
the fwd+bwd measurements the targets compare (loop, tuned_loop and ssd at T=4096).
"""
from __future__ import annotations


import time

import torch
import torch.nn.functional as F

from .. import functional as _fused
from .. import reference as _reference
from .cases import _passes
from .measure import MIB
from .report import Section, run_section, section_header
from .ssd import auto_chunk, ssd_chunked

B, D, RK = 2, 1024, 16
QUICK_D = 64
METHODS = ("scan", "loop", "tuned_loop", "ssd", "dense")
BASELINES = ("loop", "tuned_loop", "ssd", "dense")
DENSE_L_MAX = 25.0  # |L| bound of the dense form: exp(25) ~ 7e10, far inside float32's range
TARGET_T = 4096
TARGET_VS_LOOP = 10.0  # fwd+bwd scan at least 10x faster than the faster loop at T=4096 (CPU)


# ======================================================================================
# inputs and methods
# ======================================================================================
def scan_inputs(T, D, device, dtype, gen):
    """x, (dt, A), phi, psi (all requiring grad) and the cotangent g, Mamba's decay form."""
    def leaf(t):
        return t.to(device=device, dtype=dtype).requires_grad_(True)

    x = leaf(torch.randn(B, T, D, generator=gen))
    dt = leaf(F.softplus(torch.randn(B, T, D, generator=gen) * 0.5 - 4.0))
    A = leaf(-torch.arange(1, RK + 1, dtype=torch.float32).repeat(D, 1))
    phi = leaf(torch.randn(B, T, RK, generator=gen))
    psi = leaf(torch.randn(B, T, RK, generator=gen))
    g = torch.randn(B, T, D, generator=gen).to(device=device, dtype=dtype)
    return dict(x=x, dt=dt, A=A, phi=phi, psi=psi, g=g)


def dense_decay_scale(dt, A):
    """Factor c <= 1 such that |L| = |cumsum(c dt A)| <= DENSE_L_MAX over the sequence."""
    with torch.no_grad():
        L_max = float((dt.sum(1)[..., None] * A.abs()).max())
    return min(1.0, DENSE_L_MAX / L_max) if L_max > 0 else 1.0


def dense_scan(x, dt, A, phi, psi, c):
    """The scan (Rk-dim phi / psi, log-decay c * dt * A) as a causal dense integral transform."""
    L = torch.cumsum(dt[..., None] * (c * A), dim=1)                     # (B, T, D, Rk)
    q = (phi[:, :, None] * torch.exp(L)).transpose(1, 2)                 # (B, D, T, Rk)
    k = (psi[:, :, None] * torch.exp(-L)).transpose(1, 2)
    v = x.transpose(1, 2)[..., None]                                     # (B, D, T, 1)
    out = _fused.integral_transform(q, k, v, normalize="none", causal=True, scale=1.0)
    return out[..., 0].transpose(1, 2)


def tuned_loop(x, dt, A, phi, psi):
    """The scan (dt * A decay, one group) as an eager loop over t with its per-step work cut.

    Variants measured on the benchmark's shapes (B=2, T=4096, D=1024, Rk=16, fwd+bwd, CPU):
    this one 1.8-2.4 s; the same with (h * phi).sum(-1) for y 2.0 s; the input term
    psi x as one (B, T, D, Rk) tensor and y from one einsum over the stacked states 3.0-3.6 s
    (the stack of T states costs more than the per-step products it saves); the reference
    loop 2.3-3.0 s, so neither loop is faster on every run and the target takes the faster.
    """
    E = torch.exp(dt[..., None] * A)                          # (B, T, D, Rk), once
    Es, xs = E.unbind(1), x[..., None].unbind(1)              # (B, D, Rk), (B, D, 1)
    psis, phis = psi[:, :, None, :].unbind(1), phi[..., None].unbind(1)  # (B, 1, Rk), (B, Rk, 1)
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = torch.addcmul(Es[t] * h, psis[t], xs[t])
        ys.append(torch.bmm(h, phis[t])[..., 0])
    return torch.stack(ys, 1) if ys else x.new_zeros(x.shape)


def scan_fns(inp, chunk, dense_c):
    """method -> (callable returning y, the tensors whose gradients fwd+bwd computes)."""
    x, dt, A, phi, psi = (inp[n] for n in ("x", "dt", "A", "phi", "psi"))
    params = (x, dt, A, phi, psi)
    return {
        "scan": (lambda: _fused.decay_scan(x, (dt, A), phi, psi), params),
        "loop": (lambda: _reference.decay_scan(x, (dt, A), phi, psi), params),
        "tuned_loop": (lambda: tuned_loop(x, dt, A, phi, psi), params),
        "ssd": (lambda: ssd_chunked(x, (dt, A), phi, psi, chunk=chunk), params),
        "dense": (lambda: dense_scan(x, dt, A, phi, psi, dense_c), params),
    }


# ======================================================================================
# the run
# ======================================================================================
def scan_config(args):
    quick = args.quick
    sizes = args.scan_sizes if args.scan_sizes is not None else ("32,96" if quick else "1024,4096,16384")
    sizes = [int(s) for s in sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--scan-sizes: expected a comma list of positive T, got {args.scan_sizes!r}")
    if args.dtype not in ("float32", "float64"):
        raise ValueError(f"--scan: --dtype float32 or float64, got {args.dtype}")
    return {
        "B": B, "D": QUICK_D if quick else D, "Rk": RK, "sizes": sorted(sizes), "dtype": args.dtype,
        "decay": "dt * A, dt = softplus(randn * 0.5 - 4), A[d] = -(1..Rk)",
        "repeats": 1 if quick else args.repeats,
        "budget_s": min(args.budget_s, 1.0) if quick else args.budget_s,
        "ssd_chunk": args.scan_chunk,  # None: auto_chunk(T)
        "loop_bwd_max_T": args.scan_loop_bwd_max_t, "dense_max_T": args.scan_dense_max_t,
        "call_limit_s": args.scan_call_limit_s, "dense_L_max": DENSE_L_MAX, "seed": args.seed,
    }


def exp_rate_ns(device, dtype, elements=1 << 18, seconds=0.3):
    """Nanoseconds per element of torch.exp over all threads on a cache-resident tensor (1 MiB
    in float32): the rate of the exponentials the scan cannot avoid, for its exp-bound floor.
    None off the CPU (the GPU scan is memory-bound, not exp-bound)."""
    if device.type != "cpu":
        return None
    x = -torch.rand(elements, dtype=dtype)
    out = torch.empty_like(x)
    torch.exp(x, out=out)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            torch.exp(x, out=out)
        n += 20
    return (time.perf_counter() - t0) / (n * elements) * 1e9


def exp_floor_ms(rate_ns, T, D, pas):
    """The exp-bound limit of the fused scan: B T D Rk decay factors exp(dt A) per pass over
    time, evaluated once by the forward and once more by the backward (which recomputes them
    from its checkpoints rather than store B T D Rk values), at the measured exp rate."""
    if rate_ns is None:
        return None
    return (1 if pas == "fwd" else 2) * B * T * D * RK * rate_ns * 1e-6


def _work(method, T, chunk):
    """Relative work of one call (predicts a size's time from the previous size's)."""
    if method == "dense":
        return T * T
    if method == "ssd":  # intra-chunk kernels ~ T Lc, across-chunk kernel ~ (T / Lc)^2
        return T * (chunk + T / chunk ** 2)
    return T


def _predicted_s(method, pas, T, done, chunks):
    """(seconds of one call at T predicted from the largest smaller T measured, that T) or None."""
    prev = [m for m in done if m["method"] == method and m["pass"] == pas and m["ms"] is not None]
    if not prev:
        return None
    last = max(prev, key=lambda m: m["T"])
    ratio = _work(method, T, chunks[T]) / _work(method, last["T"], chunks[last["T"]])
    return last["ms"] / 1e3 * ratio, last["T"]


def _skip_reason(cfg, method, pas, T, predicted):
    """Why a baseline measurement is not run (None: run it)."""
    if method in ("loop", "tuned_loop") and pas == "fwd+bwd" and T > cfg["loop_bwd_max_T"]:
        return (f"T > {cfg['loop_bwd_max_T']} (--scan-loop-bwd-max-t): autograd keeps ~5 (B, D, Rk) "
                f"tensors per step, ~{5 * 4 * B * cfg['D'] * RK * T / 2 ** 30:.2g} GiB")
    if method == "dense" and T > cfg["dense_max_T"]:
        return f"T > {cfg['dense_max_T']} (--scan-dense-max-t): O(T^2 D Rk) work"
    # the measurements the targets compare are always run
    needed = T == TARGET_T and pas == "fwd+bwd" and method in ("loop", "tuned_loop", "ssd")
    if method in BASELINES and predicted and predicted[0] > cfg["call_limit_s"] and not needed:
        return (f"predicted {predicted[0]:.3g} s per call (from T={predicted[1]}) > "
                f"{cfg['call_limit_s']:.3g} s (--scan-call-limit-s)")
    return None


def _measure_once(runner, fn, reset):
    """A single metered call: the time and peak memory of calls too slow to repeat."""
    reset()
    seconds, peak = runner.meter.measure(fn)  # (synchronizes CUDA before and after)
    reset()
    return {"ms": seconds * 1e3, "min_ms": seconds * 1e3, "times_ms": [seconds * 1e3], "repeats": 1,
            "inner_loops": 1, "warmup_ms": None, "peak_extra_mb": None if peak is None else peak / MIB}


def run_scan(args, log=None):
    """Run the scan benchmark described by parsed ``args``; return the result dict."""
    cfg = scan_config(args)
    sec = Section(args, cfg, log)
    log, device, dtype, runner, meta = sec.log, sec.device, sec.dtype, sec.runner, sec.meta
    gen = torch.Generator().manual_seed(args.seed)

    # one tiny call of every method first: one-time initialisation lands in no measurement
    inp = scan_inputs(16, 8, device, dtype, gen)
    for fn, _ in scan_fns(inp, 4, 1.0).values():
        try:
            fn().backward(inp["g"])
        except Exception as e:  # reported by the measurements themselves
            log(f"warmup: {type(e).__name__}: {e}")
    del inp

    measurements, chunks, dense_scales = [], {}, {}
    for T in cfg["sizes"]:
        inp = scan_inputs(T, cfg["D"], device, dtype, gen)
        chunks[T] = cfg["ssd_chunk"] or auto_chunk(T)
        dense_scales[T] = dense_decay_scale(inp["dt"], inp["A"])
        fns = scan_fns(inp, chunks[T], dense_scales[T])
        log(f"T={T} (ssd chunk {chunks[T]}, dense decay scale {dense_scales[T]:.3g})")
        for pas in ("fwd", "fwd+bwd"):
            for method in METHODS:
                predicted = _predicted_s(method, pas, T, measurements, chunks)
                m = {"method": method, "T": T, "pass": pas, "ms": None, "peak_extra_mb": None,
                     "error": None, "skipped": _skip_reason(cfg, method, pas, T, predicted)}
                if m["skipped"] is None:
                    fn, params = fns[method]
                    passes, reset = _passes(fn, params, inp["g"])
                    # calls predicted to exceed the per-measurement budget: timed once, no warmup
                    slow = predicted is not None and predicted[0] > cfg["budget_s"]
                    try:
                        m.update(_measure_once(runner, passes[pas], reset) if slow
                                 else runner.measure(passes[pas], reset))
                    except Exception as e:  # keep going: the table and JSON report it
                        m["error"] = f"{type(e).__name__}: {e}"[:300]
                        reset()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                measurements.append(m)
                log(f"  {pas:8s} {method:10s} " + (
                    f"skipped: {m['skipped']}" if m["skipped"] else f"ERROR {m['error']}" if m["error"]
                    else f"{m['ms']:10.2f} ms  x{m['repeats']}  peak {m['peak_extra_mb'] or 0:.1f} MiB"))
        del inp, fns

    cfg["exp_ns_per_element"] = exp_rate_ns(device, dtype)
    sec.finish()
    cfg["ssd_chunk_by_T"] = {str(T): c for T, c in chunks.items()}
    cfg["dense_decay_scale_by_T"] = {str(T): c for T, c in dense_scales.items()}
    rows = scan_rows(measurements, cfg["sizes"])
    for r in rows:
        r["exp_floor_ms"] = exp_floor_ms(cfg["exp_ns_per_element"], r["T"], cfg["D"], r["pass"])
    return {"meta": meta, "config": cfg, "rows": rows, "targets": scan_targets(rows, device),
            "measurements": measurements}


# ======================================================================================
# rows, targets, table, output
# ======================================================================================
def scan_rows(measurements, sizes):
    rows = []
    for T in sizes:
        for pas in ("fwd", "fwd+bwd"):
            by = {m["method"]: m for m in measurements if m["T"] == T and m["pass"] == pas}
            ms = {k: by[k]["ms"] if k in by else None for k in METHODS}
            s = ms["scan"]
            rows.append({
                "T": T, "pass": pas, "ms": ms,
                # baseline time / scan time: how many times faster the fused scan is
                "vs_scan": {k: ms[k] / s if s and ms[k] is not None else None for k in BASELINES},
                "peak_mb": {k: by[k]["peak_extra_mb"] if k in by else None for k in METHODS},
                "notes": {k: m["skipped"] or m["error"] for k, m in by.items() if m["skipped"] or m["error"]},
            })
    return rows


_TARGETS = (  # (baselines (the faster of them is compared), least speedup of the scan, name)
    (("loop", "tuned_loop"), TARGET_VS_LOOP,
     f"CPU fwd+bwd scan >= {TARGET_VS_LOOP:g}x faster than the faster loop at T={TARGET_T}"),
    (("ssd",), 1.0, f"CPU fwd+bwd scan faster than ssd at T={TARGET_T}"),
)


def scan_targets(rows, device):
    row = next((r for r in rows if r["T"] == TARGET_T and r["pass"] == "fwd+bwd"), None)
    out = []
    for bases, least, name in _TARGETS:
        t = {"name": name, "met": None, "speedup": None}
        got = [b for b in bases if row is not None and row["vs_scan"].get(b) is not None]
        if device.type != "cpu":
            t["detail"] = f"a CPU target; this run is on {device}"
        elif not got:
            note = "; ".join(row["notes"][b] for b in bases if row and b in row["notes"])
            t["detail"] = "not measured" + (f" ({note})" if note else "")
        else:
            base = min(got, key=lambda b: row["ms"][b])  # the strongest baseline of the run
            sp = row["vs_scan"][base]
            t.update(met=sp >= least, speedup=sp, baseline=base,
                     detail=f"{base} {row['ms'][base]:.1f} ms / scan {row['ms']['scan']:.1f} ms = {sp:.2f}x")
        out.append(t)
    return out


def _cell(x, spec):
    return "-" if x is None else format(x, spec)


def format_scan_table(result):
    meta, cfg, rows = result["meta"], result["config"], result["rows"]
    lines = section_header("--scan", result)
    lines += [
        f"B={cfg['B']} D={cfg['D']} Rk={cfg['Rk']}, log-decay {cfg['decay']}; phi, psi randn (B, T, Rk). "
        "ms = median of timed repeats after a warmup; x/scan = that method's time / scan time.",
        "ssd chunk by T: " + ", ".join(f"{t}: {c}" for t, c in cfg["ssd_chunk_by_T"].items())
        + f". dense: log-decays scaled so that |L| <= {cfg['dense_L_max']:g} (exp(+-L) overflows "
        "otherwise; its time does not depend on the values), scale by T: "
        + ", ".join(f"{t}: {c:.3g}" for t, c in cfg["dense_decay_scale_by_T"].items()) + ".",
        f"MiB = peak extra memory of one call: {meta['memory_description']}.",
        "",
        "| T | pass | " + " | ".join(f"{m} ms" for m in METHODS) + " | "
        + " | ".join(f"{b}/scan" for b in BASELINES) + " | " + " | ".join(f"{m} MiB" for m in METHODS) + " |",
        "|" + "---:|" * (2 + len(METHODS) * 2 + len(BASELINES)),
    ]
    for r in rows:
        lines.append(
            f"| {r['T']} | {r['pass']} | " + " | ".join(_cell(r["ms"][m], ".2f") for m in METHODS) + " | "
            + " | ".join(_cell(r["vs_scan"][b], ".2f") for b in BASELINES) + " | "
            + " | ".join(_cell(r["peak_mb"][m], ".1f") for m in METHODS) + " |")
    if cfg.get("exp_ns_per_element"):
        lines += ["", f"exp-bound floor of the scan (B T D Rk exponentials per pass, twice in fwd+bwd, "
                  f"at the measured {cfg['exp_ns_per_element']:.3f} ns per element over all threads):"]
        lines += [f"  T={r['T']} {r['pass']}: {r['exp_floor_ms']:.1f} ms; scan "
                  f"{r['ms']['scan'] / r['exp_floor_ms']:.1f}x that" for r in rows
                  if r.get("exp_floor_ms") and r["ms"]["scan"]]
    notes = [f"- {m} T={r['T']} {r['pass']}: {n}" for r in rows for m, n in r["notes"].items()]
    if notes:
        lines += ["", "not measured (-), skipped or failed:"] + notes
    lines += ["", "targets:"]
    for t in result["targets"]:
        state = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"  {state}: {t['name']} ({t['detail']})")
    return "\n".join(lines)


def main_scan(args, parser):
    """``--scan``: run, write the JSON and the table (same name, .txt), print the table."""
    from .plots import plot_scan
    return run_section(args, parser, prefix="scan", config=scan_config, run=run_scan,
                       format_table=format_scan_table, plot=plot_scan)
