"""Helpers shared by the CUDA test files (tests/test_*_cuda*.py).

The CUDA test files run their kernels on a GPU when there is one and the build has its CUDA
kernels; otherwise, when the build has the device emulator (ITNET_EMULATE=1), on the CPU
under it: DEVICE is then "cpu", and conftest's autouse fixture redirects every itnet
operator of a test marked ``cuda_kernels`` to its emulated twin (torch.ops.itnet_emu), with
the threads of a block in a forward, reverse or shuffled order chosen by the test's id.
"""
import contextlib
import math
import os

import pytest
import torch

DIFF_NAMES = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "key_weight")


def cuda_ready():
    """A GPU is visible and itnet_ext was built with its CUDA kernels."""
    if not torch.cuda.is_available():
        return False
    try:
        import itnet_ext  # noqa: F401  (registers torch.ops.itnet)
        return bool(torch.ops.itnet.cuda_kernels_compiled())
    except (AttributeError, RuntimeError, ImportError):
        return False


def emulation_ready():
    """The build has the device emulator (and ITNET_EMULATE_TESTS is not 0)."""
    if os.environ.get("ITNET_EMULATE_TESTS") == "0":
        return False
    try:
        from itnet_ext import emulate
        return emulate.available()
    except ImportError:
        return False


# ITNET_REQUIRE_CUDA=1 (set by scripts/gpu_check.sh where the kernels are built): a missing GPU
# or kernel build fails the CUDA tests instead of skipping them silently.
if os.environ.get("ITNET_REQUIRE_CUDA") == "1" and not cuda_ready():
    raise RuntimeError("ITNET_REQUIRE_CUDA=1 but no GPU is visible or itnet_ext has no CUDA kernels")

GPU = cuda_ready()
EMULATED = not GPU and emulation_ready()
# ITNET_REQUIRE_EMULATION=1 (CI's emulate stage): no emulator fails instead of skipping.
if os.environ.get("ITNET_REQUIRE_EMULATION") == "1" and not EMULATED:
    raise RuntimeError("ITNET_REQUIRE_EMULATION=1 but itnet_ext has no emulated library "
                       "(build with ITNET_EMULATE=1) or a GPU is visible")
# where the CUDA kernels' tensors live: the GPU, or the CPU under the emulator
DEVICE = "cuda" if GPU else "cpu"

requires_cuda = pytest.mark.skipif(
    not (GPU or EMULATED),
    reason="needs a GPU and itnet_ext built with its CUDA kernels, or the device emulator "
           "(ITNET_EMULATE=1 build)")
# what only a real GPU has: streams, device indices, the caching allocator, timing
requires_gpu = pytest.mark.skipif(not GPU, reason="needs a real GPU (not the emulator)")
# the marks of a CUDA test file: pytestmark = CUDA_TESTS
CUDA_TESTS = [requires_cuda, pytest.mark.cuda_kernels]


def emu_cases(cases, keep):
    """The parametrized cases of a test: all of them on a GPU; under the emulator (where every
    case costs seconds of CPU time) a deterministic subset of ``keep`` of them, spread evenly
    over the list (its first and last included)."""
    cases = list(cases)
    if not EMULATED or keep >= len(cases):
        return cases
    if keep <= 1:
        return cases[:1]
    return [cases[round(i * (len(cases) - 1) / (keep - 1))] for i in range(keep)]


@contextlib.contextmanager
def cpu_kernels():
    """Inside a ``cuda_kernels`` test under the emulator, the itnet operators run their CPU
    kernels again (for comparisons of the CUDA kernels with the CPU ones)."""
    if not EMULATED:
        yield
        return
    from torch.utils._python_dispatch import _disable_current_modes
    with _disable_current_modes():
        yield


def describe(kw):
    return ", ".join(f"{k}={tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}={v!r}"
                     for k, v in kw.items())


def to_dev(kw, dtype, device):
    """Fresh leaves (requiring grad) of the differentiable inputs in dtype on device; the
    other tensors moved too (float ones cast)."""
    out = {}
    for n, x in kw.items():
        if isinstance(x, torch.Tensor):
            x = x.detach().to(device)
            if x.is_floating_point():
                x = x.to(dtype)
            if n in DIFF_NAMES:
                x = x.clone().requires_grad_()
        out[n] = x
    return out


def empty_rows_problem(make_problem, normalize, B, H, N, M, Dk, Dv, R):
    """A problem where some query rows have an empty support: batch 1 has every key padded,
    row 5 is masked out by the bool mask, row 0 sees no key of the causal window [i-2, i-1].
    Returns (kwargs, empty) with empty the (B, N) bool mask of those rows."""
    kw = make_problem(11, content=True, mlp=True, B=B, H=H, N=N, M=M, Dk=Dk, Dv=Dv, R=R,
                      normalize=normalize, support="none", mask=None, kpm=False,
                      key_weight="B", use_u=True, use_t=True, use_b2=True, u_batch=B,
                      t_batch=B, causal=True)
    kpm = torch.zeros(B, M, dtype=torch.bool)
    kpm[1] = True
    am = torch.ones(N, M, dtype=torch.bool)
    am[5] = False
    kw.update(key_padding_mask=kpm, attn_mask=am, window=(-2, -1))
    empty = torch.zeros(B, N, dtype=torch.bool)
    empty[1] = True
    empty[:, 0] = True
    empty[:, 5] = True
    return kw, empty


def assert_empty_rows(res, grads, empty, softmax):
    """Rows of `empty` give exactly 0 (the others not all 0), lse = -inf (finite elsewhere),
    finite gradients everywhere, zero q / u gradients on those rows and zero key-side
    gradients in batch 1 (no pair at all)."""
    out = res[0].cpu()
    rows4 = empty[:, None, :, None].expand_as(out)
    assert (out[rows4] == 0).all()
    assert (out[~rows4] != 0).any()
    if softmax:
        lse = res[1].cpu()
        rows3 = empty[:, None, :].expand_as(lse)
        assert (lse[rows3] == -math.inf).all()
        assert torch.isfinite(lse[~rows3]).all()
    for n, g in grads.items():
        assert torch.isfinite(g).all(), n
    dq = grads["q"].cpu()
    assert (dq[empty[:, None, :, None].expand_as(dq)] == 0).all()
    du = grads["u"].cpu()
    assert (du[empty[:, :, None].expand_as(du)] == 0).all()
    for n in ("k", "v", "t", "key_weight"):
        assert (grads[n].cpu()[1] == 0).all(), n
