"""One forward + backward of the flash kernels, for Nsight Compute (ncu) to profile.

    ncu --kernel-name regex:"fwd_kernel|bwd_kv_kernel|bwd_q_kernel" --launch-skip 3 \
        --section SpeedOfLight python3 scripts/profile_case.py [--mlp R] [--dh 64]

Two warm-up iterations first (launch-skip them), then one profiled iteration.
"""
import argparse

import torch

from itnet_ext import functional


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlp", type=int, default=0, help="R of the MLP term (0: attention only)")
    ap.add_argument("--dh", type=int, default=64)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--dtype", default="float16")
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    B, H, N, D = 1, 8, a.n, a.dh
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, device="cuda", generator=g) * scale).to(dt).requires_grad_()

    q, k, v = rnd(B, H, N, D), rnd(B, H, N, D), rnd(B, H, N, D)
    kw = {}
    if a.mlp:
        R = a.mlp
        kw = dict(u=rnd(B, N, R), t=rnd(B, N, R), W2=rnd(H, R, scale=R ** -0.5), b2=rnd(H),
                  activation="relu")
    for _ in range(3):
        out = functional.integral_transform(q, k, v, **kw)
        out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    print("ok", out.shape, out.dtype)


if __name__ == "__main__":
    main()
