"""Side-by-side speed and memory benchmark: ``python -m itnet_ext.bench``.

In one run, forward (no_grad) and forward+backward, on the same device:

- ``attn``    fused op, content term only          vs ``F.scaled_dot_product_attention``
- ``mlp-R32`` fused op, content + MLP term (R=32)  vs ``itnet_ext.reference`` and vs SDPA
- ``conv1d``  ``IntegralTransform.from_conv1d(conv)`` vs ``F.conv1d`` (64 -> 64 channels, k=5, 'same')
- ``--big`` sizes (default N=8192): the fused op alone, ``attn`` and ``mlp-R32``

Shapes: B=1, H=8, Dh=64, M=N.  Time = median of the timed repeats after one
warmup call (fewer repeats for slow calls, see ``--budget-s``).  Peak memory =
peak *extra* memory of one call above what was resident before it (inputs
excluded, outputs and gradients included); on CPU the kernel's exact
high-water mark of the process RSS (``VmHWM`` after resetting it through
``/proc/self/clear_refs`` and ``malloc_trim``), on CUDA
``torch.cuda.max_memory_allocated``.  See ``bench/README.md``.

Prints a table and a summary of the project's targets, writes JSON (default
``bench/results/<device>_<date>_<time>.json``).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

from . import functional as _fused
from . import reference as _reference
from .nn import IntegralTransform

B, H, DH, R = 1, 8, 64, 32
CONV_CH, CONV_K = 64, 5
MIB = float(1 << 20)
GIB = float(1 << 30)

# the project's targets (DESIGN / issue text)
TARGET_ATTN_VS_SDPA = 1.5  # fused attention-only time <= 1.5x SDPA
TARGET_MLP_VS_SDPA = 2.0  # fused MLP (R=32) time <= 2x SDPA
TARGET_MLP_VS_REF = 4.0  # fused MLP at least 4x faster than the reference ...
TARGET_MLP_VS_REF_N = 2048  # ... at N=2048
TARGET_MEM_SLOPE = 1.25  # log-log slope of peak memory vs N between the two largest N (linear = 1)
TARGET_MEM_N = 8192
TARGET_MEM_BYTES = GIB  # fwd+bwd peak extra memory at N=8192 under 1 GiB

_REPO_ROOT = Path(__file__).resolve().parent.parent


# ======================================================================================
# memory meters
# ======================================================================================
class _CpuPeakMeter:
    """Peak extra resident memory of one call on CPU.

    Preferred ("vmhwm"): release free heap pages (``malloc_trim(0)``), reset the
    kernel's RSS high-water mark (write ``5`` to ``/proc/self/clear_refs``),
    read VmRSS, run the call, read VmHWM: exact, no sampling, sees every
    allocation (torch tensors, kernel scratch, autograd buffers).
    Fallback ("sampled"): a thread reads ``/proc/self/statm`` every ~0.5 ms
    during the call (can miss spikes shorter than that).
    """

    def __init__(self):
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        self.method = "none"
        try:
            self._reset_hwm()
            self._status()
            self.method = "vmhwm"
        except OSError:
            if os.path.exists("/proc/self/statm"):
                self.method = "sampled"
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    description = property(lambda self: {
        "vmhwm": "peak RSS (VmHWM, reset via /proc/self/clear_refs after malloc_trim) minus RSS before the call",
        "sampled": "peak of RSS sampled every 0.5 ms (/proc/self/statm) minus RSS before the call",
        "none": "not measured",
    }[self.method])

    @staticmethod
    def _reset_hwm():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @staticmethod
    def _status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":")
                    out[key] = int(val.split()[0]) * 1024
        return out["VmRSS"], out["VmHWM"]

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def measure(self, fn):
        """Run ``fn`` once; return (seconds, peak extra bytes or None)."""
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        if self.method == "vmhwm":
            self._reset_hwm()
            base, _ = self._status()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            _, hwm = self._status()
            return dt, max(0, hwm - base)
        if self.method == "sampled":
            base = self._rss()
            peak = [base]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], self._rss())
                    time.sleep(0.0005)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            stop.set()
            th.join()
            return dt, max(0, max(peak[0], self._rss()) - base)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, None


class _CudaPeakMeter:
    method = "cuda_max_memory_allocated"
    description = "torch.cuda.max_memory_allocated() during the call minus memory_allocated() before it"

    def __init__(self, device):
        self.device = device

    def measure(self, fn):
        gc.collect()
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        return dt, max(0, torch.cuda.max_memory_allocated(self.device) - base)


# ======================================================================================
# timing
# ======================================================================================
class _Runner:
    def __init__(self, device, repeats, budget_s, log, min_repeat_s=0.02):
        self.min_repeat_s = min_repeat_s
        self.device = device
        self.repeats = repeats
        self.budget_s = budget_s
        self.log = log
        self.meter = _CudaPeakMeter(device) if device.type == "cuda" else _CpuPeakMeter()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fn, reset):
        """One warmup call (memory measured on it), then timed repeats (no meter running).

        ``reset`` runs before every call, outside the timed / metered window.
        Calls shorter than ``min_repeat_s`` (20 ms) are looped inside one repeat (time per call reported).
        Repeats are capped so the timed part takes about ``budget_s`` (at least 1).
        """
        reset()
        self._sync()
        warm_s, peak = self.meter.measure(fn)
        repeats = max(1, min(self.repeats, int(self.budget_s // max(warm_s, 1e-9))))
        mr = self.min_repeat_s
        inner = 1 if warm_s >= mr else min(1000, max(1, math.ceil(mr / max(warm_s, 1e-6))))
        times = []
        for _ in range(repeats):
            total = 0.0
            for _ in range(inner):
                reset()
                self._sync()
                t0 = time.perf_counter()
                fn()
                self._sync()
                total += time.perf_counter() - t0
            times.append(total / inner)
        reset()
        return {
            "ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3,
            "times_ms": [x * 1e3 for x in times],
            "repeats": repeats,
            "inner_loops": inner,
            "warmup_ms": warm_s * 1e3,
            "peak_extra_mb": None if peak is None else peak / MIB,
        }


# ======================================================================================
# cases
# ======================================================================================
def _attn_inputs(N, device, dtype, gen):
    def rnd(*shape, scale=1.0):
        x = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale
        return x.to(device=device, dtype=dtype).requires_grad_(True)

    q, k, v = rnd(B, H, N, DH), rnd(B, H, N, DH), rnd(B, H, N, DH)
    u, t = rnd(B, N, R), rnd(B, N, R)
    W2 = rnd(H, R, scale=R ** -0.5)
    b2 = rnd(H, scale=0.1)
    g = torch.randn(B, H, N, DH, generator=gen).to(device=device, dtype=dtype)
    return dict(q=q, k=k, v=v, u=u, t=t, W2=W2, b2=b2, g=g)


def _forward_fns(x):
    q, k, v, u, t, W2, b2 = (x[n] for n in ("q", "k", "v", "u", "t", "W2", "b2"))
    return {
        "sdpa": (lambda: TF.scaled_dot_product_attention(q, k, v), (q, k, v)),
        "fused_attn": (lambda: _fused.integral_transform(q, k, v), (q, k, v)),
        "fused_mlp": (
            lambda: _fused.integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2, activation="gelu"),
            (q, k, v, u, t, W2, b2),
        ),
        "reference_mlp": (
            lambda: _reference.integral_transform(q, k, v, u=u, t=t, W2=W2, b2=b2, activation="gelu"),
            (q, k, v, u, t, W2, b2),
        ),
    }


def _conv_fns(N, device, dtype, gen):
    conv = torch.nn.Conv1d(CONV_CH, CONV_CH, CONV_K, padding="same").to(device=device, dtype=dtype)
    iconv = IntegralTransform.from_conv1d(conv)
    x = torch.randn(B, CONV_CH, N, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(B, CONV_CH, N, generator=gen).to(device=device, dtype=dtype)
    fns = {
        "conv1d": (lambda: TF.conv1d(x, conv.weight, conv.bias, padding="same"), (x, *conv.parameters())),
        "fused_conv": (lambda: iconv(x), (x, *iconv.parameters())),
    }
    return fns, g


def _passes(fn, params, g):
    """(forward under no_grad, forward + backward of <out, g>) callables and the grad reset."""

    def fwd():
        with torch.no_grad():
            fn()

    def fwd_bwd():
        fn().backward(g)

    def reset():
        for p in params:
            p.grad = None

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}, reset


# ======================================================================================
# metadata
# ======================================================================================
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def _cpu_seconds():
    t = os.times()
    return t.user + t.system


def _metadata(args, device, meter):
    commit, dirty = _git_commit()
    try:
        itnet_cap = torch.ops.itnet.cpu_capability()
    except Exception as e:  # pragma: no cover - depends on the build
        itnet_cap = f"unavailable ({type(e).__name__})"
    meta = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "dtype": args.dtype,
        "torch_version": torch.__version__,
        "torch_git_version": getattr(torch.version, "git_version", None),
        "python_version": platform.python_version(),
        "itnet_cpu_capability": itnet_cap,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_method": meter.method,
        "memory_description": meter.description,
        "argv": sys.argv[1:],
    }
    if device.type == "cuda":
        meta["gpu_name"] = torch.cuda.get_device_name(device)
        meta["cuda_version"] = torch.version.cuda
    return meta


# ======================================================================================
# the run
# ======================================================================================
def _int_list(s):
    s = s.strip()
    return [int(x) for x in s.split(",") if x.strip()] if s else []


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m itnet_ext.bench",
        description="Fused integral transform vs SDPA / reference / conv1d: time and peak memory.",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--sizes", default="1024,2048,4096", help="comma list of N for all comparisons")
    p.add_argument("--big", default="8192", help="comma list of extra N for the fused op alone ('' = none)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after one warmup (median reported)")
    p.add_argument("--budget-s", type=float, default=10.0,
                   help="cap the timed repeats of one measurement to about this many seconds (at least 1 repeat)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--skip-reference-above", type=int, default=2048,
                   help="run the (slow) reference only for N <= this (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: --sizes 32,64 --big 128 --repeats 1, no inner loops")
    p.add_argument("--out", default=None,
                   help="JSON output path (default bench/results/<device>_<date>_<time>.json)")
    p.add_argument("--no-print", action="store_true", help="do not print the table")
    return p


def run(args, log=None):
    """Run the benchmark described by parsed ``args``; return the result dict (also written as JSON)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.quick:
        args.sizes, args.big, args.repeats, args.budget_s = "32,64", "128", 1, min(args.budget_s, 1.0)
    sizes, big = _int_list(args.sizes), _int_list(args.big)
    big = [n for n in big if n not in sizes]
    if not sizes and not big:
        raise SystemExit("nothing to run: --sizes and --big are both empty")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    runner = _Runner(device, args.repeats, args.budget_s, log, min_repeat_s=0.0 if args.quick else 0.02)
    meta = _metadata(args, device, runner.meter)
    # move the (many, long-lived) objects of the imports out of the collector's way,
    # so that the gc.collect() before each measurement is cheap
    gc.collect()
    gc.freeze()
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    gen = torch.Generator().manual_seed(args.seed)

    # one tiny call of every implementation first, so that one-time initialisation
    # (thread pools, lazy dispatch tables) lands in no measurement
    x = _attn_inputs(32, device, dtype, gen)
    for fn, params in _forward_fns(x).values():
        fn().backward(x["g"])
    fns, g = _conv_fns(32, device, dtype, gen)
    for fn, _ in fns.values():
        fn().backward(g)
    del x, fns, g

    measurements = []

    def record(impl, mode, N, pas, fn, reset):
        try:
            m = runner.measure(fn, reset)
            m["error"] = None
        except Exception as e:  # keep going: report the failure in the table / JSON
            m = {"ms": None, "min_ms": None, "times_ms": [], "repeats": 0, "inner_loops": 0, "warmup_ms": None,
                 "peak_extra_mb": None, "error": f"{type(e).__name__}: {e}"}
        m = {"impl": impl, "mode": mode, "N": N, "pass": pas, **m}
        measurements.append(m)
        if m["error"]:
            log(f"  {mode:8s} N={N:<6d} {pas:8s} {impl:14s} ERROR {m['error']}")
        else:
            mem = "n/a" if m["peak_extra_mb"] is None else f"{m['peak_extra_mb']:.1f} MiB"
            log(f"  {mode:8s} N={N:<6d} {pas:8s} {impl:14s} {m['ms']:10.2f} ms  x{m['repeats']}"
                f"{'' if m['inner_loops'] == 1 else '*' + str(m['inner_loops'])}  peak {mem}")

    for N in sizes + big:
        alone = N in big
        log(f"N={N}{' (fused alone)' if alone else ''}")
        x = _attn_inputs(N, device, dtype, gen)
        fns = _forward_fns(x)
        plan = [("attn", "fused_attn"), ("mlp-R32", "fused_mlp")]
        if not alone:
            plan = [("attn", "sdpa")] + plan
            if N <= args.skip_reference_above:
                plan.append(("mlp-R32", "reference_mlp"))
        for mode, impl in plan:
            fn, params = fns[impl]
            passes, reset = _passes(fn, params, x["g"])
            for pas, call in passes.items():
                record(impl, mode, N, pas, call, reset)
        del x, fns
        if not alone:
            cfns, g = _conv_fns(N, device, dtype, gen)
            for impl in ("conv1d", "fused_conv"):
                fn, params = cfns[impl]
                passes, reset = _passes(fn, params, g)
                for pas, call in passes.items():
                    record(impl, "conv1d", N, pas, call, reset)
            del cfns, g

    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta["wall_s"] = time.perf_counter() - t_start
    # process CPU time / (wall * threads): well below 1 means the run shared the cores
    meta["cpu_utilization"] = (_cpu_seconds() - cpu_start) / (meta["wall_s"] * torch.get_num_threads())
    config = {"B": B, "H": H, "Dh": DH, "R": R, "activation": "gelu", "conv": {
        "in_channels": CONV_CH, "out_channels": CONV_CH, "kernel_size": CONV_K, "padding": "same"},
        "sizes": sizes, "big": big, "repeats": args.repeats, "budget_s": args.budget_s,
        "skip_reference_above": args.skip_reference_above, "seed": args.seed}
    rows = _rows(measurements, sizes, big)
    targets = _targets(measurements, rows)
    result = {"meta": meta, "config": config, "rows": rows, "targets": targets, "measurements": measurements}
    return result


# ======================================================================================
# rows, targets, table
# ======================================================================================
def _find(measurements, impl, N, pas):
    for m in measurements:
        if m["impl"] == impl and m["N"] == N and m["pass"] == pas:
            return m
    return None


_MODE_PAIRS = [  # (mode, baseline impl, fused impl)
    ("attn", "sdpa", "fused_attn"),
    ("mlp-R32", "reference_mlp", "fused_mlp"),
    ("mlp-R32", "sdpa", "fused_mlp"),
    ("conv1d", "conv1d", "fused_conv"),
]
_BASELINE_NAMES = {"sdpa": "sdpa", "reference_mlp": "reference", "conv1d": "F.conv1d"}


def _rows(measurements, sizes, big):
    rows = []

    def row(mode, N, pas, base_impl, f, b):
        ratio = f["ms"] / b["ms"] if b is not None and b["ms"] and f["ms"] is not None else None
        return {
            "mode": mode, "N": N, "pass": pas,
            "baseline": None if b is None else _BASELINE_NAMES[base_impl],
            "baseline_ms": None if b is None else b["ms"],
            "fused_ms": f["ms"],
            "ratio": ratio,
            "baseline_peak_mb": None if b is None else b["peak_extra_mb"],
            "fused_peak_mb": f["peak_extra_mb"],
        }

    for N in sizes:
        for mode, base_impl, fused_impl in _MODE_PAIRS:
            for pas in ("fwd", "fwd+bwd"):
                f, b = _find(measurements, fused_impl, N, pas), _find(measurements, base_impl, N, pas)
                if f is not None and b is not None:  # (the reference may be skipped at this N)
                    rows.append(row(mode, N, pas, base_impl, f, b))
    for N in big:  # the fused op alone
        for mode, fused_impl in (("attn", "fused_attn"), ("mlp-R32", "fused_mlp")):
            for pas in ("fwd", "fwd+bwd"):
                f = _find(measurements, fused_impl, N, pas)
                if f is not None:
                    rows.append(row(mode, N, pas, None, f, None))
    return rows


def _target(name, met, detail, **values):
    return {"name": name, "met": met, "detail": detail, **values}


def _targets(measurements, rows):
    out = []
    sizes_rows = [r for r in rows if r["baseline"] is not None]

    for mode, limit, label in (("attn", TARGET_ATTN_VS_SDPA, "attention-only"),
                               ("mlp-R32", TARGET_MLP_VS_SDPA, "MLP R=32")):
        for pas in ("fwd", "fwd+bwd"):
            rs = [r for r in sizes_rows if r["mode"] == mode and r["baseline"] == "sdpa" and r["pass"] == pas]
            ratios = {r["N"]: r["ratio"] for r in rs if r["ratio"] is not None}
            name = f"{label} {pas} time <= {limit}x SDPA (all N)"
            if not ratios:
                out.append(_target(name, None, "not measured"))
                continue
            worst_n = max(ratios, key=ratios.get)
            met = all(v <= limit for v in ratios.values())
            detail = ", ".join(f"N={n}: {v:.2f}x" for n, v in sorted(ratios.items()))
            out.append(_target(name, met, detail, ratios={str(n): v for n, v in ratios.items()},
                               worst=ratios[worst_n], worst_N=worst_n))

    for pas in ("fwd", "fwd+bwd"):
        name = f"MLP R=32 {pas} >= {TARGET_MLP_VS_REF}x faster than reference at N={TARGET_MLP_VS_REF_N}"
        f = _find(measurements, "fused_mlp", TARGET_MLP_VS_REF_N, pas)
        b = _find(measurements, "reference_mlp", TARGET_MLP_VS_REF_N, pas)
        if f is None or b is None or not f["ms"] or b["ms"] is None:
            out.append(_target(name, None, "not measured"))
            continue
        speedup = b["ms"] / f["ms"]
        out.append(_target(name, speedup >= TARGET_MLP_VS_REF,
                           f"reference {b['ms']:.0f} ms / fused {f['ms']:.0f} ms = {speedup:.2f}x", speedup=speedup))

    for impl, label in (("fused_attn", "attention-only"), ("fused_mlp", "MLP R=32")):
        for pas in ("fwd", "fwd+bwd"):
            pts = sorted((m["N"], m["peak_extra_mb"]) for m in measurements
                         if m["impl"] == impl and m["pass"] == pas and m["peak_extra_mb"])
            name = f"{label} {pas} peak extra memory linear in N (log-log slope <= {TARGET_MEM_SLOPE})"
            if len(pts) < 2:
                out.append(_target(name, None, "not measured (needs 2 sizes)"))
                continue
            (n1, p1), (n2, p2) = pts[-2], pts[-1]
            slope = math.log(p2 / p1) / math.log(n2 / n1)
            detail = f"slope {slope:.2f} between N={n1} ({p1:.1f} MiB) and N={n2} ({p2:.1f} MiB); " + \
                     "MiB per 1k N: " + ", ".join(f"{n}: {p / n * 1024:.1f}" for n, p in pts)
            out.append(_target(name, slope <= TARGET_MEM_SLOPE, detail, slope=slope,
                               points={str(n): p for n, p in pts}))

    for impl, label in (("fused_attn", "attention-only"), ("fused_mlp", "MLP R=32")):
        name = f"{label} fwd+bwd peak extra memory at N={TARGET_MEM_N} < 1 GiB"
        m = _find(measurements, impl, TARGET_MEM_N, "fwd+bwd")
        if m is None or m["peak_extra_mb"] is None:
            out.append(_target(name, None, "not measured"))
            continue
        out.append(_target(name, m["peak_extra_mb"] * MIB < TARGET_MEM_BYTES,
                           f"{m['peak_extra_mb']:.1f} MiB", peak_mb=m["peak_extra_mb"]))
    return out


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def format_table(result):
    meta, rows = result["meta"], result["rows"]
    lines = []
    lines.append(
        f"itnet_ext.bench  device={meta['device']} dtype={meta['dtype']} threads={meta['threads']} "
        f"cpu={meta['cpu_model']} itnet_capability={meta['itnet_cpu_capability']} torch={meta['torch_version']} "
        f"commit={(meta['git_commit'] or '?')[:10]}{'+dirty' if meta['git_dirty'] else ''}")
    la, lb = meta.get("loadavg_start"), meta.get("loadavg_end")
    if la and lb:
        lines.append(f"load average (1 min) at start {la[0]:.2f}, at end {lb[0]:.2f} "
                     f"on {meta['cpu_count']} CPUs; wall {meta['wall_s']:.0f} s; CPU utilization "
                     f"{meta['cpu_utilization']:.2f} of {meta['threads']} threads (< ~0.9: the cores were shared)")
    c = result["config"]
    lines.append(f"B={c['B']} H={c['H']} Dh={c['Dh']} R={c['R']} (gelu), M=N; conv1d {c['conv']['in_channels']}->"
                 f"{c['conv']['out_channels']} k={c['conv']['kernel_size']} 'same'. ms = median of timed repeats "
                 f"after a warmup; ratio = fused / baseline time.")
    lines.append(f"peak MiB = peak extra memory of one call: {meta['memory_description']} "
                 f"(inputs excluded; outputs, grads, scratch included).")
    hdr = f"{'mode':8s} {'N':>6s} {'pass':8s} {'baseline':10s} {'base ms':>10s} {'fused ms':>10s} " \
          f"{'ratio':>7s} {'base MiB':>9s} {'fused MiB':>9s}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in rows:
        lines.append(
            f"{r['mode']:8s} {r['N']:6d} {r['pass']:8s} {r['baseline'] or '-':10s} "
            f"{_fmt(r['baseline_ms'], '10.2f'):>10s} {_fmt(r['fused_ms'], '10.2f'):>10s} "
            f"{_fmt(r['ratio'], '7.2f'):>7s} {_fmt(r['baseline_peak_mb'], '9.1f'):>9s} "
            f"{_fmt(r['fused_peak_mb'], '9.1f'):>9s}")
    errors = [m for m in result["measurements"] if m["error"]]
    for m in errors:
        lines.append(f"ERROR {m['impl']} N={m['N']} {m['pass']}: {m['error']}")
    lines.append("")
    lines.append("targets:")
    for t in result["targets"]:
        state = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t["met"]]
        lines.append(f"  [{state}] {t['name']}: {t['detail']}")
    return "\n".join(lines)


def _default_out(device):
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    base = _REPO_ROOT / "bench" / "results" if (_REPO_ROOT / "bench").is_dir() else Path("bench") / "results"
    return base / f"{device.type}_{stamp}.json"


def write_json(result, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    result = run(args)
    out = Path(args.out) if args.out else _default_out(torch.device(args.device))
    path = write_json(result, out)
    if not args.no_print:
        print(format_table(result))
        print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
