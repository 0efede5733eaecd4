"""Distributed benchmark: ``python -m itnet_ext.bench --distributed``.

Strong and weak scaling of the sharded ops over 1 / 2 / 4 CPU processes on gloo
(torch.multiprocessing, one process group per size), forward + backward per step:

- ``dense-ring``       causal dense op, zig-zag layout, ring pass (MLP term R=16 + content)
- ``dense-allgather``  the same with the all-gather variant
- ``lowrank``          non-causal low-rank op (elu+1, softmax; F = Dh), all-reduce of the state

Strong: the whole sequence fixed (N = ``--dist-n``), split over P ranks. Weak: N / P per
rank fixed (N_local = ``--dist-n`` / 4). Per row: median over repeats of the slowest rank's
step time, and the bytes each rank sent per step (forward + backward, from the ring's
counters). The processes share this machine's cores (``threads`` per process = cores / P,
at least 1), so on a small machine P > cores measures the overhead of the split, not a
speed-up; on a cluster each rank has its own device.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import torch

B, H, DH, R = 1, 8, 64, 16
MODES = ("dense-ring", "dense-allgather", "lowrank")


def _inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return {"q": r(B, H, n, DH) * 0.3, "k": r(B, H, n, DH) * 0.3, "v": r(B, H, n, DH),
            "u": r(B, n, R), "t": r(B, n, R), "W2": r(H, R) * 0.3, "b2": r(H)}


def _step(mode, x, group):
    from itnet_ext import distributed as D
    if mode == "lowrank":
        return D.lowrank_integral_transform(x["q"], x["k"], x["v"], feature_map="elu+1",
                                            normalize="softmax", group=group)
    return D.integral_transform(x["q"], x["k"], x["v"], u=x["u"], t=x["t"], W2=x["W2"],
                                b2=x["b2"], causal=True, layout="zigzag",
                                comm="allgather" if mode.endswith("allgather") else "ring",
                                group=group)


def _worker(rank, world, init, cases, repeats, threads, out_file):
    import torch.distributed as dist
    import itnet_ext  # noqa: F401
    from itnet_ext import distributed as D
    from itnet_ext.distributed.comm import Ring
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    rows = []
    for mode, scaling, n in cases:
        full = _inputs(n)
        x = {}
        for k, v in full.items():
            dim = {"q": 2, "k": 2, "v": 2, "u": 1, "t": 1}.get(k)
            part = D.shard(v, dim, rank, world, "zigzag") if (dim is not None and world > 1) \
                else v
            x[k] = part.clone().requires_grad_()
        times, sent = [], []
        for rep in range(repeats + 1):                  # the first one warms up
            for v in x.values():
                v.grad = None
            dist.barrier()
            before = Ring.sent_total
            t0 = time.perf_counter()
            _step(mode, x, None).sum().backward()
            dt = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)   # the step ends with the slowest rank
            if rep:
                times.append(float(dt))
                sent.append(Ring.sent_total - before)
        rows.append({"mode": mode, "scaling": scaling, "P": world, "N": n, "N_local": n // world,
                     "ms": 1e3 * statistics.median(times), "bytes_per_rank": max(sent)})
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def run(n=4096, worlds=(1, 2, 4), repeats=3, modes=MODES, log=print):
    import torch.multiprocessing as mp
    cores = os.cpu_count() or 1
    rows = []
    for world in worlds:
        cases = [(m, "strong", n) for m in modes] + \
                [(m, "weak", n // 4 * world) for m in modes]
        threads = max(1, cores // world)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            t0 = time.perf_counter()
            mp.spawn(_worker, args=(world, os.path.join(tmp, "rdzv"), cases, repeats, threads,
                                    out), nprocs=world, join=True)
            with open(out) as f:
                got = json.load(f)
            log(f"P={world}: {len(got)} rows in {time.perf_counter() - t0:.0f} s")
            for r in got:
                r["threads_per_rank"] = threads
            rows += got
    return rows


def format_table(rows):
    base = {(r["mode"], r["scaling"], r["N"]): r["ms"] for r in rows if r["P"] == 1}
    lines = ["| mode | scaling | P | N | N/rank | threads/rank | ms / step | speed-up vs P=1 "
             "(strong) / efficiency (weak) | MiB sent per rank per step |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["mode"], r["scaling"], r["P"])):
        if r["scaling"] == "strong":
            ref = base.get((r["mode"], "strong", r["N"]))
            rel = f"{ref / r['ms']:.2f}x" if ref else "-"
        else:
            ref = base.get((r["mode"], "weak", r["N_local"]))
            rel = f"{ref / r['ms']:.2f}" if ref else "-"
        lines.append(f"| {r['mode']} | {r['scaling']} | {r['P']} | {r['N']} | {r['N_local']} "
                     f"| {r['threads_per_rank']} | {r['ms']:.1f} | {rel} "
                     f"| {r['bytes_per_rank'] / 2**20:.2f} |")
    return "\n".join(lines)


def main_distributed(args, parser):
    from .report import _git_commit
    worlds = tuple(int(w) for w in args.dist_worlds.split(","))
    if any(w < 1 for w in worlds):
        parser.error("--dist-worlds: positive process counts")
    n = args.dist_n if not args.quick else 256
    if n % (8 * max(worlds)):
        parser.error(f"--dist-n must be divisible by 8 * max(P) = {8 * max(worlds)}")
    rows = run(n, worlds, 1 if args.quick else args.repeats)
    result = {"meta": {"commit": _git_commit(), "torch": torch.__version__,
                       "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
                       "B": B, "H": H, "Dh": DH, "R": R, "backend": "gloo", "device": "cpu"},
              "rows": rows}
    table = format_table(rows)
    out = args.out or os.path.join("bench", "results",
                                   f"distributed_cpu_{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    with open(out[:-5] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {out}")
    return result
