"""Every CUDA kernel path of the dense op, of the decay scan and of the sparse op once, on tiny
inputs, for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 1 python3 scripts/sanitize_cases.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 scripts/sanitize_cases.py --set race

(scripts/gpu_check.sh runs both, with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor
is its own allocation and an out-of-bounds access cannot land silently in a neighbour.)

Sets:
  all    generic exact kernels (float32, float64): content, MLP + offset table + window,
         causal, bool / float masks, key padding, key weights, `none` mode, MLP only;
         flash kernels (float16, bfloat16) at Dk = Dv = 40, 128, 200 (the 64 / 128 / 256
         head-dim buckets), MLP on / off, masks, `none` mode, inference-only forward,
         deterministic mode; the float32 fallback of half inputs (Dk = 300, R = 80);
         decay scan (float32, bfloat16; float16 / float64 once): every log-decay form,
         the three block sizes (T <= 128, <= 512, longer), backward checkpoints (T > 1024),
         several forward chunks (T > 2048), groups with atomics / plain stores, the
         deterministic mode, Rk = 300;
         sparse (pair-list) op (float32, float64): CSR and padded pair lists with absent
         pairs, empty rows and CSR padding, content / MLP + offset table + window / MLP only
         on a fractional window, `none` mode with H = 9 (several register head groups) and
         rows of up to 70 pairs (several chunks), the deterministic mode (key-owned pass),
         inference-only forward;
         low-rank op (float32, float64, float16 inputs): every feature map (identity, elu+1,
         relu, FAVOR+ with a projection of F = 70 rows), `none` / softmax, causal (the
         features op plus the decay scan) and not, sizes off every tile boundary.
  flash  only the flash cases of `all`.
  race   a small subset of the flash, decay-scan, sparse and low-rank cases (racecheck is
         slow).
Each case runs forward and backward; the script checks that nothing is NaN, prints one line
per case and exits with status 1 if any case raised.
"""
import argparse
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from itnet_ext import functional  # noqa: E402
from cuda_helpers import DIFF_NAMES as DIFF  # noqa: E402


def problem(dtype, *, B=1, H=2, N=70, M=90, Dk=16, Dv=16, R=16, content=True, mlp=False,
            causal=False, table=False, window=None, kpm=False, mask=None, key_weight=False,
            normalize="softmax", seed=0):
    """Keyword arguments of integral_transform on CUDA (differentiable inputs require grad)."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    kw = dict(v=rnd(B, H, M, Dv), normalize=normalize, causal=causal)
    if content:
        kw.update(q=rnd(B, H, N, Dk), k=rnd(B, H, M, Dk))
    if mlp:
        kw.update(W2=rnd(H, R, scale=R ** -0.5), b2=rnd(H), u=rnd(B, N, R), t=rnd(B, M, R),
                  activation="gelu")
    if table:
        window = window or (-20, 15)
        kw["offset_table"] = rnd(window[1] - window[0] + 1, R, scale=0.5)
    if window is not None:
        kw["window"] = window
    if kpm:
        pad = torch.zeros(B, M, dtype=torch.bool, device="cuda")
        pad[:, -7:] = True
        kw["key_padding_mask"] = pad
    if mask == "bool":
        kw["attn_mask"] = torch.rand(N, M, generator=g, device="cuda") < 0.8
    elif mask == "float":
        am = rnd(1, H, N, M)
        am[:, :, ::5, ::3] = -math.inf
        kw["attn_mask"] = am
    if key_weight:
        kw["key_weight"] = (torch.rand(B, M, generator=g, device="cuda") + 0.5).to(dtype)
    for n in DIFF:
        if kw.get(n) is not None:
            kw[n].requires_grad_()
    return kw


def run_case(kw, *, backward=True, deterministic=False):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        softmax = kw["normalize"] == "softmax"
        if not backward:
            with torch.no_grad():
                out = functional.integral_transform(**kw)
            torch.cuda.synchronize()
            assert not torch.isnan(out).any(), "NaN in out"
            return
        res = functional.integral_transform(**kw, return_lse=softmax)
        res = res if isinstance(res, tuple) else (res,)
        leaves = [kw[n] for n in DIFF if kw.get(n) is not None and kw[n].requires_grad]
        cot = [torch.randn_like(r) for r in res]
        grads = torch.autograd.grad(res, leaves, cot, allow_unused=True)
        torch.cuda.synchronize()
        assert not torch.isnan(res[0]).any(), "NaN in out"
        assert all(gr is None or not torch.isnan(gr).any() for gr in grads), "NaN in a gradient"
    finally:
        torch.use_deterministic_algorithms(prev)


SCAN_LD_SHAPES = {  # log-decay shape of each form (symbolic), as functional.decay_scan takes it
    "full": "BTDR", "bcast_batch": "1TDR", "channel_static": "B1D1", "channel": "BTD1",
    "static": "DR", "factored": None}


def scan_problem(dtype, form, *, B=2, T=70, D=4, Rk=5, G=2, skip=True, h0=True, seed=0):
    """Arguments of functional.decay_scan on CUDA (differentiable inputs require grad)."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0, sign=0):
        """normal (sign 0), or uniform in [0, scale) (sign 1) / (-scale, 0] (sign -1)"""
        t = torch.randn(*shape, generator=g, device="cuda") if sign == 0 else \
            sign * torch.rand(*shape, generator=g, device="cuda")
        return (t * scale).to(dtype).requires_grad_()

    sizes = {"B": B, "T": T, "D": D, "R": Rk, "1": 1}
    code = SCAN_LD_SHAPES[form]
    ld = (rnd(B, T, D, scale=0.5, sign=1), rnd(D, Rk, sign=-1)) if code is None else \
        rnd(*(sizes[c] for c in code), scale=0.6, sign=-1)
    return dict(x=rnd(B, T, D), log_decay=ld, phi=rnd(B, T, G, Rk), psi=rnd(B, T, G, Rk),
                skip=rnd(D) if skip else None, initial_state=rnd(B, D, Rk) if h0 else None)


def run_scan_case(kw, *, backward=True, deterministic=False):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        if not backward:
            with torch.no_grad():
                y, hT = functional.decay_scan(**kw, return_final_state=True)
            torch.cuda.synchronize()
            assert not torch.isnan(y).any() and not torch.isnan(hT).any(), "NaN in y"
            return
        y, hT = functional.decay_scan(**kw, return_final_state=True)
        ld = kw["log_decay"]
        leaves = [kw["x"], *(ld if isinstance(ld, tuple) else (ld,)), kw["phi"], kw["psi"]]
        leaves += [kw[n] for n in ("skip", "initial_state") if kw[n] is not None]
        grads = torch.autograd.grad((y, hT), leaves, (torch.randn_like(y), torch.randn_like(hT)))
        torch.cuda.synchronize()
        assert not torch.isnan(y).any() and not torch.isnan(hT).any(), "NaN in y"
        assert all(not torch.isnan(gr).any() for gr in grads), "NaN in a gradient"
    finally:
        torch.use_deterministic_algorithms(prev)


def scan_cases(which):
    """(name, scan_problem kwargs, run_scan_case kwargs)."""
    out = []
    if which == "all":
        for dt in (torch.float32, torch.bfloat16):
            n = str(dt)[6:]
            for form in SCAN_LD_SHAPES:
                out.append((f"scan {n} {form} T=70", dict(dtype=dt, form=form), {}))
            out += [
                (f"scan {n} full T=300 G=D", dict(dtype=dt, form="full", T=300, G=4), {}),
                (f"scan {n} factored T=1100 (checkpoints)",
                 dict(dtype=dt, form="factored", T=1100, B=1, D=3, Rk=3, G=1), {}),
            ]
        out += [
            ("scan float32 channel T=2100 (two forward chunks)",
             dict(dtype=torch.float32, form="channel", T=2100, B=1, D=2, Rk=2, G=1), {}),
            ("scan float32 static T=1 Rk=1 no skip / h0",
             dict(dtype=torch.float32, form="static", T=1, Rk=1, skip=False, h0=False), {}),
            ("scan float16 bcast_batch T=200", dict(dtype=torch.float16, form="bcast_batch",
                                                    T=200), {}),
            ("scan float64 channel_static T=90", dict(dtype=torch.float64,
                                                      form="channel_static", T=90), {}),
            ("scan bfloat16 full Rk=300 T=40", dict(dtype=torch.bfloat16, form="full", T=40,
                                                    Rk=300, B=1, D=2), {}),
            ("scan float32 factored deterministic", dict(dtype=torch.float32, form="factored",
                                                         T=300), dict(deterministic=True)),
            ("scan float32 full forward only", dict(dtype=torch.float32, form="full", T=600),
             dict(backward=False)),
        ]
    if which == "race":
        out += [
            ("race scan float32 full T=300", dict(dtype=torch.float32, form="full", T=300,
                                                  B=1, D=2, Rk=2), {}),
            ("race scan bfloat16 factored T=1100", dict(dtype=torch.bfloat16, form="factored",
                                                        T=1100, B=1, D=2, Rk=2, G=1), {}),
            ("race scan float32 static T=50", dict(dtype=torch.float32, form="static", T=50,
                                                   B=1, D=2, Rk=3), {}),
        ]
    return out


SPARSE_DIFF = DIFF + ("log_w",)


def sparse_problem(dtype, *, B=2, H=3, N=40, M=50, S=12, Dk=16, Dv=16, R=16, content=True,
                   mlp=False, table=False, window=None, normalize="softmax", form="csr",
                   seed=0):
    """Keyword arguments of sparse_integral_transform on CUDA: S keys per query drawn
    uniformly (repeats included), log-weights ~ N(0, 0.5), a fifth of the pairs absent
    (log_w = -inf, key -1), row 0 without any present pair; CSR: the present pairs only,
    variable row lengths, padding past row_ptr[b, N] with out-of-range keys and NaN
    log-weights. Differentiable inputs require grad."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    kw = dict(v=rnd(B, H, M, Dv), normalize=normalize)
    if content:
        kw.update(q=rnd(B, H, N, Dk), k=rnd(B, H, M, Dk))
    if mlp:
        kw.update(W2=rnd(H, R, scale=R ** -0.5), b2=rnd(H), u=rnd(B, N, R), t=rnd(B, M, R),
                  activation="gelu")
    if table:
        window = window or (-6, 5)
        kw["offset_table"] = rnd(window[1] - window[0] + 1, R, scale=0.5)
    if window is not None:
        kw["window"] = window
    keys = torch.randint(0, M, (B, N, S), generator=g, device="cuda")
    lw = rnd(B, N, S, scale=0.5)
    absent = torch.rand(B, N, S, generator=g, device="cuda") < 0.2
    absent[:, 0] = True
    keys = keys.masked_fill(absent, -1)
    lw = lw.masked_fill(absent, float("-inf"))
    if form == "padded":
        kw.update(idx=keys, log_w=lw)
    else:
        present = ~absent
        counts = present.sum(-1)                                   # (B, N)
        row_ptr = torch.zeros(B, N + 1, dtype=torch.long, device="cuda")
        row_ptr[:, 1:] = counts.cumsum(-1)
        E = int(row_ptr[:, -1].max()) + 3
        col = torch.full((B, E), M + 5, dtype=torch.long, device="cuda")
        lwc = torch.full((B, E), float("nan"), dtype=dtype, device="cuda")
        for b in range(B):
            n = int(row_ptr[b, -1])
            col[b, :n] = keys[b][present[b]]
            lwc[b, :n] = lw[b][present[b]]
        kw.update(row_ptr=row_ptr, col_idx=col, log_w=lwc)
    for n in SPARSE_DIFF:
        if kw.get(n) is not None:
            kw[n].requires_grad_()
    return kw


def run_sparse_case(kw, *, backward=True, deterministic=False):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        softmax = kw["normalize"] == "softmax"
        if not backward:
            with torch.no_grad():
                out = functional.sparse_integral_transform(**kw)
            torch.cuda.synchronize()
            assert not torch.isnan(out).any(), "NaN in out"
            return
        res = functional.sparse_integral_transform(**kw, return_lse=softmax)
        res = res if isinstance(res, tuple) else (res,)
        leaves = [kw[n] for n in SPARSE_DIFF if kw.get(n) is not None]
        # no cotangent on the lse = -inf of the rows without pairs
        cot = [torch.where(torch.isfinite(r), torch.randn_like(r), torch.zeros_like(r))
               for r in res]
        grads = torch.autograd.grad(res, leaves, cot, allow_unused=True)
        torch.cuda.synchronize()
        assert not torch.isnan(res[0]).any(), "NaN in out"
        for n, gr in zip([n for n in SPARSE_DIFF if kw.get(n) is not None], grads):
            # (log_w's CSR padding holds NaN; its gradient there is 0)
            assert gr is None or not torch.isnan(gr).any(), f"NaN in the gradient of {n}"
    finally:
        torch.use_deterministic_algorithms(prev)


def sparse_cases(which):
    """(name, sparse_problem kwargs, run_sparse_case kwargs)."""
    out = []
    if which == "all":
        for dt in (torch.float32, torch.float64):
            n = str(dt)[6:]
            out += [
                (f"sparse {n} content csr", dict(dtype=dt), {}),
                (f"sparse {n} mlp+table+window padded", dict(dtype=dt, mlp=True, table=True,
                                                             form="padded"), {}),
                (f"sparse {n} none H=9 S=70 mlp+content", dict(dtype=dt, mlp=True, H=9, S=70,
                                                               normalize="none"), {}),
                (f"sparse {n} mlp only R=40 frac window", dict(dtype=dt, content=False,
                                                               mlp=True, R=40,
                                                               window=(-4.5, 3.25)), {}),
                (f"sparse {n} deterministic mlp+table+content", dict(dtype=dt, mlp=True,
                                                                    table=True, S=40),
                 dict(deterministic=True)),
            ]
        out.append(("sparse float32 forward only", dict(dtype=torch.float32, mlp=True,
                                                        table=True), dict(backward=False)))
    if which == "race":
        small = dict(N=20, M=25, S=40)
        out += [
            ("race sparse float32 mlp+table+content", dict(dtype=torch.float32, mlp=True,
                                                           table=True, H=9, **small), {}),
            ("race sparse float32 deterministic mlp+table", dict(dtype=torch.float32, mlp=True,
                                                                 table=True, **small),
             dict(deterministic=True)),
        ]
    return out


def lowrank_problem(dtype, *, B=2, H=3, N=77, M=131, Dk=19, Dv=37, fmap="elu+1", F=70,
                    normalize="softmax", causal=False, seed=0):
    from itnet_ext.nn.feature_maps import PositiveRandomFeatures

    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).to("cuda", dtype).requires_grad_()

    if fmap == "favor+":
        fm = PositiveRandomFeatures(Dk, F, generator=torch.Generator().manual_seed(seed))
        fm = fm.to("cuda")
    else:
        fm = fmap
    return dict(q=rnd(B, H, N, Dk), k=rnd(B, H, M, Dk), v=rnd(B, H, M, Dv), feature_map=fm,
                normalize=normalize, causal=causal)


def run_lowrank_case(kw, *, backward=True):
    leaves = [kw[n] for n in ("q", "k", "v")]
    if not backward:
        with torch.no_grad():
            out = functional.lowrank_integral_transform(**kw)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all(), "non-finite out"
        return
    out = functional.lowrank_integral_transform(**kw)
    grads = torch.autograd.grad(out, leaves, torch.randn_like(out))
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "non-finite out"
    for n, gr in zip("qkv", grads):
        assert torch.isfinite(gr).all(), f"non-finite gradient of {n}"


def lowrank_cases(which):
    """(name, lowrank_problem kwargs, run_lowrank_case kwargs)."""
    out = []
    if which == "all":
        for dt in (torch.float32, torch.float64):
            n = str(dt)[6:]
            for fmap in ("identity", "elu+1", "relu", "favor+"):
                for normalize in ("none", "softmax"):
                    if fmap == "identity" and normalize == "softmax":
                        continue
                    for causal in (False, True):
                        out.append((f"lowrank {n} {fmap} {normalize}{' causal' if causal else ''}",
                                    dict(dtype=dt, fmap=fmap, normalize=normalize,
                                         causal=causal), {}))
        out += [
            ("lowrank float16 favor+ softmax N=1100", dict(dtype=torch.float16, fmap="favor+",
                                                          N=1100, M=1030), {}),
            ("lowrank bfloat16 elu+1 causal", dict(dtype=torch.bfloat16, causal=True), {}),
            ("lowrank float32 Dv=1 Dk=1 relu", dict(dtype=torch.float32, Dv=1, Dk=1,
                                                    fmap="relu"), {}),
            ("lowrank float32 forward only", dict(dtype=torch.float32, fmap="favor+"),
             dict(backward=False)),
        ]
    if which == "race":
        out += [
            ("race lowrank float32 favor+ softmax", dict(dtype=torch.float32, fmap="favor+",
                                                        N=40, M=60), {}),
            ("race lowrank float32 elu+1 none", dict(dtype=torch.float32, normalize="none",
                                                     N=40, M=60), {}),
        ]
    return out


def cases(which):
    """(name, problem kwargs, run kwargs)."""
    out = []
    if which == "all":
        for dt in (torch.float32, torch.float64):
            n = str(dt)[6:]
            out += [
                (f"generic {n} content", dict(dtype=dt), {}),
                (f"generic {n} mlp+table+window+kpm", dict(dtype=dt, mlp=True, table=True,
                                                           kpm=True), {}),
                (f"generic {n} causal+bool mask", dict(dtype=dt, causal=True, mask="bool"), {}),
                (f"generic {n} float mask+key weight", dict(dtype=dt, mlp=True, mask="float",
                                                            key_weight=True), {}),
                (f"generic {n} none mode", dict(dtype=dt, mlp=True, normalize="none",
                                                key_weight=True, window=(-30.5, 10.25)), {}),
                (f"generic {n} mlp only", dict(dtype=dt, content=False, mlp=True, R=33), {}),
            ]
    if which in ("all", "flash"):
        for dt in (torch.float16, torch.bfloat16):
            n = str(dt)[6:]
            for d in (40, 128, 200):
                out += [
                    (f"flash {n} D={d} attn causal", dict(dtype=dt, Dk=d, Dv=d, causal=True), {}),
                    (f"flash {n} D={d} mlp+table+kpm+float mask+key weight",
                     dict(dtype=dt, Dk=d, Dv=d, mlp=True, table=True, kpm=True, mask="float",
                          key_weight=True), {}),
                ]
            out += [
                (f"flash {n} D=128 none+bool mask", dict(dtype=dt, Dk=128, Dv=72, mlp=True,
                                                         normalize="none", mask="bool"), {}),
                (f"flash {n} D=64 mlp only R=64", dict(dtype=dt, Dk=64, Dv=64, content=False,
                                                       mlp=True, R=64), {}),
                (f"flash {n} D=128 forward only", dict(dtype=dt, Dk=128, Dv=128, mlp=True),
                 dict(backward=False)),
                (f"flash {n} D=64 deterministic attn", dict(dtype=dt, Dk=64, Dv=64),
                 dict(deterministic=True)),
                (f"flash {n} D=128 deterministic mlp+window+kpm", dict(
                    dtype=dt, Dk=128, Dv=128, mlp=True, window=(-25.5, 12.0), kpm=True,
                    key_weight=True), dict(deterministic=True)),
            ]
    if which == "all":
        out += [
            ("fallback float16 Dk=300", dict(dtype=torch.float16, Dk=300, Dv=40, mlp=True), {}),
            ("fallback bfloat16 R=80", dict(dtype=torch.bfloat16, Dk=64, Dv=64, mlp=True, R=80),
             {}),
        ]
    if which == "race":
        small = dict(N=65, M=70)
        out += [
            ("race float16 D=40 attn causal", dict(dtype=torch.float16, Dk=40, Dv=40,
                                                   causal=True, **small), {}),
            ("race float16 D=128 mlp+table+mask", dict(dtype=torch.float16, Dk=128, Dv=128,
                                                       mlp=True, table=True, mask="float",
                                                       key_weight=True, **small), {}),
            ("race bfloat16 D=200 mlp", dict(dtype=torch.bfloat16, Dk=200, Dv=200, mlp=True,
                                             **small), {}),
            ("race bfloat16 D=64 none", dict(dtype=torch.bfloat16, Dk=64, Dv=64, mlp=True,
                                             normalize="none", **small), {}),
            ("race float16 D=128 deterministic mlp", dict(dtype=torch.float16, Dk=128, Dv=128,
                                                          mlp=True, **small),
             dict(deterministic=True)),
        ]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("all", "flash", "race"), default="all")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    args = ap.parse_args()
    todo = [(name, problem, run_case, pkw, rkw) for name, pkw, rkw in cases(args.set)]
    todo += [(name, scan_problem, run_scan_case, pkw, rkw)
             for name, pkw, rkw in scan_cases(args.set)]
    todo += [(name, sparse_problem, run_sparse_case, pkw, rkw)
             for name, pkw, rkw in sparse_cases(args.set)]
    todo += [(name, lowrank_problem, run_lowrank_case, pkw, rkw)
             for name, pkw, rkw in lowrank_cases(args.set)]
    if args.list:
        print("\n".join(name for name, *_ in todo))
        return 0
    if not torch.cuda.is_available():
        print("sanitize_cases: no CUDA device is available; nothing run")
        return 2
    if not torch.ops.itnet.cuda_kernels_compiled():
        print("sanitize_cases: itnet_ext was built without its CUDA kernels; nothing run")
        return 2
    failed = 0
    t_all = time.perf_counter()
    for name, make, run, pkw, rkw in todo:
        t0 = time.perf_counter()
        try:
            run(make(**pkw), **rkw)
            print(f"ok    {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
        except Exception as e:  # report and go on: the sanitizer output says more
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
            traceback.print_exc(limit=3)
    print(f"sanitize_cases: {len(todo) - failed}/{len(todo)} cases ok in "
          f"{time.perf_counter() - t_all:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
