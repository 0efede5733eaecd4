"""CUDA section of ``python -m itnet_ext.bench`` (``--cuda``): tensor-core kernels vs FlashAttention.

Measured, in float16 and bfloat16, forward (``torch.no_grad``) and forward+backward
(``out.backward(g)``), B=4, H=16, Dh in {64, 128}, N = M in {1024, 4096, 16384}, not causal:

- ``flash``    ``F.scaled_dot_product_attention(q, k, v)`` forced to the flash backend
               (``torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)``)
- ``attn``     ``itnet_ext.functional.integral_transform(q, k, v)`` (content term only, softmax)
- ``mlp-R16``, ``mlp-R32``  the same plus the MLP term: ``u, t`` (B, N, R), ``W2`` (H, R),
               ``b2`` (H,), relu

FLOP counts (FlashAttention's benchmark convention; the same count for every implementation
of a mode, so a TFLOP/s ratio is a time ratio):

- attention forward: ``4 * B * H * N * M * Dh`` (two matmuls, q.k^T and P.v, 2 flops per
  multiply-add); forward+backward: ``3.5 x`` that (the backward counted as 2.5 x the forward:
  five matmuls of the same size).
- MLP term: ``3 * R * B * H * N * M`` more per forward, a convention: per (batch, head, query,
  key) 2R for the head projection ``sum_r W2[h, r] act(...)`` (R multiply-adds) plus R for the
  hidden layer (the R adds and R activations of a (batch, query, key) pair, shared by the H
  heads, rounded up to R per head); forward+backward again ``3.5 x`` the forward.

Timing: CUDA events around each call, after warmup calls; the number of timed repeats
adapts to the call's time (about ``--target-s`` seconds per measurement, 3 to 50 repeats);
the median is reported. A measurement predicted (from the same case at the previous N,
quadratic in N) to overrun the section's ``--time-budget-s``, or that runs out of memory or
fails, is recorded as skipped with its reason.

Targets (reported per row, not asserted anywhere): ``attn`` throughput >= 0.8 x ``flash``;
``mlp-R16`` time <= 2 x ``attn`` time.
"""
from __future__ import annotations

import datetime as _dt
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

B, H = 4, 16
SIZES = (1024, 4096, 16384)
DTYPES = ("float16", "bfloat16")
HEAD_DIMS = (64, 128)
MLP_WIDTHS = (16, 32)
ACTIVATION = "relu"
FWD_BWD_FACTOR = 3.5  # FlashAttention's convention: backward = 2.5 x forward
PASSES = ("fwd", "fwd+bwd")

TARGET_ATTN_VS_FLASH = 0.8  # attention-only throughput >= 0.8 x flash backend
TARGET_MLP16_VS_ATTN = 2.0  # MLP R=16 time <= 2 x attention-only time

_REPO_ROOT = Path(__file__).resolve().parent.parent.parent


# ======================================================================================
# FLOP counts
# ======================================================================================
def attention_flops(B, H, N, M, Dh, pas):
    """4 B H N M Dh for the forward (q.k^T and P.v), 3.5 x that for forward+backward."""
    f = 4 * B * H * N * M * Dh
    return f if pas == "fwd" else FWD_BWD_FACTOR * f


def mlp_flops(B, H, N, M, R, pas):
    """Extra flops of the MLP term: 3 R B H N M per forward, 3.5 x that for forward+backward."""
    f = 3 * R * B * H * N * M
    return f if pas == "fwd" else FWD_BWD_FACTOR * f


def case_flops(impl, B, H, N, M, Dh, pas):
    f = attention_flops(B, H, N, M, Dh, pas)
    if impl.startswith("mlp-R"):
        f += mlp_flops(B, H, N, M, int(impl[5:]), pas)
    return f


# ======================================================================================
# configuration, availability
# ======================================================================================
def _list(text, conv, name, allowed=None):
    try:
        items = [conv(x.strip()) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name}: expected a comma-separated list, got {text!r}") from None
    if not items:
        raise ValueError(f"--{name}: empty list")
    for x in items:
        if allowed is not None and x not in allowed:
            raise ValueError(f"--{name}: {x!r} is not one of {', '.join(map(str, allowed))}")
        if conv is int and x <= 0:
            raise ValueError(f"--{name}: expected positive sizes, got {x}")
    return items


def cuda_config(args):
    """The CUDA section's configuration from parsed arguments (ValueError on bad lists)."""
    quick = bool(getattr(args, "quick", False))
    sizes = args.sizes if args.sizes is not None else ("256,512" if quick else SIZES)
    dh = args.dh if args.dh is not None else ("64" if quick else HEAD_DIMS)
    dtypes = args.dtypes if args.dtypes is not None else DTYPES
    as_text = (lambda x: x if isinstance(x, str) else ",".join(map(str, x)))
    return {
        "B": B, "H": H, "causal": False, "activation": ACTIVATION,
        "sizes": _list(as_text(sizes), int, "sizes"),
        "dh": _list(as_text(dh), int, "dh"),
        "dtypes": _list(as_text(dtypes), str, "dtypes", allowed=("float16", "bfloat16")),
        "mlp_widths": list(MLP_WIDTHS),
        "target_s": 0.05 if quick else args.target_s,
        "time_budget_s": min(args.time_budget_s, 20.0) if quick else args.time_budget_s,
        "seed": args.seed,
    }


def unavailable_reason(device=None):
    """None when the CUDA section can run, else why not (one line)."""
    if not torch.cuda.is_available():
        return ("no CUDA device is available (torch.cuda.is_available() is False; torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    try:
        from .. import _C  # noqa: F401  (loads the extension)
        compiled = bool(torch.ops.itnet.cuda_kernels_compiled())
    except Exception as e:  # pragma: no cover - depends on the build
        return f"itnet_ext could not be loaded: {type(e).__name__}: {e}"
    if not compiled:
        return ("itnet_ext was built without its CUDA kernels "
                "(rebuild with a CUDA torch and nvcc, ITNET_FORCE_CUDA=1)")
    return None


# ======================================================================================
# metadata
# ======================================================================================
def _driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _metadata(device):
    from .report import _git_commit

    commit, dirty = _git_commit()
    props = torch.cuda.get_device_properties(device)
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "section": "cuda",
        "device": str(device),
        "gpu_name": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / (1 << 30), 1),
        "gpu_sm_count": props.multi_processor_count,
        "driver_version": _driver_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": sys.argv[1:],
    }


def default_out(gpu_name):
    card = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name or "gpu").strip("_")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    base = _REPO_ROOT / "bench" / "results" if (_REPO_ROOT / "bench").is_dir() else Path("bench") / "results"
    return base / f"cuda_{card}_{stamp}.json"


# ======================================================================================
# cases and timing
# ======================================================================================
def _generator(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def _inputs(N, Dh, dtype, device, gen):
    def rnd(*shape, scale=1.0, grad=True):
        x = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale
        return x.to(dtype).requires_grad_(grad)

    x = {"q": rnd(B, H, N, Dh), "k": rnd(B, H, N, Dh), "v": rnd(B, H, N, Dh),
         "g": rnd(B, H, N, Dh, grad=False)}
    for R in MLP_WIDTHS:
        x[f"mlp{R}"] = {"u": rnd(B, N, R), "t": rnd(B, N, R), "W2": rnd(H, R, scale=R ** -0.5),
                        "b2": rnd(H, scale=0.1)}
    return x


def _fns(x):
    """impl -> (callable returning out, the leaves it differentiates)."""
    from .. import functional
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = x["q"], x["k"], x["v"]

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return TF.scaled_dot_product_attention(q, k, v)

    fns = {"flash": (flash, (q, k, v)),
           "attn": (lambda: functional.integral_transform(q, k, v), (q, k, v))}
    for R in MLP_WIDTHS:
        m = x[f"mlp{R}"]
        fns[f"mlp-R{R}"] = (
            lambda m=m: functional.integral_transform(q, k, v, u=m["u"], t=m["t"], W2=m["W2"],
                                                      b2=m["b2"], activation=ACTIVATION),
            (q, k, v, *m.values()))
    return fns


def _time(call, reset, target_s, min_repeats=3, max_repeats=50, warmup=2):
    """Median ms of CUDA-event-timed calls after ``warmup`` calls; ``reset`` runs before
    every call, outside the timed window."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def once():
        reset()
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    warm = [once() for _ in range(warmup)]
    repeats = int(min(max_repeats, max(min_repeats, target_s * 1e3 / max(warm[-1], 1e-3))))
    times = [once() for _ in range(repeats)]
    return {"ms": statistics.median(times), "min_ms": min(times), "repeats": repeats,
            "warmup_ms": warm}


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def run_cuda(args, log=None):
    """Run the CUDA section; returns the result dict (``{"skipped": reason}`` without a GPU)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg = cuda_config(args)
    reason = unavailable_reason()
    if reason is not None:
        return {"skipped": reason, "config": cfg}
    device = torch.device(args.device if str(args.device).startswith("cuda") else "cuda")
    if device.index is None:  # set_device needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    meta = _metadata(device)
    gen = _generator(device, cfg["seed"])
    measurements = []
    t0 = time.perf_counter()
    budget = cfg["time_budget_s"]

    def predicted_s(impl, pas, Dh, dt, N):
        """Time of warmup + minimum repeats, from the same case at the largest smaller N."""
        prev = [m for m in measurements if (m["impl"], m["pass"], m["Dh"], m["dtype"]) ==
                (impl, pas, Dh, dt) and m["ms"] is not None and m["N"] < N]
        if not prev:
            return 0.0
        p = max(prev, key=lambda m: m["N"])
        return 5 * p["ms"] * 1e-3 * (N / p["N"]) ** 2

    for N in cfg["sizes"]:
        for Dh in cfg["dh"]:
            for dt in cfg["dtypes"]:
                dtype = getattr(torch, dt)
                try:
                    x = _inputs(N, Dh, dtype, device, gen)
                except torch.cuda.OutOfMemoryError:
                    x = None
                fns = _fns(x) if x is not None else {}
                for impl in ("flash", "attn", *(f"mlp-R{R}" for R in MLP_WIDTHS)):
                    for pas in PASSES:
                        m = {"impl": impl, "pass": pas, "N": N, "M": N, "Dh": Dh, "dtype": dt,
                             "flops": case_flops(impl, B, H, N, N, Dh, pas), "ms": None,
                             "tflops": None, "skipped": None}
                        left = budget - (time.perf_counter() - t0)
                        need = predicted_s(impl, pas, Dh, dt, N)
                        if x is None:
                            m["skipped"] = "out of memory (inputs)"
                        elif left <= 0 or need > left:
                            m["skipped"] = (f"time budget: {max(left, 0):.0f} s left of {budget:.0f} s, "
                                            f"predicted {need:.1f} s")
                        else:
                            m.update(_measure(fns[impl], x["g"], pas, cfg["target_s"]))
                        if m["ms"] is not None:
                            m["tflops"] = m["flops"] / (m["ms"] * 1e-3) / 1e12
                            log(f"  {dt:8s} Dh={Dh:<3d} N={N:<6d} {pas:8s} {impl:8s} "
                                f"{m['ms']:9.3f} ms  {m['tflops']:6.1f} TFLOP/s  x{m['repeats']}")
                        else:
                            log(f"  {dt:8s} Dh={Dh:<3d} N={N:<6d} {pas:8s} {impl:8s} "
                                f"skipped: {m['skipped']}")
                        measurements.append(m)
                del x, fns
                torch.cuda.empty_cache()

    meta["wall_s"] = time.perf_counter() - t0
    rows = _rows(measurements, cfg)
    return {"meta": meta, "config": cfg, "rows": rows, "targets": _targets(rows),
            "measurements": measurements}


def _measure(fn_params, g, pas, target_s):
    fn, params = fn_params

    def reset():
        for p in params:
            p.grad = None

    if pas == "fwd":
        def call():
            with torch.no_grad():
                fn()
    else:
        def call():
            fn().backward(g)
    try:
        r = _time(call, reset, target_s)
        reset()
        return r
    except torch.cuda.OutOfMemoryError:
        reset()
        torch.cuda.empty_cache()
        return {"skipped": "out of memory"}
    except RuntimeError as e:  # e.g. no flash kernel for this case; keep going
        reset()
        msg = str(e).strip().splitlines()
        return {"skipped": f"error: {msg[0][:200] if msg else type(e).__name__}"}


# ======================================================================================
# rows, targets, table
# ======================================================================================
def _rows(measurements, cfg):
    rows = []
    for dt in cfg["dtypes"]:
        for Dh in cfg["dh"]:
            for N in cfg["sizes"]:
                for pas in PASSES:
                    got = {m["impl"]: m for m in measurements
                           if (m["dtype"], m["Dh"], m["N"], m["pass"]) == (dt, Dh, N, pas)}
                    if not got:
                        continue
                    ms = {impl: got[impl]["ms"] if impl in got else None
                          for impl in ("flash", "attn", "mlp-R16", "mlp-R32")}
                    row = {"dtype": dt, "Dh": Dh, "N": N, "pass": pas,
                           **{f"{i}_ms": v for i, v in ms.items()},
                           **{f"{i}_tflops": (got[i]["tflops"] if i in got else None) for i in ms},
                           # throughput ratio (same flops): flash time / attn time
                           "attn_vs_flash": _ratio(ms["flash"], ms["attn"]),
                           "mlp16_vs_attn": _ratio(ms["mlp-R16"], ms["attn"]),
                           "mlp32_vs_attn": _ratio(ms["mlp-R32"], ms["attn"])}
                    row["attn_target_met"] = (None if row["attn_vs_flash"] is None
                                              else row["attn_vs_flash"] >= TARGET_ATTN_VS_FLASH)
                    row["mlp16_target_met"] = (None if row["mlp16_vs_attn"] is None
                                               else row["mlp16_vs_attn"] <= TARGET_MLP16_VS_ATTN)
                    rows.append(row)
    return rows


def _targets(rows):
    out = []
    for key, ratio, name in (
            ("attn_target_met", "attn_vs_flash",
             f"attention-only throughput >= {TARGET_ATTN_VS_FLASH}x flash backend (every row)"),
            ("mlp16_target_met", "mlp16_vs_attn",
             f"MLP R=16 time <= {TARGET_MLP16_VS_ATTN}x attention-only time (every row)")):
        measured = [r for r in rows if r[key] is not None]
        if not measured:
            out.append({"name": name, "met": None, "detail": "not measured"})
            continue
        bad = [r for r in measured if not r[key]]
        vals = [r[ratio] for r in measured]
        detail = (f"{len(measured) - len(bad)}/{len(measured)} rows met; range "
                  f"{min(vals):.2f}x..{max(vals):.2f}x")
        if bad:
            detail += "; not met: " + ", ".join(
                f"{r['dtype']} Dh={r['Dh']} N={r['N']} {r['pass']} {r[ratio]:.2f}x" for r in bad[:6])
        out.append({"name": name, "met": not bad, "detail": detail,
                    "rows_measured": len(measured), "rows_met": len(measured) - len(bad)})
    return out


def _f(x, spec, width):
    return f"{'-' if x is None else format(x, spec):>{width}s}"


def _met(x):
    return {True: "met", False: "NOT", None: "-"}[x]


def format_table(result):
    if result.get("skipped"):
        return f"CUDA section skipped: {result['skipped']}"
    meta, cfg = result["meta"], result["config"]
    lines = [
        f"itnet_ext.bench --cuda  {meta['gpu_name']} (sm_{meta['gpu_capability'].replace('.', '')}, "
        f"driver {meta['driver_version'] or '?'}) torch={meta['torch_version']} "
        f"CUDA={meta['cuda_version']} commit={(meta['git_commit'] or '?')[:10]}"
        f"{'+dirty' if meta['git_dirty'] else ''} {meta['date']}",
        f"B={cfg['B']} H={cfg['H']} M=N, not causal; mlp = content + MLP term ({cfg['activation']}, "
        f"u, t, W2, b2). ms = median of CUDA-event-timed repeats; TF/s with fwd = 4BHNMDh "
        f"(+ 3RBHNM for the MLP), fwd+bwd = 3.5x fwd.",
        f"vs flash = attn throughput / flash throughput (target >= {TARGET_ATTN_VS_FLASH}); "
        f"x attn = time / attn time (target for R16 <= {TARGET_MLP16_VS_ATTN}).",
    ]
    hdr = (f"{'dtype':8s} {'Dh':>3s} {'N':>6s} {'pass':8s} {'flash ms':>9s} {'attn ms':>9s} "
           f"{'attn TF/s':>9s} {'vs flash':>8s} {'tgt':>4s} {'R16 ms':>9s} {'x attn':>6s} "
           f"{'tgt':>4s} {'R32 ms':>9s} {'x attn':>6s}")
    lines += [hdr, "-" * len(hdr)]
    for r in result["rows"]:
        lines.append(
            f"{r['dtype']:8s} {r['Dh']:3d} {r['N']:6d} {r['pass']:8s} "
            f"{_f(r['flash_ms'], '.3f', 9)} {_f(r['attn_ms'], '.3f', 9)} "
            f"{_f(r['attn_tflops'], '.1f', 9)} {_f(r['attn_vs_flash'], '.2f', 8)} "
            f"{_met(r['attn_target_met']):>4s} {_f(r['mlp-R16_ms'], '.3f', 9)} "
            f"{_f(r['mlp16_vs_attn'], '.2f', 6)} {_met(r['mlp16_target_met']):>4s} "
            f"{_f(r['mlp-R32_ms'], '.3f', 9)} {_f(r['mlp32_vs_attn'], '.2f', 6)}")
    skipped = [m for m in result["measurements"] if m["skipped"]]
    for m in skipped[:20]:
        lines.append(f"skipped {m['impl']} {m['dtype']} Dh={m['Dh']} N={m['N']} {m['pass']}: "
                     f"{m['skipped']}")
    if len(skipped) > 20:
        lines.append(f"... and {len(skipped) - 20} more skipped (see the JSON)")
    lines += ["", "targets:"]
    for t in result["targets"]:
        state = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t["met"]]
        lines.append(f"  [{state}] {t['name']}: {t['detail']}")
    return "\n".join(lines)
