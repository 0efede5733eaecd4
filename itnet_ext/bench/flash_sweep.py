"""The flash configuration sweep, timed: ``python -m itnet_ext.bench.flash_sweep``.

Every compiled flash configuration (itnet_ext.dense.sweep; the build needs
``ITNET_FLASH_SWEEP=all``) against SDPA's flash backend, in one call on a GPU:

- forward configurations (``b{rows}x{keys}_w{warps}_s{stages}[_packed]``), forward pass;
- backward configurations (``w{warps}_t{tile}``), forward + backward (default forward);
- each in two modes: ``attn`` (content term only, softmax) and ``mlp-R16`` (plus the pair MLP,
  R = 16, gelu: the activation the sweep instances are compiled for);
- float16 and bfloat16, head dims 64 and 128, N = M in {4096, 16384}, B = 4, H = 16, not
  causal (the GPU issue's goals), FlashAttention's FLOP convention (itnet_ext.bench.cuda);
- per row: the median time, TFLOP/s, the throughput ratio to SDPA-flash, the speed-up over the
  default configuration ("default"), and the output's largest difference from the default
  configuration's, relative to its largest entry (the packed-MLP error shows there);
- per (dtype, head dim, N, mode, pass): the fastest configuration.

Measurements stop when ``--time-budget-s`` is spent (the rest is recorded as skipped). Results:
JSON and a Markdown table under bench/results/ (``flash_sweep_<card>_<stamp>``).

``--emulate`` runs the same loop on the CPU under the device emulator (an ``ITNET_EMULATE=1``
build) at a tiny size, without SDPA: times there mean nothing; it checks that every
configuration runs and agrees with the default one (the tests use it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

from . import cuda as _cuda

B, H = 4, 16
SIZES = (4096, 16384)
HEAD_DIMS = (64, 128)
DTYPES = ("float16", "bfloat16")
R = 16
ACTIVATION = "gelu"
MODES = ("attn", f"mlp-R{R}")


def _inputs(B_, H_, N, Dh, dtype, device, gen):
    def rnd(*shape, scale=1.0, grad=True):
        x = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale
        return x.to(dtype).requires_grad_(grad)

    q, k, v = rnd(B_, H_, N, Dh), rnd(B_, H_, N, Dh), rnd(B_, H_, N, Dh)
    mlp = {"u": rnd(B_, N, R), "t": rnd(B_, N, R), "W2": rnd(H_, R, scale=R ** -0.5),
           "b2": rnd(H_, scale=0.1)}
    return q, k, v, mlp, rnd(B_, H_, N, Dh, grad=False)


def _fn(mode, q, k, v, mlp):
    from .. import functional
    if mode == "attn":
        return (lambda: functional.integral_transform(q, k, v)), (q, k, v)
    return (lambda: functional.integral_transform(q, k, v, activation=ACTIVATION, **mlp),
            (q, k, v, *mlp.values()))


def _sdpa(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def call():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return TF.scaled_dot_product_attention(q, k, v)
    return call, (q, k, v)


def _timer(emulated, target_s):
    """(fn_params, g, pas) -> {"ms": median, ...} or {"skipped": why}."""
    if not emulated:
        return lambda fp, g, pas: _cuda._measure(fp, g, pas, target_s)

    def wall(fp, g, pas):  # one call, CPU wall clock (meaningless but for the plumbing)
        fn, params = fp
        t = time.perf_counter()
        if pas == "fwd":
            with torch.no_grad():
                fn()
        else:
            fn().backward(g)
        for p in params:
            p.grad = None
        return {"ms": (time.perf_counter() - t) * 1e3, "repeats": 1}
    return wall


def run(args, log=None):
    from ..dense import sweep
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    emulated = bool(args.emulate)
    if emulated:
        from .. import emulate
        emulate.load()
        device = torch.device("cpu")
        meta = {"device": "cpu (device emulator)", "torch_version": torch.__version__}
        mode_ctx = emulate.emulate_cuda
        sizes, b, h = [args.emu_size], 1, 2
    else:
        reason = _cuda.unavailable_reason()
        if reason is not None:
            return {"skipped": reason}
        device = torch.device("cuda", torch.cuda.current_device())
        meta = _cuda._metadata(device)
        meta["section"] = "flash_sweep"
        mode_ctx = contextlib.nullcontext
        sizes = _cuda._list(args.sizes, int, "sizes")
        b, h = B, H
    dhs = _cuda._list(args.dh, int, "dh", allowed=HEAD_DIMS)
    dtypes = _cuda._list(args.dtypes, str, "dtypes", allowed=DTYPES)
    fwd_cfgs, bwd_cfgs = sweep.configs(False, emulated), sweep.configs(True, emulated)
    if not fwd_cfgs or not bwd_cfgs:
        return {"skipped": "the flash sweep is not compiled: rebuild with ITNET_FLASH_SWEEP=all "
                           "(pip install --no-build-isolation -e .)"}
    measure = _timer(emulated, args.target_s)
    cfg = {"B": b, "H": h, "R": R, "activation": ACTIVATION, "sizes": sizes, "dh": dhs,
           "dtypes": dtypes, "fwd_configs": fwd_cfgs, "bwd_configs": bwd_cfgs,
           "time_budget_s": args.time_budget_s, "emulated": emulated}
    rows = []
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def add(dt, Dh, N, mode, pas, config, r, err=None, flash_ms=None, default_ms=None):
        row = {"dtype": dt, "dh": Dh, "N": N, "mode": mode, "pass": pas, "config": config or "default"}
        if "skipped" in r:
            row["skipped"] = r["skipped"]
        else:
            flops = _cuda.case_flops(mode, b, h, N, N, Dh, pas)
            row.update(ms=r["ms"], tflops=flops / (r["ms"] * 1e-3) / 1e12,
                       vs_flash=None if not flash_ms else flash_ms / r["ms"],
                       vs_default=None if not default_ms else default_ms / r["ms"], err=err)
        rows.append(row)
        log(f"  {dt:8s} d{Dh:<3d} N{N:<6d} {mode:8s} {pas:7s} {row['config']:22s} "
            + (f"skipped: {row['skipped']}" if "skipped" in row else
               f"{row['ms']:9.3f} ms  {row['tflops']:7.2f} TFLOP/s"
               + ("" if row["vs_flash"] is None else f"  {row['vs_flash']:.2f}x flash")
               + ("" if err is None else f"  err {err:.1e}")))
        return row

    with mode_ctx():
        for dt in dtypes:
            dtype = getattr(torch, dt)
            for Dh in dhs:
                for N in sizes:
                    q, k, v, mlp, g = _inputs(b, h, N, Dh, dtype, device, gen)
                    flash_ms = {}
                    if not emulated:
                        for pas in ("fwd", "fwd+bwd"):
                            r = measure(_sdpa(q, k, v), g, pas)
                            flash_ms[pas] = r.get("ms")
                            add(dt, Dh, N, "attn", pas, "sdpa-flash", r)
                    for mode in MODES:
                        fp = _fn(mode, q, k, v, mlp)
                        with torch.no_grad():
                            ref = fp[0]().float()
                        scale = ref.abs().max().item() or 1.0
                        for pas, names in (("fwd", fwd_cfgs), ("fwd+bwd", bwd_cfgs)):
                            default_ms = None
                            for name in [""] + names:
                                if time.perf_counter() - t0 > args.time_budget_s:
                                    add(dt, Dh, N, mode, pas, name, {"skipped": "time budget"})
                                    continue
                                use = (sweep.use(fwd=name, emulated=emulated) if pas == "fwd"
                                       else sweep.use(bwd=name, emulated=emulated))
                                with use:
                                    err = None
                                    try:
                                        if pas == "fwd":
                                            with torch.no_grad():
                                                out = fp[0]().float()
                                            err = (out - ref).abs().max().item() / scale
                                            del out
                                        r = measure(fp, g, pas)
                                    except RuntimeError as e:
                                        # e.g. an instance not compiled (a partial sweep
                                        # build), out of memory: recorded, the sweep goes on
                                        msg = str(e).strip().splitlines()
                                        r = {"skipped": f"error: {msg[0][:200] if msg else e}"}
                                row = add(dt, Dh, N, mode, pas, name, r, err,
                                          flash_ms.get("fwd" if mode == "attn" and pas == "fwd"
                                                       else "fwd+bwd" if mode == "attn" else None),
                                          default_ms)
                                if not name:
                                    default_ms = row.get("ms")
                    del q, k, v, mlp, g
                    if not emulated:
                        torch.cuda.empty_cache()
    meta["wall_s"] = time.perf_counter() - t0
    return {"meta": meta, "config": cfg, "rows": rows, "best": best(rows)}


def best(rows):
    """The fastest configuration per (dtype, dh, N, mode, pass), with its ratios; for the MLP
    mode also ``vs_attn``: its time over the fastest attention-only time of the same case (the
    goal is <= 2)."""
    out = {}
    for r in rows:
        if "ms" not in r or r["config"] == "sdpa-flash":
            continue
        key = (r["dtype"], r["dh"], r["N"], r["mode"], r["pass"])
        if key not in out or r["ms"] < out[key]["ms"]:
            out[key] = r
    result = []
    for (dt, dh, N, mode, pas), r in sorted(out.items()):
        r = dict(r)
        attn = out.get((dt, dh, N, "attn", pas))
        r["vs_attn"] = r["ms"] / attn["ms"] if mode != "attn" and attn else None
        result.append(r)
    return result


def _f(x, spec):
    return "-" if x is None else format(x, spec)


def format_table(result):
    if "skipped" in result:
        return f"flash sweep skipped: {result['skipped']}\n"
    m, c = result["meta"], result["config"]
    lines = [f"# Flash configuration sweep: {m.get('gpu_name', m.get('device'))}",
             "",
             f"driver {m.get('driver_version')}, torch {m.get('torch_version')}, CUDA "
             f"{m.get('cuda_version')}, commit {m.get('git_commit')}, {m.get('date')}; "
             f"B={c['B']} H={c['H']} R={c['R']} ({c['activation']}), not causal, "
             f"{m['wall_s']:.0f} s",
             "",
             "## Fastest configuration per case",
             "",
             "| dtype | dh | N | mode | pass | config | ms | TFLOP/s | vs flash | vs default "
             "| time / attn |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["best"]:
        lines.append(f"| {r['dtype']} | {r['dh']} | {r['N']} | {r['mode']} | {r['pass']} | "
                     f"{r['config']} | {r['ms']:.3f} | {r['tflops']:.1f} | "
                     f"{_f(r['vs_flash'], '.2f')} | {_f(r['vs_default'], '.2f')} | "
                     f"{_f(r['vs_attn'], '.2f')} |")
    lines += ["", "## Every measurement", "",
              "| dtype | dh | N | mode | pass | config | ms | TFLOP/s | vs flash | vs default "
              "| err vs default |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['dtype']} | {r['dh']} | {r['N']} | {r['mode']} | {r['pass']} | "
                         f"{r['config']} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['dtype']} | {r['dh']} | {r['N']} | {r['mode']} | {r['pass']} | "
                     f"{r['config']} | {r['ms']:.3f} | {r['tflops']:.1f} | "
                     f"{_f(r['vs_flash'], '.2f')} | {_f(r['vs_default'], '.2f')} | "
                     f"{_f(r['err'], '.1e')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m itnet_ext.bench.flash_sweep",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="N = M values")
    p.add_argument("--dh", default=",".join(map(str, HEAD_DIMS)), help="head dims (64, 128)")
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--target-s", type=float, default=0.1, help="timed seconds per measurement")
    p.add_argument("--time-budget-s", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (the .md table beside it); default bench/results/")
    p.add_argument("--emulate", action="store_true",
                   help="CPU, device emulator, tiny size: checks every configuration runs")
    p.add_argument("--emu-size", type=int, default=80, help="N = M under --emulate")
    args = p.parse_args(argv)
    result = run(args)
    table = format_table(result)
    print(table)
    if "skipped" in result:
        return 1
    out = args.out
    if out is None:
        card = result["meta"].get("gpu_name", "emulator")
        out = _cuda.default_out(card).with_name(
            _cuda.default_out(card).name.replace("cuda_", "flash_sweep_", 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
