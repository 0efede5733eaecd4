"""Command line and the run of ``python -m itnet_ext.bench``."""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

from .cuda import cuda_config, run_cuda
from .cuda import default_out as cuda_default_out
from .cuda import format_table as format_cuda_table
from .cases import B, CONV_CH, CONV_K, DH, H, R, _attn_inputs, _conv_fns, _forward_fns, _passes
from .measure import _Runner
from .report import (_cpu_seconds, _default_out, _metadata, _rows, _targets, format_table,
                     write_json, write_plot)
from .lowrank import main_lowrank
from .scan import main_scan
from .sparse import main_sparse
from .distributed import main_distributed
from .peers import main_peers
from .plots import plot_main


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
    p.add_argument("--sizes", default=None,
                   help="comma list of N for all comparisons (default 1024,2048,4096; "
                        "with --cuda 1024,4096,16384)")
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
                   help="smoke test: --sizes 32,64 --big 128 --repeats 1, no inner loops "
                        "(with --scan: T=32,96, D=64, 1 repeat; with --sparse: N=256,512, S=4,8,16, GNO 512 points; "
                        "with --lowrank: N=256,512, 20 fit steps)")
    p.add_argument("--out", default=None,
                   help="JSON output path (default bench/results/<device>_<date>_<time>.json)")
    p.add_argument("--no-print", action="store_true", help="do not print the table")
    g = p.add_argument_group("regression gate (see itnet_ext/bench/compare.py)")
    g.add_argument("--compare", metavar="OLD.json", default=None,
                   help="after the run, compare its ratios with a stored run of the same "
                        "section; exit status 1 if any is more than --compare-tolerance worse")
    g.add_argument("--compare-new", metavar="NEW.json", default=None,
                   help="with --compare: compare this stored run instead of running")
    g.add_argument("--compare-tolerance", type=float, default=0.15,
                   help="fraction a ratio may worsen before it is flagged (default 0.15)")
    g = p.add_argument_group("CUDA section (--cuda; see itnet_ext/bench/cuda.py)")
    g.add_argument("--cuda", action="store_true",
                   help="run the CUDA section instead: fp16/bf16 tensor-core kernels vs the SDPA "
                        "flash backend, MLP mode vs attention-only (B=4, H=16)")
    g.add_argument("--dtypes", default=None, help="comma list of float16,bfloat16 (default both)")
    g.add_argument("--dh", default=None, help="comma list of head dims (default 64,128)")
    g.add_argument("--target-s", type=float, default=0.2,
                   help="timed seconds per measurement (3 to 50 repeats; default 0.2)")
    g.add_argument("--time-budget-s", type=float, default=75.0,
                   help="skip the measurements predicted to overrun this many seconds (default 75)")
    g = p.add_argument_group("decay-scan section (--scan; see itnet_ext/bench/scan.py)")
    g.add_argument("--scan", action="store_true",
                   help="run the decay-scan benchmark instead: fused decay_scan vs the sequential loop, "
                        "chunked SSD and the dense causal transform (B=2, D=1024, Rk=16)")
    g.add_argument("--scan-sizes", default=None, help="comma list of T (default 1024,4096,16384)")
    g.add_argument("--scan-chunk", type=int, default=None,
                   help="ssd chunk length (default: the power of two nearest (2T)^(1/3))")
    g.add_argument("--scan-loop-bwd-max-t", type=int, default=4096,
                   help="skip the loop's fwd+bwd above this T (its autograd graph keeps every step)")
    g.add_argument("--scan-dense-max-t", type=int, default=4096, help="skip dense above this T (O(T^2))")
    g.add_argument("--scan-call-limit-s", type=float, default=120.0,
                   help="skip a baseline whose call the previous T predicts to exceed this (default 120)")
    g = p.add_argument_group("sparse / sampled section (--sparse; see itnet_ext/bench/sparse.py)")
    g.add_argument("--sparse", action="store_true",
                   help="run the sparse benchmark instead: Monte Carlo sparse_integral_transform vs the dense op "
                        "(time and error vs S), and the GNO point-cloud layer, fused vs neuraloperator's "
                        "formulation in PyTorch")
    g.add_argument("--sparse-part", default="all", help="all, mc or gno (default all)")
    g.add_argument("--sparse-sizes", default=None, help="mc: comma list of N (default 4096,16384)")
    g.add_argument("--sparse-s", default=None, help="mc: comma list of samples per query S (default 8,...,256)")
    g.add_argument("--sparse-seeds", type=int, default=3, help="mc: samples averaged for the error (default 3)")
    g.add_argument("--sparse-targets", default=None,
                   help="mc: comma list of relative errors for the equal-error comparison (default 0.05,0.01)")
    g.add_argument("--sparse-call-limit-s", type=float, default=20.0,
                   help="mc: skip an equal-error measurement whose call is predicted to exceed this (default 20)")
    g.add_argument("--sparse-gno-n", type=int, default=None, help="gno: number of points (default 4096)")
    g.add_argument("--sparse-gno-degree", type=float, default=None, help="gno: mean degree (default 50)")
    g.add_argument("--sparse-gno-r", default=None, help="gno: comma list of kernel MLP widths R (default 64,32)")
    g = p.add_argument_group("low-rank section (--lowrank; see itnet_ext/bench/lowrank.py)")
    g.add_argument("--lowrank", action="store_true",
                   help="run the low-rank benchmark instead: a dense IntegralTransform (E=64, H=4, content + MLP "
                        "R=16, softmax) vs the low-rank layer lowrank.fit distils from it: time, peak memory and "
                        "output error vs N, the crossover N and the log-log slopes")
    g.add_argument("--lowrank-sizes", default=None,
                   help="comma list of N (default 64,128,...,65536; --quick 256,512)")
    g.add_argument("--lowrank-rank", type=int, default=16, help="features per head F of the low-rank layer (16)")
    g.add_argument("--lowrank-fit-steps", type=int, default=None, help="lowrank.fit steps (default 200; --quick 20)")
    g.add_argument("--lowrank-fit-n", type=int, default=None,
                   help="points per fit sample, 8 samples (default 512; --quick 128)")
    g.add_argument("--lowrank-err-rows", type=int, default=None,
                   help="random query rows of the error at every N (default 1024; --quick 64)")
    g.add_argument("--lowrank-dense-max-n", type=int, default=32768,
                   help="do not run the dense layer above this N (O(N^2); default 32768)")
    g.add_argument("--lowrank-dense-call-limit-s", type=float, default=45.0,
                   help="do not run a dense call predicted (quadratic from the previous N) to exceed this (45)")
    g = p.add_argument_group("peers section (--peers; see itnet_ext/bench/peers.py)")
    g.add_argument("--peers", action="store_true",
                   help="FlexAttention (MLP score_mod), neuraloperator's GNO and "
                        "performer-pytorch's FAVOR+ against the fused ops "
                        "(pip install -e '.[peers]'; a missing peer is skipped)")
    g.add_argument("--peers-which", default=None,
                   help="comma list of flex,neuralop,performer,scan,conv (default all)")
    g.add_argument("--peers-scan-t", type=int, default=1024,
                   help="scan: sequence length T (default 1024; SSD takes ~8 s per fwd+bwd call there)")
    g.add_argument("--peers-sizes", default="1024,2048",
                   help="N of the flex and performer comparisons (default 1024,2048)")
    g.add_argument("--peers-gno-n", type=int, default=4096, help="GNO points (default 4096)")
    g.add_argument("--peers-gno-degree", type=float, default=54.0,
                   help="GNO mean neighbours per point (default 54)")
    g.add_argument("--peers-features", type=int, default=256,
                   help="FAVOR+ random features F (default 256; the error sweep runs "
                        "16..F)")
    g = p.add_argument_group("distributed section (--distributed; see itnet_ext/bench/distributed.py)")
    g.add_argument("--distributed", action="store_true",
                   help="strong / weak scaling of the sharded ops over gloo CPU processes")
    g.add_argument("--dist-n", type=int, default=4096, help="strong scaling: whole N (4096)")
    g.add_argument("--dist-worlds", default="1,2,4", help="process counts (1,2,4)")
    return p


def run(args, log=None):
    """Run the benchmark described by parsed ``args``; return the result dict (also written as JSON)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.quick:
        args.sizes, args.big, args.repeats, args.budget_s = "32,64", "128", 1, min(args.budget_s, 1.0)
    sizes = _int_list(args.sizes if args.sizes is not None else "1024,2048,4096")
    big = _int_list(args.big)
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


def main_cuda(args, parser):
    """``--cuda``: the CUDA section (a clear message and exit status 0 where it cannot run)."""
    try:
        cuda_config(args)
    except ValueError as e:
        parser.error(str(e))
    result = run_cuda(args)
    if result.get("skipped"):
        print(format_cuda_table(result), flush=True)
        return result
    out = Path(args.out) if args.out else cuda_default_out(result["meta"]["gpu_name"])
    path = write_json(result, out)
    if not args.no_print:
        print(format_cuda_table(result))
        print(f"\nwrote {path}")
    return result


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare_new is not None and args.compare is None:
        parser.error("--compare-new needs --compare OLD.json")
    if args.compare is None:
        return _run_section(args, parser)
    from .compare import compare, format_comparison, load
    try:
        old = load(args.compare)
        new = load(args.compare_new) if args.compare_new else None
        compare({}, {}, args.compare_tolerance)         # the tolerance, before a long run
    except ValueError as e:
        parser.error(str(e))
    if new is None:
        new = _run_section(args, parser)
    cmp = compare(old, new, args.compare_tolerance)
    print(format_comparison(cmp, args.compare), flush=True)
    if cmp["regressions"] or not cmp["rows"]:     # a gate that compared nothing fails too
        raise SystemExit(1)
    return new


def _run_section(args, parser):
    if args.cuda:
        return main_cuda(args, parser)
    if args.scan:
        return main_scan(args, parser)
    if args.sparse:
        return main_sparse(args, parser)
    if args.lowrank:
        return main_lowrank(args, parser)
    if args.distributed:
        return main_distributed(args, parser)
    if args.peers:
        return main_peers(args, parser)
    result = run(args)
    out = Path(args.out) if args.out else _default_out(torch.device(args.device))
    path = write_json(result, out)
    png = write_plot(plot_main, result, path)
    if not args.no_print:
        print(format_table(result))
        print(f"\nwrote {path}" + (f" and {png}" if png else ""))
    return result
