"""Results of ``python -m itnet_ext.bench``: metadata, rows, targets, table and JSON."""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .measure import GIB, MIB, _Runner

# the project's targets (the issues)
TARGET_ATTN_VS_SDPA = 1.5  # fused attention-only time <= 1.5x SDPA
TARGET_MLP_VS_SDPA = 2.0  # fused MLP (R=32) time <= 2x SDPA
TARGET_MLP_VS_REF = 4.0  # fused MLP at least 4x faster than the reference ...
TARGET_MLP_VS_REF_N = 2048  # ... at N=2048
TARGET_MEM_SLOPE = 1.25  # log-log slope of peak memory vs N between the two largest N (linear = 1)
TARGET_MEM_N = 8192
TARGET_MEM_BYTES = GIB  # fwd+bwd peak extra memory at N=8192 under 1 GiB

_REPO_ROOT = Path(__file__).resolve().parent.parent.parent


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
    # a copied tree (the GPU machine) may carry a stale .git: ITNET_GIT_COMMIT wins
    if os.environ.get("ITNET_GIT_COMMIT"):
        return os.environ["ITNET_GIT_COMMIT"], False
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


def run_section(args, parser, *, prefix, config, run, format_table, plot=None):
    """One bench section (``--scan``, ``--sparse``, ``--lowrank``, ``--peers``): check its
    options (an argparse error for a bad one), run it, write the JSON (``--out``, default
    bench/results/<prefix>_<device>_<stamp>.json), the table beside it (.txt) and, with
    ``plot(result, png_path)``, the figure (.png; skipped with a message without
    matplotlib), print the table. Returns the result dict."""
    try:
        config(args)
    except ValueError as e:
        parser.error(str(e))
    result = run(args)
    if args.out:
        out = Path(args.out)
    else:
        out = _default_out(torch.device(args.device))
        out = out.with_name(f"{prefix}_{out.name}")
    path = write_json(result, out)
    table = format_table(result)
    txt = path.with_suffix(".txt")
    txt.write_text(table + "\n")
    png = write_plot(plot, result, path) if plot is not None else None
    if not args.no_print:
        print(table)
        print(f"\nwrote {path} and {txt}" + (f" and {png}" if png else ""))
    return result


def write_plot(plot, result, json_path):
    """``plot(result, png)`` beside the JSON; None (and a message) without matplotlib."""
    png = Path(json_path).with_suffix(".png")
    try:
        import matplotlib
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib, or "
              "pip install -e '.[experiments]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    plot(result, png)
    return png


class Section:
    """The start and end every bench section's run shares (``--scan``, ``--sparse``,
    ``--lowrank``): device check, threads, dtype, the runner, the metadata, a frozen garbage
    collector (cheap collections before each measurement), and at :meth:`finish` the load,
    wall time and CPU utilization of the run in ``meta``."""

    def __init__(self, args, cfg, log=None):
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        self.dtype = getattr(torch, cfg["dtype"])
        self.runner = _Runner(self.device, cfg["repeats"], cfg["budget_s"], self.log,
                              min_repeat_s=0.0 if args.quick else 0.02)
        self.meta = _metadata(args, self.device, self.runner.meter)
        gc.collect()
        gc.freeze()
        self._t0, self._cpu0 = time.perf_counter(), _cpu_seconds()

    def finish(self):
        meta = self.meta
        meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        meta["wall_s"] = time.perf_counter() - self._t0
        meta["cpu_utilization"] = ((_cpu_seconds() - self._cpu0)
                                   / (meta["wall_s"] * torch.get_num_threads()))
        return meta


def section_header(flag, result):
    """The first lines of a section's table: what ran where, and how loaded the machine was."""
    meta, cfg = result["meta"], result["config"]
    lines = [
        f"itnet_ext.bench {flag}  device={meta['device']} dtype={cfg['dtype']} threads={meta['threads']} "
        f"cpu={meta['cpu_model']} torch={meta['torch_version']} "
        f"commit={(meta['git_commit'] or '?')[:10]}{'+dirty' if meta['git_dirty'] else ''}"]
    if meta.get("loadavg_start") and meta.get("loadavg_end"):
        lines.append(f"load average (1 min) at start {meta['loadavg_start'][0]:.2f}, at end "
                     f"{meta['loadavg_end'][0]:.2f} on {meta['cpu_count']} CPUs; wall {meta['wall_s']:.0f} s; "
                     f"CPU utilization {meta['cpu_utilization']:.2f} of {meta['threads']} threads "
                     "(< ~0.9: the cores were shared)")
    return lines
