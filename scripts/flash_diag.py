"""Per-case error table of the CUDA dense op in float16 / bfloat16.

For a fixed list of problems (conftest.make_problem) that covers every feature and
head-dim bucket, prints one line per (case, dtype, path) with the max error of out,
lse and every gradient relative to the largest entry of the float64 CPU reference:
  flash  - the default dispatch (tensor-core kernels where they apply),
  exact  - ITNET_CUDA_FLASH=0 (float32 exact kernels on upcast copies),
  torch  - tests/lowp_reference.py: plain PyTorch in the same low precision (the bound
           the tests scale: 2x for outputs, 3x for gradients).
Meant for the GPU check (scripts/gpu_check.sh): one run localizes a wrong feature,
pass or gradient. Usage: python scripts/flash_diag.py [--json PATH]
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import make_problem  # noqa: E402
from cuda_helpers import DIFF_NAMES as DIFF  # noqa: E402
import lowp_reference  # noqa: E402  (the reference computed in the inputs' own dtype)

from itnet_ext import functional, reference  # noqa: E402

POS = ("q_pos", "k_pos")

BASE = dict(B=2, H=3, kpm=False, mask=None, key_weight=None, empty=False, causal=False,
            support="none", normalize="softmax", pos="default", D=1)
CASES = {
    "attn d64": dict(content=True, mlp=False, N=130, M=200, Dk=64, Dv=64),
    "attn d128 causal": dict(content=True, mlp=False, N=200, M=150, Dk=128, Dv=128, causal=True),
    "attn d256 (bwd exact)": dict(content=True, mlp=False, N=70, M=90, Dk=256, Dv=200),
    "attn Dk40 Dv72 kpm": dict(content=True, mlp=False, N=65, M=129, Dk=40, Dv=72, kpm=True),
    "attn Dk3 Dv5 mask": dict(content=True, mlp=False, N=33, M=47, Dk=3, Dv=5, mask="float",
                              mask_shape="BHNM"),
    "mlp relu R16": dict(content=False, mlp=True, N=100, M=90, Dk=8, Dv=32, R=16,
                         activation="relu", use_u=True, use_t=True, use_b2=True),
    "mlp+attn gelu R32 none kw": dict(content=True, mlp=True, N=77, M=120, Dk=64, Dv=64, R=32,
                                     activation="gelu", normalize="none", key_weight="B",
                                     use_u=True, use_t=True, use_b2=True),
    "mlp+attn silu R64 softmax kw": dict(content=True, mlp=True, N=64, M=64, Dk=32, Dv=48,
                                        R=64, activation="silu", key_weight="1", use_u=True,
                                        use_t=True, use_b2=False),
    "offset table causal bool mask": dict(content=True, mlp=True, N=90, M=90, Dk=16, Dv=16,
                                          R=8, activation="relu", support="offset",
                                          causal=True, mask="bool", mask_shape="NM",
                                          use_u=True, use_t=True, use_b2=True),
    "frac window 2D": dict(content=True, mlp=True, N=80, M=100, Dk=64, Dv=64, R=4,
                           activation="gelu", support="frac", D=2, pos="batch", use_u=True,
                           use_t=True, use_b2=True),
    "empty rows": dict(content=True, mlp=False, N=40, M=50, Dk=64, Dv=64, empty=True),
    "R80 (exact)": dict(content=True, mlp=True, N=40, M=50, Dk=16, Dv=16, R=80,
                        activation="relu", use_u=True, use_t=True, use_b2=True),
}


def to_dev(kw, dtype, device):
    out = {}
    for k, v in kw.items():
        if torch.is_tensor(v):
            v = v.to(device)
            if v.is_floating_point() and k not in POS:
                v = v.to(dtype)
        out[k] = v
    return out


def evaluate(fn, kw, dtype, device, gout):
    args = to_dev(kw, dtype, device)
    names = [n for n in DIFF if args.get(n) is not None]
    for n in names:
        args[n] = args[n].detach().requires_grad_(True)
    softmax = args.get("normalize", "softmax") == "softmax"
    res = fn(**args, return_lse=True) if softmax else (fn(**args), None)
    out, lse = res
    grads = torch.autograd.grad(out, [args[n] for n in names], gout.to(device, out.dtype),
                                allow_unused=True)
    res = {"out": out, "lse": lse}
    res.update({n: g for n, g in zip(names, grads)})
    return {k: (None if v is None else v.detach().double().cpu()) for k, v in res.items()}


def err(x, ref):
    if ref is None:
        return None
    if x is None:
        return math.inf  # a gradient the path failed to return
    if ref.numel() == 0:
        return 0.0
    fin = torch.isfinite(ref)
    if not torch.equal(fin, torch.isfinite(x)) or not torch.equal(ref[~fin], x[~fin]):
        return math.inf  # -inf lse where it must be, nothing else
    scale = ref[fin].abs().max().item() if fin.any() else 1.0
    # floor 0.1: gradients that are 0 in exact arithmetic (b2 under softmax) stay readable
    return (x[fin] - ref[fin]).abs().max().item() / max(scale, 0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float16,bfloat16", help="dry run on CPU: float32")
    args = ap.parse_args()
    device = args.device
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    rows = []
    for name, opt in CASES.items():
        kw = make_problem(1234, torch.float64, **{**BASE, **opt})
        gen = torch.Generator().manual_seed(7)
        B, H, M, Dv = kw["v"].shape
        N = kw["q"].shape[2] if "q" in kw else kw["u"].shape[1]
        gout = torch.randn(B, H, N, Dv, generator=gen, dtype=torch.float64)
        ref = evaluate(reference.integral_transform, kw, torch.float64, "cpu", gout)
        for dtype in dtypes:
            for path in ("flash", "exact", "torch"):
                try:
                    if path == "torch":
                        r = evaluate(lowp_reference.integral_transform, kw, dtype, device, gout)
                    else:
                        os.environ["ITNET_CUDA_FLASH"] = "1" if path == "flash" else "0"
                        r = evaluate(functional.integral_transform, kw, dtype, device, gout)
                    errs = {k: err(r[k], ref[k]) for k in ref if ref[k] is not None}
                    nan = any(v is not None and torch.isnan(v).any().item() for v in r.values())
                    rows.append(dict(case=name, dtype=str(dtype)[6:], path=path, nan=nan, **errs))
                except Exception as e:  # noqa: BLE001 - report and go on
                    rows.append(dict(case=name, dtype=str(dtype)[6:], path=path,
                                     error=f"{type(e).__name__}: {e}"[:300]))
                finally:
                    os.environ.pop("ITNET_CUDA_FLASH", None)
    keys = ["out", "lse"] + list(DIFF)
    print(f"{'case':32s} {'dtype':9s} {'path':6s} " + " ".join(f"{k[:6]:>8s}" for k in keys))
    for r in rows:
        if "error" in r:
            print(f"{r['case']:32s} {r['dtype']:9s} {r['path']:6s} ERROR {r['error']}")
            continue
        vals = " ".join(f"{r[k]:8.1e}" if r.get(k) is not None else f"{'-':>8s}" for k in keys)
        print(f"{r['case']:32s} {r['dtype']:9s} {r['path']:6s} {vals}{'  NaN!' if r['nan'] else ''}")
    # verdict per case: the flash and the exact path each within 2x / 3x of torch's own
    # error (+ small floor), no NaN, no error
    bad = []
    for name in CASES:
        for dt in (str(d)[6:] for d in dtypes):
            t = next((r for r in rows if r["case"] == name and r["dtype"] == dt
                      and r["path"] == "torch"), None)
            for path in ("flash", "exact"):
                f = next((r for r in rows if r["case"] == name and r["dtype"] == dt
                          and r["path"] == path), None)
                if f is None or "error" in f or t is None or "error" in t or f["nan"]:
                    bad.append(f"{name} {dt} {path}: error or NaN")
                    continue
                for k in keys:
                    if f.get(k) is None or t.get(k) is None:
                        continue
                    lim = (2 if k in ("out", "lse") else 3) * t[k] + 1e-4
                    if not f[k] <= lim:
                        bad.append(f"{name} {dt} {path} {k}: {f[k]:.2e} > {lim:.2e}")
    print("VERDICT:", "all within bounds" if not bad else f"{len(bad)} over bound")
    for b in bad:
        print("  ", b)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
