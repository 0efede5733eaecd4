"""Every op called from several Python threads at once gives the bits of a sequential call
(outputs and gradients): no shared scratch, no static state, no data race in the CPU
kernels or their dispatch. torch.ops releases the GIL inside the kernels, so the calls
really overlap (each also runs its own OpenMP region)."""
import threading

import pytest
import torch

from itnet_ext import functional as F

THREADS, ROUNDS = 4, 3


def _dense(g):
    B, H, N, D, R = 2, 2, 48, 8, 4
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    u, t = torch.randn(B, N, R, generator=g, dtype=torch.float64), \
        torch.randn(B, N, R, generator=g, dtype=torch.float64)
    W2, b2 = torch.randn(H, R, generator=g, dtype=torch.float64), \
        torch.randn(H, generator=g, dtype=torch.float64)
    leaves = [q, k, v, u, t, W2, b2]
    return leaves, lambda q, k, v, u, t, W2, b2: F.integral_transform(
        q, k, v, u=u, t=t, W2=W2, b2=b2, causal=True, window=(-20, 0))


def _sparse(g):
    B, H, N, D, S = 2, 2, 40, 8, 6
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    idx = torch.randint(0, N, (B, N, S), generator=g)
    log_w = torch.randn(B, N, S, generator=g, dtype=torch.float64)
    return [q, k, v], lambda q, k, v: F.sparse_integral_transform(q, k, v, idx=idx,
                                                                  log_w=log_w)


def _lowrank(g):
    B, H, N, D = 2, 2, 64, 8
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    return [q, k, v], lambda q, k, v: F.lowrank_integral_transform(
        q, k, v, feature_map="elu+1", normalize="softmax", causal=True)


def _scan(g):
    B, T, D, Rk = 2, 80, 16, 4
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    dt = torch.rand(B, T, D, generator=g, dtype=torch.float64)
    A = -torch.rand(D, Rk, generator=g, dtype=torch.float64)
    phi, psi = torch.randn(B, T, Rk, generator=g, dtype=torch.float64), \
        torch.randn(B, T, Rk, generator=g, dtype=torch.float64)
    return [x, dt, A, phi, psi], lambda x, dt, A, phi, psi: F.decay_scan(x, (dt, A), phi, psi)


def _run(make_inputs, fn, w):
    leaves = [x.detach().clone().requires_grad_() for x in make_inputs]
    out = fn(*leaves)
    (out * w).sum().backward()
    return [out.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize("case", [_dense, _sparse, _lowrank, _scan],
                         ids=["dense", "sparse", "lowrank", "scan"])
def test_concurrent_calls_give_the_sequential_bits(case):
    g = torch.Generator().manual_seed(7)
    inputs, fn = case(g)
    with torch.no_grad():
        w = torch.randn(fn(*inputs).shape, generator=g, dtype=torch.float64)
    want = _run(inputs, fn, w)
    assert all(torch.isfinite(x).all() for x in want)
    start = threading.Barrier(THREADS)
    got, errors = [None] * THREADS, []

    def worker(i):
        try:
            start.wait()
            got[i] = [_run(inputs, fn, w) for _ in range(ROUNDS)]
        except Exception as e:          # re-raised below, in the test's thread
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, errors
    for per_thread in got:
        for res in per_thread:
            for a, b in zip(res, want):
                assert torch.equal(a, b)
