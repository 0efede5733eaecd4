import math
import random
import types
import zlib

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda_kernels: runs the CUDA kernels: on a GPU, or under the device emulator "
        "(cuda_helpers.DEVICE = 'cpu', every itnet operator redirected to torch.ops.itnet_emu)")


@pytest.fixture(autouse=True)
def _emulated_cuda(request):
    """Tests marked cuda_kernels, without a GPU but with the device emulator: every itnet
    operator runs its emulated CUDA kernels, the threads of each block in the forward, reverse
    or a shuffled order (chosen by the test id, so the suite covers all three)."""
    if request.node.get_closest_marker("cuda_kernels") is None:
        yield
        return
    from cuda_helpers import EMULATED
    if not EMULATED:
        yield
        return
    from itnet_ext import emulate
    h = zlib.crc32(request.node.nodeid.encode())
    with emulate.use(order=emulate.ORDERS[h % 3], seed=h, race_check=True), \
            emulate.emulate_cuda():
        yield


@pytest.fixture(autouse=True)
def _seed(request):
    """Deterministic, per-test seed (different tests get different random inputs)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed


# --------------------------------------------------------------------------------------------
# Dense-op test helpers (tests/test_dense_*.py), exposed through the ``dense`` fixture.
# --------------------------------------------------------------------------------------------
# Names of the differentiable tensor arguments of integral_transform, in a fixed order.
DIFF_NAMES = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "key_weight")

# attn_mask shapes (symbolic) broadcastable to (B, H, N, M)
MASK_SHAPES = ("NM", "B1NM", "HNM", "111M", "BHNM", "1H1M", "M", "B11M", "N1", "1HN1")

def _mask_shape(code, B, H, N, M):
    table = {"B": B, "H": H, "N": N, "M": M, "1": 1}
    return tuple(table[c] for c in code)


def make_problem(seed, dtype=torch.float64, *, choices=None, w2_gain=1.0, table_gain=1.0, **opt):
    """A random, valid argument set of ``integral_transform``.

    Every option not given in ``opt`` is drawn from ``random.Random(seed)``:
    content / mlp (at least one), use_u / use_t / use_b2, u_batch / t_batch (B or 1),
    activation, normalize, causal, support ("none" | "window" | "frac" | "offset"),
    D (position dims), pos ("default" | "batch" | "bcast"), kpm, mask (None | "bool" |
    "float"), mask_shape (see MASK_SHAPES), key_weight (None | "B" | "1"), empty (force rows
    with an empty support), sizes B, H, N, M, Dk, Dv, R (N or M may be 0).

    ``choices`` (name -> list) replaces the default list an option is drawn from (another
    distribution of problems, e.g. the CUDA tests' sizes); ``w2_gain`` and ``table_gain``
    scale W2 (``randn / sqrt(R)`` by default) and offset_table (``randn``).

    Returns a dict of keyword arguments (tensors in ``dtype``; none requires grad).
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    choices = choices or {}

    def pick(name, default):
        if name in opt:
            return opt[name]
        return rng.choice(choices.get(name, default))

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    mlp = pick("mlp", [True, False])
    content = pick("content", [True, False] if mlp else [True])
    assert content or mlp
    B = pick("B", [1, 2, 3])
    H = pick("H", [1, 2, 3, 4, 5, 9, 11] if mlp else [1, 2, 3, 5])
    N = pick("N", [1, 5, 17, 63, 64, 65, 97])
    M = pick("M", [1, 6, 31, 63, 64, 65, 97, 130])
    Dk = pick("Dk", [1, 3, 8, 16, 17])
    Dv = pick("Dv", [1, 2, 5, 8, 16, 19])
    R = pick("R", [1, 7, 32, 33])
    normalize = pick("normalize", ["softmax", "none"])
    activation = pick("activation", ["relu", "gelu", "silu"])
    causal = pick("causal", [False, False, True])
    support = pick("support", ["none", "window", "frac"] + (["offset", "offset"] if mlp else []))
    if support == "offset":
        assert mlp, "offset_table needs the MLP term"
    D = pick("D", [1, 1, 2, 3])
    pos = pick("pos", ["default", "batch", "bcast"] if D == 1 else ["batch", "bcast"])
    kpm_on = pick("kpm", [False, True])
    mask = pick("mask", [None, None, "bool", "float"])
    mask_shape = pick("mask_shape", list(MASK_SHAPES))
    key_weight = pick("key_weight", [None, None, "B", "1"])
    empty = pick("empty", [False, False, True])

    kw = dict(v=randn(B, H, M, Dv), normalize=normalize, causal=causal)
    if content:
        kw["q"] = randn(B, H, N, Dk)
        kw["k"] = randn(B, H, M, Dk)
        if rng.random() < 0.2:
            kw["scale"] = rng.choice([0.3, 1.7])
    if mlp:
        kw["W2"] = randn(H, R) * w2_gain / math.sqrt(max(R, 1))
        kw["activation"] = activation
        if pick("use_u", [True, True, False]) or not content:
            # without q, N comes from u or q_pos; keep u when there is no q
            kw["u"] = randn(pick("u_batch", [B, 1]), N, R)
        if pick("use_t", [True, True, False]):
            kw["t"] = randn(pick("t_batch", [B, 1]), M, R)
        if pick("use_b2", [True, False]):
            kw["b2"] = randn(H)

    # ---- positions and window ----
    if support != "none":
        if support == "frac":
            # float positions, fractional window bounds (one may be infinite)
            scale_p = max(N, M) ** (1.0 / D)
            Bp = B if pos in ("batch", "default") else 1
            kw["q_pos"] = torch.rand(Bp, N, D, generator=gen, dtype=torch.float64).to(dtype) * scale_p
            kw["k_pos"] = torch.rand(rng.choice([Bp, 1]), M, D, generator=gen,
                                     dtype=torch.float64).to(dtype) * scale_p
            win = []
            for _ in range(D):
                lo = -rng.uniform(0.05, 0.6) * scale_p
                hi = rng.uniform(0.05, 0.6) * scale_p
                r = rng.random()
                if r < 0.15:
                    lo = -math.inf
                elif r < 0.25:
                    hi = math.inf
                elif r < 0.35:  # window not containing offset 0
                    lo, hi = abs(lo) * 0.1, abs(lo) * 0.1 + hi
                win.append((lo, hi))
            kw["window"] = win if D > 1 or rng.random() < 0.5 else win[0]
        else:
            # integer positions on a grid
            if pos == "default" and D == 1:
                side = max(N, M)
            else:
                side = max(2, int(math.ceil(max(N, M) ** (1.0 / D))) + 1)
                Bq = B if pos == "batch" else 1
                kw["q_pos"] = torch.randint(0, side, (Bq, N, D), generator=gen).to(dtype)
                kw["k_pos"] = torch.randint(0, side, (rng.choice([Bq, 1]), M, D),
                                            generator=gen).to(dtype)
            reach = max(1, side // 3)
            win = [(-rng.randint(0, reach), rng.randint(0, reach)) for _ in range(D)]
            if rng.random() < 0.15:  # a window not containing offset 0
                lo0 = rng.randint(1, reach)
                win[0] = (lo0, lo0 + rng.randint(0, reach))
            kw["window"] = win if D > 1 or rng.random() < 0.5 else win[0]
            if support == "offset":
                vol = 1
                for lo, hi in win:
                    vol *= hi - lo + 1
                extra = rng.choice([0, 0, 3])  # extra rows never indexed: zero gradient
                kw["offset_table"] = randn(vol + extra, R) * table_gain

    # ---- masks and weights ----
    if kpm_on or empty:
        kpm = torch.rand(B, M, generator=gen) < 0.25
        if empty:
            kpm[0] = True  # batch 0: no key at all -> every row of batch 0 empty
        kw["key_padding_mask"] = kpm
    if mask is not None:
        shape = _mask_shape(mask_shape, B, H, N, M)
        if mask == "bool":
            am = torch.rand(shape, generator=gen) < 0.75
            if empty and "N" in mask_shape:
                idx = [slice(None)] * len(shape)
                idx[mask_shape.index("N")] = slice(0, None, 3)  # every third row: no pair
                am[tuple(idx)] = False
        else:
            am = randn(*shape)
            am[torch.rand(shape, generator=gen) < 0.2] = -math.inf
            if empty and "N" in mask_shape:
                idx = [slice(None)] * len(shape)
                idx[mask_shape.index("N")] = slice(0, None, 3)
                am[tuple(idx)] = -math.inf
        kw["attn_mask"] = am
    if key_weight is not None:
        kw["key_weight"] = (torch.rand(B if key_weight == "B" else 1, M, generator=gen,
                                       dtype=torch.float64) + 0.25).to(dtype)
    return kw


def diff_inputs(kw, names=DIFF_NAMES):
    """The names of the differentiable tensors present in ``kw``."""
    return [n for n in names if kw.get(n) is not None]


def with_grad(kw, names=None, dtype=None):
    """Copy of kw where the differentiable tensors are fresh leaves requiring grad."""
    out = dict(kw)
    for n in (names if names is not None else diff_inputs(kw)):
        x = kw[n].detach().clone()
        if dtype is not None:
            x = x.to(dtype)
        out[n] = x.requires_grad_()
    if dtype is not None:
        for n in ("q_pos", "k_pos", "attn_mask"):
            if out.get(n) is not None and out[n].is_floating_point():
                out[n] = out[n].to(dtype)
    return out


def rel_err(a, b, atol=1e-12, floor=None):
    """max |a - b| / max(max |b|, floor): the error relative to the largest finite reference
    entry, where differences below ``atol`` (absolute) count as 0 (a reference that is 0 up to
    rounding, e.g. the b2 gradient in softmax mode, is compared absolutely). ``floor``
    defaults to ``atol``; the CUDA tests use 1 (errors of small references count absolutely).

    Checks first that the infinite pattern is identical and that ``a`` has no NaN."""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert not torch.isnan(a).any(), "NaN in the result"
    fin = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), fin), "inf pattern differs"
    assert torch.equal(a[~fin], b[~fin]), "inf values differ"
    if not fin.any():
        return 0.0
    d = (a[fin] - b[fin]).abs().max().item()
    if d <= atol:
        return 0.0
    s = b[fin].abs().max().item()
    return d / max(s, atol if floor is None else floor)


def run_with_grads(fn, kw, names, seed=0, lse=None):
    """Run fn(**kw) (with return_lse when softmax), backprop fixed random cotangents.

    Returns (outputs tuple, dict name -> grad)."""
    softmax = kw.get("normalize", "softmax") == "softmax"
    want_lse = softmax if lse is None else lse
    res = fn(**kw, return_lse=want_lse) if want_lse else fn(**kw)
    res = res if isinstance(res, tuple) else (res,)
    gen = torch.Generator().manual_seed(seed + 12345)
    cot = [torch.randn(r.shape, generator=gen, dtype=torch.float64).to(r.dtype) for r in res]
    tensors = [kw[n] for n in names]
    grads = torch.autograd.grad(res, tensors, cot, allow_unused=True) if tensors else []
    return res, {n: g for n, g in zip(names, grads)}


def describe(kw):
    parts = []
    for key, val in kw.items():
        if isinstance(val, torch.Tensor):
            parts.append(f"{key}={tuple(val.shape)}{'b' if val.dtype == torch.bool else ''}")
        else:
            parts.append(f"{key}={val!r}")
    return ", ".join(parts)


@pytest.fixture(scope="session")
def dense():
    """Helpers for the dense-op tests (make_problem, rel_err, ...)."""
    return types.SimpleNamespace(
        make_problem=make_problem, diff_inputs=diff_inputs, with_grad=with_grad,
        rel_err=rel_err, run_with_grads=run_with_grads, describe=describe,
        DIFF_NAMES=DIFF_NAMES, MASK_SHAPES=MASK_SHAPES)
